//! Requests through the cluster: any node accepts a write or a lease call and
//! carries it to the leader; a linearizable read on a follower asks the leader for
//! a read index and waits until its own state machine has applied that far.
//!
//! The front end (the gRPC services) sees only [`Router`]: `propose`,
//! `linearize`, `keepalive`, `remaining`. It knows nothing of raft beyond that.
//! Forwarded requests travel on the peer port (`Forward` RPC) as bincode
//! [`Forwarded`] values; the leader answers them with the same calls.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use openraft::{RaftMetrics, ServerState};
use roster_proto::raftpb::RaftRequest;
use roster_raft::network::{never_sent, ForwardHandler, PeerClients};
use roster_raft::transport::Transport;
use roster_raft::{Member, NodeId, Raft};
use roster_state::registry::Health;
use roster_state::{Command, Response, StateError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::batch::spawn_batches;
use crate::health::{HealthChecker, Report, ReportError};
use crate::lessor::{Lessor, LessorError};
use crate::proposer::{approx_size, ProposeError, Proposer};

/// How long a request waits for a leader before answering "no leader".
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Longest wait for a leadership change before a routed request tries again.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Deadline of one forwarded proposal. A proposal that timed out is not sent
/// again (it may have been applied): the client gets "request timed out".
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of one forwarded idempotent request (keepalives, read index, TTL
/// lookups). Short, so that a request sent to a leader that froze is sent again
/// to its successor well within a lease's TTL.
const RETRY_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a routed request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RouteError {
    #[error("no leader")]
    NoLeader,
    #[error("request timed out")]
    Timeout,
    /// The request never reached a leader (no connection could be made).
    #[error("{0}")]
    Unavailable(String),
    /// The request may or may not have been applied (the connection broke
    /// after it was sent, or the leader failed while handling it): a write
    /// is not sent again, since it could apply twice.
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// A request carried from a follower to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum Forwarded {
    /// Not idempotent: never sent twice.
    Propose(Command),
    /// Keepalives gathered on one node; answered together.
    KeepAlives(Vec<i64>),
    Remaining(i64),
    ReadIndex,
    /// A ttl check's report (idempotent: a repeated report changes nothing).
    CheckReport {
        service: String,
        id: String,
        report: Report,
        output: String,
    },
    /// Proposals gathered on one node, answered one by one
    /// ([`ForwardReply::Each`]). Not idempotent, like `Propose`. Last, so the
    /// variants before it keep their encoding.
    Proposals(Vec<Command>),
}

/// The leader's answer to a [`Forwarded`] request.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Applied(Response),
    /// One TTL per id of `KeepAlives`, in order.
    Ttls(Vec<i64>),
    Remaining(Option<(i64, i64)>),
    ReadIndex(u64),
    Health(Result<Health, StateError>),
    /// The receiver is not the leader (any more): try again.
    NotLeader,
    Failed(RouteError),
    /// One reply per command of `Proposals`, in order: `Applied`, or
    /// `NotLeader` for a command the leader did not take (it lost leadership
    /// first; the command was not appended, so it may be sent again), or
    /// `Failed`.
    Each(Vec<ForwardReply>),
}

/// Routes requests to the leader. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    id: NodeId,
    raft: Raft,
    lessor: Lessor,
    proposer: Proposer,
    health: HealthChecker,
    keepalives: mpsc::UnboundedSender<PendingKeepalive>,
    proposals: mpsc::UnboundedSender<PendingProposal>,
    peers: PeerClients,
}

type PendingKeepalive = (i64, oneshot::Sender<Result<i64, RouteError>>);
type PendingProposal = (Command, oneshot::Sender<Result<Response, RouteError>>);

/// Batches of proposals on their way from a follower to the leader at once.
const PROPOSALS_IN_FLIGHT: usize = 4;
/// Most proposals carried by one forward.
const PROPOSAL_BATCH: usize = 1_000;
/// Rough byte budget of one forward of proposals.
const PROPOSAL_BATCH_BYTES: usize = 1024 * 1024;

/// Keepalive batches on their way to the leader at once.
const KEEPALIVES_IN_FLIGHT: usize = 8;
/// Most keepalives carried by one forward.
const KEEPALIVE_BATCH: usize = 4_096;

/// Where the leader is, as far as this node knows.
enum Leader {
    Local,
    Remote(NodeId, Member),
}

