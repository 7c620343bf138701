//! The storage seam: the state machine reads and writes through [`Engine`], so the
//! apply logic does not care how the map is held, and tests can wrap the engine
//! to count or fail writes.
//!
//! An engine is an ordered map of byte strings with atomic batches. `write` applies
//! a whole [`Batch`] or none of it. `snapshot` takes a frozen copy of the whole
//! map that later writes do not change.
//!
//! The one engine, [`MemEngine`], keeps the map in memory as a persistent
//! B-tree (`imbl::OrdMap`): a copy shares every node with the original and a
//! write copies only the path it changes, so a snapshot costs one reference
//! count however large the state, and is encoded and written to disk while
//! apply goes on. Durability is not the engine's: a node writes snapshot
//! files and replays its write-ahead log after them (see `roster-raft`).
//! Keys and values are reference-counted slices so that copying a shared node
//! copies pointers, not bytes.

use std::ops::Bound;
use std::sync::{Arc, RwLock};

use imbl::OrdMap;

use crate::snapshot::SnapshotData;

/// A failure of the storage below the state machine. Never a logical error.
#[derive(Debug, thiserror::Error)]
#[error("storage engine: {0}")]
pub struct EngineError(pub String);

/// Pairs copied out of a scan, in key order.
pub(crate) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One key-value pair returned by a scan.
pub type ScanItem = Result<(Vec<u8>, Vec<u8>), EngineError>;

/// An atomic set of writes. Later operations on the same key win.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// `(key, Some(value))` is a put, `(key, None)` a delete, in order.
    pub ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An ordered byte-string store with atomic batches.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;
    /// Pairs with `start <= key < end` (no upper bound when `end` is `None`), in
    /// ascending key order.
    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_>;
    /// Applies the whole batch atomically.
    fn write(&self, batch: Batch) -> Result<(), EngineError>;
    /// Every pair as of the call, unchanged by later writes.
    fn snapshot(&self) -> Result<SnapshotData, EngineError>;
    /// Replaces every pair by the snapshot's, atomically.
    fn install(&self, snap: SnapshotData) -> Result<(), EngineError>;
}

/// A type-erased engine, so that callers (and the types they name) need not be
/// generic over the backend: sled on a real node, memory in tests and simulation.
pub type DynEngine = Box<dyn Engine>;

impl Engine for Box<dyn Engine> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        (**self).get(key)
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        (**self).scan(start, end)
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        (**self).write(batch)
    }

    fn snapshot(&self) -> Result<SnapshotData, EngineError> {
        (**self).snapshot()
    }

    fn install(&self, snap: SnapshotData) -> Result<(), EngineError> {
        (**self).install(snap)
    }
}

/// A byte string as the map holds it: cloning one is a reference count.
pub(crate) type Bytes = Arc<[u8]>;

/// The map itself; clones share their nodes.
pub(crate) type Map = OrdMap<Bytes, Bytes>;

/// The engine: a persistent ordered map in memory (see the module doc).
#[derive(Debug, Default)]
pub struct MemEngine {
    map: RwLock<Map>,
}

/// The most pairs a scan copies out at once. A scan starts with a few (most
/// reads want one key or a handful) and doubles up to this.
const SCAN_CHUNK: usize = 256;
const FIRST_SCAN_CHUNK: usize = 8;

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// The engine holding exactly the snapshot's pairs.
    pub fn from_snapshot(snap: SnapshotData) -> Self {
        MemEngine {
            map: RwLock::new(snap.into_map()),
        }
    }

    /// A copy of the map: one reference count, under the read lock.
    fn current(&self) -> Result<Map, EngineError> {
        Ok(self.map.read().map_err(|_| poisoned())?.clone())
    }
}

/// Whether a range can hold anything: an inverted or empty-excluded one holds
/// nothing, answered here rather than left to the map (std's `BTreeMap::range`
/// panics on one).
fn bounds_ordered(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    use std::ops::Bound::{Excluded, Included, Unbounded};
    match (lower, upper) {
        (_, Unbounded) | (Unbounded, _) => true,
        (Included(l), Excluded(u)) => l < u,
        (Excluded(l), Excluded(u)) => l < u,
        (Included(l), Included(u)) => l <= u,
        (Excluded(l), Included(u)) => l < u,
    }
}

