//! Membership changes, on the leader: etcd's `MemberAdd`, `MemberPromote`,
//! `MemberRemove` and `MemberUpdate` as openraft membership changes, with
//! etcd's checks and its error messages.
//!
//! openraft changes voters by joint consensus (a joint entry, then the new
//! config), and adds learners and changes addresses in one step. What etcd
//! checks before a change is checked here first, because a change that cannot
//! commit (too few started voters in the new config) would stall every write
//! behind it:
//!
//! - adding a voter needs a quorum of the new voter set started (a member is
//!   started once it has published its attributes);
//! - removing a voter needs a quorum of the remaining voters started;
//! - only a learner is promoted, and only once it has caught up to 90% of the
//!   leader's log (etcd's "in sync");
//! - one learner at a time (etcd's `maxLearners`);
//! - no two members share a peer URL.
//!
//! A member added here has no name and no client URLs until it starts and
//! publishes them; `MemberList` shows it with an empty name, as etcd does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership};
use roster_raft::{Member, NodeId, Raft};
use serde::{Deserialize, Serialize};

use crate::identity;

/// Longest a change waits for one still in progress (the previous change's
/// joint config not yet committed) before it gives up.
const IN_PROGRESS_WAIT: Duration = Duration::from_secs(5);
const IN_PROGRESS_PAUSE: Duration = Duration::from_millis(50);
/// A learner is ready for promotion when it holds this share of the leader's
/// log (etcd's `readyPercent`).
const READY_PERCENT: f64 = 0.9;
/// Learners a cluster may have at once (etcd's `maxLearners`).
const MAX_LEARNERS: usize = 1;

/// A change asked for through the Cluster API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    Add {
        peer_urls: Vec<String>,
        learner: bool,
    },
    Remove {
        id: NodeId,
    },
    Update {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    Promote {
        id: NodeId,
    },
}

/// Why a change was refused; each has etcd's message where etcd has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MemberError {
    #[error("etcdserver: member not found")]
    NotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: can only promote a learner member")]
    NotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    BadUrls,
    #[error("etcdserver: request timed out")]
    InProgress,
    /// This node is not the leader (any more): route the change again.
    #[error("not the leader")]
    NotLeader,
    #[error("{0}")]
    Failed(String),
}

/// What a committed change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChanged {
    /// The member changed (for `Add`, the new member's id).
    pub id: NodeId,
    /// The log index of the membership entry that made the change.
    pub index: u64,
}

/// The membership as the leader sees it, with which members have started.
struct View {
    membership: Membership<NodeId, Member>,
    voters: BTreeSet<NodeId>,
    started: BTreeSet<NodeId>,
}

impl View {
    fn of(raft: &Raft, started: BTreeSet<NodeId>) -> View {
        let metrics = raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters = membership.voter_ids().collect();
        View {
            membership,
            voters,
            started,
        }
    }

    fn contains(&self, id: NodeId) -> bool {
        self.membership.get_node(&id).is_some()
    }

    fn is_learner(&self, id: NodeId) -> bool {
        self.contains(id) && !self.voters.contains(&id)
    }

    /// Whether a quorum of `voters` has started.
    fn quorum_started(&self, voters: &BTreeSet<NodeId>) -> bool {
        let started = voters.iter().filter(|id| self.started.contains(id)).count();
        started > voters.len() / 2
    }

    fn url_taken(&self, urls: &[String], except: Option<NodeId>) -> bool {
        self.membership.nodes().any(|(id, member)| {
            Some(*id) != except && member.peer_urls.iter().any(|u| urls.contains(u))
        })
    }
}

/// `http://host:port` or `https://host:port`, as
/// `--initial-advertise-peer-urls` takes them.
pub fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|url| {
            url.strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|rest| rest.trim_end_matches('/'))
                .and_then(|rest| rest.rsplit_once(':'))
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        })
}

