//! Drain deadlines: the leader removes draining instances whose deadline has
//! passed, by proposing `DrainExpire` for the due entries of the drain index
//! (reason `drained`). Deadlines are wall-clock milliseconds stamped by the node
//! that took the `Drain` request, so clock skew between nodes shifts them by as
//! much; only the leader acts, so a deadline is never acted on twice.

use std::time::Duration;

use openraft::ServerState;
use roster_raft::{Raft, SharedState};
use roster_state::Command;

use crate::proposer::Proposer;

/// How often the leader looks for due deadlines.
const TICK: Duration = Duration::from_millis(200);
/// Most instances removed per entry.
const BATCH: usize = 1000;

pub fn start(raft: Raft, proposer: Proposer, state: SharedState) {
    tokio::spawn(run(raft, proposer, state));
}

async fn run(raft: Raft, proposer: Proposer, state: SharedState) {
    loop {
        tokio::time::sleep(TICK).await;
        if raft.metrics().borrow().state != ServerState::Leader {
            continue;
        }
        let now_ms = crate::wall_clock::now_ms();
        let due = match state.read().map(|sm| sm.due_drains(now_ms, BATCH)) {
            Ok(Ok(due)) if !due.is_empty() => due,
            _ => continue,
        };
        if let Err(e) = proposer.propose(Command::DrainExpire { due, now_ms }).await {
            tracing::debug!(error = %e, "drain expiry proposal failed; retrying");
        }
    }
}
