//! Moves a raft log that an older Roster kept in sled (trees `raft_log` and
//! `raft_meta` of the node's database) into the WAL, once, when a node whose
//! WAL is still empty opens such a database. The WAL is written and synced
//! before the old trees are dropped, so a crash in between leaves either the
//! old log (imported again) or the new one (the old trees are then dropped).

use openraft::{Entry, LogId, Vote};
use serde::de::DeserializeOwned;

use crate::types::{NodeId, TypeConfig};
use crate::wal_log_store::{Imported, WalLogStore, WalStoreError};

const LOG_TREE: &str = "raft_log";
const META_TREE: &str = "raft_meta";

/// A failure while importing the old log.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading the old sled log: {0}")]
    Sled(#[from] sled::Error),
    #[error("decoding the old sled log: {0}")]
    Codec(#[from] bincode::Error),
    #[error(transparent)]
    Wal(#[from] WalStoreError),
}

fn meta<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, ImportError> {
    Ok(tree
        .get(key)?
        .map(|v| bincode::deserialize(&v))
        .transpose()?)
}

/// Imports the old log into `wal` if there is one and `wal` is new; drops the
/// old trees either way. Blocking.
pub(crate) fn import_sled_log(db: &sled::Db, wal: &WalLogStore) -> Result<(), ImportError> {
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
