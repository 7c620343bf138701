//! The engine key layout (the table in the crate docs), in one place: every prefix
//! and integer encoding the state machine persists is built and parsed here, so
//! the byte format cannot drift between writers and readers.
//!
//! Integers are big-endian so that byte order is numeric order; lease ids are
//! signed, so their sign bit is flipped first (`id as u64 ^ 1 << 63`), which keeps
//! the order numeric for negative ids too.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::EngineError;

/// `k/<key>`: live keys.
pub(crate) const KEY: &[u8] = b"k/";
/// `e/<rev><sub>`: the events in revision order (each names its key's `h/` entry).
pub(crate) const EVENT: &[u8] = b"e/";
/// `h/<escaped key><rev>`: every version of every key, key-major.
pub(crate) const HISTORY: &[u8] = b"h/";
/// `l/<id>`: leases.
pub(crate) const LEASE: &[u8] = b"l/";
/// `a/<id><key>`: keys attached to a lease.
pub(crate) const ATTACH: &[u8] = b"a/";
/// `d/<deadline ms><service>/<id>`: drain deadlines, soonest first.
pub(crate) const DRAIN: &[u8] = b"d/";
/// `u/<rev>`: the audit log of forced removals.
pub(crate) const AUDIT: &[u8] = b"u/";
/// `m/<name>`: the caller's metadata (arbitrary names).
pub(crate) const META: &[u8] = b"m/";
/// `p/<id>`: attributes a member published (u64 id, big-endian).
pub(crate) const MEMBER: &[u8] = b"p/";
/// `hd/<name>`: handler definitions.
pub(crate) const HANDLER: &[u8] = b"hd/";
/// `hu/<event type>`: the cluster-wide handler of each event type.
pub(crate) const HANDLER_USE: &[u8] = b"hu/";
/// `o/<seq>`: the handler outbox, undelivered events in order.
pub(crate) const OUTBOX: &[u8] = b"o/";
/// `f/<seq>`: events every delivery attempt failed for.
pub(crate) const FAILURE: &[u8] = b"f/";
/// `s/outbox_seq`: the last handler event id (u64, big-endian).
pub(crate) const OUTBOX_SEQ: &[u8] = b"s/outbox_seq";
/// `s/revision`: the store revision (i64, big-endian). Absent: revision 1.
pub(crate) const REVISION: &[u8] = b"s/revision";
/// `s/lease_seq`: the counter behind generated lease ids (u64, big-endian).
pub(crate) const LEASE_SEQ: &[u8] = b"s/lease_seq";
/// `xu/<name>`: users.
pub(crate) const USER: &[u8] = b"xu/";
/// `xr/<name>`: roles.
pub(crate) const ROLE: &[u8] = b"xr/";
/// `s/auth`: the auth switch and revision ([`crate::auth::AuthStatus`]).
pub(crate) const AUTH: &[u8] = b"s/auth";
/// `s/compacted`: the revision history was last compacted at (i64). Absent: 0.
pub(crate) const COMPACTED: &[u8] = b"s/compacted";

/// Ends an escaped key in `h/`. Lower than every escaped byte that can follow, so
/// a key sorts before every longer key it is a prefix of.
const KEY_END: [u8; 2] = [0x00, 0x01];

/// `prefix` followed by `rest`.
pub(crate) fn join(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + rest.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(rest);
    key
}

/// The smallest key greater than every key starting with `prefix`, or `None` when
/// there is none (all bytes 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn key_key(key: &[u8]) -> Vec<u8> {
    join(KEY, key)
}

pub(crate) fn event_key(revision: i64, sub: u64) -> Vec<u8> {
    let mut key = join(EVENT, &revision.to_be_bytes());
    key.extend_from_slice(&sub.to_be_bytes());
    key
}

/// A user key made safe to be followed by more bytes while keeping its order:
/// `0x00` becomes `0x00 0xff`, and [`KEY_END`] closes it (see `h/` in the crate
/// docs). `a < b` as keys exactly when `escape(a) < escape(b)`.
fn escape_key(key: &[u8], out: &mut Vec<u8>) {
    for &byte in key {
        out.push(byte);
        if byte == 0 {
            out.push(0xff);
        }
    }
}

/// `h/<escaped key>`: the prefix of every version of `key`.
pub(crate) fn history_prefix(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HISTORY.len() + key.len() + 2);
    out.extend_from_slice(HISTORY);
    escape_key(key, &mut out);
    out.extend_from_slice(&KEY_END);
    out
}

/// `h/<escaped key><rev>`: the version of `key` written at `revision`.
pub(crate) fn history_key(key: &[u8], revision: i64) -> Vec<u8> {
    let mut out = history_prefix(key);
    out.extend_from_slice(&revision.to_be_bytes());
    out
}

/// The `h/` bound below every version of every key `>= key` (and above those of
/// smaller keys): an escaped key without its end marker.
pub(crate) fn history_bound(key: &[u8]) -> Vec<u8> {
    let mut out = join(HISTORY, &[]);
    escape_key(key, &mut out);
    out
}

