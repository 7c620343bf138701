//! The raft log and vote, in sled: openraft's `RaftLogStorage` (storage-v2). A real
//! node's log; [`crate::LogStore`] wraps it.
//!
//! Entries live in the `raft_log` tree under their index as a big-endian u64 (so
//! byte order is index order), each value the bincode of the whole
//! `openraft::Entry` (the full log id: term, leader node id, index). The vote, the
//! committed log id and the last purged log id live in the `raft_meta` tree.
//!
//! Durability: `append` writes the entries, then hands openraft's callback to the
//! group-commit flusher, which calls it only after a durable flush that started
//! after the write; `save_vote` and `purge` wait for such a flush before returning.
//! Every sled call runs on tokio's blocking pool, never on a runtime thread.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::log_store::index_bounds;
use crate::storage::{FlushError, GroupCommit};
use crate::storage_errors::{
    read_logs as read_logs_err, read_vote as read_vote_err, write_logs as write_logs_err,
    write_vote as write_vote_err,
};
use crate::types::{NodeId, TypeConfig};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// A failure inside the log store, before it is wrapped for openraft.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogStoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error(transparent)]
    Flush(#[from] FlushError),
    #[error("blocking task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The sled-backed raft log and vote store. Clones share the trees; a clone is
/// also the log reader openraft hands to replication tasks.
#[derive(Clone)]
pub(crate) struct SledLogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: GroupCommit,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LogStoreError> {
    Ok(bincode::serialize(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, LogStoreError> {
    Ok(bincode::deserialize(bytes)?)
}

/// Runs blocking sled work on tokio's blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, LogStoreError>
where
    F: FnOnce() -> Result<T, LogStoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

impl SledLogStore {
    /// Opens the log trees of `db`. Blocking.
    pub(crate) fn open(db: &sled::Db, flusher: GroupCommit) -> Result<Self, sled::Error> {
        Ok(SledLogStore {
            log: db.open_tree(LOG_TREE)?,
            meta: db.open_tree(META_TREE)?,
            flusher,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, LogStoreError> {
        self.meta.get(key)?.map(|v| decode(&v)).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), LogStoreError> {
        self.meta.insert(key, encode(value)?)?;
        Ok(())
    }

    fn read_entries(
        &self,
        start: u64,
        end: Bound<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, LogStoreError> {
        let upper = end.map(index_key);
        self.log
            .range((Bound::Included(index_key(start)), upper))
            .map(|item| decode(&item?.1))
            .collect()
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, LogStoreError> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta(LAST_PURGED_KEY)?;
        let last_entry: Option<Entry<TypeConfig>> =
            self.log.last()?.map(|(_, v)| decode(&v)).transpose()?;
        let last_in_log = last_entry.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_in_log.max(last_purged),
        })
    }

    fn insert_entries(&self, entries: &[Entry<TypeConfig>]) -> Result<(), LogStoreError> {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), encode(entry)?);
        }
        // One atomic batch: a crash leaves all of these entries or none, no hole.
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Removes every entry with index in `[start, end)`.
    fn remove_entries(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), LogStoreError> {
        let mut batch = sled::Batch::default();
        for key in self
            .log
            .range((start.map(index_key), end.map(index_key)))
            .keys()
        {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), LogStoreError> {
        // Record the purge point first: a crash in between leaves extra entries
        // below it (harmless), never a log state that forgot the purge.
        self.put_meta(LAST_PURGED_KEY, log_id)?;
        self.remove_entries(Bound::Unbounded, Bound::Included(log_id.index))
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        let this = self.clone();
        blocking(move || this.read_entries(start, end))
            .await
            .map_err(read_logs_err)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let this = self.clone();
        blocking(move || this.log_state())
            .await
            .map_err(read_logs_err)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let (this, vote) = (self.clone(), *vote);
        blocking(move || this.put_meta(VOTE_KEY, &vote))
            .await
            .map_err(write_vote_err)?;
        self.flusher
            .flush()
            .await
            .map_err(|e| write_vote_err(LogStoreError::from(e)))
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        let this = self.clone();
        blocking(move || this.get_meta(VOTE_KEY))
            .await
            .map_err(read_vote_err)
    }

    /// Not flushed on its own: openraft allows the committed id to lag; the next
    /// durable flush (any append or vote) covers it.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let this = self.clone();
        blocking(move || match committed {
            Some(c) => this.put_meta(COMMITTED_KEY, &c),
            None => this
                .meta
                .remove(COMMITTED_KEY)
                .map(drop)
                .map_err(Into::into),
        })
        .await
        .map_err(write_logs_err)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        let this = self.clone();
        blocking(move || this.get_meta(COMMITTED_KEY))
            .await
            .map_err(read_logs_err)
    }

    /// Returns once the entries are written (readable); `callback` is called by
    /// the flusher thread only after a durable flush that began after the write.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let this = self.clone();
        blocking(move || this.insert_entries(&entries))
            .await
            .map_err(write_logs_err)?;
        self.flusher.submit(Box::new(move |result| {
            callback.log_io_completed(result.map_err(FlushError::into_io));
        }));
        Ok(())
    }

    /// Deletes `[log_id.index, ..)`. Not flushed on its own: the append that
    /// follows a truncation is flushed before it is acknowledged, and sled
    /// recovers writes in order, so the truncation is durable by then.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let this = self.clone();
        blocking(move || this.remove_entries(Bound::Included(log_id.index), Bound::Unbounded))
            .await
            .map_err(write_logs_err)
    }

    /// Deletes `(.., log_id.index]` and records `log_id` as the last purged id,
    /// durably before returning (purges are rare: one per snapshot).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let this = self.clone();
        blocking(move || this.purge_upto(&log_id))
            .await
            .map_err(write_logs_err)?;
        self.flusher
            .flush()
            .await
            .map_err(|e| write_logs_err(LogStoreError::from(e)))
    }
}
