//! Moves what an older Roster kept in sled (`<root>/sled`) into today's
//! layout, once, then removes the sled database:
//!
//! - the raft log (trees `raft_log` and `raft_meta`) into the WAL, when the
//!   WAL is still empty;
//! - the state machine (tree `state`) into a snapshot file at the state's
//!   applied log id; the log entries after it stay in the log and are
//!   re-applied at start, as after any restart.
//!
//! Everything is written and synced before the sled directory is removed, so a
//! crash in between leaves the old database, imported again at the next start
//! (the state import then writes the same snapshot again; the log import finds
//! its trees dropped or the WAL already filled).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use openraft::{Entry, LogId, Vote};
use roster_state::{MemEngine, SnapshotData, StateMachine};
use serde::de::DeserializeOwned;

use crate::snapshot_files::{SnapshotFileError, SnapshotFiles};
use crate::state_store::{snapshot_meta, StateStoreError};
use crate::types::{NodeId, TypeConfig};
use crate::wal_log_store::{Imported, WalLogStore, WalStoreError};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";
const STATE_TREE: &str = "state";

/// A failure while importing the old log.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("opening the older version's sled database in {}: {source}", path.display())]
    Open { path: PathBuf, source: sled::Error },
    #[error("reading the older version's sled database: {0}")]
    Sled(#[from] sled::Error),
    #[error("decoding the old sled log: {0}")]
    Codec(#[from] bincode::Error),
    #[error(transparent)]
    Wal(#[from] WalStoreError),
    #[error("reading the old sled state machine: {0}")]
    State(#[from] StateStoreError),
    #[error("writing the old state as a snapshot: {0}")]
    Snapshot(#[from] SnapshotFileError),
    #[error("removing {} after the import: {source}", path.display())]
    Remove { path: PathBuf, source: io::Error },
}

/// Imports an older version's sled database in `sled_dir`, if there is one,
/// into `wal` and the snapshot files `snapshots`, then removes it. Blocking.
pub(crate) fn import_sled(
    sled_dir: &Path,
    cache_capacity: u64,
    wal: &WalLogStore,
    snapshots: &SnapshotFiles,
) -> Result<(), ImportError> {
    if !sled_dir.exists() {
        return Ok(());
    }
    let db = sled::Config::new()
        .path(sled_dir)
        .cache_capacity(cache_capacity)
        .open()
        .map_err(|source| ImportError::Open {
            path: sled_dir.to_path_buf(),
            source,
        })?;
    import_sled_log(&db, wal)?;
    import_sled_state(&db, snapshots)?;
    drop(db);
    let remove_err = |source| ImportError::Remove {
        path: sled_dir.to_path_buf(),
        source,
    };
    fs::remove_dir_all(sled_dir).map_err(remove_err)?;
    if let Some(parent) = sled_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::storage::fsync_dir(parent).map_err(remove_err)?;
    }
    tracing::info!(
        "moved the data of an older version out of {}",
        sled_dir.display()
    );
    Ok(())
}

/// Writes the `state` tree as the current snapshot, if it holds anything.
fn import_sled_state(db: &sled::Db, snapshots: &SnapshotFiles) -> Result<(), ImportError> {
    if !db
        .tree_names()
        .iter()
        .any(|n| &n[..] == STATE_TREE.as_bytes())
    {
        return Ok(());
    }
    let pairs = db
        .open_tree(STATE_TREE)?
        .iter()
        .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<Vec<_>, _>>()?;
    if pairs.is_empty() {
        return Ok(());
    }
    let data = SnapshotData::from_pairs(pairs);
    let sm = StateMachine::open(MemEngine::from_snapshot(data.clone()))
        .map_err(StateStoreError::from)?;
    let meta = snapshot_meta(&sm, snapshots.next_counter())?;
    tracing::info!(applied = ?meta.last_log_id, "moving the state machine from sled into a snapshot");
    snapshots.save(&meta, &data.encode())?;
    Ok(())
}

fn meta<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, ImportError> {
    Ok(tree
        .get(key)?
        .map(|v| bincode::deserialize(&v))
        .transpose()?)
}

/// Imports the old log into `wal` if there is one and `wal` is new; drops the
/// old trees either way. Blocking.
fn import_sled_log(db: &sled::Db, wal: &WalLogStore) -> Result<(), ImportError> {
    let names = db.tree_names();
    if !names
        .iter()
        .any(|n| &n[..] == LOG_TREE.as_bytes() || &n[..] == META_TREE.as_bytes())
    {
        return Ok(());
    }
    if wal.is_empty()? {
        let log = db.open_tree(LOG_TREE)?;
        let meta_tree = db.open_tree(META_TREE)?;
        let vote: Option<Vote<NodeId>> = meta(&meta_tree, b"vote")?;
        let committed: Option<LogId<NodeId>> = meta(&meta_tree, b"committed")?;
        let last_purged: Option<LogId<NodeId>> = meta(&meta_tree, b"last_purged")?;
        let entries = log
            .iter()
            .values()
            .map(|v| Ok(bincode::deserialize::<Entry<TypeConfig>>(&v?)?))
            .collect::<Result<Vec<_>, ImportError>>()?;
        let entries = entries
            .into_iter()
            .filter(|e| last_purged.is_none_or(|p| e.log_id.index > p.index))
            .collect();
        tracing::info!("moving the raft log from sled into the WAL");
        wal.import(Imported {
            vote,
            committed,
            last_purged,
            entries,
        })?;
    }
    db.drop_tree(LOG_TREE)?;
    db.drop_tree(META_TREE)?;
    Ok(())
}
