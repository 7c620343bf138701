//! The write-ahead log: raft entries as records appended to segment files, the
//! way etcd's WAL keeps them, instead of as values in sled.
//!
//! Why not sled: a sled insert of an entry (a batch of up to a thousand commands)
//! copies pages, and sled's flush writes and syncs its whole page log, so under a
//! put load the raft log cost each node more CPU than the state machine and put
//! a multi-fsync flush on every write's path. An append-only file costs one
//! `write` per append and one `fdatasync` per group of appends.
//!
//! Layout: `<dir>/<first index, 20 digits>.wal` segment files, each starting with
//! [`MAGIC`], then records `[len u32][crc32 u32][kind u8][payload]` (little
//! endian; the CRC covers kind and payload). An entry record's payload is the
//! index (u64, big endian) and the caller's bytes; a committed record's payload
//! is the caller's bytes. Appends go to the last segment; when it reaches the
//! segment size the next append starts a new one (the old one is synced first).
//!
//! Indexes must ascend; a gap (which raft never makes, but openraft's storage
//! suite does) is kept as holes that read as absent.
//!
//! Recovery reads every segment in order. A record cut short or failing its CRC
//! at the end of the last segment is a write that a crash interrupted, never
//! acknowledged (acknowledgement waits for the sync): the file is cut there.
//! The same anywhere else is corruption, and opening fails naming the file and
//! offset. Entries at or below the purge point are skipped.
//!
//! Truncation cuts the segment holding the first removed entry with
//! `ftruncate` (made durable by the `fdatasync` of the append that follows) and
//! deletes later segments, syncing the directory at once so that a deleted
//! segment can never come back with stale entries. Purging deletes segments
//! whose entries are all purged; one that comes back after a crash is skipped
//! by the purge point.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Every segment starts with these bytes.
const MAGIC: &[u8; 8] = b"RSTRWAL1";
/// Record header: length, CRC, kind.
const HEADER: usize = 9;
const KIND_ENTRY: u8 = 1;
const KIND_COMMITTED: u8 = 2;
/// Segments roll over at about this size.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// No record is larger (an entry is bounded far below by the proposer and the
/// peer transport); a larger length field is corruption.
const MAX_RECORD: usize = 256 * 1024 * 1024;

/// A failure of the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("WAL segment {} is corrupt at offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("WAL append of entry {got} after entry {last}: truncate first to replace entries")]
    NotAscending { last: u64, got: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `Loc::segment` of an index that has no entry: raft appends consecutively,
/// but openraft's storage suite also appends past a gap, which a store must
/// accept, so a gap is kept as holes.
const HOLE: u64 = u64::MAX;

/// Where one entry's bytes are.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// Position of the segment in `segments`, counted from the first segment
    /// ever opened (see `Wal::dropped`).
    segment: u64,
    /// Offset of the entry's caller bytes in the segment.
    offset: u64,
    len: u32,
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

/// The log. Not thread-safe by itself: the log store holds it under a mutex and
/// syncs through [`Wal::sync_handle`] outside that mutex.
pub(crate) struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Segments deleted from the front so far (keeps `Loc::segment` stable).
    dropped: u64,
    /// Index of the entry at `locs[0]`.
    first: u64,
    locs: VecDeque<Loc>,
    committed: Option<Vec<u8>>,
}

