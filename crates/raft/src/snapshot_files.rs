//! The current snapshot on disk: what makes the in-memory state machine durable.
//!
//! The state machine lives in memory and is not written per entry. After a
//! crash a node loads its newest snapshot file and openraft replays the log
//! entries after it from the WAL. So a snapshot must be on disk, synced, before
//! openraft may purge the entries it covers: [`SnapshotFiles::save`] returns only
//! then.
//!
//! Layout: `<dir>/<counter>.snap` (counter zero-padded to 20 digits, so names
//! sort by age). A file is
//!
//! ```text
//! "RSTRSNP1" | meta length (u32 LE) | meta (bincode) | data | CRC-32 of all before (u32 LE)
//! ```
//!
//! where data is the state machine's encoded snapshot, the bytes openraft sends
//! to followers. A new file is written as `<name>.tmp`, synced, renamed into
//! place and the directory synced; then older files are removed. A `.tmp` left
//! by a crash is removed at open. A damaged newest file refuses the start,
//! naming the file: it was complete when renamed, so damage means the disk lost
//! data, and an older state would silently undo acknowledged writes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::SnapshotMeta;

use crate::types::{Member, NodeId};

const MAGIC: &[u8; 8] = b"RSTRSNP1";
const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

type Meta = SnapshotMeta<NodeId, Member>;

/// Reading or writing a snapshot file failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot file {} is damaged: {what}", path.display())]
    Corrupt { path: PathBuf, what: String },
    #[error("encoding snapshot meta: {0}")]
    Encode(#[from] bincode::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotFileError + '_ {
    move |source| SnapshotFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot directory of one node. Clones share the counter.
#[derive(Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    /// The counter of the next file; above every file's on disk.
    next: Arc<AtomicU64>,
    /// The data dir's lock, held as long as the storage is open (see
    /// `storage::lock_dir`).
    dir_lock: Option<Arc<File>>,
}

impl SnapshotFiles {
    /// Opens (or creates) `dir` and removes what a crash left half written.
    /// Blocking.
    pub(crate) fn open(dir: &Path) -> Result<Self, SnapshotFileError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let mut next = 0;
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            let name = file_name(&path);
            if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else if let Some(counter) = counter_of(&name) {
                next = next.max(counter + 1);
            }
        }
        Ok(SnapshotFiles {
            dir: dir.to_path_buf(),
            next: Arc::new(AtomicU64::new(next)),
            dir_lock: None,
        })
    }

    /// Keeps the data dir's lock for as long as any clone lives.
    pub(crate) fn holding(mut self, lock: File) -> Self {
        self.dir_lock = Some(Arc::new(lock));
        self
    }

    /// A number no snapshot of this node had before, also across restarts (the
    /// newest file's counter is above every earlier one's).
    pub(crate) fn next_counter(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// Writes the snapshot as the current one and returns once it is durable;
    /// older files are removed after. Blocking.
    pub(crate) fn save(&self, meta: &Meta, data: &[u8]) -> Result<(), SnapshotFileError> {
        let counter = self.next_counter();
        let name = format!("{counter:020}");
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let path = self.dir.join(format!("{name}{SUFFIX}"));
        let header = header(meta, &path)?;
        let mut crc = crc32fast::Hasher::new();
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        for part in [&header[..], data] {
            crc.update(part);
            file.write_all(part).map_err(io_err(&tmp))?;
        }
        file.write_all(&crc.finalize().to_le_bytes())
            .map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.remove_older_than(counter)
    }

    fn remove_older_than(&self, counter: u64) -> Result<(), SnapshotFileError> {
        for path in self.files()? {
            if counter_of(&file_name(&path)).is_some_and(|c| c < counter) {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    /// The `.snap` files, any order.
    fn files(&self) -> Result<Vec<PathBuf>, SnapshotFileError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            if counter_of(&file_name(&path)).is_some() {
                files.push(path);
            }
        }
        Ok(files)
    }

    /// The newest snapshot's meta and data, if there is one. Blocking.
    pub(crate) fn load(&self) -> Result<Option<(Meta, Vec<u8>)>, SnapshotFileError> {
        let newest = self
            .files()?
            .into_iter()
            .max_by_key(|path| counter_of(&file_name(path)));
        let Some(path) = newest else {
            return Ok(None);
        };
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        parse(&bytes)
            .map(Some)
            .map_err(|what| SnapshotFileError::Corrupt { path, what })
    }
}

/// Appends a whole snapshot file's bytes for `meta` and `data` to `out` (a
/// backup carries one; see `backup`).
pub(crate) fn frame_into(
    out: &mut Vec<u8>,
    meta: &Meta,
    data: &roster_state::SnapshotData,
) -> Result<(), SnapshotFileError> {
    let start = out.len();
    out.extend_from_slice(&header(meta, Path::new("(backup)"))?);
    data.encode_into(out);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What comes before the data in a snapshot file: magic, meta length, meta.
/// `path` only names the file in an error.
fn header(meta: &Meta, path: &Path) -> Result<Vec<u8>, SnapshotFileError> {
    let meta = bincode::serialize(meta)?;
    let meta_len = u32::try_from(meta.len()).map_err(|_| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        what: format!("meta of {} bytes is too large", meta.len()),
    })?;
    let mut header = Vec::with_capacity(MAGIC.len() + 4 + meta.len());
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&meta_len.to_le_bytes());
    header.extend_from_slice(&meta);
    Ok(header)
}

