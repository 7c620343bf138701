//! `roster snapshot restore`: the data dir of one member of a new cluster,
//! seeded from a backup.
//!
//! Every member of the new cluster is restored from the same backup with the
//! same `--initial-cluster` and token, so each holds the same state at log id 0
//! with the same membership; started with `roster serve` and the same flags,
//! they elect a leader and go on from the backup's revision. The member and
//! cluster ids are those a new cluster of these flags gets, as with etcd's
//! restore. What the new cluster keeps of the old and what it drops is in
//! `roster_state`'s `restore` module (leases get their whole TTL again).

use std::path::{Path, PathBuf};

use roster_raft::backup::{self, BackupError};
use roster_state::SnapshotSummary;

use crate::config::InitialMember;
use crate::identity::{self, Identity, IdentityError};
use crate::node::{membership_of, StartError};

/// What to restore, and as which member of which new cluster.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The backup file (`roster snapshot save`, `etcdctl snapshot save`).
    pub backup: PathBuf,
    /// Must not exist yet, or be empty.
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: Vec<InitialMember>,
    pub initial_cluster_token: String,
    /// When given, must be the peer URLs `--initial-cluster` lists for `name`.
    pub initial_advertise_peer_urls: Vec<String>,
    /// Accept a file without a SHA-256 (a snapshot file copied from a data dir).
    pub skip_hash_check: bool,
}

/// Why a restore was refused; nothing was written unless the message says so.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("data dir {} is not empty: restore into a new one", .0.display())]
    DataDirInUse(PathBuf),
    // The cause is in the message, not a `source`: the CLI prints the chain
    // of sources, which would say it twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Backup { path: PathBuf, error: BackupError },
    #[error(transparent)]
    Members(#[from] StartError),
    #[error(
        "--initial-advertise-peer-urls {given} differs from the URLs --initial-cluster lists for {name}: {listed}"
    )]
    AdvertisedUrls {
        name: String,
        given: String,
        listed: String,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// What was restored.
#[derive(Debug, Clone)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    pub summary: SnapshotSummary,
}

/// Restores the backup into a new data dir. Blocking (reads, decodes and
/// writes the whole state).
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    check_fresh(&opts.data_dir)?;
    check_advertised(opts)?;
    let (members, member_id) = membership_of(
        &opts.initial_cluster,
        &opts.name,
        &opts.initial_cluster_token,
    )?;
    let ids: Vec<u64> = members.keys().copied().collect();
    let cluster_id = identity::cluster_id(&ids, &opts.initial_cluster_token);
    let backup_err = |error| RestoreError::Backup {
        path: opts.backup.clone(),
        error,
    };
    let bytes = std::fs::read(&opts.backup).map_err(|error| RestoreError::Io {
        path: opts.backup.clone(),
        error,
    })?;
    let restored = backup::read_backup(&bytes, opts.skip_hash_check).map_err(backup_err)?;
    drop(bytes);
    let summary = restored.summary().map_err(backup_err)?;
    let data_dir_err = |error| RestoreError::Backup {
        path: opts.data_dir.clone(),
        error,
    };
    backup::write_restored(&opts.data_dir, restored.data, members).map_err(data_dir_err)?;
    let ident = Identity {
        name: opts.name.clone(),
        member_id,
        cluster_id,
        joined: false,
    };
    identity::check_and_store(&opts.data_dir, &ident)?;
    Ok(Restored {
        member_id,
        cluster_id,
        summary,
    })
}

/// A data dir that holds anything is refused: restoring over a member's data
/// would mix two histories.
fn check_fresh(dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(RestoreError::DataDirInUse(dir.to_path_buf())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(RestoreError::Io {
            path: dir.to_path_buf(),
            error,
        }),
    }
}

fn check_advertised(opts: &RestoreOptions) -> Result<(), RestoreError> {
    if opts.initial_advertise_peer_urls.is_empty() {
        return Ok(());
    }
    let listed = opts
        .initial_cluster
        .iter()
        .find(|m| m.name == opts.name)
        .map(|m| m.peer_urls.clone())
        .unwrap_or_default();
    let mut given = opts.initial_advertise_peer_urls.clone();
    let mut sorted = listed.clone();
    given.sort();
    sorted.sort();
    if listed.is_empty() || given == sorted {
        // An unlisted name is refused by `membership_of`, naming the list.
        return Ok(());
    }
    Err(RestoreError::AdvertisedUrls {
        name: opts.name.clone(),
        given: opts.initial_advertise_peer_urls.join(","),
        listed: listed.join(","),
    })
}
