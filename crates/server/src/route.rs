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
use roster_raft::{Member, NodeId, Raft, SharedState};
use roster_state::registry::Health;
use roster_state::{Command, Response, StateError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::batch::spawn_batches;
use crate::health::{HealthChecker, Report, ReportError};
use crate::lessor::{Lessor, LessorError};
use crate::membership::{self, MemberChange, MemberChanged, MemberError};
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
    /// ([`ForwardReply::Each`]). Not idempotent, like `Propose`. New variants
    /// go last, so the variants before them keep their encoding.
    Proposals(Vec<Command>),
    /// A membership change (not idempotent: an add sent twice adds twice).
    Member(MemberChange),
    /// The cluster id and membership, answered by any member (not only the
    /// leader): what a joining member asks before it starts.
    ClusterInfo,
}

/// A cluster as one member sees it (`Forwarded::ClusterInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub members: Vec<ClusterMember>,
    /// The log index of the membership these members come from.
    pub membership_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub id: NodeId,
    pub member: Member,
    pub voter: bool,
    /// It has published its attributes: it ran.
    pub started: bool,
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
    Member(Result<MemberChanged, MemberError>),
    ClusterInfo(ClusterInfo),
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
    cluster: ClusterContext,
}

/// What the router needs to answer membership requests.
#[derive(Clone)]
pub struct ClusterContext {
    pub cluster_id: u64,
    /// For the members that published their attributes (started).
    pub state: SharedState,
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
        cluster: ClusterContext,
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
            cluster,
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

    /// Makes a membership change on the leader.
    pub async fn member_change(
        &self,
        change: MemberChange,
    ) -> Result<Result<MemberChanged, MemberError>, RouteError> {
        match self.route(&Forwarded::Member(change)).await? {
            ForwardReply::Member(answer) => Ok(answer),
            other => Err(unexpected(other)),
        }
    }

    /// The cluster as member `id` (at `member`'s address) sees it.
    pub async fn cluster_info_of(
        &self,
        id: NodeId,
        member: &Member,
    ) -> Result<ClusterInfo, String> {
        let payload = encode(&Forwarded::ClusterInfo).map_err(|e| e.to_string())?;
        ask_cluster(&self.peers, id, member, &payload).await
    }

    /// The cluster as this member sees it.
    pub fn cluster_info(&self) -> Result<ClusterInfo, RouteError> {
        let started = self.started_members()?;
        let metrics = self.raft.metrics().borrow().clone();
        let config = &metrics.membership_config;
        let voters: std::collections::BTreeSet<NodeId> = config.membership().voter_ids().collect();
        let members = config
            .membership()
            .nodes()
            .map(|(id, member)| ClusterMember {
                id: *id,
                member: member.clone(),
                voter: voters.contains(id),
                started: started.contains(id),
            })
            .collect();
        Ok(ClusterInfo {
            cluster_id: self.cluster.cluster_id,
            members,
            membership_index: config.log_id().map_or(0, |l| l.index),
        })
    }

    /// The members that published their attributes.
    fn started_members(&self) -> Result<std::collections::BTreeSet<NodeId>, RouteError> {
        let sm = self
            .cluster
            .state
            .read()
            .map_err(|_| RouteError::Unavailable("state lock poisoned".into()))?;
        let members = sm
            .members()
            .map_err(|e| RouteError::Unavailable(e.to_string()))?;
        Ok(members.into_iter().map(|a| a.id).collect())
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
        let idempotent = !matches!(
            request,
            Forwarded::Propose(_) | Forwarded::Proposals(_) | Forwarded::Member(_)
        );
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
            Forwarded::Member(change) => self.change_membership(change).await,
            Forwarded::ClusterInfo => match self.cluster_info() {
                Ok(info) => ForwardReply::ClusterInfo(info),
                Err(e) => ForwardReply::Failed(e),
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

    async fn change_membership(&self, change: &MemberChange) -> ForwardReply {
        let started = match self.started_members() {
            Ok(started) => started,
            Err(e) => return ForwardReply::Failed(e),
        };
        let now_ms = crate::wall_clock::now_ms();
        let cluster_id = self.cluster.cluster_id;
        // In a task of its own: openraft commits a voter change in two steps
        // (joint, then uniform), and a request cancelled between them (its
        // client gave up) must not leave the cluster in the joint config.
        let (raft, change) = (self.raft.clone(), change.clone());
        let task = tokio::spawn(async move {
            membership::apply(&raft, &change, started, cluster_id, now_ms).await
        });
        match task.await {
            Ok(Err(MemberError::NotLeader)) => ForwardReply::NotLeader,
            Ok(answer) => ForwardReply::Member(answer),
            Err(e) => ForwardReply::Failed(RouteError::Unknown(e.to_string())),
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

/// Asks every member at `peers` (each a member's peer URLs) for the cluster
/// and keeps the answer with the newest membership (the highest log index):
/// a follower that has not applied the latest change answers with an older
/// one. For a member about to join, before it runs.
pub async fn fetch_cluster(
    transport: Arc<dyn Transport>,
    peers: &[Vec<String>],
) -> Result<ClusterInfo, String> {
    let clients = PeerClients::new(transport);
    let payload = encode(&Forwarded::ClusterInfo).map_err(|e| e.to_string())?;
    let mut newest: Option<ClusterInfo> = None;
    let mut errors = Vec::new();
    for (n, urls) in peers.iter().enumerate() {
        let member = Member {
            name: String::new(),
            peer_urls: urls.clone(),
        };
        match ask_cluster(&clients, n as NodeId, &member, &payload).await {
            Ok(info)
                if newest
                    .as_ref()
                    .is_some_and(|n| n.membership_index >= info.membership_index) => {}
            Ok(info) => newest = Some(info),
            Err(e) => errors.push(format!("{}: {e}", urls.join(","))),
        }
    }
    newest.ok_or_else(|| errors.join("; "))
}

async fn ask_cluster(
    clients: &PeerClients,
    n: NodeId,
    member: &Member,
    payload: &[u8],
) -> Result<ClusterInfo, String> {
    let (mut client, _) = clients.get(n, member)?;
    let mut req = tonic::Request::new(RaftRequest {
        payload: payload.to_vec(),
    });
    req.set_timeout(RETRY_TIMEOUT);
    let reply = client
        .forward(req)
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    if !reply.error.is_empty() {
        return Err(reply.error);
    }
    match bincode::deserialize(&reply.payload).map_err(|e| e.to_string())? {
        ForwardReply::ClusterInfo(info) => Ok(info),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// The leader's side of `Forward`: decode, serve locally, encode.
#[tonic::async_trait]
impl ForwardHandler for Router {
    async fn forward(&self, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let request: Forwarded = bincode::deserialize(&payload).map_err(|e| e.to_string())?;
        let reply = match (&request, self.leader()) {
            (Forwarded::ClusterInfo, _) | (_, Some(Leader::Local)) => self.serve(&request).await,
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
