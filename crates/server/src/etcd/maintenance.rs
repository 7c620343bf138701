//! etcd `Maintenance`: `Status` (what `etcdctl endpoint status` shows) and an
//! empty alarm list. Snapshot streaming, defragment, hash and leader moves arrive
//! with issue 9.

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use roster_proto::etcdserverpb::maintenance_server::Maintenance;
use roster_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

use super::errors::route_status;
use super::EtcdApi;
use crate::route::RouteError;

/// The etcd API version Roster speaks; clients gate features on it.
pub const API_VERSION: &str = "3.5.0";

/// Backups being encoded at once, in this process.
static BACKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Bytes per `SnapshotResponse` (etcd sends 32 KiB chunks).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

/// Bytes used by the files below `dir` (the WAL and the snapshot files).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn later(what: &str) -> Status {
    Status::unimplemented(format!("roster: {what} is not supported yet"))
}

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Ok(Response::new(AlarmResponse {
            header: self.header(self.revision()?),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let db_size = dir_size(&self.data_dir) as i64;
        let errors = match m.current_leader {
            Some(_) => Vec::new(),
            None => vec!["etcdserver: no leader".to_string()],
        };
        Ok(Response::new(StatusResponse {
            header: self.header(self.revision()?),
            version: API_VERSION.to_string(),
            db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: db_size,
            is_learner: !m
                .membership_config
                .membership()
                .voter_ids()
                .any(|id| id == self.member_id),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(later("Defragment"))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(later("Hash"))
    }

    async fn hash_kv(
        &self,
        _req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Err(later("HashKV"))
    }

    type SnapshotStream = SnapshotStream;

    /// A backup of this member's state. With a leader known, every write
    /// acknowledged before the call is in it (a linearizable read first);
    /// without one (quorum lost), the member's own applied state, because a
    /// backup is what an operator needs most then.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        // A backup holds every key and every password hash: root only.
        self.authorize_admin(self.caller(&req)?.as_ref())?;
        match self.router.linearize().await {
            Ok(()) => {}
            Err(RouteError::NoLeader) => {
                tracing::warn!("snapshot without a leader: this member's applied state")
            }
            Err(e) => return Err(route_status(e)),
        }
        // One backup at a time: each holds the whole encoded state in memory.
        let _one = BACKUPS
            .acquire()
            .await
            .map_err(|_| Status::unavailable("roster: snapshot: shutting down"))?;
        let state = self.state.clone();
        let bytes = tokio::task::spawn_blocking(move || roster_raft::backup::backup_bytes(&state))
            .await
            .map_err(|e| Status::internal(format!("roster: snapshot task: {e}")))?
            .map_err(|e| Status::internal(format!("roster: snapshot: {e}")))?;
        let header = self.header(self.revision()?);
        Ok(Response::new(Box::pin(snapshot_messages(
            Arc::new(bytes),
            header,
        ))))
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "roster: MoveLeader is not supported (openraft 0.9 has no leadership transfer;              removing the leader costs one election)",
        ))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(later("Downgrade"))
    }
}

/// The messages of one snapshot stream: the backup's body in chunks (the first
/// with the header), each saying how many bytes of the body are still to come,
/// then the SHA-256 that ends the backup alone, with 0 remaining.
fn snapshot_messages(
    backup: Arc<Vec<u8>>,
    header: Option<roster_proto::etcdserverpb::ResponseHeader>,
) -> impl Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static {
    let body = backup.len().saturating_sub(roster_raft::backup::HASH_LEN);
    let mut starts: Vec<usize> = (0..body).step_by(SNAPSHOT_CHUNK).collect();
    starts.push(body);
    let messages = starts.into_iter().enumerate().map(move |(n, start)| {
        let end = if start == body {
            backup.len()
        } else {
            (start + SNAPSHOT_CHUNK).min(body)
        };
        Ok(SnapshotResponse {
            header: if n == 0 { header } else { None },
            remaining_bytes: (body - end.min(body)) as u64,
            blob: backup[start..end].to_vec(),
        })
    });
    futures::stream::iter(messages)
}