/// One record read back.
enum Record<'a> {
    Entry(u64, &'a [u8]),
    Committed(&'a [u8]),
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing), skipping entries at or below
    /// `purged` (raft's log starts at index 0: `None` is "nothing purged").
    /// Blocking.
    pub(crate) fn open(
        dir: &Path,
        purged: Option<u64>,
        segment_bytes: u64,
    ) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: VecDeque::new(),
            dropped: 0,
            first: purged.map_or(0, |p| p + 1),
            locs: VecDeque::new(),
            committed: None,
        };
        let paths = segment_paths(dir)?;
        let count = paths.len();
        for (i, (first, path)) in paths.into_iter().enumerate() {
            wal.load_segment(first, path, purged, i + 1 == count)?;
        }
        Ok(wal)
    }

    /// Index of the first entry held (the next to append if none is held).
    pub(crate) fn first_index(&self) -> u64 {
        self.first
    }

    /// Index of the last entry held, if any.
    pub(crate) fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// The bytes of the last committed record, if any survives.
    pub(crate) fn committed(&self) -> Option<&[u8]> {
        self.committed.as_deref()
    }

    /// Appends entries (ascending, after the last one held, or anything when
    /// none is held). Written, not yet durable: see [`Wal::sync_handle`].
    pub(crate) fn append(&mut self, entries: &[(u64, Vec<u8>)]) -> Result<(), WalError> {
        self.check_ascending(entries)?;
        let Some((first, _)) = entries.first() else {
            return Ok(());
        };
        if self.locs.is_empty() {
            self.first = *first;
        }
        let mut buf = Vec::new();
        let mut offsets = Vec::with_capacity(entries.len());
        for (index, bytes) in entries {
            push_record(&mut buf, KIND_ENTRY, &[&index.to_be_bytes(), bytes]);
            offsets.push((buf.len() - bytes.len(), bytes.len()));
        }
        let (segment, base) = self.write(*first, &buf)?;
        for ((index, _), (offset, len)) in entries.iter().zip(offsets) {
            self.fill_gap_before(*index);
            self.locs.push_back(Loc {
                segment,
                offset: base + offset as u64,
                len: len as u32,
            });
        }
        Ok(())
    }

    /// Writes a committed record (the caller's bytes), not yet durable.
    pub(crate) fn write_committed(&mut self, bytes: Vec<u8>) -> Result<(), WalError> {
        let mut buf = Vec::new();
        push_record(&mut buf, KIND_COMMITTED, &[&bytes]);
        let next = self.last_index().map_or(self.first, |l| l + 1);
        self.write(next, &buf)?;
        self.committed = Some(bytes);
        Ok(())
    }

    /// Writes `buf` at the end of the current segment, first starting one at
    /// index `next` if there is none or it is full; returns the segment's id and
    /// the offset `buf` went to.
    fn write(&mut self, next: u64, buf: &[u8]) -> Result<(u64, u64), WalError> {
        if self
            .segments
            .back()
            .is_none_or(|s| s.len >= self.segment_bytes)
        {
            self.roll(next)?;
        }
        let segment = self.current_id();
        let seg = self.segments.back_mut().ok_or_else(|| missing(&self.dir))?;
        let base = seg.len;
        seg.file
            .write_all_at(buf, base)
            .map_err(io_err(&seg.path))?;
        seg.len += buf.len() as u64;
        Ok((segment, base))
    }

    /// Holes for the indexes between the last one held and `index`.
    fn fill_gap_before(&mut self, index: u64) {
        if let Some(last) = self.last_index() {
            for _ in last + 1..index {
                self.locs.push_back(Loc {
                    segment: HOLE,
                    offset: 0,
                    len: 0,
                });
            }
        }
    }

    fn check_ascending(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), WalError> {
        let mut last = self.last_index();
        for (index, _) in entries {
            if let Some(l) = last.filter(|l| index <= l) {
                return Err(WalError::NotAscending {
                    last: l,
                    got: *index,
                });
            }
            last = Some(*index);
        }
        Ok(())
    }

    /// The bytes of entry `index`, if held. Blocking (reads the file).
    pub(crate) fn read(&self, index: u64) -> Result<Option<Vec<u8>>, WalError> {
        let Some(loc) = index
            .checked_sub(self.first)
            .and_then(|i| self.locs.get(i as usize))
            .filter(|l| l.segment != HOLE)
        else {
            return Ok(None);
        };
        let seg = self.segment(loc.segment)?;
        let mut bytes = vec![0; loc.len as usize];
        seg.file
            .read_exact_at(&mut bytes, loc.offset)
            .map_err(io_err(&seg.path))?;
        Ok(Some(bytes))
    }

    /// Removes every entry with index `from` or above. The cut is durable with
    /// the next sync; deleted segments are gone durably before this returns.
    pub(crate) fn truncate(&mut self, from: u64) -> Result<(), WalError> {
        let keep = from.saturating_sub(self.first) as usize;
        if keep >= self.locs.len() {
            return Ok(());
        }
        let first_real = self.locs.range(keep..).find(|l| l.segment != HOLE).copied();
        self.locs.truncate(keep);
        while self.locs.back().is_some_and(|l| l.segment == HOLE) {
            self.locs.pop_back();
        }
        let Some(cut) = first_real else {
            return Ok(());
        };
        let mut deleted = false;
        while let Some(last) = self.segments.back() {
            if self.current_id() < cut.segment {
                break;
            }
            let whole = self.current_id() > cut.segment || last.first >= from;
            if !whole {
                let at = cut.offset - HEADER as u64 - 8;
                last.file.set_len(at).map_err(io_err(&last.path))?;
                if let Some(l) = self.segments.back_mut() {
                    l.len = at;
                }
                break;
            }
            std::fs::remove_file(&last.path).map_err(io_err(&last.path))?;
            self.segments.pop_back();
            deleted = true;
        }
        if self.locs.is_empty() {
            self.first = from.min(self.first);
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        if let Some(c) = self.committed.clone() {
            // The cut may have taken the latest committed record with it.
            self.write_committed(c)?;
        }
        Ok(())
    }

    /// Forgets entries up to `upto` and deletes the segments holding only such
    /// entries (never the last one). The caller records the purge point durably
    /// first: recovery skips what a deleted segment that came back holds.
    pub(crate) fn purge(&mut self, upto: u64) -> Result<(), WalError> {
        let drop_count = (upto + 1).saturating_sub(self.first) as usize;
        let drop_count = drop_count.min(self.locs.len());
        self.locs.drain(..drop_count);
        self.first = self.first.max(upto + 1);
        while self.segments.len() > 1 && self.segments[1].first <= upto + 1 {
            if let Some(old) = self.segments.pop_front() {
                std::fs::remove_file(&old.path).map_err(io_err(&old.path))?;
                self.dropped += 1;
            }
        }
        Ok(())
    }

    /// A handle whose `sync_data` makes everything appended so far durable: the
    /// current segment (older ones were synced when they were closed).
    pub(crate) fn sync_handle(&self) -> Option<Arc<File>> {
        self.segments.back().map(|s| s.file.clone())
    }

    fn current_id(&self) -> u64 {
        self.dropped + self.segments.len() as u64 - 1
    }

    fn segment(&self, id: u64) -> Result<&Segment, WalError> {
        id.checked_sub(self.dropped)
            .and_then(|i| self.segments.get(i as usize))
            .ok_or_else(|| missing(&self.dir))
    }

    /// Closes the current segment (synced whole) and starts one at `first`.
    fn roll(&mut self, first: u64) -> Result<(), WalError> {
        if self.segments.back().is_some_and(|s| s.first == first) {
            // A segment of that name holds no entry yet: keep writing to it.
            return Ok(());
        }
        if let Some(old) = self.segments.back() {
            old.file.sync_all().map_err(io_err(&old.path))?;
        }
        let path = self.dir.join(segment_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(MAGIC).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            len: MAGIC.len() as u64,
        });
        if let Some(c) = self.committed.clone() {
            // The newest segment always carries the latest committed record,
            // so purging older segments never loses it.
            self.write_committed(c)?;
        }
        Ok(())
    }

    /// Reads one segment during `open`.
    fn load_segment(
        &mut self,
        first: u64,
        path: PathBuf,
        purged: Option<u64>,
        last: bool,
    ) -> Result<(), WalError> {
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let corrupt = |offset: u64, reason: &str| WalError::Corrupt {
            path: path.clone(),
            offset,
            reason: reason.to_string(),
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if last && bytes.len() < MAGIC.len() {
                // Created, then a crash before its header was written: nothing
                // was ever appended to it.
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                return Ok(());
            }
            return Err(corrupt(0, "not a WAL segment (bad magic)"));
        }
        let segment = self.dropped + self.segments.len() as u64;
        let mut offset = MAGIC.len();
        let end = loop {
            match parse_record(&bytes[offset..]) {
                Ok(None) => break offset,
                Ok(Some((record, size))) => {
                    self.load_record(record, segment, offset, purged)
                        .map_err(|reason| corrupt(offset as u64, &reason))?;
                    offset += size;
                }
                Err(_) if last => break offset,
                Err(reason) => return Err(corrupt(offset as u64, &reason)),
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if end < bytes.len() {
            tracing::warn!(path = %path.display(), offset = end, "WAL: cutting a torn tail");
            file.set_len(end as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        self.segments.push_back(Segment {
            first,
            path,
            file: Arc::new(file),
            len: end as u64,
        });
        Ok(())
    }

    fn load_record(
        &mut self,
        record: Record<'_>,
        segment: u64,
        offset: usize,
        purged: Option<u64>,
    ) -> Result<(), String> {
        match record {
            Record::Committed(bytes) => self.committed = Some(bytes.to_vec()),
            Record::Entry(index, _) if purged.is_some_and(|p| index <= p) => {}
            Record::Entry(index, bytes) => {
                match self.last_index() {
                    Some(last) if index <= last => {
                        return Err(format!("entry {index} follows entry {last}"))
                    }
                    None => self.first = index,
                    Some(_) => self.fill_gap_before(index),
                }
                self.locs.push_back(Loc {
                    segment,
                    offset: (offset + HEADER + 8) as u64,
                    len: bytes.len() as u32,
                });
            }
        }
        Ok(())
    }
}

fn missing(dir: &Path) -> WalError {
    WalError::Io {
        path: dir.to_path_buf(),
        source: io::Error::other("internal: segment missing for a held entry"),
    }
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// `(first index, path)` of every segment in `dir`, in index order.
fn segment_paths(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = item.map_err(io_err(dir))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

fn push_record(buf: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind]);
    for p in parts {
        crc.update(p);
    }
    // A length above u32 cannot occur: entries are bounded far below MAX_RECORD.
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.push(kind);
    for p in parts {
        buf.extend_from_slice(p);
    }
}

/// The record at the start of `bytes` and its size; `None` at the clean end;
/// an error for a torn or damaged record.
fn parse_record(bytes: &[u8]) -> Result<Option<(Record<'_>, usize)>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let header = bytes.get(..HEADER).ok_or("record header cut short")?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let kind = header[8];
    if len > MAX_RECORD {
        return Err(format!("record length {len} is implausible"));
    }
    let payload = bytes.get(HEADER..HEADER + len).ok_or("record cut short")?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(payload);
    if hasher.finalize() != crc {
        return Err("record checksum mismatch".into());
    }
    let record = match kind {
        KIND_ENTRY if payload.len() >= 8 => {
            let mut index = [0u8; 8];
            index.copy_from_slice(&payload[..8]);
            Record::Entry(u64::from_be_bytes(index), &payload[8..])
        }
        KIND_COMMITTED => Record::Committed(payload),
        other => return Err(format!("unknown record kind {other}")),
    };
    Ok(Some((record, HEADER + len)))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    crate::storage::fsync_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entries(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| (i, format!("entry {i}").into_bytes()))
            .collect()
    }

    fn held(wal: &Wal) -> Vec<String> {
        let Some(last) = wal.last_index() else {
            return Vec::new();
        };
        (wal.first_index()..=last)
            .map(|i| String::from_utf8(wal.read(i).unwrap().unwrap()).unwrap())
            .collect()
    }

    fn names(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|i| format!("entry {i}")).collect()
    }

    #[test]
    fn entries_and_committed_survive_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(dir.path(), None, 64).unwrap();
            for i in 1..=10 {
                if i == 7 {
                    wal.write_committed(b"c7".to_vec()).unwrap();
                }
                wal.append(&entries(i..=i)).unwrap();
            }
            assert!(wal.segments.len() > 2, "small segments roll over");
        }
        let wal = Wal::open(dir.path(), None, 64).unwrap();
        assert_eq!(held(&wal), names(1..=10));
        assert_eq!(wal.committed(), Some(&b"c7"[..]));
    }

    #[test]
    fn a_log_that_starts_at_index_zero_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        wal.append(&entries(0..=2)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(held(&wal), names(0..=2), "raft's first entry is index 0");
        let wal = Wal::open(dir.path(), Some(0), SEGMENT_BYTES).unwrap();
        assert_eq!(held(&wal), names(1..=2), "purged up to 0");
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
            wal.append(&entries(1..=3)).unwrap();
            wal.segments[0].path.clone()
        };
        let full = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - 3).unwrap();
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(held(&wal), names(1..=2), "the torn third entry is gone");
        wal.append(&entries(3..=4)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(held(&wal), names(1..=4));
    }

    #[test]
    fn damage_before_the_last_segment_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut wal = Wal::open(dir.path(), None, 64).unwrap();
            for i in 1..=6 {
                wal.append(&entries(i..=i)).unwrap();
            }
            wal.segments[0].path.clone()
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = Wal::open(dir.path(), None, 64).err().unwrap().to_string();
        assert!(err.contains("corrupt") && err.contains(".wal"), "{err}");
    }

    #[test]
    fn truncation_cuts_inside_a_segment_and_deletes_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, 100).unwrap();
        for i in 1..=12 {
            wal.append(&entries(i..=i)).unwrap();
        }
        wal.truncate(5).unwrap();
        assert_eq!(wal.last_index(), Some(4));
        wal.append(&[(5, b"new 5".to_vec())]).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), None, 100).unwrap();
        let mut want = names(1..=4);
        want.push("new 5".into());
        assert_eq!(held(&wal), want);
    }

    #[test]
    fn an_append_must_come_after_the_last_entry_and_may_leave_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        wal.append(&entries(1..=2)).unwrap();
        let err = wal.append(&entries(2..=3)).err().unwrap();
        assert!(matches!(err, WalError::NotAscending { last: 2, got: 2 }));
        wal.append(&entries(4..=4)).unwrap();
        let read = |wal: &Wal| {
            (1..=4)
                .map(|i| wal.read(i).unwrap().is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(read(&wal), [true, true, false, true], "3 is a hole");
        drop(wal);
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        assert_eq!(
            read(&wal),
            [true, true, false, true],
            "also after reopening"
        );
        wal.truncate(4).unwrap();
        assert_eq!(wal.last_index(), Some(2), "no trailing hole is left");
    }

    #[test]
    fn purging_deletes_old_segments_and_reopen_skips_purged_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, 64).unwrap();
        for i in 1..=10 {
            wal.append(&entries(i..=i)).unwrap();
        }
        let before = wal.segments.len();
        wal.purge(6).unwrap();
        assert!(wal.segments.len() < before, "whole purged segments deleted");
        assert_eq!(held(&wal), names(7..=10));
        drop(wal);
        let wal = Wal::open(dir.path(), Some(6), 64).unwrap();
        assert_eq!(held(&wal), names(7..=10));
        assert_eq!(wal.first_index(), 7);
    }

    #[test]
    fn purging_everything_keeps_the_next_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).unwrap();
        wal.append(&entries(1..=3)).unwrap();
        wal.purge(3).unwrap();
        assert_eq!((wal.first_index(), wal.last_index()), (4, None));
        wal.append(&entries(4..=4)).unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), Some(3), SEGMENT_BYTES).unwrap();
        assert_eq!(held(&wal), names(4..=4));
    }
}
