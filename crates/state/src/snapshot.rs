//! A snapshot is every pair of the engine, in key order: the keyspace, leases,
//! history and the caller's metadata (applied log id, membership), so installing it
//! reproduces the state machine exactly.

use serde::{Deserialize, Serialize};

use crate::engine::EngineError;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    pub pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl SnapshotData {
    /// The wire and file form (bincode 1.3, default options).
    pub fn encode(&self) -> Vec<u8> {
        // Infallible: bincode's default options have no size limit, every sequence
        // here has a known length, and writing into a Vec cannot fail; those are
        // bincode's only error sources when serializing.
        #[allow(clippy::expect_used)]
        bincode::serialize(self).expect("serializing byte pairs into a Vec cannot fail")
    }

    /// Parses [`SnapshotData::encode`]'s output; garbage is an [`EngineError`].
    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        bincode::deserialize(bytes).map_err(|e| EngineError(format!("corrupt snapshot: {e}")))
    }

    /// The value of engine key `key` in the snapshot, if present.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(k, _)| k.as_slice() == key)
            .map(|(_, v)| v.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let snap = SnapshotData {
            pairs: vec![
                (b"a".to_vec(), Vec::new()),
                (b"k/x".to_vec(), vec![0, 255, 7]),
            ],
        };
        let bytes = snap.encode();
        assert_eq!(SnapshotData::decode(&bytes).expect("decode"), snap);
        assert_eq!(snap.get(b"k/x"), Some(&[0u8, 255, 7][..]));
        assert_eq!(snap.get(b"k/y"), None);
    }

    #[test]
    fn decode_rejects_truncated_input() {
        let bytes = SnapshotData {
            pairs: vec![(b"key".to_vec(), b"value".to_vec())],
        }
        .encode();
        assert!(SnapshotData::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(SnapshotData::decode(&[0xff; 8]).is_err());
    }
}
