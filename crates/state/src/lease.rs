//! The replicated lease table. Deadlines are not stored here (they are the leader's
//! monotonic clock, in the server's lessor); only what a new leader needs to restart
//! the clocks safely: the granted TTL and, for long leases, the last checkpointed
//! remaining TTL, cleared by a "renewed" record after the next keepalive.

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::keyspace::{self, KeyValue, RemovalReason};
use crate::layout;
use crate::mix::splitmix64;
use crate::registry::{self, REGISTRY_PREFIX};
use crate::tx::Tx;

/// Largest TTL a lease may be granted, in seconds: etcd's `MaxLeaseTTL`.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: i64,
    /// Granted TTL in seconds.
    pub ttl: i64,
    /// Remaining TTL in milliseconds at the last checkpoint, unless a keepalive was
    /// recorded (`LeaseRenewed`) after it.
    pub checkpoint_ms: Option<u64>,
}

/// Whether lease `id` exists, as the command sees the store.
pub(crate) fn exists<E: Engine>(tx: &Tx<'_, E>, id: i64) -> Result<bool, EngineError> {
    Ok(tx.get(&layout::lease_key(id))?.is_some())
}

pub(crate) fn load<E: Engine>(tx: &Tx<'_, E>, id: i64) -> Result<Option<Lease>, EngineError> {
    tx.get(&layout::lease_key(id))?
        .map(|v| layout::decode(&v))
        .transpose()
}

fn store<E: Engine>(tx: &mut Tx<'_, E>, lease: &Lease) -> Result<(), EngineError> {
    tx.put(layout::lease_key(lease.id), layout::encode(lease)?);
    Ok(())
}

/// `LeaseGrant`: an explicit id must be free; id 0 gets a generated one.
pub(crate) fn grant<E: Engine>(tx: &mut Tx<'_, E>, id: i64, ttl: i64) -> Result<Response, Fail> {
    let id = create(tx, id, ttl)?;
    Ok(Response::LeaseGranted {
        revision: tx.revision(),
        id,
        ttl,
    })
}

/// Grants a lease with a generated id (for a registration); its id.
pub(crate) fn grant_new<E: Engine>(tx: &mut Tx<'_, E>, ttl: i64) -> Result<i64, Fail> {
    if ttl <= 0 {
        return Err(StateError::InvalidTtl(ttl).into());
    }
    create(tx, 0, ttl)
}

/// Stores a new lease (`id` 0: a generated one); its id.
fn create<E: Engine>(tx: &mut Tx<'_, E>, id: i64, ttl: i64) -> Result<i64, Fail> {
    if ttl > MAX_LEASE_TTL {
        return Err(StateError::LeaseTtlTooLarge(ttl).into());
    }
    let id = match id {
        0 => generate_id(tx)?,
        id if exists(tx, id)? => return Err(StateError::LeaseExists.into()),
        id => id,
    };
    let lease = Lease {
        id,
        ttl,
        checkpoint_ms: None,
    };
    store(tx, &lease)?;
    Ok(id)
}

/// A fresh lease id, the same on every node: the persisted counter `s/lease_seq`
/// advanced and run through splitmix64, masked positive, skipping 0 and ids in
/// use (which ends: the ids in use are finitely many).
fn generate_id<E: Engine>(tx: &mut Tx<'_, E>) -> Result<i64, EngineError> {
    let mut seq = match tx.get(layout::LEASE_SEQ)? {
        Some(bytes) => layout::decode_u64(&bytes, "lease id counter")?,
        None => 0,
    };
    loop {
        seq = seq.wrapping_add(1);
        let id = (splitmix64(seq) & i64::MAX as u64) as i64;
        if id != 0 && !exists(tx, id)? {
            tx.put(layout::LEASE_SEQ.to_vec(), seq.to_be_bytes().to_vec());
            return Ok(id);
        }
    }
}

/// `LeaseRevoke`: the lease and its keys, in one revision.
pub(crate) fn revoke<E: Engine>(
    tx: &mut Tx<'_, E>,
    id: i64,
    reason: RemovalReason,
    now_ms: u64,
) -> Result<Response, Fail> {
    if !remove(tx, id, reason, now_ms)? {
        return Err(StateError::LeaseNotFound.into());
    }
    Ok(Response::LeaseRevoked {
        revision: tx.revision(),
        revoked: vec![id],
    })
}

/// `LeaseExpire`: every listed lease still present, all keys in one revision
/// (but instances registered with `deregister: false` stay, see
/// `registry::keep_on_expiry`; `now_ms` dates their health change).
pub(crate) fn expire<E: Engine>(
    tx: &mut Tx<'_, E>,
    ids: &[i64],
    now_ms: u64,
) -> Result<Response, Fail> {
    let mut revoked = Vec::new();
    for &id in ids {
        // A repeated id finds its lease already staged for deletion: skipped.
        if remove(tx, id, RemovalReason::Expired, now_ms)? {
            revoked.push(id);
        }
    }
    Ok(Response::LeaseRevoked {
        revision: tx.revision(),
        revoked,
    })
}

/// Deletes lease `id`, its attached keys (with `reason`) and its index; `false`
/// if there is no such lease. Instance records go through the registry
/// (`registry::lease_ended`), which may keep them and tells the handlers;
/// `now_ms` dates that.
pub(crate) fn remove<E: Engine>(
    tx: &mut Tx<'_, E>,
    id: i64,
    reason: RemovalReason,
    now_ms: u64,
) -> Result<bool, Fail> {
    if !exists(tx, id)? {
        return Ok(false);
    }
    let prefix = layout::attach_prefix(id);
    let end = layout::prefix_end(&prefix);
    for (attach_key, _) in tx.scan(&prefix, end.as_deref())? {
        let key = &attach_key[prefix.len()..];
        if let Some(value) = tx.get(&layout::key_key(key))? {
            let kv: KeyValue = layout::decode(&value)?;
            if kv.lease == id && kv.key.starts_with(REGISTRY_PREFIX) {
                registry::lease_ended(tx, kv, reason, now_ms)?;
            } else if kv.lease == id {
                keyspace::remove(tx, kv, reason)?;
            }
        }
        // Also drops an index entry that no longer matches its key.
        tx.delete(attach_key);
    }
    tx.delete(layout::lease_key(id));
    Ok(true)
}

/// `LeaseCheckpoint`: records the remaining TTL of each known lease.
pub(crate) fn checkpoint<E: Engine>(
    tx: &mut Tx<'_, E>,
    remaining_ms: &[(i64, u64)],
) -> Result<Response, Fail> {
    for &(id, ms) in remaining_ms {
        set_checkpoint(tx, id, Some(ms))?;
    }
    Ok(Response::Done {
        revision: tx.revision(),
    })
}

/// `LeaseRenewed`: clears the checkpoint of each known lease.
pub(crate) fn renewed<E: Engine>(tx: &mut Tx<'_, E>, ids: &[i64]) -> Result<Response, Fail> {
    for &id in ids {
        set_checkpoint(tx, id, None)?;
    }
    Ok(Response::Done {
        revision: tx.revision(),
    })
}

fn set_checkpoint<E: Engine>(
    tx: &mut Tx<'_, E>,
    id: i64,
    checkpoint_ms: Option<u64>,
) -> Result<(), EngineError> {
    if let Some(mut lease) = load(tx, id)? {
        lease.checkpoint_ms = checkpoint_ms;
        store(tx, &lease)?;
    }
    Ok(())
}