fn poisoned() -> EngineError {
    EngineError("engine lock poisoned".into())
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map.get(key).map(|v| v.to_vec()))
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        match self.current() {
            Ok(map) => Box::new(MapScan {
                map,
                start: start.to_vec(),
                end: end.map(<[u8]>::to_vec),
                last: None,
                buf: std::collections::VecDeque::new(),
                chunk: FIRST_SCAN_CHUNK,
                done: false,
            }),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        let mut map = self.map.write().map_err(|_| poisoned())?;
        for (key, value) in batch.ops {
            match value {
                Some(v) => map.insert(Bytes::from(key), Bytes::from(v)),
                None => map.remove(key.as_slice()),
            };
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<SnapshotData, EngineError> {
        Ok(SnapshotData::from_map(self.current()?))
    }

    fn install(&self, snap: SnapshotData) -> Result<(), EngineError> {
        *self.map.write().map_err(|_| poisoned())? = snap.into_map();
        Ok(())
    }
}

/// A scan over a copy of the map taken when it began: it sees one state
/// whatever is written meanwhile, and holds no lock. Pairs are copied out a
/// chunk at a time, resuming after the last key returned.
struct MapScan {
    map: Map,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    buf: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    chunk: usize,
    done: bool,
}

impl MapScan {
    fn refill(&mut self) {
        let lower = match &self.last {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Included(self.start.as_slice()),
        };
        let upper = match &self.end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        if !bounds_ordered(lower, upper) {
            self.done = true;
            return;
        }
        let before = self.buf.len();
        let pairs = self.map.range::<_, [u8]>((lower, upper)).take(self.chunk);
        self.buf
            .extend(pairs.map(|(k, v)| (k.to_vec(), v.to_vec())));
        let copied = self.buf.len() - before;
        if copied < self.chunk {
            self.done = true;
        }
        if copied > 0 {
            self.last = self.buf.back().map(|(k, _)| k.clone());
        }
        self.chunk = (self.chunk * 2).min(SCAN_CHUNK);
    }
}

impl Iterator for MapScan {
    type Item = ScanItem;

    fn next(&mut self) -> Option<ScanItem> {
        if self.buf.is_empty() && !self.done {
            self.refill();
        }
        self.buf.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_with(keys: impl IntoIterator<Item = Vec<u8>>) -> MemEngine {
        let engine = MemEngine::new();
        let mut batch = Batch::default();
        for k in keys {
            batch.put(k.clone(), k);
        }
        engine.write(batch).expect("write");
        engine
    }

    fn scan_keys(engine: &MemEngine, start: &[u8], end: Option<&[u8]>) -> Vec<Vec<u8>> {
        engine
            .scan(start, end)
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_, _>>()
            .expect("scan")
    }

    #[test]
    fn scan_spans_many_chunks_in_order() {
        let n = 3 * SCAN_CHUNK + 7;
        let keys: Vec<Vec<u8>> = (0..n as u32).map(|i| i.to_be_bytes().to_vec()).collect();
        let engine = engine_with(keys.clone());
        assert_eq!(scan_keys(&engine, &[], None), keys);
        let (lo, hi) = (&keys[10], &keys[SCAN_CHUNK + 20]);
        assert_eq!(
            scan_keys(&engine, lo, Some(hi)),
            keys[10..SCAN_CHUNK + 20].to_vec()
        );
    }

    #[test]
    fn scan_of_empty_or_inverted_range_is_empty() {
        let engine = engine_with([b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert!(scan_keys(&engine, b"b", Some(b"b")).is_empty());
        assert!(scan_keys(&engine, b"c", Some(b"a")).is_empty());
        assert_eq!(
            scan_keys(&engine, b"b", None),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn scan_sees_the_state_it_began_in_and_holds_no_lock() {
        let engine = engine_with((0..600u32).map(|i| i.to_be_bytes().to_vec()));
        let mut seen = 0;
        for item in engine.scan(&[], None) {
            item.expect("scan");
            // A writer between items would deadlock if the scan held the lock,
            // and the scan would see the new keys if it read the live map.
            let mut batch = Batch::default();
            batch.put(vec![0xff, seen as u8], Vec::new());
            batch.delete(599u32.to_be_bytes().to_vec());
            engine.write(batch).expect("write");
            seen += 1;
        }
        assert_eq!(seen, 600);
        assert_eq!(engine.get(&599u32.to_be_bytes()).expect("get"), None);
    }

    #[test]
    fn dyn_engine_delegates_every_method() {
        let engine: DynEngine = Box::new(engine_with([b"a".to_vec(), b"b".to_vec()]));
        let mut batch = Batch::default();
        batch.put(b"c".to_vec(), b"3".to_vec());
        batch.delete(b"a".to_vec());
        engine.write(batch).expect("write");
        assert_eq!(engine.get(b"c").expect("get"), Some(b"3".to_vec()));
        assert_eq!(engine.get(b"a").expect("get"), None);
        let keys: Vec<_> = engine
            .scan(b"a", Some(b"c"))
            .map(|item| item.map(|(k, _)| k))
            .collect::<Result<_, _>>()
            .expect("scan");
        assert_eq!(keys, vec![b"b".to_vec()]);
        let snap = engine.snapshot().expect("snapshot");
        engine.install(SnapshotData::default()).expect("install");
        assert_eq!(engine.get(b"c").expect("get"), None);
        engine.install(snap).expect("install");
        assert_eq!(engine.get(b"c").expect("get"), Some(b"3".to_vec()));
    }

    #[test]
    fn a_snapshot_is_not_changed_by_later_writes() {
        let engine = engine_with([b"a".to_vec(), b"b".to_vec()]);
        let snap = engine.snapshot().expect("snapshot");
        let mut batch = Batch::default();
        batch.put(b"a".to_vec(), b"changed".to_vec());
        batch.delete(b"b".to_vec());
        batch.put(b"c".to_vec(), b"new".to_vec());
        engine.write(batch).expect("write");
        let pairs: Vec<_> = snap
            .pairs()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (b"a".to_vec(), b"a".to_vec()),
                (b"b".to_vec(), b"b".to_vec())
            ]
        );
        assert_eq!(snap.len(), 2);
    }

    #[test]
    fn batch_applies_in_order_later_ops_win() {
        let engine = engine_with([b"gone".to_vec()]);
        let mut batch = Batch::default();
        batch.put(b"k".to_vec(), b"1".to_vec());
        batch.delete(b"k".to_vec());
        batch.put(b"k".to_vec(), b"2".to_vec());
        batch.delete(b"gone".to_vec());
        engine.write(batch).expect("write");
        assert_eq!(engine.get(b"k").expect("get"), Some(b"2".to_vec()));
        assert_eq!(engine.get(b"gone").expect("get"), None);
    }
}
