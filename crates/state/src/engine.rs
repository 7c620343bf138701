//! The storage seam: the state machine reads and writes through [`Engine`], so the
//! same apply logic runs over sled on a real node and over memory in tests.
//!
//! An engine is an ordered map of byte strings with atomic batches. `write` applies
//! a whole [`Batch`] or none of it; `flush` returns once everything written before
//! it is durable.

use std::collections::BTreeMap;
use std::sync::RwLock;

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
    /// Returns once every write made before the call is durable.
    fn flush(&self) -> Result<(), EngineError>;
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

    fn flush(&self) -> Result<(), EngineError> {
        (**self).flush()
    }
}

/// An in-memory engine for tests and simulation. `flush` is a no-op.
#[derive(Debug, Default)]
pub struct MemEngine {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// How many pairs a [`MemEngine`] scan copies per lock acquisition: bounded memory
/// for a bounded read, and no lock held while the caller consumes the iterator.
const SCAN_CHUNK: usize = 256;

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Copies up to [`SCAN_CHUNK`] pairs of `(after, end)` (or from `start` when
    /// `after` is `None`) under the read lock.
    fn chunk(
        &self,
        start: &[u8],
        after: Option<&[u8]>,
        end: Option<&[u8]>,
    ) -> Result<Pairs, EngineError> {
        use std::ops::Bound;
        let map = self.map.read().map_err(|_| poisoned())?;
        let lower = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Included(start),
        };
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        if !bounds_ordered(lower, upper) {
            return Ok(Vec::new());
        }
        let pairs = map
            .range::<[u8], _>((lower, upper))
            .take(SCAN_CHUNK)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(pairs)
    }
}

/// `BTreeMap::range` panics on an inverted or empty-excluded range; such a range
/// simply holds nothing.
fn bounds_ordered(lower: std::ops::Bound<&[u8]>, upper: std::ops::Bound<&[u8]>) -> bool {
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
    EngineError("memory engine lock poisoned".into())
}

impl Engine for MemEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let map = self.map.read().map_err(|_| poisoned())?;
        Ok(map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: Option<&[u8]>) -> Box<dyn Iterator<Item = ScanItem> + '_> {
        Box::new(MemScan {
            engine: self,
            start: start.to_vec(),
            end: end.map(<[u8]>::to_vec),
            last: None,
            buf: std::collections::VecDeque::new(),
            done: false,
        })
    }

    fn write(&self, batch: Batch) -> Result<(), EngineError> {
        let mut map = self.map.write().map_err(|_| poisoned())?;
        for (key, value) in batch.ops {
            match value {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// A [`MemEngine`] scan: refills a small buffer, one chunk per lock acquisition,
/// resuming after the last key it returned.
struct MemScan<'a> {
    engine: &'a MemEngine,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    last: Option<Vec<u8>>,
    buf: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl MemScan<'_> {
    fn refill(&mut self) -> Result<(), EngineError> {
        let chunk = self
            .engine
            .chunk(&self.start, self.last.as_deref(), self.end.as_deref())?;
        if chunk.len() < SCAN_CHUNK {
            self.done = true;
        }
        if let Some((k, _)) = chunk.last() {
            self.last = Some(k.clone());
        }
        self.buf.extend(chunk);
        Ok(())
    }
}

impl Iterator for MemScan<'_> {
    type Item = ScanItem;

    fn next(&mut self) -> Option<ScanItem> {
        if self.buf.is_empty() && !self.done {
            if let Err(e) = self.refill() {
                self.done = true;
                return Some(Err(e));
            }
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
    fn scan_does_not_hold_the_lock_while_iterating() {
        let engine = engine_with((0..600u32).map(|i| i.to_be_bytes().to_vec()));
        let mut seen = 0;
        for item in engine.scan(&[], None) {
            item.expect("scan");
            // A writer between items would deadlock if the scan held the lock.
            engine.write(Batch::default()).expect("write");
            seen += 1;
        }
        assert_eq!(seen, 600);
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
        engine.flush().expect("flush");
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
        engine.flush().expect("flush");
    }
}