/// Whether `bytes` begin like a snapshot file.
pub(crate) fn is_snapshot_file(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Splits a file's bytes into meta and data, checking magic, lengths and CRC.
pub(crate) fn parse(bytes: &[u8]) -> Result<(Meta, Vec<u8>), String> {
    let header = MAGIC.len() + 4;
    if bytes.len() < header + 4 {
        return Err(format!(
            "{} bytes is shorter than any snapshot",
            bytes.len()
        ));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a Roster snapshot file (bad magic)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != stored {
        return Err("checksum mismatch".into());
    }
    let len_bytes = &body[MAGIC.len()..header];
    let meta_len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    let meta_end = header
        .checked_add(meta_len as usize)
        .filter(|&end| end <= body.len())
        .ok_or_else(|| format!("meta length {meta_len} runs past the end"))?;
    let meta = bincode::deserialize(&body[header..meta_end]).map_err(|e| format!("meta: {e}"))?;
    Ok((meta, body[meta_end..].to_vec()))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The counter of a `<counter>.snap` name.
fn counter_of(name: &str) -> Option<u64> {
    name.strip_suffix(SUFFIX)?.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotFileError> {
    crate::storage::fsync_dir(dir).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openraft::{LogId, StoredMembership};

    fn meta(index: u64) -> Meta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("2-{index}-0"),
        }
    }

    #[test]
    fn the_newest_save_is_loaded_and_older_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        assert!(files.load().unwrap().is_none());
        files.save(&meta(5), b"five").unwrap();
        files.save(&meta(9), b"nine").unwrap();
        let (m, data) = files.load().unwrap().unwrap();
        assert_eq!((m, data), (meta(9), b"nine".to_vec()));
        assert_eq!(files.files().unwrap().len(), 1);
        // Reopened, the counter continues above the file on disk.
        let reopened = SnapshotFiles::open(dir.path()).unwrap();
        assert_eq!(reopened.next_counter(), 2);
        assert_eq!(reopened.load().unwrap().unwrap().1, b"nine".to_vec());
    }

    #[test]
    fn a_leftover_tmp_file_is_removed_and_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        files.save(&meta(5), b"five").unwrap();
        fs::write(dir.path().join("00000000000000000007.snap.tmp"), b"half").unwrap();
        let reopened = SnapshotFiles::open(dir.path()).unwrap();
        assert_eq!(reopened.load().unwrap().unwrap().1, b"five".to_vec());
        assert!(!dir.path().join("00000000000000000007.snap.tmp").exists());
    }

    #[test]
    fn a_damaged_file_refuses_to_load_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::open(dir.path()).unwrap();
        files.save(&meta(5), b"some state").unwrap();
        let path = files.files().unwrap().remove(0);
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains(&file_name(&path)), "{err}");
        fs::write(&path, &bytes[..10]).unwrap();
        let err = files.load().unwrap_err().to_string();
        assert!(err.contains("shorter than any snapshot"), "{err}");
    }
}
