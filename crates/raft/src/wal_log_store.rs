//! The raft log and vote of a real node: openraft's `RaftLogStorage` (storage-v2)
//! over the [`Wal`] in `<data-dir>/wal`. [`crate::LogStore`] wraps it.
//!
//! Entries are the bincode of the whole `openraft::Entry` (full log id and
//! payload). The vote and the last purged log id live in `<wal dir>/meta`,
//! replaced atomically (write, fsync, rename, fsync the dir) on each change:
//! both change rarely. The committed log id is a record in the WAL, written
//! but not synced (openraft allows it to lag).
//!
//! Durability: `append` writes the entries, then hands openraft's callback to the
//! group-commit flusher, which calls it only after an `fdatasync` that began
//! after the write. Recent entries are also kept decoded in memory, so the
//! replication tasks that read an entry right after its append neither touch the
//! file nor decode. Appends and cached reads run inline on the caller's task:
//! they are a `write` into the page cache and a map lookup, and a hop to the
//! blocking pool cost more than the call. Whatever syncs (vote, purge, a
//! truncation that deletes segments) or reads the file runs on the blocking pool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use serde::{Deserialize, Serialize};

use crate::log_store::index_bounds;
use crate::storage::{FlushError, GroupCommit};
use crate::storage_errors::{
    read_logs as read_logs_err, write_logs as write_logs_err, write_vote as write_vote_err,
};
use crate::types::{NodeId, TypeConfig};
use crate::wal::{Wal, WalError, SEGMENT_BYTES};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

const META_FILE: &str = "meta";
const META_TEMP: &str = "meta.tmp";
/// Decoded entries kept for replication reads: at most this many...
const CACHE_ENTRIES: usize = 4_096;
/// ...and about this many bytes (encoded size).
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of entries in one AppendEntries (one entry may be larger: it
/// then goes alone). At the slowest catch-up seen here (a debug build on a
/// loaded machine) this is well inside openraft's 100 ms for the RPC.
const REPLICATION_BYTES: usize = 512 * 1024;

/// A failure inside the log store, before it is wrapped for openraft.
#[derive(Debug, thiserror::Error)]
pub enum WalStoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("WAL encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the WAL lock is poisoned (a panic while holding it)")]
    Poisoned,
}

/// What `<wal dir>/meta` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

struct Shared {
    wal: Wal,
    meta: Meta,
    committed: Option<LogId<NodeId>>,
    last_log_id: Option<LogId<NodeId>>,
    cache: EntryCache,
}

/// The most recent entries, decoded, with their encoded sizes: at most
/// [`CACHE_ENTRIES`] and about [`CACHE_BYTES`]. It holds every entry from its
/// first on (appends add at the end, truncation cuts the end, purging and
/// eviction the front), so it can answer a range that starts inside it.
#[derive(Default)]
struct EntryCache {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

/// The WAL-backed raft log and vote store. Clones share everything; a clone is
/// also the log reader openraft hands to replication tasks.
#[derive(Clone)]
pub(crate) struct WalLogStore {
    dir: PathBuf,
    shared: Arc<Mutex<Shared>>,
    flusher: GroupCommit,
}

/// What the log held when an older version kept it in sled (see
/// `sled_log_import`).
pub(crate) struct Imported {
    pub(crate) vote: Option<Vote<NodeId>>,
    pub(crate) committed: Option<LogId<NodeId>>,
    pub(crate) last_purged: Option<LogId<NodeId>>,
    pub(crate) entries: Vec<Entry<TypeConfig>>,
}

impl WalLogStore {
    /// Opens (or creates) the log in `dir` and starts its flusher thread. Blocking.
    pub(crate) fn open(dir: &Path) -> Result<Self, WalStoreError> {
        let meta = read_meta(dir)?;
        let purged = meta.last_purged.map(|l| l.index);
        let wal = Wal::open(dir, purged, SEGMENT_BYTES)?;
        let committed = wal.committed().map(bincode::deserialize).transpose()?;
        let last_log_id = last_log_id(&wal)?;
        let shared = Arc::new(Mutex::new(Shared {
            wal,
            meta,
            committed,
            last_log_id,
            cache: EntryCache::default(),
        }));
        let flusher =
            GroupCommit::spawn("wal-flusher", sync_fn(shared.clone())).map_err(|source| {
                WalStoreError::Io {
                    path: dir.to_path_buf(),
                    source,
                }
            })?;
        Ok(WalLogStore {
            dir: dir.to_path_buf(),
            shared,
            flusher,
        })
    }

