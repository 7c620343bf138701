//! The MVCC keyspace: etcd's revision model. One global revision increases by one
//! for each write that changes a key; every key carries its create and mod
//! revision, version and lease. Every change is also kept as an [`Event`] (with the
//! reason of a removal) for watches and history.

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::engine::{Engine, EngineError};
use crate::error::{Fail, StateError};
use crate::layout;
use crate::lease;
use crate::tx::{Tx, View};

/// Why a key was removed. One enum for every API: etcd watchers see a plain
/// DELETE, registry watchers see the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemovalReason {
    /// Its holder deleted it, revoked the lease or deregistered.
    Graceful,
    /// No keepalive within the lease TTL.
    Expired,
    /// An operator removed it.
    Forced,
    /// A drain deadline passed.
    Drained,
    /// Failed health checks.
    Health,
}

/// A live key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub value: Vec<u8>,
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key at one revision. For a delete, `kv` holds the key and
/// `mod_revision` = the deleting revision, the rest zero, as etcd sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
    /// Set on deletes only.
    pub reason: Option<RemovalReason>,
}

/// A read of the keyspace (etcd `RangeRequest` semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Vec<u8>,
    /// Empty: the single key. `[0]`: every key >= `key`. Otherwise `[key, range_end)`;
    /// a range_end at or before the key is an empty result, not an error.
    pub range_end: Vec<u8>,
    /// 0: no limit.
    pub limit: i64,
    pub count_only: bool,
    pub keys_only: bool,
    /// 0: the current revision; otherwise read the keyspace as of this revision.
    pub revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range (ignoring `limit`).
    pub count: i64,
    /// More keys than `limit` exist in the range.
    pub more: bool,
    /// The store revision the read saw.
    pub revision: i64,
}

/// etcd `Put`'s arguments, as a command of its own or inside a txn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// 0: no lease.
    pub lease: i64,
    /// Answer with the key's previous version.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// etcd's range end for "every key starting with `prefix`": the prefix with its
/// last byte below 0xff incremented, or `[0]` (every key) when there is none.
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    layout::prefix_end(prefix).unwrap_or_else(|| vec![0])
}

/// Whether etcd's range of `key` and `range_end` selects `candidate`: empty
/// `range_end` is `key` alone, `[0]` every key from `key` on, otherwise the
/// half-open range.
pub fn range_contains(key: &[u8], range_end: &[u8], candidate: &[u8]) -> bool {
    match range_end {
        [] => candidate == key,
        [0] => candidate >= key,
        end => key <= candidate && candidate < end,
    }
}

/// The engine bounds `[start, end)` of the `k/` keys selected by `key` and
/// `range_end` (etcd semantics), or `None` for an empty selection.
pub(crate) fn engine_bounds(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let start = layout::key_key(key);
    let end = match range_end {
        [] => layout::join(&start, &[0]),
        [0] => layout::prefix_end(layout::KEY)?,
        end if end <= key => return None,
        end => layout::key_key(end),
    };
    Some((start, end))
}

/// Serves a read of the live keys in `view`, whose store revision is `revision`.
/// Streams the scan: only the returned pairs are decoded and kept; the rest are
/// counted.
pub(crate) fn range(
    view: &impl View,
    revision: i64,
    req: &RangeRequest,
) -> Result<RangeResult, EngineError> {
    let Some((start, end)) = engine_bounds(&req.key, &req.range_end) else {
        return collect_range(std::iter::empty(), Ok, req, revision);
    };
    let values = view
        .read_range(&start, Some(&end))
        .map(|item| item.map(|(_, v)| v));
    collect_range(values, |v: Vec<u8>| layout::decode(&v), req, revision)
}

/// Applies `req`'s count, limit and keys-only to the selected keys, in key order;
/// `decode` runs only for the keys returned.
pub(crate) fn collect_range<T>(
    items: impl Iterator<Item = Result<T, EngineError>>,
    decode: impl Fn(T) -> Result<KeyValue, EngineError>,
    req: &RangeRequest,
    revision: i64,
) -> Result<RangeResult, EngineError> {
    let mut result = RangeResult {
        kvs: Vec::new(),
        count: 0,
        more: false,
        revision,
    };
    let limit = usize::try_from(req.limit).unwrap_or(0);
    for item in items {
        let item = item?;
        result.count += 1;
        if req.count_only || (limit > 0 && result.kvs.len() >= limit) {
            continue;
        }
        let mut kv = decode(item)?;
        if req.keys_only {
            kv.value.clear();
        }
        result.kvs.push(kv);
    }
    // As etcd: `more` tells that returned kvs were cut by the limit.
    result.more = !req.count_only && limit > 0 && result.count > req.limit;
    Ok(result)
}

