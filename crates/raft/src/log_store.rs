//! The raft log and vote store a node hands to openraft: [`LogStore`], one type for
//! both backends, so that code building a node is the same over either.
//!
//! It only dispatches: to the WAL store on a real node (durable, see
//! `wal_log_store`), or to the in-memory store in tests and simulation (see
//! `mem_log_store`). Which one is fixed when the storage is opened.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};

use crate::mem_log_store::MemLogStore;
use crate::types::{NodeId, TypeConfig};
use crate::wal_log_store::WalLogStore;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// openraft's log storage for a node, over the WAL or (tests, simulation) memory.
/// Clones share the store; a clone is also the log reader openraft hands to
/// replication tasks.
#[derive(Clone)]
pub struct LogStore {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Wal(WalLogStore),
    Memory(MemLogStore),
}

impl LogStore {
    pub(crate) fn wal(store: WalLogStore) -> Self {
        LogStore {
            backend: Backend::Wal(store),
        }
    }

    pub(crate) fn memory(store: MemLogStore) -> Self {
        LogStore {
            backend: Backend::Memory(store),
        }
    }
}

/// `[start, end)` of a range of indexes, or `None` if it holds no index.
pub(crate) fn index_bounds(range: &impl RangeBounds<u64>) -> Option<(u64, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1).map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Excluded(&e) => Bound::Excluded(e),
        Bound::Unbounded => Bound::Unbounded,
    };
    match end {
        Bound::Excluded(e) if e <= start => None,
        _ => Some((start, end)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        match &mut self.backend {
            Backend::Wal(s) => s.try_get_log_entries(range).await,
            Backend::Memory(m) => m.try_get_log_entries(range).await,
        }
    }

    /// The backend's own limit on what one AppendEntries carries.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        match &mut self.backend {
            Backend::Wal(s) => s.limited_get_log_entries(start, end).await,
            Backend::Memory(m) => m.limited_get_log_entries(start, end).await,
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        match &mut self.backend {
            Backend::Wal(s) => s.get_log_state().await,
            Backend::Memory(m) => m.get_log_state().await,
        }
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        match &mut self.backend {
            Backend::Wal(s) => s.save_vote(vote).await,
            Backend::Memory(m) => m.save_vote(vote).await,
        }
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        match &mut self.backend {
            Backend::Wal(s) => s.read_vote().await,
            Backend::Memory(m) => m.read_vote().await,
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        match &mut self.backend {
            Backend::Wal(s) => s.save_committed(committed).await,
            Backend::Memory(m) => m.save_committed(committed).await,
        }
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        match &mut self.backend {
            Backend::Wal(s) => s.read_committed().await,
            Backend::Memory(m) => m.read_committed().await,
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match &mut self.backend {
            Backend::Wal(s) => s.append(entries, callback).await,
            Backend::Memory(m) => m.append(entries, callback).await,
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        match &mut self.backend {
            Backend::Wal(s) => s.truncate(log_id).await,
            Backend::Memory(m) => m.truncate(log_id).await,
        }
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        match &mut self.backend {
            Backend::Wal(s) => s.purge(log_id).await,
            Backend::Memory(m) => m.purge(log_id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_bounds_of_empty_and_edge_ranges() {
        assert_eq!(index_bounds(&(3..3)), None);
        let inverted = (Bound::Included(5), Bound::Excluded(2));
        assert_eq!(index_bounds(&inverted), None);
        assert_eq!(index_bounds(&(2..=4)), Some((2, Bound::Excluded(5))));
        assert_eq!(index_bounds(&(..)), Some((0, Bound::Unbounded)));
        assert_eq!(index_bounds(&(1..=u64::MAX)), Some((1, Bound::Unbounded)));
        let after_max = (Bound::Excluded(u64::MAX), Bound::Unbounded);
        assert_eq!(index_bounds(&after_max), None);
    }
}
