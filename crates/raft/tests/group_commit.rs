//! Appends are acknowledged only once durable.
//!
//! The ordering itself (no callback before the flush that covers it returns; one
//! flush per group of waiters) is tested deterministically by the unit tests of
//! `storage.rs`, with an instrumented flush. Here, against the real WAL: appends
//! from many tasks (taking turns, as raft appends in index order) all get their
//! callbacks, and every acknowledged entry and the vote survive a crash of the
//! process right after the acknowledgements (`abort`: no destructors, nothing
//! written or synced on the way out).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command as Process;
use std::sync::Arc;

use common::{blank, log_id, open};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{RaftLogReader, Vote};
use roster_raft::Storage;
use tempfile::TempDir;

const TASKS: u64 = 32;
const PER_TASK: u64 = 25;
const CHILD_ENV: &str = "ROSTER_RAFT_CRASH_CHILD_DIR";

/// Appends `TASKS * PER_TASK` entries from concurrent tasks, one entry per append,
/// each task on its own clone of the store, and waits for every callback. Returns
/// the open storage.
async fn concurrent_appends(dir: &std::path::Path) -> Storage {
    let mut s = open(dir, Arc::default()).await;
    // The vote first: a flush after the appends would cover them all and hide a
    // missing append flush from the crash test.
    s.log.save_vote(&Vote::new(9, 3)).await.unwrap();
    // Raft appends in index order: the tasks take turns for the next index.
    let next = Arc::new(tokio::sync::Mutex::new(1u64));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let mut log = s.log.clone();
            let next = next.clone();
            tokio::spawn(async move {
                for _ in 0..PER_TASK {
                    let mut index = next.lock().await;
                    log.blocking_append([blank(1, *index)]).await.unwrap();
                    *index += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    s
}

async fn assert_all_present(dir: &std::path::Path) {
    let mut s = open(dir, Arc::default()).await;
    let entries = s.log.try_get_log_entries(..).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    let missing: Vec<u64> = (1..=TASKS * PER_TASK)
        .filter(|i| indexes.binary_search(i).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged entries lost: {missing:?}",
        missing.len()
    );
    assert_eq!(indexes.len() as u64, TASKS * PER_TASK);
    assert_eq!(entries[0].log_id, log_id(1, 1, 1));
    assert_eq!(s.log.read_vote().await.unwrap(), Some(Vote::new(9, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_acknowledged_and_readable_after_reopen() {
    let dir = TempDir::new().unwrap();
    drop(concurrent_appends(dir.path()).await);
    assert_all_present(dir.path()).await;
}

/// The child half of the crash test: does nothing unless started by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let _open = concurrent_appends(std::path::Path::new(&dir)).await;
    std::process::abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_appends_survive_a_crash() {
    let dir = TempDir::new().unwrap();
    let status = Process::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .status()
        .unwrap();
    // SIGABRT (6): the child got through every acknowledgement, then crashed.
    assert_eq!(status.signal(), Some(6), "child: {status}");
    assert_all_present(dir.path()).await;
}
