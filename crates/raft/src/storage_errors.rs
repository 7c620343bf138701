//! A store's own error, as the `StorageError` openraft expects, one function per
//! kind of I/O; shared by the sled and memory log stores.

use openraft::{AnyError, StorageError, StorageIOError};

use crate::types::NodeId;

pub(crate) fn read_logs<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

pub(crate) fn write_logs<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

pub(crate) fn read_vote<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::read_vote(AnyError::new(&e)).into()
}

pub(crate) fn write_vote<E: std::error::Error + 'static>(e: E) -> StorageError<NodeId> {
    StorageIOError::write_vote(AnyError::new(&e)).into()
}
