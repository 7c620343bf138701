//! The adapter between openraft and `roster-state`: openraft's `RaftStateMachine`
//! and `RaftSnapshotBuilder` over `StateMachine<DynEngine>`, whose map lives in
//! memory (`roster_state::MemEngine`).
//!
//! Each entry is applied with its log id (and, for membership entries, the new
//! membership) as metadata of the same atomic engine batch, so the applied position
//! always matches the state. Blank and membership entries apply `Command::Noop`,
//! which changes no key but still records that position.
//!
//! Durability: the state machine is not written to disk per entry. A snapshot
//! (a frozen copy of the map, taken in O(1) under the read lock and encoded
//! off it) is saved durably before `build_snapshot` or `install_snapshot`
//! returns, so before openraft purges the log entries it covers. After a
//! crash the node loads its newest snapshot and openraft re-applies the
//! committed entries after it from the log.
//!
//! Where the snapshot is kept, and the snapshot-id counter, is the backend's
//! (see `state_backend`): snapshot files on a real node, memory in tests.
//!
//! Calling context: openraft calls these methods from its state-machine worker, a
//! task on the caller's tokio runtime. Apply runs inline there: it changes the
//! map in memory and writes nothing. On a real node, the other storage work
//! (encoding, saving and loading snapshots) runs under
//! `spawn_blocking` rather than `block_in_place`, because `block_in_place`
//! panics on a current-thread runtime (`#[tokio::test]`) and would also stall
//! every other task sharing the worker thread while it runs. With memory it
//! runs inline, which keeps a simulation deterministic.

use std::io::Cursor;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use roster_state::{
    Command, DynEngine, Engine, EngineError, MemEngine, Response, SnapshotData, StateMachine,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::snapshot_files::{SnapshotFileError, SnapshotFiles};
use crate::state_backend::StateBackend;
use crate::storage::OpenError;
use crate::types::{ApplyObserver, Member, NodeId, TypeConfig};

/// The state machine as the server reads it. Take the lock briefly, and not on an
/// async runtime thread for long reads. The same type for every backend.
pub type SharedState = Arc<RwLock<StateMachine<DynEngine>>>;

/// State-machine metadata names (stored by `roster-state` under `m/<name>`).
pub(crate) const APPLIED_META: &[u8] = b"raft/applied";
pub(crate) const MEMBERSHIP_META: &[u8] = b"raft/membership";

type StorageResult<T> = Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, Member>;
type Meta = SnapshotMeta<NodeId, Member>;

/// A failure inside the state store, before it is wrapped for openraft.
#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    SnapshotFile(#[from] SnapshotFileError),
    #[error("encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the state machine lock is poisoned (a panic during apply)")]
    Poisoned,
    #[error("the memory snapshot store lock is poisoned")]
    MemoryPoisoned,
}

/// openraft's state machine for a node. Clones share everything; a clone is also
/// the snapshot builder.
#[derive(Clone)]
pub struct StateStore {
    sm: SharedState,
    backend: StateBackend,
    observer: Arc<dyn ApplyObserver>,
    /// The last log id of the current snapshot. Saving takes this lock, and a
    /// snapshot older than the current one is not saved: a build that raced an
    /// install must not replace the installed state.
    saved: Arc<Mutex<Option<LogId<NodeId>>>>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StateStoreError> {
    Ok(bincode::serialize(value)?)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateStoreError> {
    Ok(bincode::deserialize(bytes)?)
}

fn read_sm_err(e: StateStoreError) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn read_snapshot_err(e: StateStoreError) -> StorageError<NodeId> {
    StorageIOError::read_snapshot(None, AnyError::new(&e)).into()
}

fn write_snapshot_err(meta: &Meta, e: StateStoreError) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)).into()
}

/// What applying one entry means for the state machine.
struct Prepared {
    command: Command,
    /// Stored in the same atomic batch as the command's effects.
    meta: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether the observer hears of it (client commands only).
    observed: bool,
}

