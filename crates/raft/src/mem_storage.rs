//! A node's storage in memory: FOR TESTS AND SIMULATION ONLY, never for a real
//! node (nothing reaches a disk).
//!
//! [`MemoryStorage`] owns what a simulated node "persists": the raft log and vote
//! (`mem_log_store`), the state machine's keys (a [`MemEngine`]) and the current
//! snapshot with the snapshot-id counter. [`MemoryStorage::open`] hands out a
//! [`Storage`] over them; opening again after the previous node is gone is a
//! restart. The log flushes like a disk (see `mem_log_store`):
//! [`MemoryStorage::lose_unflushed`] before the restart makes it a crash that
//! loses what the log had not flushed. The state machine's keys count as
//! durable at once, so it may then be ahead of the log, as openraft allows
//! (it treats the applied entries as purged).

use std::sync::Arc;

use roster_state::{Batch, Engine, EngineError, MemEngine, ScanItem, SnapshotData};

use crate::log_store::LogStore;
use crate::mem_log_store::{MemLogError, MemLogStore};
use crate::state_backend::{MemSnapshots, StateBackend};
use crate::state_store::StateStore;
use crate::storage::{OpenError, Storage};
use crate::types::ApplyObserver;

/// One node's in-memory storage, for tests and simulation. Clones share it: keep
/// a clone outside the simulated node and call [`MemoryStorage::open`] again to
/// restart that node over what it had stored.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    log: MemLogStore,
    engine: Arc<MemEngine>,
    snapshots: MemSnapshots,
}

impl MemoryStorage {
    /// Empty storage: a node that never ran.
    pub fn new() -> Self {
        Self::default()
    }

    /// A machine crash: the log loses every change since its last flush. Call
    /// it after the node using this storage is gone, before opening it again.
    pub fn lose_unflushed(&self) -> Result<(), MemLogError> {
        self.log.lose_unflushed()
    }

    /// A fresh [`Storage`] over what this storage holds. Stop the node using a
    /// previous `Storage` first (drop its `Raft` or its simulated host): two live
    /// nodes over the same storage would corrupt it, as they would a data dir.
    pub fn open(&self, observer: Arc<dyn ApplyObserver>) -> Result<Storage, OpenError> {
        let engine = Box::new(SharedMemEngine(self.engine.clone()));
        let backend = StateBackend::Memory(self.snapshots.clone());
        Ok(Storage {
            log: LogStore::memory(self.log.clone()),
            state: StateStore::open(engine, backend, observer)?,
        })
    }
}

/// A node's storage in fresh memory, for tests and simulation; the same as
/// `MemoryStorage::new().open(observer)`. Use [`MemoryStorage`] to restart it.
pub fn open_memory_storage(observer: Arc<dyn ApplyObserver>) -> Result<Storage, OpenError> {
    MemoryStorage::new().open(observer)
}

/// A [`MemEngine`] that outlives the state machine opened over it.
struct SharedMemEngine(Arc<MemEngine>);

impl Engine for SharedMemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.0.get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        self.0.scan(start, end)
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        self.0.write(batch)
    }

    fn snapshot(&self) -> Result<SnapshotData, EngineError> {
        self.0.snapshot()
    }

    fn install(&self, snap: SnapshotData) -> Result<(), EngineError> {
        self.0.install(snap)
    }
}
