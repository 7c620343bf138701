//! Raft for Roster, on openraft 0.9: the type config, the write-ahead log that
//! holds the raft log and vote, the adapter that drives `roster-state`'s state
//! machine (in memory, made durable by snapshot files and the log), and the gRPC peer transport. An in-memory storage
//! ([`open_memory_storage`], [`MemoryStorage`]) builds the same node for tests and
//! simulation.
//!
//! Durability rule (DESIGN.md, "Persistence"): an append or a vote is reported to
//! openraft only once it is on disk: appends after an `fdatasync` of the WAL
//! segment (one sync covers every append waiting at that moment: group commit,
//! on a thread of its own), the vote by an atomic, synced file replacement. The
//! state machine is in memory: at start it is loaded from its newest snapshot
//! file and caught up by re-applying the log after it; a snapshot is synced
//! before the log entries it covers may be purged.

pub mod backup;
mod log_store;
mod mem_log_store;
mod mem_storage;
pub mod network;
pub mod runtime;
mod sled_import;
mod snapshot_files;
mod state_backend;
mod state_store;
mod storage;
mod storage_errors;
pub mod transport;
mod types;
mod wal;
mod wal_log_store;

pub use log_store::LogStore;
pub use mem_log_store::MemLogError;
pub use mem_storage::{open_memory_storage, MemoryStorage};
pub use roster_state::DynEngine;
pub use state_store::{SharedState, StateStore};
pub use storage::{open_storage, OpenError, Storage, StorageOptions, DEFAULT_CACHE_CAPACITY};
pub use types::{ApplyObserver, Member, NodeId, Raft, TypeConfig};
