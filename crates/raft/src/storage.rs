//! Opens a node's storage and makes its writes durable.
//!
//! A node keeps two things on disk under its storage root: the raft log and
//! vote in the write-ahead log (`wal/`, see `wal` and `wal_log_store`), and
//! the newest snapshot of the state machine (`snap/`, see `snapshot_files`).
//! The state machine itself lives in memory. Durability of what raft
//! acknowledges rests on the WAL alone: an append is reported only after an
//! `fdatasync` of it. At start a node loads its newest snapshot and openraft
//! re-applies the committed entries after it from the WAL; a snapshot is
//! synced before openraft may purge the entries it covers.
//!
//! A data dir of an older version, which kept log and state in sled
//! (`sled/`), is moved into this layout once when opened (`sled_import`).
//!
//! [`GroupCommit`] runs the WAL's fsyncs on a dedicated thread: every waiter
//! queued while one flush runs is covered by the next single flush (group
//! commit), and no waiter is told "durable" before the flush that covers it
//! returned.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use roster_state::EngineError;

use crate::log_store::LogStore;
use crate::sled_import::{import_sled, ImportError};
use crate::snapshot_files::{SnapshotFileError, SnapshotFiles};
use crate::state_store::{StateStore, StateStoreError};
use crate::types::ApplyObserver;
use crate::wal_log_store::{WalLogStore, WalStoreError};

/// The page cache sled gets when an older version's database is imported.
pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// An older version's sled database, under the storage root.
const SLED_DIR: &str = "sled";
/// The raft log's WAL, under the storage root.
const WAL_DIR: &str = "wal";
/// The state machine's snapshot files, under the storage root.
const SNAP_DIR: &str = "snap";
/// Locked while a process has the storage open.
const LOCK_FILE: &str = "LOCK";

/// Where and how to open a node's storage.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The node's storage root; created if missing. Holds `wal/` (raft log
    /// and vote), `snap/` (state machine snapshots) and `LOCK`, nothing else.
    pub dir: PathBuf,
    /// sled's page cache, in bytes, used only while importing an older
    /// version's sled database. See [`DEFAULT_CACHE_CAPACITY`].
    pub cache_capacity: u64,
}

