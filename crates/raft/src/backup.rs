//! Backups: the state machine of one moment as one self-checking file, and the
//! data dir of a new cluster built from one.
//!
//! A backup is what `Maintenance.Snapshot` streams and what `etcdctl snapshot
//! save` and `roster snapshot save` write:
//!
//! ```text
//! "RSTRBAK1" | snapshot length (u64 LE) | snapshot | zeros to a multiple of 512 | SHA-256 of all before
//! ```
//!
//! where the snapshot is exactly a snapshot file of a data dir (see
//! `snapshot_files`: magic, meta, data, CRC-32). The trailing SHA-256 is etcd's
//! convention: etcd's server ends its snapshot stream with the hash of what
//! came before, and etcd's restore looks for it where the length is 32 past a
//! multiple of 512. The padding keeps that true, so etcd's tools see a hashed
//! file (which they then cannot open: it is not a bbolt database).
//!
//! A snapshot file copied out of a data dir (`<data-dir>/snap/*.snap`) also
//! restores, but it has no SHA-256, so only with the hash check skipped, as
//! etcd asks for a database copied out of its data dir.
//!
//! Restoring writes the snapshot file a node loads at start, and nothing else:
//! its applied position is log id 0 (where `Raft::initialize` puts the first
//! entry of a new cluster) and its membership is the new cluster's, so openraft
//! starts every restored member as initialized, with the same state and the same
//! membership, and they elect a leader as any cluster does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::SnapshotMeta;
use openraft::{LogId, Membership, StoredMembership};
use roster_state::{SnapshotData, SnapshotSummary};
use sha2::{Digest, Sha256};

use crate::snapshot_files::{self, SnapshotFileError, SnapshotFiles};
use crate::state_store::{encode, snapshot_meta, StateStoreError, APPLIED_META, MEMBERSHIP_META};
use crate::types::{Member, NodeId};
use crate::SharedState;

const MAGIC: &[u8; 8] = b"RSTRBAK1";
/// Bytes of the trailing SHA-256.
pub const HASH_LEN: usize = 32;
/// The body before the hash is padded to a multiple of this (etcd's check).
const PAD_TO: usize = 512;

type Meta = SnapshotMeta<NodeId, Member>;

