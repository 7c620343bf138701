//! Opens a node's storage and makes its writes durable.
//!
//! A node keeps two things on disk: the raft log and vote in the write-ahead log
//! (`<dir>/wal`, see `wal` and `wal_log_store`), and the state machine with its
//! current snapshot in one sled database (`<dir>/sled`). Durability of what
//! raft acknowledges rests on the WAL alone: an append is reported only after
//! an `fdatasync` of it. The state machine is not synced per entry: it may lag
//! the log after a crash and is caught up by replaying the log. Its sled
//! database is synced when a snapshot is built, before openraft may purge the
//! log entries the snapshot covers (`StateStore::build_snapshot`), when a
//! snapshot is installed, and by sled's own background flush.
//!
//! "Durable" for sled means more than sled's `flush`: sled 0.34 syncs its data
//! file with `sync_file_range`, which covers neither the drive cache nor file
//! metadata, writes large values to `blobs/<lsn>` files without syncing them, and
//! never syncs its `conf` file or the directory. [`DurableFlush`] follows sled's
//! flush with an `fsync` of the data file (`<dir>/sled/db`), of every blob not
//! synced before, and of the directories, through handles of our own.
//!
//! [`GroupCommit`] runs flushes on a dedicated thread (one for the WAL, one for
//! sled): every waiter queued while one flush runs is covered by the next single
//! flush (group commit), and no waiter is told "durable" before the flush that
//! covers it returned.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use roster_state::EngineError;

use crate::log_store::LogStore;
use crate::sled_log_import::{import_sled_log, ImportError};
use crate::state_store::StateStore;
use crate::types::ApplyObserver;
use crate::wal_log_store::{WalLogStore, WalStoreError};

/// The cache size callers should use unless they know better: sled's own default
/// (1 GiB) costs several GiB of RSS.
pub const DEFAULT_CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// The state machine's sled database, under the storage root.
const SLED_DIR: &str = "sled";
/// The raft log's WAL, under the storage root.
const WAL_DIR: &str = "wal";
/// sled 0.34 keeps all its pages in this one file inside its dir.
const SLED_DATA_FILE: &str = "db";
/// sled's config file, written once at creation and never synced by sled.
const SLED_CONF_FILE: &str = "conf";
/// sled writes values too large for a log segment here, one file per LSN, unsynced.
const SLED_BLOB_DIR: &str = "blobs";

/// Where and how to open a node's storage.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The node's storage root; created if missing. Holds `sled/` (state
    /// machine) and `wal/` (raft log and vote), nothing else.
    pub dir: PathBuf,
    /// sled's page cache, in bytes. See [`DEFAULT_CACHE_CAPACITY`].
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

/// A node's storage: the two halves openraft drives, over the same backend (the
/// node's sled database from [`open_storage`], or memory from
/// [`crate::open_memory_storage`] / [`crate::MemoryStorage`]).
pub struct Storage {
    pub log: LogStore,
    pub state: StateStore,
}

