//! What the state store needs besides its engine, per backend: where it keeps the
//! current snapshot (meta + bytes, so `get_current_snapshot` and a restart find
//! it) and the snapshot-id counter, and where its work runs.
//!
//! - Files (a real node): snapshot files (`snapshot_files`), each durable before
//!   `save_current` returns, and all work on tokio's blocking pool.
//! - Memory (tests and simulation only): a shared in-memory slot that outlives a
//!   simulated restart (see [`crate::MemoryStorage`]), and all work inline on
//!   the caller's task, so that a single-threaded simulation stays
//!   deterministic.

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::SnapshotMeta;

use crate::snapshot_files::SnapshotFiles;
use crate::state_store::StateStoreError;
use crate::types::{Member, NodeId};

type Meta = SnapshotMeta<NodeId, Member>;

/// The current snapshot: its meta and its encoded bytes.
pub(crate) type Current = (Meta, Vec<u8>);

/// The state store's backend; fixed when the storage is opened.
#[derive(Clone)]
pub(crate) enum StateBackend {
    Files(SnapshotFiles),
    Memory(MemSnapshots),
}

/// The memory half: the current snapshot and the counter. Clones share them.
#[derive(Clone, Default)]
pub(crate) struct MemSnapshots {
    inner: Arc<Mutex<MemSnapshotState>>,
}

#[derive(Default)]
struct MemSnapshotState {
    current: Option<Current>,
    next_id: u64,
}

impl MemSnapshots {
    fn lock(&self) -> Result<MutexGuard<'_, MemSnapshotState>, StateStoreError> {
        self.inner
            .lock()
            .map_err(|_| StateStoreError::MemoryPoisoned)
    }
}

impl StateBackend {
    /// Runs `f`: on tokio's blocking pool for files, inline for memory.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, tokio::task::JoinError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            StateBackend::Files(_) => tokio::task::spawn_blocking(f).await,
            StateBackend::Memory(_) => Ok(f()),
        }
    }

    /// A number never handed out before by this store, also across restarts.
    pub(crate) fn next_snapshot_counter(&self) -> Result<u64, StateStoreError> {
        match self {
            StateBackend::Files(files) => Ok(files.next_counter()),
            StateBackend::Memory(m) => {
                let mut state = m.lock()?;
                let id = state.next_id;
                state.next_id += 1;
                Ok(id)
            }
        }
    }

    /// Replaces the current snapshot; durable on return. Blocking for files.
    pub(crate) fn save_current(&self, meta: &Meta, bytes: &[u8]) -> Result<(), StateStoreError> {
        match self {
            StateBackend::Files(files) => files.save(meta, bytes)?,
            StateBackend::Memory(m) => m.lock()?.current = Some((meta.clone(), bytes.to_vec())),
        }
        Ok(())
    }

    /// The current snapshot, if one was saved. Blocking for files.
    pub(crate) fn load_current(&self) -> Result<Option<Current>, StateStoreError> {
        match self {
            StateBackend::Files(files) => Ok(files.load()?),
            StateBackend::Memory(m) => Ok(m.lock()?.current.clone()),
        }
    }
}
