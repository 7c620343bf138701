//! Noticing that this member was removed from the cluster, so the process
//! can exit (etcd's members stop once removed, too).
//!
//! Two ways to learn it:
//!
//! - The member applies a membership without itself. The removed leader
//!   does (it commits its own removal, then steps down), and so does any
//!   member that received the entry.
//! - Nobody tells it. openraft's leader stops replicating to a removed member
//!   once the new config is in its log, so a removed follower may never see
//!   the entry: a voter then campaigns in vain, a learner waits forever. So a
//!   member that does not lead asks its peers for their membership every few
//!   election timeouts: a peer with a membership at least as new (a log
//!   index at least as high) that lacks this member means it was removed;
//!   this also stops a removed member restarted on its old data dir. A peer
//!   that is behind
//!   cannot say so, and a member cut off from its peers hears nothing, so
//!   neither is taken for a removal. One small request per member every few
//!   seconds is the price.

use std::time::Duration;

use openraft::ServerState;
use roster_raft::{Member, NodeId, Raft};

use crate::route::Router;

/// A member that does not lead asks its peers every this many election
/// timeouts.
const ASK_EVERY_TIMEOUTS: u32 = 5;

/// Resolves once this member knows it was removed; says how it knows.
pub async fn removed(raft: Raft, router: Router, id: NodeId, election_timeout: Duration) -> String {
    let mut metrics = raft.metrics();
    let mut was_member = false;
    let ask_every = election_timeout * ASK_EVERY_TIMEOUTS;
    let mut next_ask = tokio::time::Instant::now() + ask_every;
    loop {
        let (in_config, applied, own_index, leads) = {
            let m = metrics.borrow_and_update();
            let config = &m.membership_config;
            (
                config.membership().get_node(&id).is_some(),
                config.log_id() <= &m.last_applied,
                config.log_id().map_or(0, |l| l.index),
                m.state == ServerState::Leader,
            )
        };
        was_member |= in_config;
        if was_member && !in_config && applied {
            return "it applied a membership without itself".into();
        }
        if tokio::time::Instant::now() >= next_ask {
            if !leads {
                if let Some(why) = newer_membership_without(&raft, &router, id, own_index).await {
                    return why;
                }
            }
            next_ask = tokio::time::Instant::now() + ask_every;
        }
        if let Ok(Err(_)) = tokio::time::timeout_at(next_ask, metrics.changed()).await {
            // Raft stopped: nothing changes any more but the time.
            tokio::time::sleep_until(next_ask).await;
        }
    }
}

/// Asks the leader, or with no leader known every peer, for its membership.
async fn newer_membership_without(
    raft: &Raft,
    router: &Router,
    id: NodeId,
    own_index: u64,
) -> Option<String> {
    let (leader, peers): (Option<NodeId>, Vec<(NodeId, Member)>) = {
        let m = raft.metrics().borrow().clone();
        let nodes = m.membership_config.membership().nodes();
        let peers = nodes.map(|(peer, member)| (*peer, member.clone()));
        (m.current_leader, peers.collect())
    };
    let asked = peers
        .iter()
        .filter(|(peer, _)| *peer != id && leader.is_none_or(|l| l == *peer));
    for (peer, member) in asked {
        let Ok(theirs) = router.cluster_info_of(*peer, member).await else {
            continue;
        };
        let listed = theirs.members.iter().any(|m| m.id == id);
        // The same index counts too: a member restarted after it applied its
        // own removal holds the very membership that left it out.
        if theirs.membership_index >= own_index && theirs.membership_index > 0 && !listed {
            return Some(format!(
                "member {peer:x} has a newer membership (index {}) without it",
                theirs.membership_index
            ));
        }
    }
    None
}