impl StorageOptions {
    /// Options for `dir` with the default cache capacity.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageOptions {
            dir: dir.into(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// A node's storage: the two halves openraft drives (on disk from
/// [`open_storage`], or memory from [`crate::open_memory_storage`] /
/// [`crate::MemoryStorage`]).
pub struct Storage {
    pub log: LogStore,
    pub state: StateStore,
}

/// Opening the storage failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("creating data dir {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("locking {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("data dir {} is in use by another process (it holds {})", dir.display(), lock.display())]
    InUse { dir: PathBuf, lock: PathBuf },
    #[error("starting the flusher thread: {0}")]
    Thread(io::Error),
    #[error("opening the state machine: {0}")]
    State(#[from] EngineError),
    #[error("opening the state machine: {0}")]
    StateStore(#[from] StateStoreError),
    #[error("opening the snapshot: {0}")]
    Snapshot(#[from] SnapshotFileError),
    #[error("opening the raft log: {0}")]
    Wal(#[from] WalStoreError),
    #[error("moving an older version's data out of sled: {0}")]
    Import(#[from] ImportError),
}

/// A durable flush failed, or the flusher is gone. Cloneable: one flush answers
/// many waiters.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    #[error("durable flush failed: {0}")]
    Io(Arc<io::Error>),
    #[error("the flusher thread has stopped")]
    Stopped,
}

impl FlushError {
    /// As the `io::Error` openraft's append callback takes.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            FlushError::Io(e) => io::Error::new(e.kind(), e.to_string()),
            FlushError::Stopped => io::Error::other(self),
        }
    }
}

/// Takes the data dir's lock (an exclusive `flock` of `<dir>/LOCK`), held as
/// long as the returned file is open: two processes writing one WAL would
/// corrupt it.
fn lock_dir(dir: &Path) -> Result<File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| OpenError::Lock {
        path: path.clone(),
        source,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse {
            dir: dir.to_path_buf(),
            lock: path.clone(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
    }
}

/// Opens (or creates) the storage in `opts.dir`. Blocking: call it before the
/// runtime starts or from `spawn_blocking`.
pub fn open_storage(
    opts: StorageOptions,
    observer: Arc<dyn ApplyObserver>,
) -> Result<Storage, OpenError> {
    std::fs::create_dir_all(&opts.dir).map_err(|source| OpenError::CreateDir {
        path: opts.dir.clone(),
        source,
    })?;
    let lock = lock_dir(&opts.dir)?;
    let wal = WalLogStore::open(&opts.dir.join(WAL_DIR))?;
    let snapshots = SnapshotFiles::open(&snapshot_dir(&opts.dir))?.holding(lock);
    import_sled(
        &opts.dir.join(SLED_DIR),
        opts.cache_capacity,
        &wal,
        &snapshots,
    )?;
    let state = StateStore::open_files(snapshots, observer)?;
    Ok(Storage {
        log: LogStore::wal(wal),
        state,
    })
}

/// fsyncs a directory, so that the files created, renamed or removed in it
/// stay so after a crash.
/// The snapshot directory of the storage rooted at `root`.
pub(crate) fn snapshot_dir(root: &Path) -> std::path::PathBuf {
    root.join(SNAP_DIR)
}

pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a flush waiter is told: `Ok` once its writes are durable.
pub(crate) type Waiter = Box<dyn FnOnce(Result<(), FlushError>) + Send>;

/// Handle to the group-commit flusher thread. Clones share the thread; it stops
/// (and is joined) when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    inner: Arc<FlusherThread>,
}

struct FlusherThread {
    tx: Option<mpsc::Sender<Waiter>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for FlusherThread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop after it has answered every
        // waiter already queued.
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        // Joining ourselves would deadlock: only possible if the last handle were
        // dropped inside a waiter, which then runs on the flusher thread.
        if thread.thread().id() != thread::current().id() && thread.join().is_err() {
            tracing::error!("the raft storage flusher thread panicked");
        }
    }
}

impl GroupCommit {
    /// Starts the flusher thread around `flush` (the WAL's `fdatasync` in production,
    /// an instrumented function in tests).
    pub(crate) fn spawn<F>(name: &str, flush: F) -> io::Result<Self>
    where
        F: FnMut() -> io::Result<()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || run_flusher(&rx, flush))?;
        Ok(GroupCommit {
            inner: Arc::new(FlusherThread {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    /// Queues `waiter` for the next flush. It is called exactly once, on the
    /// flusher thread (or right here with `Stopped` if the thread is gone).
    pub(crate) fn submit(&self, waiter: Waiter) {
        let Some(tx) = &self.inner.tx else {
            return waiter(Err(FlushError::Stopped));
        };
        if let Err(mpsc::SendError(waiter)) = tx.send(waiter) {
            waiter(Err(FlushError::Stopped));
        }
    }

    /// Returns once everything written before the call is durable. Blocking:
    /// never call it on an async runtime thread, nor from a waiter.
    pub(crate) fn flush_blocking(&self) -> Result<(), FlushError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Box::new(move |result| {
            let _ = tx.send(result);
        }));
        rx.recv().unwrap_or(Err(FlushError::Stopped))
    }
}

/// The flusher loop: wait for one waiter, take every other waiter queued by then,
/// flush once, answer them all. After a failed flush every later flush fails too:
/// after an fsync error the kernel may have dropped the dirty pages, so a later
/// "successful" fsync would prove nothing.
fn run_flusher<F>(rx: &mpsc::Receiver<Waiter>, mut flush: F)
where
    F: FnMut() -> io::Result<()>,
{
    let mut failed: Option<FlushError> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = match &failed {
            Some(e) => Err(e.clone()),
            None => flush().map_err(|e| FlushError::Io(Arc::new(e))),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, waiters = batch.len(), "raft storage flush failed");
            failed = Some(e.clone());
        }
        for waiter in batch {
            waiter(result.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Events = Arc<Mutex<Vec<String>>>;

    fn push(events: &Events, what: impl Into<String>) {
        events.lock().unwrap().push(what.into());
    }

    /// A flush that reports its start, then blocks until the test releases it.
    fn gated_flush(
        events: Events,
    ) -> (
        impl FnMut() -> io::Result<()> + Send + 'static,
        mpsc::Receiver<()>,
        mpsc::Sender<()>,
    ) {
        let (started_tx, started_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let flush = move || {
            push(&events, "flush-start");
            started_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            push(&events, "flush-end");
            Ok(())
        };
        (flush, started_rx, release_tx)
    }

    fn recording_waiter(events: &Events, name: &str, done: &mpsc::Sender<()>) -> Waiter {
        let (events, name, done) = (events.clone(), name.to_string(), done.clone());
        Box::new(move |result| {
            assert!(result.is_ok());
            push(&events, name);
            done.send(()).unwrap();
        })
    }

    #[test]
    fn waiters_are_answered_only_after_the_flush_and_batched() {
        let events = Events::default();
        let (flush, started, release) = gated_flush(events.clone());
        let gc = GroupCommit::spawn("test-flusher", flush).unwrap();
        let (done_tx, done_rx) = mpsc::channel();

        gc.submit(recording_waiter(&events, "a", &done_tx));
        started.recv().unwrap(); // flush 1 runs, for "a" only, and is held open
        for name in ["b", "c", "d"] {
            gc.submit(recording_waiter(&events, name, &done_tx));
        }
        assert_eq!(
            *events.lock().unwrap(),
            ["flush-start"],
            "no waiter before its flush ends"
        );

        release.send(()).unwrap(); // ends flush 1
        done_rx.recv().unwrap();
        started.recv().unwrap(); // flush 2 started: it covers b, c, d together
        release.send(()).unwrap();
        for _ in 0..3 {
            done_rx.recv().unwrap();
        }
        let expected = [
            "flush-start",
            "flush-end",
            "a",
            "flush-start",
            "flush-end",
            "b",
            "c",
            "d",
        ];
        assert_eq!(*events.lock().unwrap(), expected);
    }

    #[test]
    fn a_failed_flush_fails_every_later_one() {
        let mut calls = 0;
        let gc = GroupCommit::spawn("test-flusher", move || {
            calls += 1;
            if calls == 1 {
                Err(io::Error::other("disk on fire"))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert!(matches!(gc.flush_blocking(), Err(FlushError::Io(_))));
        assert!(matches!(gc.flush_blocking(), Err(FlushError::Io(_))));
    }

    #[test]
    fn dropping_the_last_handle_joins_the_thread_after_answering() {
        let gc = GroupCommit::spawn("test-flusher", || Ok(())).unwrap();
        let (tx, rx) = mpsc::channel();
        gc.submit(Box::new(move |r| tx.send(r.is_ok()).unwrap()));
        drop(gc);
        assert_eq!(rx.try_recv(), Ok(true), "answered before drop returned");
    }
}