impl Router {
    /// Creates the router and starts its keepalive and proposal batching tasks.
    pub fn new(
        id: NodeId,
        raft: Raft,
        lessor: Lessor,
        proposer: Proposer,
        health: HealthChecker,
        transport: Arc<dyn Transport>,
    ) -> Self {
        let (keepalives, queue) = mpsc::unbounded_channel();
        let (proposals, proposal_queue) = mpsc::unbounded_channel();
        let router = Router {
            id,
            proposer,
            health,
            raft,
            lessor,
            keepalives,
            proposals,
            peers: PeerClients::new(transport),
        };
        tokio::spawn(router.clone().forward_keepalives(queue));
        tokio::spawn(router.clone().forward_proposals(proposal_queue));
        router
    }

    /// Commits `command` through the leader and returns its applied response.
    /// On a follower, proposals of concurrent callers travel to the leader
    /// together.
    pub async fn propose(&self, command: Command) -> Result<Response, RouteError> {
        if !matches!(self.leader(), Some(Leader::Remote(..))) {
            return self.propose_one(command).await;
        }
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send((command, reply))
            .map_err(|_| RouteError::Unavailable("router stopped".into()))?;
        answer
            .await
            .map_err(|_| RouteError::Unavailable("router stopped".into()))?
    }

    /// Routes one proposal on its own.
    async fn propose_one(&self, command: Command) -> Result<Response, RouteError> {
        self.route(&Forwarded::Propose(command))
            .await
            .and_then(|r| match r {
                ForwardReply::Applied(resp) => Ok(resp),
                other => Err(unexpected(other)),
            })
    }

    /// Sends queued proposals to the leader in batches, a few batches at once.
    async fn forward_proposals(self, queue: mpsc::UnboundedReceiver<PendingProposal>) {
        let size = |p: &PendingProposal| approx_size(&p.0);
        let bytes = PROPOSAL_BATCH_BYTES;
        spawn_batches(
            queue,
            PROPOSALS_IN_FLIGHT,
            PROPOSAL_BATCH,
            bytes,
            size,
            |batch| {
                let router = self.clone();
                async move { router.forward_batch(batch).await }
            },
        )
        .await;
    }

    /// Forwards one batch of proposals and answers each. A single proposal
    /// goes as `Propose`; a command the leader did not take (`NotLeader`) is
    /// routed again on its own.
    async fn forward_batch(&self, mut batch: Vec<PendingProposal>) {
        if batch.len() == 1 {
            if let Some((command, reply)) = batch.pop() {
                let _ = reply.send(self.propose_one(command).await);
            }
            return;
        }
        let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let request = Forwarded::Proposals(commands);
        let answers = match self.route(&request).await {
            Ok(ForwardReply::Each(answers)) if answers.len() == replies.len() => answers,
            Ok(other) => return fail_all(replies, unexpected(other)),
            Err(e) => return fail_all(replies, e),
        };
        let Forwarded::Proposals(commands) = request else {
            return fail_all(replies, RouteError::Unknown("request changed".into()));
        };
        let results = answers
            .into_iter()
            .zip(commands)
            .map(|(answer, command)| async move {
                match answer {
                    ForwardReply::Applied(response) => Ok(response),
                    ForwardReply::NotLeader => self.propose_one(command).await,
                    other => Err(unexpected(other)),
                }
            });
        for (reply, result) in replies.into_iter().zip(join_all(results).await) {
            let _ = reply.send(result);
        }
    }

