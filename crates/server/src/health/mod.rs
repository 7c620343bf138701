//! Health checks, run by the leader: probes of http, tcp and grpc checks,
//! deadlines of ttl checks, and removal of instances critical for too long.
//!
//! Why the leader: one prober per cluster (not one per node) keeps the load on
//! the instances fixed as the cluster grows, and the leader is the one node
//! whose proposals need no forwarding. What is replicated is only the outcome:
//! a `SetHealth` when an instance's health *changes* (never a probe result as
//! such) and a `RemoveUnhealthy` when one has been critical for its
//! `deregister_critical_after`.
//!
//! Each leadership term starts a [`session`] that lists the instances with
//! checks, follows their records through the watch hub from the listed
//! revision on (so it misses no registration and no update of a check), and
//! probes each instance once per interval at an offset drawn from its name,
//! so that the probes of many instances are spread over the interval rather
//! than fired together, with a bounded number in flight. Streaks of results
//! start at zero on every new leader and are judged against the replicated
//! health ([`rules`]), so a takeover produces no burst of false changes; a
//! ttl check's deadline restarts at the takeover for the same reason.

pub mod probe;
mod rules;
mod session;

use openraft::ServerState;
use roster_raft::{Raft, SharedState};
use roster_state::registry::Health;
use roster_state::{Command, StateError};
use tokio::sync::{mpsc, oneshot};

use crate::proposer::{ProposeError, Proposer};
use crate::watch::WatchHub;

/// A ttl check's report: pass, warn or fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Report {
    Pass,
    Warn,
    Fail,
}

impl Report {
    fn health(self) -> Health {
        match self {
            Report::Pass => Health::Passing,
            Report::Warn => Health::Warning,
            Report::Fail => Health::Critical,
        }
    }
}

/// Why a report was not taken.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum ReportError {
    #[error("not the leader")]
    NotLeader,
    #[error(transparent)]
    State(StateError),
    #[error("{0}")]
    Failed(String),
}

/// A report on its way to the session, with the place for its answer: the
/// health after it and the change to commit, if any.
struct PendingReport {
    service: String,
    id: String,
    report: Report,
    output: String,
    reply: oneshot::Sender<Result<(Health, Option<Command>), ReportError>>,
}

/// The node's handle on its health checker. Cheap to clone.
#[derive(Clone)]
pub struct HealthChecker {
    reports: mpsc::Sender<PendingReport>,
    proposer: Proposer,
}

/// Reports waiting for the session, at most.
const REPORT_QUEUE: usize = 1024;

impl HealthChecker {
    /// Starts the checker task; it acts only while this node leads.
    pub fn start(
        raft: Raft,
        proposer: Proposer,
        state: SharedState,
        hub: std::sync::Arc<WatchHub>,
    ) -> Self {
        let (reports, queue) = mpsc::channel(REPORT_QUEUE);
        let context = session::Context {
            raft,
            proposer: proposer.clone(),
            state,
            hub,
        };
        tokio::spawn(run(context, queue));
        HealthChecker { reports, proposer }
    }

    /// Takes a ttl check's report on the leader: restarts the check's deadline
    /// and, if the health changes, commits the change before answering. The
    /// answer is the instance's health after the report.
    pub async fn report(
        &self,
        service: &str,
        id: &str,
        report: Report,
        output: &str,
    ) -> Result<Health, ReportError> {
        let (reply, answer) = oneshot::channel();
        let pending = PendingReport {
            service: service.to_string(),
            id: id.to_string(),
            report,
            output: output.to_string(),
            reply,
        };
        self.reports
            .send(pending)
            .await
            .map_err(|_| ReportError::NotLeader)?;
        let (health, change) = answer.await.map_err(|_| ReportError::NotLeader)??;
        if let Some(command) = change {
            match self.proposer.propose(command).await {
                Ok(roster_state::Response::Error { error, .. }) => {
                    return Err(ReportError::State(error))
                }
                Ok(_) => {}
                Err(ProposeError::NotLeader) => return Err(ReportError::NotLeader),
                Err(ProposeError::Failed(e)) => return Err(ReportError::Failed(e)),
            }
        }
        Ok(health)
    }
}

/// Waits for leadership, runs a session for the term, and again.
async fn run(context: session::Context, mut reports: mpsc::Receiver<PendingReport>) {
    let mut metrics = context.raft.metrics();
    loop {
        let leading = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader).then_some(m.current_term)
        };
        match leading {
            Some(term) => session::Session::run(&context, term, &mut reports).await,
            None => tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                report = reports.recv() => match report {
                    Some(r) => { let _ = r.reply.send(Err(ReportError::NotLeader)); }
                    None => return,
                },
            },
        }
    }
}
