//! The in-memory storage (tests and simulation only): openraft's storage
//! conformance suite, a restart that keeps everything written, and a crash
//! that loses what the log had not flushed.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{blank, log_id, membership, normal, put, Recorder};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, RaftLogReader, RaftSnapshotBuilder, StorageError, StorageIOError, Vote};
use roster_raft::{
    open_memory_storage, LogStore, MemoryStorage, NodeId, StateStore, Storage, TypeConfig,
};
use roster_state::RangeRequest;

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateStore> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateStore), StorageError<NodeId>> {
        let observer = Arc::new(Recorder::default());
        let storage =
            open_memory_storage(observer).map_err(|e| StorageIOError::write(AnyError::error(e)))?;
        Ok(((), storage.log, storage.state))
    }
}

/// Runs on a plain thread: the suite builds its own tokio runtime per case.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(MemoryBuilder).unwrap();
}

fn recorder() -> Arc<Recorder> {
    Arc::default()
}

fn keys(storage: &Storage) -> Vec<Vec<u8>> {
    let all = RangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        ..RangeRequest::default()
    };
    let sm = storage.state.shared();
    let kvs = sm.read().unwrap().range(&all).unwrap().kvs;
    kvs.into_iter().map(|kv| kv.key).collect()
}

/// What a node stored survives dropping it and opening the same `MemoryStorage`
/// again, on a current-thread runtime (as in a simulation).
#[tokio::test(flavor = "current_thread")]
async fn reopening_keeps_log_vote_state_and_snapshot() {
    let memory = MemoryStorage::new();
    let built = {
        let mut s = memory.open(recorder()).unwrap();
        s.log
            .blocking_append([
                blank(1, 1),
                membership(1, 2, &[1]),
                normal(1, 3, put("k", "v")),
            ])
            .await
            .unwrap();
        s.log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        s.log.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        let entries = s.log.try_get_log_entries(1..=3).await.unwrap();
        s.state.apply(entries).await.unwrap();
        s.log.purge(log_id(1, 1, 1)).await.unwrap();
        s.state.build_snapshot().await.unwrap()
    };

    let mut s = memory.open(recorder()).unwrap();
    let log_state = s.log.get_log_state().await.unwrap();
    assert_eq!(log_state.last_purged_log_id, Some(log_id(1, 1, 1)));
    assert_eq!(log_state.last_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(s.log.try_get_log_entries(..).await.unwrap().len(), 2);
    assert_eq!(
        s.log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(s.log.read_committed().await.unwrap(), Some(log_id(1, 1, 3)));
    assert_eq!(
        s.state.applied_state().await.unwrap().0,
        Some(log_id(1, 1, 3))
    );
    assert_eq!(keys(&s), [b"k".to_vec()]);
    let current = s.state.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    let again = s.state.build_snapshot().await.unwrap();
    assert_ne!(again.meta.snapshot_id, built.meta.snapshot_id);
}

/// Two `MemoryStorage`s share nothing.
#[tokio::test(flavor = "current_thread")]
async fn separate_memory_storages_are_independent() {
    let mut a = open_memory_storage(recorder()).unwrap();
    let b = open_memory_storage(recorder()).unwrap();
    a.state
        .apply([normal(1, 1, put("only-a", "1"))])
        .await
        .unwrap();
    assert_eq!(keys(&a), [b"only-a".to_vec()]);
    assert!(keys(&b).is_empty());
}

/// Appends `entries` on a task of its own, which waits for their flush, and
/// lets it run up to that wait.
async fn append_unflushed(log: &LogStore, entries: Vec<openraft::Entry<TypeConfig>>) {
    let mut log = log.clone();
    tokio::spawn(async move { log.blocking_append(entries).await });
    tokio::task::yield_now().await;
}

/// A crash loses what the log had not flushed, and only that: an append is
/// durable once its flush came (2 ms of tokio time later), the vote at once,
/// together with every append before it. The flush task cannot run between
/// an unflushed append and the crash: on this one-thread runtime the test
/// never yields there (the store's calls finish without waiting).
/// Drops the node's storage, loses what was not flushed, opens it again;
/// the last log id then.
async fn crash(memory: &MemoryStorage, s: Storage) -> (Storage, Option<openraft::LogId<NodeId>>) {
    drop(s);
    memory.lose_unflushed().unwrap();
    let mut s = memory.open(recorder()).unwrap();
    let last = s.log.get_log_state().await.unwrap().last_log_id;
    (s, last)
}

#[tokio::test(flavor = "current_thread")]
async fn a_crash_loses_what_the_log_had_not_flushed() {
    let memory = MemoryStorage::new();
    let mut s = memory.open(recorder()).unwrap();
    s.log
        .blocking_append([blank(1, 1), membership(1, 2, &[1])])
        .await
        .unwrap();
    append_unflushed(&s.log, vec![normal(1, 3, put("lost", "1"))]).await;
    s.log.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
    let (mut s, last) = crash(&memory, s).await;
    assert_eq!(last, Some(log_id(1, 1, 2)), "the unflushed append is gone");
    assert_eq!(s.log.read_committed().await.unwrap(), None);

    append_unflushed(&s.log, vec![normal(1, 3, put("kept", "1"))]).await;
    s.log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    let (mut s, last) = crash(&memory, s).await;
    assert_eq!(last, Some(log_id(1, 1, 3)), "the vote flushed it");
    assert_eq!(
        s.log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    s.log.truncate(log_id(1, 1, 2)).await.unwrap();
    let (_, last) = crash(&memory, s).await;
    assert_eq!(
        last,
        Some(log_id(1, 1, 3)),
        "an unflushed truncation is undone"
    );
}
