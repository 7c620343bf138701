//! Generated protobuf and gRPC code for Roster, and nothing else.
//!
//! The `.proto` sources live in the workspace's `proto/` directory and are
//! compiled at build time by `build.rs` (protox + tonic-prost-build, so no
//! system `protoc` is needed). Keeping generated code in its own crate means
//! the rest of the workspace shares one copy of the message types, and the
//! slow code generation is redone only when a `.proto` file changes.
//!
//! Modules mirror protobuf packages:
//! - [`mvccpb`], [`authpb`], [`etcdserverpb`]: the etcd v3.5 client API,
//!   wire-compatible with `etcdctl` and the etcd client libraries.
//! - [`raftpb`]: Roster's internal node-to-node Raft transport
//!   (package `roster.raftpb`).
//! - [`registry`]: the native service-registry API (package `roster.v1`).
//! - [`grpc_health`]: the standard gRPC health protocol (`grpc.health.v1`).

/// etcd storage types: `KeyValue` and `Event` (package `mvccpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd auth records: `User`, `Role`, `Permission` (package `authpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API: KV, Watch, Lease, Cluster, Maintenance and Auth
/// services with their messages (package `etcdserverpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// Internal Raft peer transport (package `roster.raftpb`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod raftpb {
    tonic::include_proto!("roster.raftpb");
}

/// Roster's native service-registry API (package `roster.v1`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod registry {
    tonic::include_proto!("roster.v1");
}

/// The standard gRPC health-checking protocol (package `grpc.health.v1`):
/// what Roster's grpc health checks call.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod grpc_health {
    tonic::include_proto!("grpc.health.v1");
}

/// Encoded `google.protobuf.FileDescriptorSet` of every `.proto` file in this
/// crate (imports and source info included), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/roster_descriptor.bin"));
