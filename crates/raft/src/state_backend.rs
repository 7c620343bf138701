//! What the state store needs besides its engine, per backend: where it keeps the
//! current snapshot (meta + bytes, so `get_current_snapshot` survives a restart)
//! and the snapshot-id counter, how it makes an installed snapshot durable, and
//! where its work runs.
//!
//! - Sled (a real node): the `snapshot` tree and sled's persisted id generator of
//!   the node's one database, the node's durable flush (group commit), and all
//!   work on tokio's blocking pool.
//! - Memory (tests and simulation only): a shared in-memory slot that outlives a
//!   simulated restart (see [`crate::MemoryStorage`]), a flush that does nothing,
//!   and all work inline on the caller's task, so that a single-threaded
//!   simulation stays deterministic.

use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::SnapshotMeta;

use crate::state_store::{decode, encode, StateStoreError};
use crate::storage::{FlushError, GroupCommit};
use crate::types::{Member, NodeId};

const SNAPSHOT_TREE: &str = "snapshot";
const SNAPSHOT_META_KEY: &[u8] = b"current/meta";
const SNAPSHOT_DATA_KEY: &[u8] = b"current/data";

type Meta = SnapshotMeta<NodeId, Member>;

/// The current snapshot: its meta and its encoded bytes.
pub(crate) type Current = (Meta, Vec<u8>);

/// The state store's backend; fixed when the storage is opened.
#[derive(Clone)]
pub(crate) enum StateBackend {
    Sled(SledBackend),
    Memory(MemSnapshots),
}

/// The sled half: the node's one database.
#[derive(Clone)]
pub(crate) struct SledBackend {
    snapshots: sled::Tree,
    /// For the snapshot counter: sled's id generator is persisted and monotonic.
    db: sled::Db,
    flusher: GroupCommit,
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
    /// The sled backend over `db`'s `snapshot` tree. Blocking.
    pub(crate) fn sled(db: &sled::Db, flusher: GroupCommit) -> Result<Self, sled::Error> {
        Ok(StateBackend::Sled(SledBackend {
            snapshots: db.open_tree(SNAPSHOT_TREE)?,
            db: db.clone(),
            flusher,
        }))
    }

    /// Runs `f`: on tokio's blocking pool for sled, inline for memory.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, tokio::task::JoinError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            StateBackend::Sled(_) => tokio::task::spawn_blocking(f).await,
            StateBackend::Memory(_) => Ok(f()),
        }
    }

    /// A number never handed out before by this store, also across restarts.
    /// Blocking for sled.
    pub(crate) fn next_snapshot_counter(&self) -> Result<u64, StateStoreError> {
        match self {
            StateBackend::Sled(s) => Ok(s.db.generate_id()?),
            StateBackend::Memory(m) => {
                let mut state = m.lock()?;
                let id = state.next_id;
                state.next_id += 1;
                Ok(id)
            }
        }
    }

    /// Replaces the current snapshot. Blocking for sled; not flushed.
    pub(crate) fn save_current(&self, meta: &Meta, bytes: &[u8]) -> Result<(), StateStoreError> {
        match self {
            StateBackend::Sled(s) => {
                let mut batch = sled::Batch::default();
                batch.insert(SNAPSHOT_META_KEY, encode(meta)?);
                batch.insert(SNAPSHOT_DATA_KEY, bytes);
                s.snapshots.apply_batch(batch)?;
            }
            StateBackend::Memory(m) => m.lock()?.current = Some((meta.clone(), bytes.to_vec())),
        }
        Ok(())
    }

    /// The current snapshot, if one was saved. Blocking for sled.
    pub(crate) fn load_current(&self) -> Result<Option<Current>, StateStoreError> {
        match self {
            StateBackend::Sled(s) => {
                let Some(meta) = s.snapshots.get(SNAPSHOT_META_KEY)? else {
                    return Ok(None);
                };
                let bytes = s.snapshots.get(SNAPSHOT_DATA_KEY)?.unwrap_or_default();
                Ok(Some((decode(&meta)?, bytes.to_vec())))
            }
            StateBackend::Memory(m) => Ok(m.lock()?.current.clone()),
        }
    }

    /// Returns once everything written before the call is durable (sled: the
    /// node's durable flush; memory: at once).
    pub(crate) async fn flush(&self) -> Result<(), FlushError> {
        match self {
            StateBackend::Sled(s) => s.flusher.flush().await,
            StateBackend::Memory(_) => Ok(()),
        }
    }
}
