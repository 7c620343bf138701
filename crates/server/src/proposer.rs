//! Batches concurrent proposals on the leader into one log entry.
//!
//! openraft 0.9 appends each `client_write` as its own entry and waits for that
//! append to be flushed before it takes the next one, so one write costs one
//! fsync round on the leader, in sequence. The proposer instead gathers every
//! command waiting at the moment into one `Command::Batch` entry: one append,
//! one flush and one replication round serve them all, and each command still
//! gets its own revision and response. A few entries may be in flight at once;
//! while they are, new commands queue up and form the next, larger, batch.

use openraft::error::{ClientWriteError, RaftError};
use roster_raft::Raft;
use roster_state::{Command, Response};
use tokio::sync::{mpsc, oneshot};

use crate::batch::spawn_batches;

/// Entries proposed and not yet applied at once.
const MAX_IN_FLIGHT: usize = 4;
/// Most commands in one entry.
const MAX_BATCH: usize = 1_000;
/// Rough byte budget of one entry (keys and values), well under the peer
/// transport's message limit.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a proposal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader (any more).
    #[error("not the leader")]
    NotLeader,
    #[error("proposal failed: {0}")]
    Failed(String),
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// The leader's proposal batcher. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Proposer {
    /// Starts the batching task on the current runtime.
    pub fn start(raft: Raft) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Proposer { queue }
    }

    /// Commits `command` (in some batch) and returns its own response.
    pub async fn propose(&self, command: Command) -> Result<Response, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { command, reply })
            .map_err(|_| ProposeError::Failed("proposer stopped".into()))?;
        answer
            .await
            .map_err(|_| ProposeError::Failed("proposer stopped".into()))?
    }
}

/// Takes the first waiting command, then everything else already queued (up
/// to the limits), and proposes them as one entry once an in-flight slot is free.
async fn run(raft: Raft, rx: mpsc::UnboundedReceiver<Pending>) {
    let size = |p: &Pending| approx_size(&p.command);
    spawn_batches(
        rx,
        MAX_IN_FLIGHT,
        MAX_BATCH,
        MAX_BATCH_BYTES,
        size,
        |batch| {
            let raft = raft.clone();
            async move { submit(&raft, batch).await }
        },
    )
    .await;
}

/// Counts `n` proposals by how they ended.
fn count(result: &Result<Response, ProposeError>, n: usize) {
    let outcome = match result {
        Ok(_) => "committed",
        Err(ProposeError::NotLeader) => "not_leader",
        Err(ProposeError::Failed(_)) => "failed",
    };
    roster_metrics::PROPOSALS.add(outcome, n as u64);
}

/// Proposes one entry and hands each command its response.
async fn submit(raft: &Raft, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        if let Some(only) = batch.pop() {
            let result = write(raft, only.command).await;
            count(&result, 1);
            let _ = only.reply.send(result);
        }
        return;
    }
    let (commands, replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.command, p.reply)).unzip();
    let written = write(raft, Command::Batch(commands)).await;
    count(&written, replies.len());
    match written {
        Ok(Response::Batch(responses)) if responses.len() == replies.len() => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(other) => {
            tracing::error!(?other, "a batch was answered by something else");
            let e = ProposeError::Failed("batch answered by a non-batch response".into());
            replies
                .into_iter()
                .for_each(|r| drop(r.send(Err(e.clone()))));
        }
        Err(e) => replies
            .into_iter()
            .for_each(|r| drop(r.send(Err(e.clone())))),
    }
}

async fn write(raft: &Raft, command: Command) -> Result<Response, ProposeError> {
    match raft.client_write(command).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(ProposeError::NotLeader)
        }
        Err(e) => Err(ProposeError::Failed(e.to_string())),
    }
}

/// Bytes a command adds to an entry, roughly: what dominates is keys and values.
pub(crate) fn approx_size(command: &Command) -> usize {
    match command {
        Command::Put(put) => put.key.len() + put.value.len() + 32,
        Command::Txn(txn) => bincode::serialized_size(txn).map_or(64, |n| n as usize),
        Command::DeleteRange { key, range_end, .. } => key.len() + range_end.len() + 32,
        Command::LeaseExpire { ids, .. } | Command::LeaseRenewed { ids } => ids.len() * 8 + 16,
        Command::LeaseCheckpoint { remaining_ms } => remaining_ms.len() * 16 + 16,
        Command::Batch(commands) => commands.iter().map(approx_size).sum(),
        Command::InTerm { command, .. } => approx_size(command) + 8,
        Command::As { caller, command } => approx_size(command) + caller.user.len() + 16,
        _ => 64,
    }
}