    /// Returns once a read of the local state machine is linearizable.
    pub async fn linearize(&self) -> Result<(), RouteError> {
        let index = match self.route(&Forwarded::ReadIndex).await? {
            ForwardReply::ReadIndex(index) => index,
            other => return Err(unexpected(other)),
        };
        self.raft
            .wait(Some(FORWARD_TIMEOUT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map(|_| ())
            .map_err(|_| RouteError::Timeout)
    }

    /// Hands a ttl check's report to the leader's health checker; the
    /// instance's health after it (a logical refusal as `Ok(Err(..))`).
    pub async fn report_check(
        &self,
        service: &str,
        id: &str,
        report: Report,
        output: &str,
    ) -> Result<Result<Health, StateError>, RouteError> {
        let request = Forwarded::CheckReport {
            service: service.to_string(),
            id: id.to_string(),
            report,
            output: output.to_string(),
        };
        match self.route(&request).await? {
            ForwardReply::Health(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    /// Renews a lease on the leader; its TTL, or 0 if unknown. Keepalives from
    /// concurrent callers travel to the leader together.
    pub async fn keepalive(&self, id: i64) -> Result<i64, RouteError> {
        let (reply, answer) = oneshot::channel();
        self.keepalives
            .send((id, reply))
            .map_err(|_| RouteError::Unavailable("router stopped".into()))?;
        answer
            .await
            .map_err(|_| RouteError::Unavailable("router stopped".into()))?
    }

    /// Sends queued keepalives to the leader in batches, a few batches at once.
    async fn forward_keepalives(self, queue: mpsc::UnboundedReceiver<PendingKeepalive>) {
        spawn_batches(
            queue,
            KEEPALIVES_IN_FLIGHT,
            KEEPALIVE_BATCH,
            usize::MAX,
            |_| 1,
            |batch| {
                let router = self.clone();
                async move { router.forward_keepalive_batch(batch).await }
            },
        )
        .await;
    }

    /// Forwards one batch of keepalives and answers each.
    async fn forward_keepalive_batch(&self, batch: Vec<PendingKeepalive>) {
        let (ids, replies): (Vec<i64>, Vec<_>) = batch.into_iter().unzip();
        let count = ids.len();
        let answers = match self.route(&Forwarded::KeepAlives(ids)).await {
            Ok(ForwardReply::Ttls(ttls)) if ttls.len() == count => {
                ttls.into_iter().map(Ok).collect()
            }
            Ok(other) => vec![Err(unexpected(other)); count],
            Err(e) => vec![Err(e); count],
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }

    /// Remaining and granted TTL of a lease, from the leader's clock.
    pub async fn remaining(&self, id: i64) -> Result<Option<(i64, i64)>, RouteError> {
        match self.route(&Forwarded::Remaining(id)).await? {
            ForwardReply::Remaining(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` to the leader (or serves it here), retrying while the
    /// leadership moves, until [`LEADER_WAIT`] has passed.
    async fn route(&self, request: &Forwarded) -> Result<ForwardReply, RouteError> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let payload = encode(request)?;
        let idempotent = !matches!(request, Forwarded::Propose(_) | Forwarded::Proposals(_));
        let timeout = if idempotent {
            RETRY_TIMEOUT
        } else {
            FORWARD_TIMEOUT
        };
        loop {
            let reply = match self.leader() {
                Some(Leader::Local) => self.serve(request).await,
                Some(Leader::Remote(id, member)) => self.send(id, &member, &payload, timeout).await,
                None => ForwardReply::NotLeader,
            };
            match reply {
                ForwardReply::NotLeader => {}
                ForwardReply::Failed(RouteError::Unavailable(reason)) => {
                    tracing::debug!(%reason, "route: leader unreachable, retrying");
                }
                ForwardReply::Failed(RouteError::Timeout | RouteError::Unknown(_))
                    if idempotent =>
                {
                    tracing::debug!("route: no answer from the leader, retrying");
                }
                other => return Ok(other),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RouteError::NoLeader);
            }
            self.await_leader_change().await;
        }
    }

    /// Waits (at most [`RETRY_PAUSE`]) for the leader, term or role to change.
    /// Not for any change of the metrics: they change with every replication
    /// step, and a leader whose peers refused connections then retried a
    /// failing read index thousands of times a second (found by the
    /// simulation, as was a loop that never let time pass).
    async fn await_leader_change(&self) {
        let mut metrics = self.raft.metrics();
        let seen = leadership(&metrics.borrow_and_update());
        let changed = metrics.wait_for(|m| leadership(m) != seen);
        let _ = tokio::time::timeout(RETRY_PAUSE, changed).await;
    }

    fn leader(&self) -> Option<Leader> {
        // Borrowed, not cloned: this runs for every routed request.
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        if leader == self.id {
            return (m.state == ServerState::Leader).then_some(Leader::Local);
        }
        let member = m.membership_config.membership().get_node(&leader)?.clone();
        Some(Leader::Remote(leader, member))
    }

    /// Serves a request on this node, which believes it is the leader.
    async fn serve(&self, request: &Forwarded) -> ForwardReply {
        match request {
            Forwarded::Propose(command) => self.write_local(command.clone()).await,
            Forwarded::Proposals(commands) => {
                // Queued together, they land in one proposer batch.
                let writes = commands.iter().map(|c| self.write_local(c.clone()));
                ForwardReply::Each(join_all(writes).await)
            }
            Forwarded::KeepAlives(ids) => {
                // Queued together, they land in one lessor batch.
                let answers = join_all(ids.iter().map(|id| self.lessor.keepalive(*id))).await;
                match answers.into_iter().collect::<Result<Vec<i64>, _>>() {
                    Ok(ttls) => ForwardReply::Ttls(ttls),
                    Err(e) => lessor_reply(e),
                }
            }
            Forwarded::Remaining(id) => match self.lessor.remaining(*id) {
                Ok(r) => ForwardReply::Remaining(r),
                Err(e) => lessor_reply(e),
            },
            Forwarded::ReadIndex => match self.raft.get_read_log_id().await {
                Ok((read, _)) => ForwardReply::ReadIndex(read.map_or(0, |l| l.index)),
                Err(_) => ForwardReply::NotLeader,
            },
            Forwarded::CheckReport {
                service,
                id,
                report,
                output,
            } => match self.health.report(service, id, *report, output).await {
                Ok(health) => ForwardReply::Health(Ok(health)),
                Err(ReportError::State(e)) => ForwardReply::Health(Err(e)),
                Err(ReportError::NotLeader) => ForwardReply::NotLeader,
                Err(ReportError::Failed(e)) => ForwardReply::Failed(RouteError::Unavailable(e)),
            },
        }
    }

    async fn write_local(&self, command: Command) -> ForwardReply {
        match self.proposer.propose(command).await {
            Ok(response) => ForwardReply::Applied(response),
            Err(ProposeError::NotLeader) => ForwardReply::NotLeader,
            Err(ProposeError::Failed(e)) => ForwardReply::Failed(RouteError::Unknown(e)),
        }
    }

    async fn send(
        &self,
        id: NodeId,
        member: &Member,
        payload: &[u8],
        timeout: Duration,
    ) -> ForwardReply {
        let mut client = match self.peers.get(id, member) {
            Ok((client, _)) => client,
            Err(e) => return ForwardReply::Failed(RouteError::Unavailable(e)),
        };
        let mut req = tonic::Request::new(RaftRequest {
            payload: payload.to_vec(),
        });
        req.set_timeout(timeout);
        let reply = match client.forward(req).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                return ForwardReply::Failed(RouteError::Timeout)
            }
            Err(status) if never_sent(&status) => {
                return ForwardReply::Failed(RouteError::Unavailable(status.to_string()))
            }
            // Sent, then the connection broke (the leader died?): it may
            // have been applied.
            Err(status) => return ForwardReply::Failed(RouteError::Unknown(status.to_string())),
        };
        if !reply.error.is_empty() {
            return ForwardReply::Failed(RouteError::Unknown(reply.error));
        }
        bincode::deserialize(&reply.payload)
            .unwrap_or_else(|e| ForwardReply::Failed(RouteError::Unknown(e.to_string())))
    }
}

/// What a routed request waits to change before it tries again.
fn leadership(m: &RaftMetrics<NodeId, Member>) -> (Option<NodeId>, u64, ServerState) {
    (m.current_leader, m.current_term, m.state)
}

/// Answers every waiting caller with the same error.
fn fail_all<T>(replies: Vec<oneshot::Sender<Result<T, RouteError>>>, e: RouteError) {
    for reply in replies {
        let _ = reply.send(Err(e.clone()));
    }
}

fn lessor_reply(e: LessorError) -> ForwardReply {
    match e {
        LessorError::NotPrimary => ForwardReply::NotLeader,
        LessorError::Unavailable(reason) | LessorError::NotCommitted(reason) => {
            ForwardReply::Failed(RouteError::Unavailable(reason))
        }
    }
}

fn unexpected(reply: ForwardReply) -> RouteError {
    match reply {
        ForwardReply::Failed(e) => e,
        ForwardReply::NotLeader => RouteError::NoLeader,
        other => RouteError::Unavailable(format!("unexpected forward reply {other:?}")),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RouteError> {
    bincode::serialize(value).map_err(|e| RouteError::Unavailable(e.to_string()))
}

/// The leader's side of `Forward`: decode, serve locally, encode.
#[tonic::async_trait]
impl ForwardHandler for Router {
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let request: Forwarded = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
        let reply = match self.leader() {
            Some(Leader::Local) => self.serve(&request).await,
            _ => ForwardReply::NotLeader,
        };
        bincode::serialize(&reply).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_connection_counts_as_never_sent() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(never_sent(&connect), "a connection that was never made");
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let broken = tonic::Status::from_error(Box::new(reset));
        assert!(
            !never_sent(&broken),
            "a connection that broke after sending"
        );
        assert!(!never_sent(&tonic::Status::unavailable(
            "etcdserver: no leader"
        )));
    }
}