/// Splits an `h/` engine key into the user key and the revision.
pub(crate) fn parse_history_key(stored: &[u8]) -> Result<(Vec<u8>, i64), EngineError> {
    let corrupt = || EngineError(format!("corrupt history key {stored:?}"));
    let body = stored.strip_prefix(HISTORY).ok_or_else(corrupt)?;
    let (escaped, revision) = body
        .split_at_checked(body.len().saturating_sub(10))
        .ok_or_else(corrupt)?;
    let revision = revision.strip_prefix(&KEY_END).ok_or_else(corrupt)?;
    let mut key = Vec::with_capacity(escaped.len());
    let mut bytes = escaped.iter();
    while let Some(&byte) = bytes.next() {
        key.push(byte);
        if byte == 0 && bytes.next() != Some(&0xff) {
            return Err(corrupt());
        }
    }
    Ok((key, decode_u64(revision, "history revision")? as i64))
}

fn lease_id_bytes(id: i64) -> [u8; 8] {
    ((id as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn lease_key(id: i64) -> Vec<u8> {
    join(LEASE, &lease_id_bytes(id))
}

/// `a/<id>`: the prefix of every key attached to lease `id`.
pub(crate) fn attach_prefix(id: i64) -> Vec<u8> {
    join(ATTACH, &lease_id_bytes(id))
}

pub(crate) fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    join(&attach_prefix(id), key)
}

pub(crate) fn drain_key(deadline_ms: u64, service: &str, id: &str) -> Vec<u8> {
    let mut key = join(DRAIN, &deadline_ms.to_be_bytes());
    key.extend_from_slice(service.as_bytes());
    key.push(b'/');
    key.extend_from_slice(id.as_bytes());
    key
}

/// Splits a `d/` key into (deadline, service, id).
pub(crate) fn parse_drain_key(stored: &[u8]) -> Result<(u64, String, String), EngineError> {
    let corrupt = || EngineError(format!("corrupt drain key {stored:?}"));
    let body = stored.strip_prefix(DRAIN).ok_or_else(corrupt)?;
    let (deadline, name) = body.split_at_checked(8).ok_or_else(corrupt)?;
    let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
    let (service, id) = name.split_once('/').ok_or_else(corrupt)?;
    Ok((
        decode_u64(deadline, "drain deadline")?,
        service.to_string(),
        id.to_string(),
    ))
}

pub(crate) fn audit_key(revision: i64) -> Vec<u8> {
    join(AUDIT, &revision.to_be_bytes())
}

pub(crate) fn handler_key(name: &str) -> Vec<u8> {
    join(HANDLER, name.as_bytes())
}

pub(crate) fn handler_use_key(event: &str) -> Vec<u8> {
    join(HANDLER_USE, event.as_bytes())
}

pub(crate) fn outbox_key(id: u64) -> Vec<u8> {
    join(OUTBOX, &id.to_be_bytes())
}

pub(crate) fn failure_key(id: u64) -> Vec<u8> {
    join(FAILURE, &id.to_be_bytes())
}

pub(crate) fn member_key(id: u64) -> Vec<u8> {
    join(MEMBER, &id.to_be_bytes())
}

pub(crate) fn user_key(name: &str) -> Vec<u8> {
    join(USER, name.as_bytes())
}

pub(crate) fn role_key(name: &str) -> Vec<u8> {
    join(ROLE, name.as_bytes())
}

pub(crate) fn meta_key(name: &[u8]) -> Vec<u8> {
    join(META, name)
}

/// Serializes a persisted value. Bincode's default options into a `Vec` fail only
/// for sequences of unknown length, which none of our types have; any error is
/// still reported, never unwrapped.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EngineError> {
    bincode::serialize(value).map_err(|e| EngineError(format!("encode: {e}")))
}

/// Parses a persisted value; garbage in the engine is a storage failure.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, EngineError> {
    bincode::deserialize(bytes).map_err(|e| EngineError(format!("corrupt stored value: {e}")))
}

/// Parses an 8-byte big-endian integer stored under `what`.
pub(crate) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, EngineError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| EngineError(format!("corrupt {what}: {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

/// The revision stored under [`REVISION`]; an empty store is at revision 1, as
/// etcd's.
pub(crate) fn read_revision(stored: Option<&[u8]>) -> Result<i64, EngineError> {
    match stored {
        None => Ok(1),
        Some(bytes) => Ok(decode_u64(bytes, "revision")? as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_below_ff() {
        assert_eq!(prefix_end(b"k/"), Some(b"k0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn lease_keys_sort_numerically_including_negative_ids() {
        let ids = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let keys: Vec<_> = ids.iter().map(|&id| lease_key(id)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn history_keys_sort_by_key_then_revision_and_parse_back() {
        let keys: [&[u8]; 6] = [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00"];
        let mut stored = Vec::new();
        for key in keys {
            for rev in [1, 255, 256] {
                let k = history_key(key, rev);
                assert_eq!(parse_history_key(&k).expect("parses"), (key.to_vec(), rev));
                assert!(history_bound(key) <= k, "bound of {key:?}");
                stored.push(k);
            }
        }
        let mut sorted = stored.clone();
        sorted.sort();
        assert_eq!(stored, sorted);
        // The bound of the next key is above every version of a key.
        assert!(history_key(b"a", i64::MAX) < history_bound(b"a\x00"));
        assert!(history_key(b"a", i64::MAX) < history_bound(b"b"));
        assert!(parse_history_key(b"h/abc").is_err());
    }

    #[test]
    fn event_keys_sort_by_revision_then_sub() {
        assert!(event_key(2, 9) < event_key(3, 0));
        assert!(event_key(3, 0) < event_key(3, 1));
        assert!(event_key(255, 0) < event_key(256, 0));
    }
}
