//! What is written survives closing and reopening the same directory: log entries
//! with their full log ids, vote, committed and purge point, and the state machine
//! (applied position, membership, keys) as of its current snapshot.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{blank, log_id, membership, normal, open, put, Recorder};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader, RaftSnapshotBuilder, Vote};
use roster_state::{MemEngine, RangeRequest, Response, SnapshotData, StateMachine};
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread")]
async fn log_vote_committed_and_purge_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let written: Vec<_> = (1..=20)
        .map(|i| normal(2, i, put(&format!("k{i}"), "v")))
        .collect();
    {
        let mut s = open(dir.path(), Arc::default()).await;
        s.log.blocking_append(written.clone()).await.unwrap();
        s.log.save_vote(&Vote::new_committed(3, 7)).await.unwrap();
        s.log.save_committed(Some(log_id(2, 1, 15))).await.unwrap();
        s.log.purge(log_id(2, 1, 5)).await.unwrap();
        s.log.truncate(log_id(2, 1, 18)).await.unwrap();
    }

    let mut s = open(dir.path(), Arc::default()).await;
    assert_eq!(
        s.log.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 7))
    );
    assert_eq!(
        s.log.read_committed().await.unwrap(),
        Some(log_id(2, 1, 15))
    );
    let state = s.log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 17)));
    let read = s.log.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        read,
        written[5..17].to_vec(),
        "entries 6..=17, whole log ids and payloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_state_after_purging_everything() {
    let dir = TempDir::new().unwrap();
    {
        let mut s = open(dir.path(), Arc::default()).await;
        s.log
            .blocking_append((1..=3).map(|i| blank(1, i)))
            .await
            .unwrap();
        s.log.purge(log_id(4, 2, 9)).await.unwrap();
    }
    let mut s = open(dir.path(), Arc::default()).await;
    let state = s.log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(4, 2, 9)));
    assert_eq!(state.last_log_id, Some(log_id(4, 2, 9)));
    assert!(s.log.try_get_log_entries(..).await.unwrap().is_empty());
}

fn range_all() -> RangeRequest {
    RangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        ..RangeRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn applied_state_keys_and_snapshot_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let recorder = Arc::new(Recorder::default());
    let built = {
        let mut s = open(dir.path(), recorder.clone()).await;
        let responses = s
            .state
            .apply([
                blank(1, 1),
                membership(1, 2, &[1, 2, 3]),
                normal(1, 3, put("alpha", "1")),
                normal(1, 4, put("beta", "2")),
            ])
            .await
            .unwrap();
        assert!(matches!(responses[0], Response::Done { .. }));
        assert!(matches!(responses[1], Response::Done { .. }));
        assert!(matches!(responses[3], Response::Put { .. }));
        s.state
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    let told: Vec<u64> = recorder
        .applied
        .lock()
        .unwrap()
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        told,
        [3, 4],
        "the observer hears of client commands only, in order"
    );

    let mut s = open(dir.path(), Arc::default()).await;
    let (applied, members) = s.state.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 4)));
    assert_eq!(*members.log_id(), Some(log_id(1, 1, 2)));
    assert_eq!(members.voter_ids().collect::<Vec<_>>(), [1, 2, 3]);
    let keys: Vec<_> = {
        let sm = s.state.shared();
        let sm = sm.read().unwrap();
        sm.range(&range_all())
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect()
    };
    assert_eq!(
        keys,
        [
            (b"alpha".to_vec(), b"1".to_vec()),
            (b"beta".to_vec(), b"2".to_vec())
        ]
    );
    let current = s.state.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.into_inner(), built.snapshot.into_inner());
}

