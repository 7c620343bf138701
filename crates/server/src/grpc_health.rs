//! The standard gRPC health service (`grpc.health.v1.Health`) on the client
//! port, for load balancers, Kubernetes probes and `grpc_health_probe`.
//!
//! A member is SERVING while it knows a leader: then it can carry writes and
//! linearizable reads to it. Without one it is NOT_SERVING (it could still
//! answer serializable reads, but a balancer should send clients elsewhere).
//! The empty service name means the whole server; each of the services it
//! serves has the same status; any other name is unknown, as the protocol
//! asks.

use std::pin::Pin;

use futures::Stream;
use roster_proto::grpc_health::health_check_response::ServingStatus;
use roster_proto::grpc_health::health_server::Health;
use roster_proto::grpc_health::{HealthCheckRequest, HealthCheckResponse};
use roster_raft::Raft;
use tonic::{Request, Response, Status};

/// The services this member serves on its client port.
const SERVICES: &[&str] = &[
    "",
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "roster.v1.Registry",
    "roster.v1.Handlers",
];

#[derive(Clone)]
pub struct HealthService {
    raft: Raft,
}

impl HealthService {
    pub fn new(raft: Raft) -> Self {
        HealthService { raft }
    }

    fn status(&self) -> ServingStatus {
        match self.raft.metrics().borrow().current_leader {
            Some(_) => ServingStatus::Serving,
            None => ServingStatus::NotServing,
        }
    }
}

fn known(service: &str) -> bool {
    SERVICES.contains(&service)
}

fn answer(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = req.into_inner().service;
        if !known(&service) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        Ok(Response::new(answer(self.status())))
    }

    type WatchStream = WatchStream;

    /// The status now, then each change of it.
    async fn watch(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = req.into_inner().service;
        if !known(&service) {
            let once = futures::stream::iter([Ok(answer(ServingStatus::ServiceUnknown))]);
            return Ok(Response::new(Box::pin(once)));
        }
        let this = self.clone();
        let metrics = self.raft.metrics();
        let stream = futures::stream::unfold(
            (this, metrics, None),
            |(this, mut metrics, last)| async move {
                loop {
                    let now = this.status();
                    if Some(now) != last {
                        return Some((Ok(answer(now)), (this, metrics, Some(now))));
                    }
                    metrics.changed().await.ok()?;
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
