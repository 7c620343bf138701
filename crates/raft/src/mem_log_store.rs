//! An in-memory raft log and vote store: openraft's `RaftLogStorage` over a
//! `BTreeMap` of entries plus the vote, committed and last purged log ids.
//!
//! FOR TESTS AND SIMULATION ONLY: it must never back a real node. Nothing is ever
//! written to disk, and `append` reports the entries durable at once (memory is
//! "durable" for a simulated process: a simulated crash keeps it, see
//! [`crate::MemoryStorage`]). Every call works inline, on the caller's task, with
//! no blocking pool, so a single-threaded simulation stays deterministic. Locks
//! are held only inside one call, never across an `.await`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};

use crate::log_store::index_bounds;
use crate::storage_errors::{
    read_logs as read_err, read_vote as read_vote_err, write_logs as write_err,
    write_vote as write_vote_err,
};
use crate::types::{NodeId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// A failure inside the memory log store, before it is wrapped for openraft.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MemLogError {
    #[error("the memory log lock is poisoned (a panic while holding it)")]
    Poisoned,
}

/// Everything the store keeps.
#[derive(Debug, Default)]
struct MemLog {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl MemLog {
    fn log_state(&self) -> LogState<TypeConfig> {
        let last_in_log = self.entries.values().next_back().map(|e| e.log_id);
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last_in_log.max(self.last_purged),
        }
    }

    fn read(&self, start: u64, end: Bound<u64>) -> Vec<Entry<TypeConfig>> {
        self.entries
            .range((Bound::Included(start), end))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Removes every entry with index `<= index`.
    fn remove_upto(&mut self, index: u64) {
        while let Some(first) = self.entries.first_entry() {
            if *first.key() > index {
                break;
            }
            first.remove();
        }
    }
}

/// The in-memory raft log and vote store. Clones share the maps: a clone is the
/// log reader openraft hands to replication tasks, and a clone given to a new
/// [`crate::LogStore`] is a "restarted" node's log.
#[derive(Clone, Default)]
pub(crate) struct MemLogStore {
    inner: Arc<Mutex<MemLog>>,
}

impl MemLogStore {
    fn lock(&self) -> Result<MutexGuard<'_, MemLog>, MemLogError> {
        self.inner.lock().map_err(|_| MemLogError::Poisoned)
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let Some((start, end)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        Ok(self.lock().map_err(read_err)?.read(start, end))
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = MemLogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        Ok(self.lock().map_err(read_err)?.log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.lock().map_err(write_vote_err)?.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().map_err(read_vote_err)?.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.lock().map_err(write_err)?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().map_err(read_err)?.committed)
    }

    /// Stores the entries and calls `callback` at once: memory is "durable" here.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = self.lock().map_err(write_err)?;
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Deletes `[log_id.index, ..)`.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut log = self.lock().map_err(write_err)?;
        drop(log.entries.split_off(&log_id.index));
        Ok(())
    }

    /// Deletes `(.., log_id.index]` and records `log_id` as the last purged id.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut log = self.lock().map_err(write_err)?;
        log.last_purged = Some(log_id);
        log.remove_upto(log_id.index);
        Ok(())
    }
}