/// Opening the storage failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("creating data dir {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("opening sled database in {}: {source}", path.display())]
    Sled { path: PathBuf, source: sled::Error },
    #[error("syncing {}: {source}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("starting the flusher thread: {0}")]
    Thread(io::Error),
    #[error("opening a sled tree: {0}")]
    Tree(#[from] sled::Error),
    #[error("opening the state machine: {0}")]
    State(#[from] EngineError),
    #[error("opening the raft log: {0}")]
    Wal(#[from] WalStoreError),
    #[error("moving the raft log out of sled: {0}")]
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

/// Opens (or creates) the storage in `opts.dir`. Blocking: call it before the
/// runtime starts or from `spawn_blocking`.
pub fn open_storage(
    opts: StorageOptions,
    observer: Arc<dyn ApplyObserver>,
) -> Result<Storage, OpenError> {
    let sled_dir = opts.dir.join(SLED_DIR);
    let db = open_db(&sled_dir, opts.cache_capacity)?;
    let mut durable = DurableFlush::open(db.clone(), &sled_dir)?;
    let flusher =
        GroupCommit::spawn("sled-flusher", move || durable.flush()).map_err(OpenError::Thread)?;
    let wal = WalLogStore::open(&opts.dir.join(WAL_DIR))?;
    import_sled_log(&db, &wal)?;
    let state = StateStore::open_sled(&db, flusher, observer)?;
    Ok(Storage {
        log: LogStore::wal(wal),
        state,
    })
}

fn open_db(dir: &Path, cache_capacity: u64) -> Result<sled::Db, OpenError> {
    std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    // Never `temporary(true)`: sled skips syncing in that mode.
    sled::Config::new()
        .path(dir)
        .cache_capacity(cache_capacity)
        .open()
        .map_err(|source| OpenError::Sled {
            path: dir.to_path_buf(),
            source,
        })
}

/// sled's flush plus the fsyncs sled leaves out. Owned by the flusher thread.
pub(crate) struct DurableFlush {
    db: sled::Db,
    /// Our own handle of `<dir>/db`. sled locks that file with `flock` (fs2), which
    /// belongs to sled's open file description, so opening and closing another
    /// handle does not touch the lock (unlike POSIX `fcntl` locks).
    data_file: File,
    dir: File,
    blob_dir: PathBuf,
    /// Blob files already fsynced; blobs are written once and never modified.
    synced_blobs: BTreeSet<OsString>,
}

impl DurableFlush {
    /// Opens the handles and syncs, once, what sled created without syncing: the
    /// config file, the data dir and the data dir's own entry in its parent.
    fn open(db: sled::Db, dir: &Path) -> Result<Self, OpenError> {
        let sync_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Sync { path, source }
        };
        let data_path = dir.join(SLED_DATA_FILE);
        let data_file = File::open(&data_path).map_err(sync_err(&data_path))?;
        let conf_path = dir.join(SLED_CONF_FILE);
        fsync_path(&conf_path).map_err(sync_err(&conf_path))?;
        let dir_file = File::open(dir).map_err(sync_err(dir))?;
        dir_file.sync_all().map_err(sync_err(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_path(parent).map_err(sync_err(parent))?;
        }
        Ok(DurableFlush {
            db,
            data_file,
            dir: dir_file,
            blob_dir: dir.join(SLED_BLOB_DIR),
            synced_blobs: BTreeSet::new(),
        })
    }

    /// Returns once every write made to the database before the call is on disk.
    /// Blocking.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        self.data_file.sync_all()?;
        self.sync_new_blobs()?;
        // Covers entries sled added or renamed in the dir (snapshot files).
        self.dir.sync_all()
    }

    fn sync_new_blobs(&mut self) -> io::Result<()> {
        let mut present = BTreeSet::new();
        let mut synced_any = false;
        for entry in std::fs::read_dir(&self.blob_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if !self.synced_blobs.contains(&name) {
                match fsync_path(&entry.path()) {
                    Ok(()) => synced_any = true,
                    // sled's GC removed it meanwhile: nothing left to sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if synced_any {
            fsync_path(&self.blob_dir)?;
        }
        Ok(())
    }
}

fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
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
    /// Starts the flusher thread around `flush` (a [`DurableFlush`] in production,
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

    /// Returns once everything written before the call is durable.
    pub(crate) async fn flush(&self) -> Result<(), FlushError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move |result| {
            // The receiver is gone only if our caller was cancelled: nobody to tell.
            let _ = tx.send(result);
        }));
        rx.await.unwrap_or(Err(FlushError::Stopped))
    }

    /// [`Self::flush`] for synchronous callers. Never call it on an async runtime
    /// thread, nor from a waiter.
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
    fn durable_flush_syncs_the_blobs_sled_leaves_unsynced() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = open_db(dir.path(), DEFAULT_CACHE_CAPACITY).unwrap();
        let mut durable = DurableFlush::open(db.clone(), dir.path()).unwrap();
        // Over sled's blob threshold (segment size 512 KiB / 4): stored in blobs/.
        db.insert(b"big", vec![7u8; 256 * 1024]).unwrap();
        durable.flush().unwrap();
        assert!(
            !durable.synced_blobs.is_empty(),
            "the blob was found and synced"
        );
        let synced = durable.synced_blobs.clone();
        durable.flush().unwrap();
        assert_eq!(durable.synced_blobs, synced, "blobs are synced once");
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
