//! Helpers shared by the storage tests: opening a store in a real directory, an
//! observer that records what it is told, and entry builders.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use openraft::{Entry, EntryPayload, LogId, Membership};
use roster_raft::{open_storage, ApplyObserver, Member, Storage, StorageOptions, TypeConfig};
use roster_state::{Applied, Command, Put};

/// Records every `applied` call and counts snapshot installs.
#[derive(Default)]
pub struct Recorder {
    pub applied: Mutex<Vec<(u64, Command)>>,
    pub installs: AtomicUsize,
}

impl ApplyObserver for Recorder {
    fn applied(&self, index: u64, command: &Command, _applied: &Applied) {
        self.applied.lock().unwrap().push((index, command.clone()));
    }

    fn installed_snapshot(&self) {
        self.installs.fetch_add(1, Ordering::SeqCst);
    }
}

/// Opens the storage in `dir` (a real directory) on the blocking pool. A store
/// dropped just before may still hold the data dir's lock for a moment (a
/// task of it may not have ended yet), so a busy lock is tried again for up
/// to 10 s.
pub async fn open(dir: &Path, observer: Arc<Recorder>) -> Storage {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let opts = StorageOptions {
            dir: dir.to_path_buf(),
            cache_capacity: 8 * 1024 * 1024,
        };
        let observer = observer.clone();
        match tokio::task::spawn_blocking(move || open_storage(opts, observer))
            .await
            .unwrap()
        {
            Ok(storage) => return storage,
            Err(e)
                if e.to_string().contains("in use by another process")
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open {}: {e}", dir.display()),
        }
    }
}

pub fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    openraft::testing::log_id(term, node, index)
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put(Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease: 0,
        prev_kv: false,
        ignore_value: false,
        ignore_lease: false,
    })
}

pub fn normal(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(command),
    }
}

pub fn blank(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Blank,
    }
}

pub fn membership(term: u64, index: u64, voters: &[u64]) -> Entry<TypeConfig> {
    let nodes = voters
        .iter()
        .map(|id| {
            let member = Member {
                name: format!("n{id}"),
                peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + id)],
            };
            (*id, member)
        })
        .collect::<std::collections::BTreeMap<_, _>>();
    let config = vec![voters.iter().copied().collect()];
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(config, nodes)),
    }
}