    /// Whether the log is new: no entry, vote or purge recorded.
    pub(crate) fn is_empty(&self) -> Result<bool, WalStoreError> {
        let s = self.lock()?;
        Ok(s.wal.last_index().is_none() && s.meta.vote.is_none() && s.meta.last_purged.is_none())
    }

    /// Writes what an older version's sled log held, durably. Blocking.
    pub(crate) fn import(&self, old: Imported) -> Result<(), WalStoreError> {
        let mut s = self.update_meta(|meta| {
            meta.vote = old.vote;
            meta.last_purged = old.last_purged;
        })?;
        if let Some(p) = old.last_purged {
            s.wal.purge(p.index)?;
        }
        drop(s);
        self.write_entries(old.entries)?;
        if let Some(c) = old.committed {
            self.lock()?.write_committed(c)?;
        }
        self.flusher.flush_blocking()?;
        Ok(())
    }

    /// Changes the meta file's contents and replaces the file durably; returns
    /// the lock, held throughout.
    fn update_meta(
        &self,
        change: impl FnOnce(&mut Meta),
    ) -> Result<MutexGuard<'_, Shared>, WalStoreError> {
        let mut s = self.lock()?;
        let mut meta = s.meta.clone();
        change(&mut meta);
        write_meta(&self.dir, &meta)?;
        s.meta = meta;
        Ok(s)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Shared>, WalStoreError> {
        self.shared.lock().map_err(|_| WalStoreError::Poisoned)
    }

    /// Writes entries to the WAL (not yet durable) and the cache.
    fn write_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(), WalStoreError> {
        let encoded = entries
            .iter()
            .map(|e| Ok((e.log_id.index, bincode::serialize(e)?)))
            .collect::<Result<Vec<_>, WalStoreError>>()?;
        let mut s = self.lock()?;
        s.wal.append(&encoded)?;
        for (entry, (_, bytes)) in entries.into_iter().zip(&encoded) {
            s.last_log_id = Some(entry.log_id);
            s.cache.insert(entry, bytes.len());
        }
        Ok(())
    }

    /// Entries `[start, end)` held, from the cache when it has them all.
    fn cached(
        &self,
        start: u64,
        end: Bound<u64>,
        budget: usize,
    ) -> Result<Option<Vec<Entry<TypeConfig>>>, WalStoreError> {
        let s = self.lock()?;
        Ok(s.cache
            .covering(start.max(s.wal.first_index()), end, budget))
    }

