//! A snapshot is every pair of the engine, in key order: the keyspace, leases,
//! history and the caller's metadata (applied log id, membership), so installing it
//! reproduces the state machine exactly.
//!
//! [`SnapshotData`] is a frozen copy of the engine's persistent map: taking one
//! costs a reference count, and encoding it needs no lock, so a node writes its
//! snapshot while it goes on applying entries.
//!
//! The encoded form is the one Roster always used (bincode 1.3 of a sequence of
//! byte-string pairs): a little-endian u64 count, then for each pair its key and
//! its value, each a little-endian u64 length and the bytes. Snapshots written by
//! an older version, and sent by an older peer, decode unchanged.

use std::fmt;

use crate::engine::{Bytes, EngineError, Map};

/// Every pair of the engine at one moment.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SnapshotData {
    map: Map,
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.map.iter().map(|(k, v)| (&**k, &**v)))
            .finish()
    }
}

impl SnapshotData {
    pub(crate) fn from_map(map: Map) -> Self {
        SnapshotData { map }
    }

    pub(crate) fn into_map(self) -> Map {
        self.map
    }

    /// A snapshot of exactly these pairs (a later pair with the same key wins).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Self {
        let map = pairs
            .into_iter()
            .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
            .collect();
        SnapshotData { map }
    }

    /// How many pairs it holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The pairs in key order.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.map.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The value of engine key `key` in the snapshot, if present.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(|v| &**v)
    }

    /// The wire and file form (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// The length of [`SnapshotData::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        8 + self
            .pairs()
            .map(|(k, v)| 16 + k.len() + v.len())
            .sum::<usize>()
    }

    /// Appends [`SnapshotData::encode`]'s output to `out` (for a caller that
    /// frames the encoding without copying it).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (key, value) in self.pairs() {
            for part in [key, value] {
                out.extend_from_slice(&(part.len() as u64).to_le_bytes());
                out.extend_from_slice(part);
            }
        }
    }

    /// Parses [`SnapshotData::encode`]'s output. Truncated input, trailing bytes or
    /// keys out of order are an [`EngineError`] saying where.
    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut reader = Reader { bytes, at: 0 };
        let count = reader.u64("pair count")?;
        let mut map = Map::new();
        let mut last: Option<Bytes> = None;
        for n in 0..count {
            let key = reader.part(n, "key")?;
            let value = reader.part(n, "value")?;
            if last.as_ref().is_some_and(|last| *last >= key) {
                return Err(corrupt(format!("pair {n}: key out of order")));
            }
            last = Some(key.clone());
            map.insert(key, value);
        }
        if reader.at != bytes.len() {
            let extra = bytes.len() - reader.at;
            return Err(corrupt(format!("{extra} bytes after the last pair")));
        }
        Ok(SnapshotData { map })
    }
}

fn corrupt(what: String) -> EngineError {
    EngineError(format!("corrupt snapshot: {what}"))
}

/// A cursor over encoded bytes that never reads past their end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize, what: &str) -> Result<&[u8], EngineError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(corrupt(format!(
                "{what} at byte {} runs past the end ({} bytes)",
                self.at,
                self.bytes.len()
            )));
        };
        let part = &self.bytes[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn u64(&mut self, what: &str) -> Result<u64, EngineError> {
        let raw = self.take(8, what)?;
        // Infallible: `take` returned exactly 8 bytes.
        let mut arr = [0u8; 8];
        arr.copy_from_slice(raw);
        Ok(u64::from_le_bytes(arr))
    }

    /// The key or value of pair `n`.
    fn part(&mut self, n: u64, what: &str) -> Result<Bytes, EngineError> {
        let len = self.u64(&format!("length of pair {n}'s {what}"))?;
        let len =
            usize::try_from(len).map_err(|_| corrupt(format!("pair {n}: {what} too long")))?;
        Ok(Bytes::from(self.take(len, &format!("pair {n}'s {what}"))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotData {
        SnapshotData::from_pairs([
            (b"a".to_vec(), Vec::new()),
            (b"k/x".to_vec(), vec![0, 255, 7]),
        ])
    }

    #[test]
    fn encode_decode_round_trip() {
        let snap = sample();
        let bytes = snap.encode();
        assert_eq!(SnapshotData::decode(&bytes).expect("decode"), snap);
        assert_eq!(snap.get(b"k/x"), Some(&[0u8, 255, 7][..]));
        assert_eq!(snap.get(b"k/y"), None);
    }

    /// The encoding is bincode 1.3's of `Vec<(Vec<u8>, Vec<u8>)>`, the form older
    /// versions wrote and sent.
    #[test]
    fn the_encoding_is_the_one_older_versions_used() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), Vec::new()),
            (b"k/x".to_vec(), vec![0, 255, 7]),
        ];
        let old = bincode::serialize(&pairs).expect("bincode");
        assert_eq!(sample().encode(), old);
        assert_eq!(SnapshotData::decode(&old).expect("decode"), sample());
    }

    #[test]
    fn decode_rejects_truncated_trailing_and_unordered_input() {
        let bytes = sample().encode();
        let err = SnapshotData::decode(&bytes[..bytes.len() - 1]).expect_err("truncated");
        assert!(err.0.contains("runs past the end"), "{err}");
        assert!(SnapshotData::decode(&[0xff; 8]).is_err());
        let mut long = bytes.clone();
        long.push(0);
        let err = SnapshotData::decode(&long).expect_err("trailing");
        assert!(err.0.contains("1 bytes after the last pair"), "{err}");
        let swapped: Vec<(Vec<u8>, Vec<u8>)> =
            vec![(b"b".to_vec(), Vec::new()), (b"a".to_vec(), Vec::new())];
        let err = SnapshotData::decode(&bincode::serialize(&swapped).expect("bincode"))
            .expect_err("unordered");
        assert!(err.0.contains("out of order"), "{err}");
    }
}
