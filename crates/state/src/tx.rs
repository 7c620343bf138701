//! [`Tx`]: the writes of one command, staged over the engine until the command has
//! fully succeeded. Reads see the staged writes, so a command that touches a key
//! twice (a lease listed twice, a checkpoint repeated) sees its own changes. At the
//! end it becomes ONE engine batch, or is dropped whole when the command fails.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::engine::{Batch, Engine, EngineError, Pairs};
use crate::keyspace::Event;
use crate::layout;

pub(crate) struct Tx<'a, E> {
    engine: &'a E,
    /// The store revision before the command.
    base_revision: i64,
    /// Staged writes; a `BTreeMap` so the batch comes out in key order.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    events: Vec<Event>,
}

impl<'a, E: Engine> Tx<'a, E> {
    pub(crate) fn new(engine: &'a E, base_revision: i64) -> Self {
        Self {
            engine,
            base_revision,
            pending: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The revision the command's key changes get: one past the base, shared by
    /// every event of the command.
    pub(crate) fn write_revision(&self) -> i64 {
        self.base_revision + 1
    }

    /// The store revision after the command: bumped only if a key changed.
    pub(crate) fn revision(&self) -> i64 {
        if self.events.is_empty() {
            self.base_revision
        } else {
            self.write_revision()
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        match self.pending.get(key) {
            Some(staged) => Ok(staged.clone()),
            None => self.engine.get(key),
        }
    }

    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Pairs with `start <= key < end` as the command currently sees them, in key
    /// order. Collects: callers scan only what they are about to change.
    pub(crate) fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Result<Pairs, EngineError> {
        let mut seen = BTreeMap::new();
        for item in self.engine.scan(start, end) {
            let (k, v) = item?;
            seen.insert(k, v);
        }
        let staged = self
            .pending
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take_while(|(k, _)| end.is_none_or(|e| k.as_slice() < e));
        for (k, v) in staged {
            match v {
                Some(v) => seen.insert(k.clone(), v.clone()),
                None => seen.remove(k),
            };
        }
        Ok(seen.into_iter().collect())
    }

    /// Records a key event at the write revision, persisting it under `e/`.
    pub(crate) fn event(&mut self, event: Event) -> Result<(), EngineError> {
        let sub = self.events.len() as u64;
        let key = layout::event_key(self.write_revision(), sub);
        self.put(key, layout::encode(&event)?);
        self.events.push(event);
        Ok(())
    }

    /// The batch (staged writes plus the new revision if it moved), the events and
    /// the store revision after the command.
    pub(crate) fn finish(mut self) -> (Batch, Vec<Event>, i64) {
        let revision = self.revision();
        if revision != self.base_revision {
            let rev = revision.to_be_bytes().to_vec();
            self.pending.insert(layout::REVISION.to_vec(), Some(rev));
        }
        let ops = self.pending.into_iter().collect();
        (Batch { ops }, self.events, revision)
    }
}