    /// Entries `[start, end)` held, read from the files, as many as fit in
    /// `budget` bytes (at least one).
    fn read_files(
        &self,
        start: u64,
        end: Bound<u64>,
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, WalStoreError> {
        let s = self.lock()?;
        let Some(last) = s.wal.last_index() else {
            return Ok(Vec::new());
        };
        let from = start.max(s.wal.first_index());
        let to = match end {
            Bound::Excluded(e) => e.min(last + 1),
            _ => last + 1,
        };
        let mut fits = Budget::new(budget);
        let mut entries = Vec::new();
        for index in from..to {
            let Some(bytes) = s.wal.read(index)? else {
                continue;
            };
            if !fits.take(bytes.len()) {
                break;
            }
            entries.push(bincode::deserialize(&bytes)?);
        }
        Ok(entries)
    }

    /// Entries `[start, end)` up to `budget` bytes (at least one), from the
    /// cache if it holds them all, else from the files.
    async fn entries(
        &self,
        start: u64,
        end: Bound<u64>,
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, WalStoreError> {
        if let Some(entries) = self.cached(start, end, budget)? {
            return Ok(entries);
        }
        self.blocking(move |this| this.read_files(start, end, budget))
            .await
    }

    fn truncate_blocking(&self, log_id: LogId<NodeId>) -> Result<(), WalStoreError> {
        let mut s = self.lock()?;
        s.wal.truncate(log_id.index)?;
        s.cache.remove_from(log_id.index);
        s.last_log_id = last_log_id(&s.wal)?;
        Ok(())
    }

    fn purge_blocking(&self, log_id: LogId<NodeId>) -> Result<(), WalStoreError> {
        let mut s = self.update_meta(|meta| meta.last_purged = Some(log_id))?;
        s.wal.purge(log_id.index)?;
        s.cache.remove_upto(log_id.index);
        Ok(())
    }

    fn save_vote_blocking(&self, vote: Vote<NodeId>) -> Result<(), WalStoreError> {
        self.update_meta(|meta| meta.vote = Some(vote)).map(drop)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, WalStoreError>
    where
        F: FnOnce(WalLogStore) -> Result<T, WalStoreError> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(this)).await?
    }
}

impl Shared {
    /// Writes the committed log id to the WAL (not synced) and remembers it.
    fn write_committed(&mut self, committed: LogId<NodeId>) -> Result<(), WalStoreError> {
        self.wal.write_committed(bincode::serialize(&committed)?)?;
        self.committed = Some(committed);
        Ok(())
    }
}

impl EntryCache {
    fn insert(&mut self, entry: Entry<TypeConfig>, size: usize) {
        self.entries.insert(entry.log_id.index, (entry, size));
        self.bytes += size;
        while self.entries.len() > CACHE_ENTRIES || self.bytes > CACHE_BYTES {
            match self.entries.pop_first() {
                Some((_, (_, n))) => self.bytes -= n,
                None => break,
            }
        }
    }

    /// Entries `[start, end)` up to `budget` bytes (at least one), if the
    /// cache holds everything from `start` on.
    fn covering(
        &self,
        start: u64,
        end: Bound<u64>,
        budget: usize,
    ) -> Option<Vec<Entry<TypeConfig>>> {
        if matches!(end, Bound::Excluded(e) if e <= start) {
            return Some(Vec::new());
        }
        let first = *self.entries.keys().next()?;
        (first <= start).then(|| {
            let mut fits = Budget::new(budget);
            let range = self.entries.range((Bound::Included(start), end));
            range
                .take_while(|(_, (_, size))| fits.take(*size))
                .map(|(_, (e, _))| e.clone())
                .collect()
        })
    }

    /// Forgets the entries from `index` on (a truncation).
    fn remove_from(&mut self, index: u64) {
        let removed = self.entries.split_off(&index);
        self.bytes -= size_of(&removed);
    }

    /// Forgets the entries up to `index` (a purge).
    fn remove_upto(&mut self, index: u64) {
        let kept = self.entries.split_off(&(index + 1));
        let removed = std::mem::replace(&mut self.entries, kept);
        self.bytes -= size_of(&removed);
    }
}

/// Bytes left for entries read in one go: the first always fits.
struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Budget {
            left: bytes,
            first: true,
        }
    }

    /// Whether an entry of `size` bytes still fits (and takes its room).
    fn take(&mut self, size: usize) -> bool {
        let fits = self.first || size <= self.left;
        if fits {
            self.left = self.left.saturating_sub(size);
            self.first = false;
        }
        fits
    }
}

fn size_of(entries: &BTreeMap<u64, (Entry<TypeConfig>, usize)>) -> usize {
    entries.values().map(|(_, n)| n).sum()
}

/// The log id of the last entry `wal` holds.
fn last_log_id(wal: &Wal) -> Result<Option<LogId<NodeId>>, WalStoreError> {
    match wal.last_index() {
        Some(i) => Ok(read_entry(wal, i)?.map(|e| e.log_id)),
        None => Ok(None),
    }
}

