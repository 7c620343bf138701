//! The state machine's storage engine on a real node: one sled tree.
//!
//! `roster-state` applies commands through its small `Engine` trait so that the
//! same logic runs over memory in tests; this is the sled implementation. Batches
//! are applied with `Tree::apply_batch` (atomic, so a restart never sees half an
//! entry), and `flush` is the node's durable flush (sled's flush plus our fsyncs),
//! shared with the raft log through the group-commit flusher.

use std::ops::Bound;

use roster_state::{Batch, Engine, EngineError, ScanItem};

use crate::storage::GroupCommit;

/// A [`roster_state::Engine`] over one sled tree. Clones share the tree.
#[derive(Clone)]
pub struct SledEngine {
    tree: sled::Tree,
    flusher: GroupCommit,
}

impl SledEngine {
    pub(crate) fn new(tree: sled::Tree, flusher: GroupCommit) -> Self {
        SledEngine { tree, flusher }
    }
}

fn engine_err(e: impl std::fmt::Display) -> EngineError {
    EngineError(format!("sled: {e}"))
}

impl Engine for SledEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.tree
            .get(key)
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(engine_err)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        if end.is_some_and(|end| end <= start) {
            return Box::new(std::iter::empty());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let iter = self.tree.range::<&[u8], _>((Bound::Included(start), upper));
        Box::new(iter.map(|item| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                .map_err(engine_err)
        }))
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        let mut sled_batch = sled::Batch::default();
        for (key, value) in batch.ops {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        self.tree.apply_batch(sled_batch).map_err(engine_err)
    }

    /// Blocking: never call it on an async runtime thread.
    fn flush(&self) -> Result<(), EngineError> {
        self.flusher.flush_blocking().map_err(engine_err)
    }
}
