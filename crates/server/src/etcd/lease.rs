//! etcd `Lease`: grant, revoke, keepalive (bidi stream), time-to-live, list.
//! Grants and revokes are log writes; keepalives go to the leader's lessor and
//! are never written (DESIGN.md lease rule 2).

use std::pin::Pin;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use roster_proto::etcdserverpb::lease_server::Lease;
use roster_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use roster_state::{Command, RemovalReason, Response, MAX_LEASE_TTL};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response as GrpcResponse, Status, Streaming};

use super::errors::{engine_status, route_status, state_status};
use super::kv::unexpected;
use super::EtcdApi;

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

/// Keepalive answers buffered per stream before the sender waits.
const KEEPALIVE_BUFFER: usize = 1024;

impl EtcdApi {
    async fn keepalive_once(&self, id: i64) -> Result<LeaseKeepAliveResponse, Status> {
        roster_metrics::LEASE_KEEPALIVES.inc();
        let ttl = self.router.keepalive(id).await.map_err(route_status)?;
        Ok(LeaseKeepAliveResponse {
            header: self.header(self.revision()?),
            id,
            ttl,
        })
    }
}

#[tonic::async_trait]
impl Lease for EtcdApi {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<GrpcResponse<LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(state_status(&roster_state::StateError::LeaseTtlTooLarge(
                req.ttl,
            )));
        }
        let ttl = req.ttl.max(self.min_lease_ttl);
        // Unchecked while auth is on, as in etcd.
        match self
            .write(None, Command::LeaseGrant { id: req.id, ttl })
            .await?
        {
            Response::LeaseGranted { revision, id, ttl } => {
                Ok(GrpcResponse::new(LeaseGrantResponse {
                    header: self.header(revision),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<GrpcResponse<LeaseRevokeResponse>, Status> {
        let caller = self.caller(&req)?;
        let id = req.into_inner().id;
        let command = Command::LeaseRevoke {
            id,
            reason: RemovalReason::Graceful,
            now_ms: crate::wall_clock::now_ms(),
        };
        match self.write(caller, command).await? {
            Response::LeaseRevoked { revision, .. } => Ok(GrpcResponse::new(LeaseRevokeResponse {
                header: self.header(revision),
            })),
            other => Err(unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// Each request on the stream is renewed concurrently, so that many leases
    /// sharing one stream are confirmed in one leader batch. One task per
    /// stream polls them all (a task per keepalive cost a spawn and a wakeup
    /// each); answers go out as they come, and those still pending when the
    /// client closes its side are still sent.
    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<GrpcResponse<KeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            while open || !pending.is_empty() {
                tokio::select! {
                    next = incoming.next(), if open => match next {
                        Some(Ok(req)) => pending.push(api.keepalive_once(req.id)),
                        _ => open = false,
                    },
                    Some(answer) = pending.next() => {
                        if tx.send(answer).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(GrpcResponse::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<GrpcResponse<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let remaining = self.router.remaining(req.id).await.map_err(route_status)?;
        let Some((ttl, granted_ttl)) = remaining else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(GrpcResponse::new(LeaseTimeToLiveResponse {
                header: self.header(self.revision()?),
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let keys = if req.keys {
            self.before_read(false).await?;
            self.read(|sm| sm.lease_keys(req.id).map_err(engine_status))?
        } else {
            Vec::new()
        };
        Ok(GrpcResponse::new(LeaseTimeToLiveResponse {
            header: self.header(self.revision()?),
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<GrpcResponse<LeaseLeasesResponse>, Status> {
        self.before_read(false).await?;
        let (leases, revision) =
            self.read(|sm| Ok((sm.leases().map_err(engine_status)?, sm.revision())))?;
        Ok(GrpcResponse::new(LeaseLeasesResponse {
            header: self.header(revision),
            leases: leases.iter().map(|l| LeaseStatus { id: l.id }).collect(),
        }))
    }
}