/// Checks `change` and makes it. `started` holds the members that published
/// their attributes; `now_ms` and `cluster_id` seed a new member's id. Only on
/// the leader (elsewhere: `NotLeader`).
pub async fn apply(
    raft: &Raft,
    change: &MemberChange,
    started: BTreeSet<NodeId>,
    cluster_id: u64,
    now_ms: u64,
) -> Result<MemberChanged, MemberError> {
    let deadline = tokio::time::Instant::now() + IN_PROGRESS_WAIT;
    loop {
        let view = View::of(raft, started.clone());
        let (id, changes) = plan(&view, change, raft, cluster_id, now_ms)?;
        match raft.change_membership(changes, false).await {
            Ok(written) => {
                return Ok(MemberChanged {
                    id,
                    index: written.log_id.index,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(IN_PROGRESS_PAUSE).await;
            }
            Err(e) => return Err(write_error(e)),
        }
    }
}

/// The openraft change that makes `change`, after etcd's checks, and the id
/// of the member it is about.
fn plan(
    view: &View,
    change: &MemberChange,
    raft: &Raft,
    cluster_id: u64,
    now_ms: u64,
) -> Result<(NodeId, ChangeMembers<NodeId, Member>), MemberError> {
    match change {
        MemberChange::Add { peer_urls, learner } => {
            if !valid_peer_urls(peer_urls) {
                return Err(MemberError::BadUrls);
            }
            if view.url_taken(peer_urls, None) {
                return Err(MemberError::PeerUrlExists);
            }
            let id = new_member_id(view, peer_urls, cluster_id, now_ms);
            let member = Member {
                name: String::new(),
                peer_urls: peer_urls.clone(),
            };
            let nodes = BTreeMap::from([(id, member)]);
            if *learner {
                let learners = view.membership.nodes().count() - view.voters.len();
                if learners >= MAX_LEARNERS {
                    return Err(MemberError::TooManyLearners);
                }
                return Ok((id, ChangeMembers::AddNodes(nodes)));
            }
            let mut voters = view.voters.clone();
            voters.insert(id);
            if !view.quorum_started(&voters) {
                return Err(MemberError::NotEnoughStarted);
            }
            Ok((id, ChangeMembers::AddVoters(nodes)))
        }
        MemberChange::Remove { id } => {
            let id = *id;
            if !view.contains(id) {
                return Err(MemberError::NotFound);
            }
            if view.is_learner(id) {
                return Ok((id, ChangeMembers::RemoveNodes(BTreeSet::from([id]))));
            }
            let mut voters = view.voters.clone();
            voters.remove(&id);
            if voters.is_empty() || !view.quorum_started(&voters) {
                return Err(MemberError::NotEnoughStarted);
            }
            Ok((id, ChangeMembers::RemoveVoters(BTreeSet::from([id]))))
        }
        MemberChange::Update { id, peer_urls } => {
            let id = *id;
            let Some(old) = view.membership.get_node(&id) else {
                return Err(MemberError::NotFound);
            };
            if !valid_peer_urls(peer_urls) {
                return Err(MemberError::BadUrls);
            }
            if view.url_taken(peer_urls, Some(id)) {
                return Err(MemberError::PeerUrlExists);
            }
            let member = Member {
                name: old.name.clone(),
                peer_urls: peer_urls.clone(),
            };
            Ok((id, ChangeMembers::SetNodes(BTreeMap::from([(id, member)]))))
        }
        MemberChange::Promote { id } => {
            let id = *id;
            if !view.contains(id) {
                return Err(MemberError::NotFound);
            }
            if !view.is_learner(id) {
                return Err(MemberError::NotLearner);
            }
            if !learner_ready(raft, id) {
                return Err(MemberError::LearnerNotReady);
            }
            Ok((id, ChangeMembers::AddVoterIds(BTreeSet::from([id]))))
        }
    }
}

/// Whether learner `id` holds at least [`READY_PERCENT`] of the leader's log
/// (a learner the leader has no replication state for is not ready).
fn learner_ready(raft: &Raft, id: NodeId) -> bool {
    let metrics = raft.metrics().borrow().clone();
    let leader_last = metrics.last_log_index.unwrap_or(0);
    let matched = metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|log_id| log_id.index);
    matched.is_some_and(|m| m as f64 >= leader_last as f64 * READY_PERCENT)
}

/// A new member's id: from its URLs, the cluster and the time (so the same
/// URLs added again after a removal get another id), never one in use or 0.
fn new_member_id(view: &View, peer_urls: &[String], cluster_id: u64, now_ms: u64) -> NodeId {
    let mut nonce = 0u64;
    loop {
        let id = identity::added_member_id(peer_urls, cluster_id, now_ms, nonce);
        if !view.contains(id) {
            return id;
        }
        nonce += 1;
    }
}

fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> MemberError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => MemberError::NotLeader,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => MemberError::InProgress,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::EmptyMembership(_),
        )) => MemberError::NotEnoughStarted,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::LearnerNotFound(_),
        )) => MemberError::NotFound,
        other => MemberError::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_must_be_http_host_port() {
        let ok = |u: &[&str]| valid_peer_urls(&u.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["http://127.0.0.1:2380"]));
        assert!(ok(&["http://node-4:2380/", "https://10.0.0.4:2380"]));
        assert!(!ok(&[]));
        assert!(!ok(&["127.0.0.1:2380"]));
        assert!(!ok(&["http://127.0.0.1"]));
        assert!(!ok(&["http://:2380"]));
        assert!(!ok(&["http://127.0.0.1:99999"]));
    }
}
