//! The etcd v3 API on the client port: KV, Lease, Cluster and Maintenance,
//! wire-compatible so that `etcdctl` and etcd's client libraries work unchanged.
//!
//! Each service is a thin translation: validate the request as etcd does, turn it
//! into a [`roster_state::Command`] (through the [`Router`]) or a read of the local
//! state machine, and answer with etcd's header and etcd's error messages.

mod auth;
mod cluster;
mod errors;
mod kv;
mod lease;
mod maintenance;
mod txn;
mod watch;

use roster_proto::etcdserverpb::ResponseHeader;
use roster_raft::{Raft, SharedState};
use roster_state::auth::{Access, Caller};
use roster_state::StateMachine;
use tonic::Status;

pub use errors::{engine_status as fail_engine, roster_status, route_status, state_status};
pub(crate) use kv::unexpected;
pub use maintenance::API_VERSION;

use crate::route::Router;

/// The gRPC metadata key clients send their token in (etcd's).
pub const TOKEN_METADATA: &str = "token";

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// The gRPC message limit on the client port: the request limit plus etcd's
/// 512 KiB allowance for the envelope.
pub const MAX_GRPC_MESSAGE: usize = MAX_REQUEST_BYTES + 512 * 1024;

/// What every etcd service of one node shares. Cheap to clone.
#[derive(Clone)]
pub struct EtcdApi {
    pub(crate) raft: Raft,
    pub(crate) state: SharedState,
    pub(crate) router: Router,
    pub(crate) cluster_id: u64,
    pub(crate) member_id: u64,
    /// Lease TTLs below this are raised to it (seconds).
    pub(crate) min_lease_ttl: i64,
    /// The node's data dir, for the db size in `Status`.
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) watch: WatchSettings,
    /// How long a token from Authenticate is valid.
    pub(crate) token_ttl: std::time::Duration,
}

/// What the Watch service needs beyond the rest.
#[derive(Clone)]
pub struct WatchSettings {
    pub hub: std::sync::Arc<crate::watch::WatchHub>,
    /// Period of progress notifications to watchers that asked for them.
    pub progress_interval: std::time::Duration,
    /// A require-leader stream ends once its node has had no leader this long.
    pub no_leader_after: std::time::Duration,
}

impl EtcdApi {
    /// etcd's response header at `revision`.
    pub(crate) fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        })
    }

    /// Reads the local state machine under its lock.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&StateMachine<roster_raft::DynEngine>) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let sm = self
            .state
            .read()
            .map_err(|_| Status::internal("state machine lock poisoned"))?;
        f(&sm)
    }

    /// The current revision of the local state machine.
    pub(crate) fn revision(&self) -> Result<i64, Status> {
        self.read(|sm| Ok(sm.revision()))
    }

    /// Who sent `req`: the caller its `token` names, while auth is on and the
    /// token is genuine and unexpired (`None` without a token or with auth
    /// off: etcd ignores tokens then). Whether the caller may do what it asks
    /// is decided against the state (`authorize*`, and again at apply).
    pub(crate) fn caller<T>(&self, req: &tonic::Request<T>) -> Result<Option<Caller>, Status> {
        let Some(token) = req.metadata().get(TOKEN_METADATA) else {
            return Ok(None);
        };
        let status = self.read(|sm| sm.auth_status().map_err(errors::engine_status))?;
        if !status.enabled {
            return Ok(None);
        }
        let token = token.to_str().map_err(|_| errors::invalid_token())?;
        crate::auth::verify(&status.token_key, token, crate::wall_clock::now_ms())
            .map(Some)
            .ok_or_else(errors::invalid_token)
    }

    /// Refuses `caller` unless it may do `access` on `[key, range_end)`;
    /// errors mapped by `error_status`.
    pub(crate) fn authorize_keys(
        &self,
        caller: Option<&Caller>,
        access: Access,
        (key, range_end): (&[u8], &[u8]),
        error_status: fn(&roster_state::StateError) -> Status,
    ) -> Result<(), Status> {
        self.read(|sm| {
            sm.authorize_keys(caller, access, key, range_end)
                .map_err(|fail| errors::fail_status_with(fail, error_status))
        })
    }

    /// Refuses `caller` unless it is root (anyone, while auth is off), with
    /// etcd's errors.
    pub(crate) fn authorize_admin(&self, caller: Option<&Caller>) -> Result<(), Status> {
        self.authorize_admin_mapped(caller, errors::state_status)
    }

    /// [`EtcdApi::authorize_admin`] with the API's own mapping of errors.
    pub(crate) fn authorize_admin_mapped(
        &self,
        caller: Option<&Caller>,
        error_status: fn(&roster_state::StateError) -> Status,
    ) -> Result<(), Status> {
        self.read(|sm| {
            sm.authorize_admin(caller)
                .map_err(|fail| errors::fail_status_with(fail, error_status))
        })
    }

    /// Makes a following local read linearizable unless `serializable`.
    pub(crate) async fn before_read(&self, serializable: bool) -> Result<(), Status> {
        if serializable {
            return Ok(());
        }
        self.router.linearize().await.map_err(route_status)
    }
}
