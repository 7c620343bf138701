//! openraft's storage conformance suite against the sled store, each store in a
//! fresh temporary directory (sled's own temporary mode is never used: it skips
//! syncing).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use roster_raft::{open_storage, LogStore, NodeId, StateStore, StorageOptions, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateStore, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateStore), StorageError<NodeId>> {
        let io_err = |e: &dyn std::error::Error| StorageIOError::write(AnyError::error(e));
        let dir = TempDir::new().map_err(|e| io_err(&e))?;
        let opts = StorageOptions {
            dir: dir.path().to_path_buf(),
            cache_capacity: 8 * 1024 * 1024,
        };
        let observer = Arc::new(common::Recorder::default());
        let storage = tokio::task::spawn_blocking(move || open_storage(opts, observer))
            .await
            .map_err(|e| io_err(&e))?
            .map_err(|e| io_err(&e))?;
        // The TempDir is the guard: the suite keeps it alive for the whole test.
        Ok((dir, storage.log, storage.state))
    }
}

/// Runs on a plain thread: the suite builds its own tokio runtime per case.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(SledBuilder).unwrap();
}