fn load<E: Engine>(tx: &Tx<'_, E>, key: &[u8]) -> Result<Option<KeyValue>, EngineError> {
    tx.get(&layout::key_key(key))?
        .map(|v| layout::decode(&v))
        .transpose()
}

/// etcd `Put`.
pub(crate) fn put<E: Engine>(tx: &mut Tx<'_, E>, args: &Put) -> Result<Response, Fail> {
    let old = put_kv(tx, args)?;
    Ok(Response::Put {
        revision: tx.revision(),
        prev_kv: old.filter(|_| args.prev_kv),
    })
}

/// Writes one key; returns its previous live version. Validates everything first,
/// so an error stages nothing.
pub(crate) fn put_kv<E: Engine>(tx: &mut Tx<'_, E>, args: &Put) -> Result<Option<KeyValue>, Fail> {
    if args.key.is_empty() {
        return Err(StateError::EmptyKey.into());
    }
    let old = load(tx, &args.key)?;
    if (args.ignore_value || args.ignore_lease) && old.is_none() {
        return Err(StateError::KeyNotFound.into());
    }
    let lease = match (&old, args.ignore_lease) {
        (Some(old), true) => old.lease,
        _ => args.lease,
    };
    if lease != 0 && !lease::exists(tx, lease)? {
        return Err(StateError::LeaseNotFound.into());
    }
    let kv = next_version(tx.write_revision(), old.as_ref(), args, lease);
    let old_lease = old.as_ref().map_or(0, |o| o.lease);
    relink(tx, &args.key, old_lease, lease);
    tx.put(layout::key_key(&args.key), layout::encode(&kv)?);
    tx.event(Event {
        kind: EventKind::Put,
        kv,
        prev_kv: old.clone(),
        reason: None,
    })?;
    Ok(old)
}

/// The key's new live version written at `revision`.
fn next_version(revision: i64, old: Option<&KeyValue>, args: &Put, lease: i64) -> KeyValue {
    let value = match old {
        Some(old) if args.ignore_value => old.value.clone(),
        _ => args.value.clone(),
    };
    KeyValue {
        key: args.key.clone(),
        create_revision: old.map_or(revision, |o| o.create_revision),
        mod_revision: revision,
        version: old.map_or(1, |o| o.version + 1),
        value,
        lease,
    }
}

/// Moves `key` in the `a/` index from lease `from` to lease `to` (0: none).
fn relink<E: Engine>(tx: &mut Tx<'_, E>, key: &[u8], from: i64, to: i64) {
    if from == to {
        return;
    }
    if from != 0 {
        tx.delete(layout::attach_key(from, key));
    }
    if to != 0 {
        tx.put(layout::attach_key(to, key), Vec::new());
    }
}

/// etcd `DeleteRange`: every selected key goes, with reason `Graceful`.
pub(crate) fn delete_range<E: Engine>(
    tx: &mut Tx<'_, E>,
    key: &[u8],
    range_end: &[u8],
    want_prev: bool,
) -> Result<Response, Fail> {
    let removed = delete_kvs(tx, key, range_end)?;
    Ok(Response::DeleteRange {
        revision: tx.revision(),
        deleted: removed.len() as i64,
        prev_kvs: if want_prev { removed } else { Vec::new() },
    })
}

/// Deletes the selected keys gracefully; returns what they held.
pub(crate) fn delete_kvs<E: Engine>(
    tx: &mut Tx<'_, E>,
    key: &[u8],
    range_end: &[u8],
) -> Result<Vec<KeyValue>, Fail> {
    if key.is_empty() {
        return Err(StateError::EmptyKey.into());
    }
    let pairs = match engine_bounds(key, range_end) {
        Some((start, end)) => tx.scan(&start, Some(&end))?,
        None => Vec::new(),
    };
    let mut removed = Vec::with_capacity(pairs.len());
    for (_, value) in pairs {
        let kv: KeyValue = layout::decode(&value)?;
        removed.push(kv.clone());
        remove(tx, kv, RemovalReason::Graceful)?;
    }
    Ok(removed)
}

/// Removes one live key (and its lease link), recording the delete event with
/// `reason`.
pub(crate) fn remove<E: Engine>(
    tx: &mut Tx<'_, E>,
    old: KeyValue,
    reason: RemovalReason,
) -> Result<(), EngineError> {
    tx.delete(layout::key_key(&old.key));
    relink(tx, &old.key, old.lease, 0);
    let tombstone = KeyValue {
        key: old.key.clone(),
        create_revision: 0,
        mod_revision: tx.write_revision(),
        version: 0,
        value: Vec::new(),
        lease: 0,
    };
    tx.event(Event {
        kind: EventKind::Delete,
        kv: tombstone,
        prev_kv: Some(old),
        reason: Some(reason),
    })
}
