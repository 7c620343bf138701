//! An in-memory raft log and vote store: openraft's `RaftLogStorage` over a
//! `BTreeMap` of entries plus the vote, committed and last purged log ids.
//!
//! FOR TESTS AND SIMULATION ONLY: it must never back a real node. Nothing is ever
//! written to disk. Like a disk, it has a flush: `append` reports entries durable
//! only when a flush, [`FLUSH_TIME`] later on tokio's clock (a simulated fsync),
//! covers them, and `save_vote` flushes at once. Until then each change has an
//! undo record, and [`MemLogStore::lose_unflushed`] (a crash) replays them, so a
//! restarted node has exactly what was flushed, as after a machine crash. Every
//! call works inline, on the caller's task, with no blocking pool, so a
//! single-threaded simulation stays deterministic. Locks are held only inside
//! one call, never across an `.await`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
pub enum MemLogError {
    #[error("the memory log lock is poisoned (a panic while holding it)")]
    Poisoned,
}

/// How long after an append its flush comes: a simulated fsync.
const FLUSH_TIME: Duration = Duration::from_millis(2);

/// Undoes one change made since the last flush.
#[derive(Debug)]
enum Undo {
    /// Put back what the index held (`None`: nothing).
    Entry(u64, Option<Box<Entry<TypeConfig>>>),
    Committed(Option<LogId<NodeId>>),
    Purged(Option<LogId<NodeId>>),
}

/// Everything the store keeps.
#[derive(Default)]
struct MemLog {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    /// Undo records of the changes since the last flush, oldest first.
    undo: Vec<Undo>,
    /// Appends waiting for the next flush to be reported durable.
    waiting: Vec<LogFlushed<TypeConfig>>,
    /// A flush task is sleeping.
    flush_due: bool,
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
            let (index, entry) = first.remove_entry();
            self.undo.push(Undo::Entry(index, Some(Box::new(entry))));
        }
    }

    /// Makes every change so far durable; the appends it covers, to be told.
    fn flush(&mut self) -> Vec<LogFlushed<TypeConfig>> {
        self.undo.clear();
        self.flush_due = false;
        std::mem::take(&mut self.waiting)
    }

    /// Undoes every change since the last flush; waiting appends are never told.
    fn lose_unflushed(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Entry(index, Some(entry)) => {
                    self.entries.insert(index, *entry);
                }
                Undo::Entry(index, None) => {
                    self.entries.remove(&index);
                }
                Undo::Committed(committed) => self.committed = committed,
                Undo::Purged(purged) => self.last_purged = purged,
            }
        }
        self.waiting.clear();
        self.flush_due = false;
    }
}

/// Tells each append its flush is done.
fn report_flushed(flushed: Vec<LogFlushed<TypeConfig>>) {
    for callback in flushed {
        callback.log_io_completed(Ok(()));
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

    /// A crash: everything since the last flush is gone. Call it before a
    /// node starts again over this log, after the old one is gone.
    pub(crate) fn lose_unflushed(&self) -> Result<(), MemLogError> {
        self.lock()?.lose_unflushed();
        Ok(())
    }

    /// Flushes [`FLUSH_TIME`] from now, unless a flush is already due.
    fn schedule_flush(&self, log: &mut MemLog) {
        if log.flush_due {
            return;
        }
        log.flush_due = true;
        let store = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FLUSH_TIME).await;
            // A poisoned lock leaves the appends unreported, as a failed disk
            // would: openraft then waits on them and the node stops making
            // progress rather than acknowledge what is not durable.
            let flushed = match store.lock() {
                Ok(mut log) => log.flush(),
                Err(_) => return,
            };
            report_flushed(flushed);
        });
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

    /// Durable on return, with everything before it (one flush, as sled's).
    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let flushed = {
            let mut log = self.lock().map_err(write_vote_err)?;
            log.vote = Some(*vote);
            log.flush()
        };
        report_flushed(flushed);
        Ok(())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().map_err(read_vote_err)?.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        let mut log = self.lock().map_err(write_err)?;
        let before = std::mem::replace(&mut log.committed, committed);
        log.undo.push(Undo::Committed(before));
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().map_err(read_err)?.committed)
    }

    /// Stores the entries; `callback` hears of them at the next flush.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut log = self.lock().map_err(write_err)?;
        for entry in entries {
            let index = entry.log_id.index;
            let before = log.entries.insert(index, entry);
            log.undo.push(Undo::Entry(index, before.map(Box::new)));
        }
        log.waiting.push(callback);
        self.schedule_flush(&mut log);
        Ok(())
    }

    /// Deletes `[log_id.index, ..)`.
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut log = self.lock().map_err(write_err)?;
        let removed = log.entries.split_off(&log_id.index);
        for (index, entry) in removed {
            log.undo.push(Undo::Entry(index, Some(Box::new(entry))));
        }
        Ok(())
    }

    /// Deletes `(.., log_id.index]` and records `log_id` as the last purged id.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut log = self.lock().map_err(write_err)?;
        let before = log.last_purged.replace(log_id);
        log.undo.push(Undo::Purged(before));
        log.remove_upto(log_id.index);
        Ok(())
    }
}
