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
/// `e/<rev><sub>`: the history of events.
pub(crate) const EVENT: &[u8] = b"e/";
/// `l/<id>`: leases.
pub(crate) const LEASE: &[u8] = b"l/";
/// `a/<id><key>`: keys attached to a lease.
pub(crate) const ATTACH: &[u8] = b"a/";
/// `m/<name>`: the caller's metadata (arbitrary names).
pub(crate) const META: &[u8] = b"m/";
/// `p/<id>`: attributes a member published (u64 id, big-endian).
pub(crate) const MEMBER: &[u8] = b"p/";
/// `s/revision`: the store revision (i64, big-endian). Absent: revision 1.
pub(crate) const REVISION: &[u8] = b"s/revision";
/// `s/lease_seq`: the counter behind generated lease ids (u64, big-endian).
pub(crate) const LEASE_SEQ: &[u8] = b"s/lease_seq";

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

pub(crate) fn member_key(id: u64) -> Vec<u8> {
    join(MEMBER, &id.to_be_bytes())
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
    fn event_keys_sort_by_revision_then_sub() {
        assert!(event_key(2, 9) < event_key(3, 0));
        assert!(event_key(3, 0) < event_key(3, 1));
        assert!(event_key(255, 0) < event_key(256, 0));
    }
}
