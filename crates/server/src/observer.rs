//! The node's seat in the apply path: every applied command reaches the lessor
//! (which follows the lease table) and the watch hub (which hands the events to
//! watchers), in log order, right after its batch is written.
//!
//! Storage is opened (and may replay the log) before the lessor exists, so the
//! lessor is attached once the node has one; applies before that are covered by
//! `promote` reading the lease table. The hub exists from the start.

use std::sync::{Arc, OnceLock};

use roster_raft::ApplyObserver;
use roster_state::{Applied, Command, Response};

use crate::lessor::Lessor;
use crate::watch::WatchHub;

pub struct NodeObserver {
    lessor: OnceLock<Lessor>,
    hub: Arc<WatchHub>,
}

impl NodeObserver {
    pub fn new(hub: Arc<WatchHub>) -> Self {
        NodeObserver {
            lessor: OnceLock::new(),
            hub,
        }
    }

    pub fn attach(&self, lessor: Lessor) {
        let _ = self.lessor.set(lessor);
    }
}

impl ApplyObserver for NodeObserver {
    fn applied(&self, _index: u64, command: &Command, applied: &Applied) {
        count_leases(command, &applied.response);
        if let Some(lessor) = self.lessor.get() {
            lessor.observe(&applied.response);
        }
        self.hub.publish(&applied.events);
    }

    /// Only followers install snapshots.
    fn installed_snapshot(&self) {
        if let Some(lessor) = self.lessor.get() {
            lessor.installed_snapshot();
        }
        self.hub.installed_snapshot();
    }
}

/// Lease grants and removals (by reason) for the metrics, from each applied
/// command and its answer (a batch answers command by command).
fn count_leases(command: &Command, response: &Response) {
    match (command, response) {
        (Command::Batch(commands), Response::Batch(responses)) => {
            for (command, response) in commands.iter().zip(responses) {
                count_leases(command, response);
            }
        }
        (Command::InTerm { command, .. } | Command::As { command, .. }, response) => {
            count_leases(command, response)
        }
        (Command::LeaseGrant { .. }, Response::LeaseGranted { .. }) => {
            roster_metrics::LEASE_GRANTS.inc();
        }
        (Command::LeaseExpire { .. }, Response::LeaseRevoked { revoked, .. }) => {
            roster_metrics::LEASE_REMOVALS.add("expired", revoked.len() as u64);
        }
        (Command::LeaseRevoke { .. }, Response::LeaseRevoked { revoked, .. }) => {
            roster_metrics::LEASE_REMOVALS.add("revoked", revoked.len() as u64);
        }
        _ => {}
    }
}
