//! [`Tx`]: the writes of one log entry, staged over the engine until the entry has
//! been fully applied. Reads see the staged writes, so a command that touches a key
//! twice (a lease listed twice, a checkpoint repeated) sees its own changes, and
//! each command of a `Command::Batch` sees the ones before it. At the end the
//! entry becomes ONE engine batch.
//!
//! Each command runs between `begin_command` and `end_command`; a command that
//! fails is `rollback`ed alone (its staged writes are undone from an undo log of
//! the values they replaced), so a failing command in a batch changes nothing and
//! the others keep their effects.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::engine::{Batch, Engine, EngineError, Pairs, ScanItem};
use crate::history;
use crate::keyspace::Event;
use crate::layout;

/// Read access to one consistent state: an engine as last written, or a [`Tx`]
/// with what it has staged. Reads that serve both clients and commands (ranges,
/// history, txn compares) are written once, over this.
pub(crate) trait View {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Pairs with `start <= key < end`, in key order.
    fn read_range<'s>(
        &'s self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = ScanItem> + 's>;
}

impl<E: Engine> View for E {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.get(key)
    }

    fn read_range<'s>(
        &'s self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = ScanItem> + 's> {
        self.scan(start, end)
    }
}

impl<E: Engine> View for Tx<'_, E> {
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.get(key)
    }

    fn read_range<'s>(
        &'s self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Box<dyn Iterator<Item = ScanItem> + 's> {
        match self.scan(start, end) {
            Ok(pairs) => Box::new(pairs.into_iter().map(Ok)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }
}

pub(crate) struct Tx<'a, E> {
    engine: &'a E,
    /// The term of the leader that appended the entry being applied (0 when
    /// serving a read): `Command::InTerm` compares against it.
    term: u64,
    /// The store revision before the entry.
    initial_revision: i64,
    /// The store revision before the current command.
    base_revision: i64,
    /// Staged writes; a `BTreeMap` so the batch comes out in key order.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    events: Vec<Event>,
    /// Index in `events` of the current command's first event.
    events_mark: usize,
    /// For each key the current command wrote: its staged state before that
    /// (`None`: not staged, read from the engine).
    undo: BTreeMap<Vec<u8>, Option<Option<Vec<u8>>>>,
}

impl<'a, E: Engine> Tx<'a, E> {
    pub(crate) fn new(engine: &'a E, term: u64, base_revision: i64) -> Self {
        Self {
            engine,
            term,
            initial_revision: base_revision,
            base_revision,
            pending: BTreeMap::new(),
            events: Vec::new(),
            events_mark: 0,
            undo: BTreeMap::new(),
        }
    }

    /// Starts a command: what it writes from now on can be rolled back alone.
    pub(crate) fn begin_command(&mut self) {
        self.undo.clear();
        self.events_mark = self.events.len();
    }

    /// Keeps the current command's effects; the next command sees its revision.
    pub(crate) fn end_command(&mut self) {
        self.base_revision = self.revision();
        self.events_mark = self.events.len();
        self.undo.clear();
    }

    /// Undoes everything the current command staged.
    pub(crate) fn rollback(&mut self) {
        for (key, before) in std::mem::take(&mut self.undo) {
            match before {
                Some(staged) => self.pending.insert(key, staged),
                None => self.pending.remove(&key),
            };
        }
        self.events.truncate(self.events_mark);
    }

    fn stage(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        if !self.undo.contains_key(&key) {
            let before = self.pending.get(&key).cloned();
            self.undo.insert(key.clone(), before);
        }
        self.pending.insert(key, value);
    }

    /// The revision the current command's key changes get: one past its base,
    /// shared by every event of the command.
    pub(crate) fn write_revision(&self) -> i64 {
        self.base_revision + 1
    }

    /// The term of the leader that appended the entry being applied.
    pub(crate) fn term(&self) -> u64 {
        self.term
    }

    /// The store revision after the current command: bumped only if it changed a
    /// key.
    pub(crate) fn revision(&self) -> i64 {
        if self.events.len() == self.events_mark {
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
        self.stage(key, Some(value));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.stage(key, None);
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

    /// Records a key event at the write revision, persisting it in the history.
    pub(crate) fn event(&mut self, event: Event) -> Result<(), EngineError> {
        let sub = (self.events.len() - self.events_mark) as u64;
        history::stage(self, &event, sub)?;
        self.events.push(event);
        Ok(())
    }

    /// The batch (staged writes plus the new revision if it moved), the events and
    /// the store revision after the entry.
    pub(crate) fn finish(mut self) -> (Batch, Vec<Event>, i64) {
        let revision = self.revision();
        if revision != self.initial_revision {
            let rev = revision.to_be_bytes().to_vec();
            self.pending.insert(layout::REVISION.to_vec(), Some(rev));
        }
        let ops = self.pending.into_iter().collect();
        (Batch { ops }, self.events, revision)
    }
}
