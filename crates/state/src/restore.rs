//! What a backup becomes when it seeds a new cluster, and what it holds.
//!
//! A backup is the state machine of one moment of an old cluster. Restored into
//! a new one, three things of the old cluster must not come along:
//!
//! - **Lease checkpoints.** A checkpoint records how much of a lease's TTL was
//!   left when the old leader last wrote it down. The new cluster's first
//!   leader gives every lease its whole granted TTL again (DESIGN.md rule 4),
//!   as etcd does for a restored lease: the holders had no way to renew while
//!   the cluster was down, so expiring their leases at once would drop every
//!   live instance the moment the restored cluster starts.
//! - **Published member attributes** (`p/<id>`): they name the old members'
//!   client URLs; the new members publish their own when they start.
//! - **The caller's metadata** (`m/`): the raft applied position and
//!   membership of the old cluster. The caller passes the new cluster's.
//!
//! - **The token key.** Tokens the old cluster signed must not open the new
//!   one: the caller's `rekey` turns the old key into the new cluster's (a
//!   function of it and of the new membership, so every member restoring the
//!   same backup into the same cluster computes the same key).
//!
//! Everything else stays: keys with their revisions and history, the
//! compaction point, leases (and the keys attached to them), the registry,
//! handlers and their outbox, and the audit log.

use crate::engine::{Bytes, EngineError};
use crate::layout;
use crate::lease::Lease;
use crate::snapshot::SnapshotData;

/// What `roster snapshot status` prints about a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The store revision at the moment of the backup.
    pub revision: i64,
    /// The revision the history was compacted at (0: never).
    pub compact_revision: i64,
    /// Live keys.
    pub keys: u64,
    /// Leases.
    pub leases: u64,
    /// Every pair the state machine holds (keys, history, leases, registry...).
    pub pairs: u64,
}

impl SnapshotData {
    /// This state as the first state of a new cluster: lease checkpoints
    /// cleared, the old members' attributes and all metadata dropped, then
    /// `meta` (pairs of metadata name and value) written, and the token key
    /// (if auth is on) replaced by `rekey(old key)`.
    pub fn restored(
        self,
        meta: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        rekey: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<SnapshotData, EngineError> {
        let mut map = self.into_map();
        if let Some(value) = map.get(layout::AUTH) {
            let mut status: crate::auth::AuthStatus = layout::decode(value)?;
            if !status.token_key.is_empty() {
                status.token_key = rekey(&status.token_key);
                map.insert(
                    Bytes::from(layout::AUTH.to_vec()),
                    Bytes::from(layout::encode(&status)?),
                );
            }
        }
        let dropped: Vec<Bytes> = map
            .keys()
            .filter(|key| key.starts_with(layout::MEMBER) || key.starts_with(layout::META))
            .cloned()
            .collect();
        for key in dropped {
            map.remove(&key);
        }
        let checkpointed: Vec<(Bytes, Lease)> = map
            .iter()
            .filter(|(key, _)| key.starts_with(layout::LEASE))
            .map(|(key, value)| Ok((key.clone(), layout::decode::<Lease>(value)?)))
            .filter(|pair| !matches!(pair, Ok((_, lease)) if lease.checkpoint_ms.is_none()))
            .collect::<Result<_, EngineError>>()?;
        for (key, mut lease) in checkpointed {
            lease.checkpoint_ms = None;
            map.insert(key, Bytes::from(layout::encode(&lease)?));
        }
        for (name, value) in meta {
            map.insert(Bytes::from(layout::meta_key(&name)), Bytes::from(value));
        }
        Ok(SnapshotData::from_map(map))
    }

    /// Counts and revisions of this state.
    pub fn summary(&self) -> Result<SnapshotSummary, EngineError> {
        let count = |prefix: &[u8]| self.pairs().filter(|(k, _)| k.starts_with(prefix)).count();
        let compact_revision = match self.get(layout::COMPACTED) {
            Some(bytes) => layout::decode_u64(bytes, "compacted revision")? as i64,
            None => 0,
        };
        Ok(SnapshotSummary {
            revision: layout::read_revision(self.get(layout::REVISION))?,
            compact_revision,
            keys: count(layout::KEY) as u64,
            leases: count(layout::LEASE) as u64,
            pairs: self.len() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Command, MemEngine, StateMachine};

    fn machine() -> StateMachine<MemEngine> {
        StateMachine::open(MemEngine::new()).unwrap()
    }

    fn put(key: &str, lease: i64) -> Command {
        Command::Put(crate::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        })
    }

    #[test]
    fn a_restored_state_keeps_keys_and_leases_and_forgets_checkpoints_members_and_meta() {
        let mut sm = machine();
        let meta = |v: &str| vec![(b"raft/applied".to_vec(), v.as_bytes().to_vec())];
        sm.apply(1, &Command::LeaseGrant { id: 7, ttl: 60 }, meta("old"))
            .unwrap();
        sm.apply(1, &put("a", 7), meta("old")).unwrap();
        sm.apply(1, &put("b", 0), meta("old")).unwrap();
        let checkpoint = Command::LeaseCheckpoint {
            remaining_ms: vec![(7, 12_000)],
        };
        sm.apply(1, &checkpoint, meta("old")).unwrap();
        let attrs = crate::MemberAttrs {
            id: 9,
            name: "n1".into(),
            client_urls: vec!["http://old:2379".into()],
            allow_pipe_handlers: false,
        };
        sm.apply(1, &Command::PublishMember(attrs), meta("old"))
            .unwrap();
        assert_eq!(sm.lease(7).unwrap().unwrap().checkpoint_ms, Some(12_000));
        let before = sm.snapshot().unwrap().summary().unwrap();

        let restored = sm
            .snapshot()
            .unwrap()
            .restored(meta("new"), |k| k.to_vec())
            .unwrap();
        let sm = StateMachine::open(MemEngine::from_snapshot(restored.clone())).unwrap();
        let lease = sm.lease(7).unwrap().unwrap();
        assert_eq!((lease.ttl, lease.checkpoint_ms), (60, None));
        assert_eq!(sm.meta(b"raft/applied").unwrap(), Some(b"new".to_vec()));
        assert!(restored
            .pairs()
            .all(|(k, _)| !k.starts_with(layout::MEMBER)));
        let after = restored.summary().unwrap();
        assert_eq!(after.revision, before.revision);
        assert_eq!(sm.revision(), before.revision);
        assert_eq!((after.keys, after.leases), (2, 1));
    }

    #[test]
    fn the_summary_of_an_empty_state_is_revision_one() {
        let summary = SnapshotData::default().summary().unwrap();
        assert_eq!(
            summary,
            SnapshotSummary {
                revision: 1,
                compact_revision: 0,
                keys: 0,
                leases: 0,
                pairs: 0
            }
        );
    }
}
