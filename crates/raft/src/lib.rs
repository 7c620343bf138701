//! Raft for Roster, on openraft 0.9: the type config, sled-backed durable log and
//! vote storage, the adapter that drives `roster-state`'s state machine, and the
//! gRPC peer transport. An in-memory storage ([`open_memory_storage`],
//! [`MemoryStorage`]) builds the same node for tests and simulation.
//!
//! Durability rule (DESIGN.md, "Persistence"): an append or a vote is reported to
//! openraft only after sled's `flush` *and* an fsync of sled's data file through a
//! handle of our own (sled 0.34 flushes with `sync_file_range`, which covers neither
//! the drive cache nor metadata). One flush covers every append waiting at that
//! moment (group commit), done off the async runtime threads.

mod log_store;
mod mem_log_store;
mod mem_storage;
pub mod network;
pub mod runtime;
mod sled_engine;
mod sled_log_store;
mod state_backend;
mod state_store;
mod storage;
mod storage_errors;
pub mod transport;
mod types;

pub use log_store::LogStore;
pub use mem_log_store::MemLogError;
pub use mem_storage::{open_memory_storage, MemoryStorage};
pub use roster_state::DynEngine;
pub use state_store::{SharedState, StateStore};
pub use storage::{open_storage, OpenError, Storage, StorageOptions, DEFAULT_CACHE_CAPACITY};
pub use types::{ApplyObserver, Member, NodeId, Raft, TypeConfig};