fn prepare(entry: Entry<TypeConfig>) -> Result<Prepared, StateStoreError> {
    let mut meta = vec![(APPLIED_META.to_vec(), encode(&entry.log_id)?)];
    let (command, observed) = match entry.payload {
        EntryPayload::Normal(command) => (command, true),
        EntryPayload::Blank => (Command::Noop, false),
        EntryPayload::Membership(membership) => {
            let stored = Membership::new(Some(entry.log_id), membership);
            meta.push((MEMBERSHIP_META.to_vec(), encode(&stored)?));
            (Command::Noop, false)
        }
    };
    Ok(Prepared {
        command,
        meta,
        observed,
    })
}

/// A failed apply, with the entry it failed on (kept small: openraft's
/// `StorageError` is over 200 bytes).
type ApplyFailure = (LogId<NodeId>, StateStoreError);

fn apply_err((log_id, e): ApplyFailure) -> StorageError<NodeId> {
    StorageIOError::apply(log_id, AnyError::new(&e)).into()
}

impl StateStore {
    /// Opens the state machine of a real node from its newest snapshot file
    /// (none: empty). Blocking.
    pub(crate) fn open_files(
        files: SnapshotFiles,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Self, OpenError> {
        let engine = match files.load()? {
            Some((meta, bytes)) => {
                tracing::info!(
                    last_log = ?meta.last_log_id.map(|l| l.index),
                    "state loaded from the snapshot file"
                );
                MemEngine::from_snapshot(SnapshotData::decode(&bytes)?)
            }
            None => MemEngine::new(),
        };
        Self::open(Box::new(engine), StateBackend::Files(files), observer)
    }

    /// Opens the state machine over `engine`, with what `backend` keeps besides.
    pub(crate) fn open(
        engine: DynEngine,
        backend: StateBackend,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<Self, OpenError> {
        let sm = StateMachine::open(engine)?;
        let (applied, _) = read_applied(&sm)?;
        Ok(StateStore {
            sm: Arc::new(RwLock::new(sm)),
            backend,
            observer,
            saved: Arc::new(Mutex::new(applied)),
        })
    }

    /// Runs `f` on a clone of the store where the backend runs storage work (see
    /// the module doc).
    async fn blocking<T, F>(&self, f: F) -> Result<T, StateStoreError>
    where
        F: FnOnce(StateStore) -> Result<T, StateStoreError> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        self.backend.run(move || f(this)).await?
    }

    /// The state machine, for the server's reads.
    pub fn shared(&self) -> SharedState {
        self.sm.clone()
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, StateMachine<DynEngine>>, StateStoreError> {
        self.sm.read().map_err(|_| StateStoreError::Poisoned)
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, StateMachine<DynEngine>>, StateStoreError> {
        self.sm.write().map_err(|_| StateStoreError::Poisoned)
    }

    /// Applies one entry; the lock is released before the observer runs, so the
    /// observer may read the state.
    fn apply_one(&self, entry: Entry<TypeConfig>) -> Result<Response, ApplyFailure> {
        let log_id = entry.log_id;
        let began = std::time::Instant::now();
        let p = prepare(entry).map_err(|e| (log_id, e))?;
        let applied = self
            .write()
            .and_then(|mut sm| Ok(sm.apply(log_id.leader_id.term, &p.command, p.meta)?))
            .map_err(|e| (log_id, e))?;
        roster_metrics::APPLY.observe(began.elapsed());
        if p.observed {
            self.observer.applied(log_id.index, &p.command, &applied);
        }
        Ok(applied.response)
    }

    fn applied_state_blocking(
        &self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StateStoreError> {
        let sm = self.read()?;
        read_applied(&sm)
    }

    /// Takes the state and its meta under one read lock, so they agree; the
    /// copy is O(1), and encoding and saving happen after the lock is released.
    fn build_snapshot_blocking(&self) -> Result<Snapshot<TypeConfig>, StateStoreError> {
        let (meta, data) = {
            let sm = self.read()?;
            let counter = self.backend.next_snapshot_counter()?;
            (snapshot_meta(&sm, counter)?, sm.snapshot()?)
        };
        let bytes = data.encode();
        drop(data);
        self.save_current(&meta, &bytes)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    /// Saves the snapshot as the current one, durably, unless the current one
    /// is newer.
    fn save_current(&self, meta: &Meta, bytes: &[u8]) -> Result<(), StateStoreError> {
        let mut saved = self.saved.lock().map_err(|_| StateStoreError::Poisoned)?;
        if meta.last_log_id < *saved {
            return Ok(());
        }
        self.backend.save_current(meta, bytes)?;
        *saved = meta.last_log_id;
        Ok(())
    }

    fn load_current(&self) -> Result<Option<Snapshot<TypeConfig>>, StateStoreError> {
        let current = self.backend.load_current()?;
        Ok(current.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }

    /// Decodes the snapshot, saves it durably, then replaces the state.
    fn install_blocking(&self, meta: &Meta, bytes: Vec<u8>) -> Result<(), StateStoreError> {
        let data = SnapshotData::decode(&bytes)?;
        self.save_current(meta, &bytes)?;
        drop(bytes);
        self.write()?.install(data)?;
        Ok(())
    }
}

/// The applied log id and membership recorded in the state.
pub(crate) fn read_applied<E: Engine>(
    sm: &StateMachine<E>,
) -> Result<(Option<LogId<NodeId>>, Membership), StateStoreError> {
    let applied = sm.meta(APPLIED_META)?.map(|v| decode(&v)).transpose()?;
    let membership = sm
        .meta(MEMBERSHIP_META)?
        .map(|v| decode(&v))
        .transpose()?
        .unwrap_or_default();
    Ok((applied, membership))
}

/// The meta of a snapshot of `sm`: its applied log id and membership, and the
/// id `<term>-<index>-<counter>`, where `counter` (one the backend never handed
/// out before, also across restarts) keeps two snapshots at the same log id
/// apart.
pub(crate) fn snapshot_meta<E: Engine>(
    sm: &StateMachine<E>,
    counter: u64,
) -> Result<Meta, StateStoreError> {
    let (applied, membership) = read_applied(sm)?;
    let (term, index) = applied.map_or((0, 0), |id| (id.leader_id.term, id.index));
    Ok(SnapshotMeta {
        snapshot_id: format!("{term}-{index}-{counter}"),
        last_log_id: applied,
        last_membership: membership,
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateStore {
    /// Builds the snapshot and saves it durably: openraft purges the log
    /// entries a snapshot covers once it is built.
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let err = |e: StateStoreError| StorageIOError::write_snapshot(None, AnyError::new(&e));
        let snapshot = self
            .blocking(|this| this.build_snapshot_blocking())
            .await
            .map_err(err)?;
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = StateStore;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        self.blocking(|this| this.applied_state_blocking())
            .await
            .map_err(read_sm_err)
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Inline on the state-machine worker: applying is a few map updates
        // in memory, cheaper than handing the batch to another thread.
        entries
            .into_iter()
            .map(|entry| self.apply_one(entry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(apply_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the state with the snapshot, durable before returning: the
    /// leader counts an installed snapshot as replicated.
    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let owned_meta = meta.clone();
        let bytes = snapshot.into_inner();
        self.blocking(move |this| this.install_blocking(&owned_meta, bytes))
            .await
            .map_err(|e| write_snapshot_err(meta, e))?;
        self.observer.installed_snapshot();
        tracing::info!(
            snapshot = %meta.snapshot_id,
            last_log = ?meta.last_log_id.map(|l| l.index),
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.blocking(|this| this.load_current())
            .await
            .map_err(read_snapshot_err)
    }
}