/// Why a backup could not be made, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Damaged(String),
    #[error(
        "a snapshot file copied from a data dir has no SHA-256 to check: \
         restore it with --skip-hash-check"
    )]
    NoHash,
    #[error(transparent)]
    State(#[from] StateStoreError),
    #[error(transparent)]
    File(#[from] SnapshotFileError),
    #[error(transparent)]
    Engine(#[from] roster_state::EngineError),
}

/// What a backup holds.
pub struct Backup {
    /// The applied log id and membership of the cluster it was taken from.
    pub meta: Meta,
    pub data: SnapshotData,
    /// The CRC-32 of the snapshot inside (as `snapshot status` shows a hash).
    pub crc: u32,
}

impl Backup {
    /// Counts and revisions, for `roster snapshot status`.
    pub fn summary(&self) -> Result<SnapshotSummary, BackupError> {
        Ok(self.data.summary()?)
    }
}

/// The backup of the state as it is now. The state is copied under the read
/// lock in O(1); encoding and hashing happen after it is released, so apply
/// goes on meanwhile. Blocking (it encodes the whole state).
pub fn backup_bytes(state: &SharedState) -> Result<Vec<u8>, BackupError> {
    let (meta, data) = {
        let sm = state.read().map_err(|_| StateStoreError::Poisoned)?;
        (
            snapshot_meta(&sm, 0)?,
            sm.snapshot().map_err(StateStoreError::from)?,
        )
    };
    let mut out = Vec::with_capacity(MAGIC.len() + 8 + data.encoded_len() + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 8]);
    let start = out.len();
    snapshot_files::frame_into(&mut out, &meta, &data)?;
    drop(data);
    let len = (out.len() - start) as u64;
    out[MAGIC.len()..start].copy_from_slice(&len.to_le_bytes());
    out.resize(out.len().next_multiple_of(PAD_TO), 0);
    let hash = Sha256::digest(&out);
    out.extend_from_slice(&hash);
    Ok(out)
}

/// Checks that `bytes` end with the SHA-256 of what comes before them, as
/// every snapshot stream of etcd's API does.
pub fn check_hash(bytes: &[u8]) -> Result<(), BackupError> {
    if bytes.len() < HASH_LEN {
        return Err(BackupError::Damaged(format!(
            "{} bytes is too short to end with a SHA-256",
            bytes.len()
        )));
    }
    let (body, stored) = bytes.split_at(bytes.len() - HASH_LEN);
    let computed = Sha256::digest(body);
    if computed.as_slice() != stored {
        return Err(BackupError::Damaged(format!(
            "SHA-256 mismatch: the file says {}, its contents hash to {} \
             (damaged or truncated)",
            hex(stored),
            hex(&computed)
        )));
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a backup (or, with `skip_hash_check`, also a snapshot file copied
/// from a data dir), checking its SHA-256 unless skipped and its CRC always.
pub fn read_backup(bytes: &[u8], skip_hash_check: bool) -> Result<Backup, BackupError> {
    let snapshot = if bytes.starts_with(MAGIC) {
        if !skip_hash_check {
            check_hash(bytes)?;
        }
        let header = MAGIC.len() + 8;
        let len_bytes: [u8; 8] = bytes
            .get(MAGIC.len()..header)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BackupError::Damaged("truncated in its header".into()))?;
        let len = u64::from_le_bytes(len_bytes);
        usize::try_from(len)
            .ok()
            .and_then(|len| header.checked_add(len))
            .and_then(|end| bytes.get(header..end))
            .ok_or_else(|| {
                BackupError::Damaged(format!(
                    "it says it holds {len} bytes of snapshot, but the file has {}: truncated",
                    bytes.len()
                ))
            })?
    } else if snapshot_files::is_snapshot_file(bytes) {
        if !skip_hash_check {
            return Err(BackupError::NoHash);
        }
        bytes
    } else {
        return Err(BackupError::Damaged(
            "not a Roster backup (an etcd bbolt snapshot? restore that with etcdctl)".into(),
        ));
    };
    let (meta, data) = snapshot_files::parse(snapshot).map_err(BackupError::Damaged)?;
    let data = SnapshotData::decode(&data)?;
    let mut crc = [0; 4];
    crc.copy_from_slice(&snapshot[snapshot.len() - 4..]);
    Ok(Backup {
        meta,
        data,
        crc: u32::from_le_bytes(crc),
    })
}

/// Writes the data dir part of a restored member in `data_dir`: the state of
/// `data` (see [`SnapshotData::restored`]) as its snapshot file, at log id 0
/// with `members` as the voters. Blocking.
pub fn write_restored(
    data_dir: &Path,
    data: SnapshotData,
    members: BTreeMap<NodeId, Member>,
) -> Result<(), BackupError> {
    let first = LogId::default();
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(Some(first), Membership::new(vec![voters], members));
    let meta_pairs = [
        (APPLIED_META.to_vec(), encode(&first)?),
        (MEMBERSHIP_META.to_vec(), encode(&membership)?),
    ];
    // The new token key: the old one hashed with the new membership, the
    // same on every member restoring this backup into this cluster.
    let membership_bytes = encode(&membership)?;
    let rekey = |old: &[u8]| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"roster restored token key");
        h.update(old);
        h.update(&membership_bytes);
        h.finalize().to_vec()
    };
    let data = data.restored(meta_pairs, rekey)?;
    let files = SnapshotFiles::open(&crate::storage::snapshot_dir(data_dir))?;
    let meta = SnapshotMeta {
        snapshot_id: format!("0-0-{}", files.next_counter()),
        last_log_id: Some(first),
        last_membership: membership,
    };
    files.save(&meta, &data.encode())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, RwLock};

    use roster_state::{Command, MemEngine, StateMachine};

    use super::*;

    fn state_with(keys: usize) -> SharedState {
        let engine: roster_state::DynEngine = Box::new(MemEngine::new());
        let mut sm = StateMachine::open(engine).unwrap();
        for i in 0..keys {
            let put = Command::Put(roster_state::Put {
                key: format!("key{i}").into_bytes(),
                value: vec![7; 100],
                lease: 0,
                prev_kv: false,
                ignore_value: false,
                ignore_lease: false,
            });
            let applied: LogId<NodeId> =
                LogId::new(openraft::CommittedLeaderId::new(3, 1), i as u64 + 1);
            sm.apply(
                3,
                &put,
                vec![(APPLIED_META.to_vec(), encode(&applied).unwrap())],
            )
            .unwrap();
        }
        Arc::new(RwLock::new(sm))
    }

    #[test]
    fn a_backup_reads_back_and_ends_with_the_hash_of_a_512_multiple() {
        let bytes = backup_bytes(&state_with(50)).unwrap();
        assert_eq!(bytes.len() % PAD_TO, HASH_LEN);
        check_hash(&bytes).unwrap();
        let backup = read_backup(&bytes, false).unwrap();
        assert_eq!(backup.meta.last_log_id.map(|l| l.index), Some(50));
        let summary = backup.summary().unwrap();
        assert_eq!((summary.keys, summary.revision), (50, 51));
    }

    #[test]
    fn damage_anywhere_and_truncation_are_refused() {
        let bytes = backup_bytes(&state_with(20)).unwrap();
        for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(read_backup(&damaged, false).is_err(), "flip at {at}");
        }
        let err = read_backup(&bytes[..bytes.len() - 100], false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("SHA-256 mismatch"), "{err}");
        // Without the hash check the CRC still catches a flipped data byte.
        let mut damaged = bytes.clone();
        damaged[bytes.len() / 2] ^= 0x10;
        let err = read_backup(&damaged, true).err().unwrap();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let err = read_backup(b"bolt-ish bytes of another tool", false)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not a Roster backup"), "{err}");
    }

    #[test]
    fn a_data_dir_snapshot_file_restores_only_without_the_hash_check() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        let state = state_with(5);
        let (meta, data) = {
            let sm = state.read().unwrap();
            (snapshot_meta(&sm, 1).unwrap(), sm.snapshot().unwrap())
        };
        files.save(&meta, &data.encode()).unwrap();
        let (path,) = (std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),);
        let raw = std::fs::read(path).unwrap();
        assert!(matches!(read_backup(&raw, false), Err(BackupError::NoHash)));
        assert_eq!(read_backup(&raw, true).unwrap().data, data);
    }

    #[test]
    fn a_restored_data_dir_holds_the_new_membership_at_log_id_zero() {
        let backup = read_backup(&backup_bytes(&state_with(3)).unwrap(), false).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let members: BTreeMap<NodeId, Member> = [(11, "a"), (22, "b")]
            .into_iter()
            .map(|(id, name)| {
                let member = Member {
                    name: name.into(),
                    peer_urls: vec![format!("http://{name}:2380")],
                };
                (id, member)
            })
            .collect();
        write_restored(dir.path(), backup.data, members).unwrap();
        let files = SnapshotFiles::open(&crate::storage::snapshot_dir(dir.path())).unwrap();
        let (meta, bytes) = files.load().unwrap().unwrap();
        assert_eq!(meta.last_log_id, Some(LogId::default()));
        let voters: Vec<NodeId> = meta.last_membership.membership().voter_ids().collect();
        assert_eq!(voters, vec![11, 22]);
        let sm = StateMachine::open(MemEngine::from_snapshot(
            SnapshotData::decode(&bytes).unwrap(),
        ))
        .unwrap();
        let (applied, membership) = crate::state_store::read_applied(&sm).unwrap();
        assert_eq!(
            (applied, membership),
            (meta.last_log_id, meta.last_membership)
        );
        assert_eq!(sm.revision(), 4);
    }
}
