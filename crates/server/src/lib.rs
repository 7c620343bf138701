//! One Roster node: its configuration, identity, startup, the etcd v3 gRPC
//! services, request routing to the leader, and the lessor that runs lease clocks.
//!
//! The server knows nothing of storage layout (that is `roster-raft` and
//! `roster-state`); the front end knows nothing of raft beyond "propose" and "read
//! linearizably" ([`route::Router`]).

pub mod auth;
mod batch;
pub mod compactor;
pub mod config;
pub mod drainer;
pub mod etcd;
mod grpc_health;
pub mod handler_api;
pub mod handlers;
pub mod health;
mod http1;
pub mod identity;
mod join;
pub mod lessor;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod observer;
pub mod proposer;
pub mod registry_api;
pub mod registry_watch;
pub mod removal;
pub mod restore;
pub mod route;
pub mod tls;
pub mod url_authority;
pub mod wall_clock;
pub mod watch;

pub use compactor::AutoCompaction;
pub use config::{ClusterState, InitialMember, NodeConfig};
pub use node::{Backend, RunningNode, StartError};
pub use roster_raft::MemoryStorage;