#[tokio::test(flavor = "multi_thread")]
async fn installed_snapshot_replaces_state_and_survives_reopen() {
    let (leader_dir, follower_dir) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut leader = open(leader_dir.path(), Arc::default()).await;
    leader
        .state
        .apply([membership(1, 1, &[1]), normal(1, 2, put("only", "leader"))])
        .await
        .unwrap();
    let snap = leader
        .state
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let recorder = Arc::new(Recorder::default());
    {
        let mut f = open(follower_dir.path(), recorder.clone()).await;
        f.state
            .apply([normal(1, 1, put("stale", "x"))])
            .await
            .unwrap();
        let mut receiving = f.state.begin_receiving_snapshot().await.unwrap();
        *receiving = *snap.snapshot;
        f.state
            .install_snapshot(&snap.meta, receiving)
            .await
            .unwrap();
    }
    assert_eq!(
        recorder.installs.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let mut f = open(follower_dir.path(), Arc::default()).await;
    assert_eq!(
        f.state.applied_state().await.unwrap().0,
        Some(log_id(1, 1, 2))
    );
    let sm = f.state.shared();
    let kvs = sm.read().unwrap().range(&range_all()).unwrap().kvs;
    let keys: Vec<_> = kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, [b"only".to_vec()], "the stale key is gone");
    let current = f.state.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_ids_are_unique_across_restarts() {
    let dir = TempDir::new().unwrap();
    let first = {
        let mut s = open(dir.path(), Arc::default()).await;
        s.state.apply([blank(1, 1)]).await.unwrap();
        s.state.build_snapshot().await.unwrap().meta.snapshot_id
    };
    let mut s = open(dir.path(), Arc::default()).await;
    let second = s.state.build_snapshot().await.unwrap().meta.snapshot_id;
    assert!(
        first.starts_with("1-1-") && second.starts_with("1-1-"),
        "{first} {second}"
    );
    assert_ne!(first, second);
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_survive_bincode_round_trip_with_membership() {
    let dir = TempDir::new().unwrap();
    let entry = membership(7, 1, &[4, 5]);
    {
        let mut s = open(dir.path(), Arc::default()).await;
        s.log.blocking_append([entry.clone()]).await.unwrap();
    }
    let mut s = open(dir.path(), Arc::default()).await;
    let read = s.log.try_get_log_entries(1..=1).await.unwrap();
    assert_eq!(read, std::slice::from_ref(&entry));
    assert!(matches!(read[0].payload, EntryPayload::Membership(_)));
}

/// A data dir of an older version, which kept the raft log and the state
/// machine in sled trees, opens with its log moved into the WAL, its state in a
/// snapshot file at the state's applied position, and the sled directory gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_kept_in_sled_by_an_older_version_moves_into_wal_and_snapshot() {
    let dir = TempDir::new().unwrap();
    let written: Vec<_> = (1..=8)
        .map(|i| normal(2, i, put(&format!("k{i}"), "v")))
        .collect();
    {
        let db = sled::open(dir.path().join("sled")).unwrap();
        let log = db.open_tree("raft_log").unwrap();
        for e in &written {
            log.insert(e.log_id.index.to_be_bytes(), bincode::serialize(e).unwrap())
                .unwrap();
        }
        let meta = db.open_tree("raft_meta").unwrap();
        let put_meta = |k: &str, v: Vec<u8>| meta.insert(k, v).unwrap();
        put_meta(
            "vote",
            bincode::serialize(&Vote::<u64>::new_committed(2, 1)).unwrap(),
        );
        put_meta("committed", bincode::serialize(&log_id(2, 1, 6)).unwrap());
        put_meta("last_purged", bincode::serialize(&log_id(2, 1, 2)).unwrap());
        // The state as the older version stored it: entries 1..=4 applied.
        let state = db.open_tree("state").unwrap();
        for (k, v) in old_state_after(&written[..4]).pairs() {
            state.insert(k, v).unwrap();
        }
        db.flush().unwrap();
    }
    for _reopen in 0..2 {
        let mut s = open(dir.path(), Arc::default()).await;
        assert!(!dir.path().join("sled").exists(), "the sled dir is gone");
        assert_eq!(
            s.log.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(s.log.read_committed().await.unwrap(), Some(log_id(2, 1, 6)));
        let state = s.log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 8)));
        let read = s.log.try_get_log_entries(..).await.unwrap();
        assert_eq!(read, written[2..].to_vec(), "entries 3..=8");
        let (applied, _) = s.state.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 1, 4)));
        let sm = s.state.shared();
        let kvs = sm.read().unwrap().range(&range_all()).unwrap().kvs;
        let keys: Vec<_> = kvs.into_iter().map(|kv| kv.key).collect();
        assert_eq!(keys, [b"k1", b"k2", b"k3", b"k4"]);
        let current = s.state.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id, Some(log_id(2, 1, 4)));
    }
}

/// The engine pairs an older version's sled `state` tree held after applying
/// `entries` (the applied log id under `m/raft/applied`).
fn old_state_after(entries: &[openraft::Entry<roster_raft::TypeConfig>]) -> SnapshotData {
    let mut sm = StateMachine::open(MemEngine::new()).unwrap();
    for e in entries {
        let EntryPayload::Normal(command) = &e.payload else {
            unreachable!("normal entries only")
        };
        let applied = vec![(
            b"raft/applied".to_vec(),
            bincode::serialize(&e.log_id).unwrap(),
        )];
        sm.apply(e.log_id.leader_id.term, command, applied).unwrap();
    }
    sm.snapshot().unwrap()
}

/// A second process cannot open a data dir in use: two writers would corrupt
/// the WAL.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_in_use_is_refused() {
    let dir = TempDir::new().unwrap();
    let _first = open(dir.path(), Arc::default()).await;
    let opts = roster_raft::StorageOptions::new(dir.path());
    let err = tokio::task::spawn_blocking(move || {
        roster_raft::open_storage(opts, Arc::new(common::Recorder::default()))
    })
    .await
    .unwrap()
    .err()
    .expect("the second open fails");
    assert!(
        err.to_string().contains("is in use by another process"),
        "{err}"
    );
}

/// What replication reads for one AppendEntries stops at about 512 KiB (at
/// least one entry, however large), from the cache and from the files alike;
/// a plain read still returns the whole range. openraft gives that RPC one
/// heartbeat interval, and 512 entries of 100 KB never made it.
#[tokio::test(flavor = "multi_thread")]
async fn replication_reads_are_bounded_in_bytes() {
    let dir = TempDir::new().unwrap();
    let value = "v".repeat(100 * 1024);
    let written: Vec<_> = (1..=20)
        .map(|i| normal(1, i, put(&format!("k{i}"), &value)))
        .collect();
    let huge = normal(1, 21, put("huge", &"h".repeat(2 * 1024 * 1024)));
    {
        let mut s = open(dir.path(), Arc::default()).await;
        s.log.blocking_append(written.clone()).await.unwrap();
        s.log.blocking_append([huge.clone()]).await.unwrap();
        // Cached (just appended).
        let sent = s.log.limited_get_log_entries(1, 21).await.unwrap();
        assert_eq!(sent, written[..5].to_vec(), "five 100 KB entries fit");
    }
    // From the files (a fresh cache).
    let mut s = open(dir.path(), Arc::default()).await;
    let sent = s.log.limited_get_log_entries(3, 21).await.unwrap();
    assert_eq!(sent, written[2..7].to_vec());
    let alone = s.log.limited_get_log_entries(21, 22).await.unwrap();
    assert_eq!(alone, vec![huge], "an entry over the budget goes alone");
    let all = s.log.try_get_log_entries(1..21).await.unwrap();
    assert_eq!(all, written);
}