/// The flusher's flush: `fdatasync` of the current segment, taken under the
/// lock and synced outside it, so appends go on while the disk works.
fn sync_fn(shared: Arc<Mutex<Shared>>) -> impl FnMut() -> std::io::Result<()> + Send + 'static {
    move || {
        let handle = match shared.lock() {
            Ok(s) => s.wal.sync_handle(),
            Err(_) => return Err(std::io::Error::other("the WAL lock is poisoned")),
        };
        match handle {
            Some(file) => {
                let began = std::time::Instant::now();
                let synced = file.sync_data();
                roster_metrics::WAL_FSYNC.observe(began.elapsed());
                synced
            }
            None => Ok(()),
        }
    }
}

fn read_entry(wal: &Wal, index: u64) -> Result<Option<Entry<TypeConfig>>, WalStoreError> {
    Ok(wal
        .read(index)?
        .map(|b| bincode::deserialize(&b))
        .transpose()?)
}

fn read_meta(dir: &Path) -> Result<Meta, WalStoreError> {
    let path = dir.join(META_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(bincode::deserialize(&bytes)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Meta::default()),
        Err(source) => Err(WalStoreError::Io { path, source }),
    }
}

/// Replaces the meta file atomically and durably.
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), WalStoreError> {
    let temp = dir.join(META_TEMP);
    let path = dir.join(META_FILE);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WalStoreError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut file = File::create(&temp).map_err(io(&temp))?;
    file.write_all(&bincode::serialize(meta)?)
        .map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, &path).map_err(io(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl RaftLogReader<TypeConfig> for WalLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        self.entries(start, end, usize::MAX)
            .await
            .map_err(read_logs_err)
    }

    /// What replication sends in one AppendEntries: at most
    /// [`REPLICATION_BYTES`] of entries (at least one). openraft gives that
    /// RPC one heartbeat interval (100 ms by default) and, on a timeout, sends
    /// the same range again: a follower catching up over entries of tens of KB
    /// was sent 512 of them at a time, never within the interval, and never
    /// caught up.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        self.entries(start, Bound::Excluded(end), REPLICATION_BYTES)
            .await
            .map_err(read_logs_err)
    }
}

impl RaftLogStorage<TypeConfig> for WalLogStore {
    type LogReader = WalLogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let s = self.lock().map_err(read_logs_err)?;
        let last_purged = s.meta.last_purged;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: s.last_log_id.max(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote = *vote;
        self.blocking(move |this| this.save_vote_blocking(vote))
            .await
            .map_err(write_vote_err)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().map_err(read_logs_err)?.meta.vote)
    }

    /// Written to the WAL at once (a small `write`), not synced: the next
    /// append's sync covers it, and openraft allows it to lag.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let Some(c) = committed else {
            return Ok(());
        };
        let mut s = self.lock().map_err(write_logs_err)?;
        s.write_committed(c).map_err(write_logs_err)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().map_err(read_logs_err)?.committed)
    }

    /// Returns once the entries are written (readable); `callback` is called by
    /// the flusher thread only after an `fdatasync` that began after the write.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.write_entries(entries.into_iter().collect())
            .map_err(write_logs_err)?;
        self.flusher.submit(Box::new(move |result| {
            callback.log_io_completed(result.map_err(FlushError::into_io));
        }));
        Ok(())
    }

    /// Deletes `[log_id.index, ..)`. A cut inside a segment is made durable by
    /// the flush of the append that follows a truncation; deleted segments are
    /// gone durably before this returns.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(move |this| this.truncate_blocking(log_id))
            .await
            .map_err(write_logs_err)
    }

    /// Records `log_id` as the last purged id durably, then deletes `(..,
    /// log_id.index]`.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.blocking(move |this| this.purge_blocking(log_id))
            .await
            .map_err(write_logs_err)
    }
}
