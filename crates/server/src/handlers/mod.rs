//! Handler delivery, run by the leader: takes events from the replicated
//! outbox in order, delivers each to its handler (a pipe command or an HTTP
//! POST), and records the outcome through the log: `OutboxDelivered` once
//! delivered, `OutboxFailed` once every attempt failed.
//!
//! At least once: an event leaves the outbox only by such a record, so a
//! leader that dies after delivering and before recording leaves it to its
//! successor, which delivers it again with the same id. Order: each handler
//! gets its events one at a time, in outbox order (a CMDB sees an instance's
//! registration before its deregistration); a failing event is retried with
//! doubling backoff (capped) and holds back the later events of its handler
//! only until its attempts run out. Attempt counts live in the leader's
//! memory: a new leader gives a failing event a fresh set.

mod deliver;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use openraft::ServerState;
use roster_raft::{Raft, SharedState};
use roster_state::handlers::{EventType, HandlerDef, HandlerEvent};
use roster_state::{Command, RemovalReason};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::proposer::Proposer;
use crate::wall_clock::now_ms;

/// How often the leader looks at the outbox.
const TICK: Duration = Duration::from_millis(100);
/// Outbox events read per look.
const WINDOW: usize = 4096;
/// The first retry waits this long; each next one twice as long, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The event as handlers get it (JSON).
pub fn event_json(event: &HandlerEvent) -> Value {
    let endpoints: Vec<Value> = event
        .endpoints
        .iter()
        .map(|e| json!({"address": e.address, "port": e.port, "protocol": e.protocol}))
        .collect();
    let mut value = json!({
        "id": event.id,
        "type": event.event.name(),
        "handler": event.handler,
        "service": event.service,
        "instance": event.instance,
        "endpoints": endpoints,
        "metadata": event.metadata,
        "tags": event.tags,
        "revision": event.revision,
        "time_ms": event.time_ms,
    });
    if let Some(reason) = event.reason {
        value["reason"] = json!(reason_name(reason));
    }
    if event.reason == Some(RemovalReason::Forced) {
        value["actor"] = json!(event.actor);
        value["note"] = json!(event.note);
    }
    if !event.output.is_empty() {
        value["output"] = json!(event.output);
    }
    value
}

pub fn reason_name(reason: RemovalReason) -> &'static str {
    match reason {
        RemovalReason::Graceful => "graceful",
        RemovalReason::Expired => "expired",
        RemovalReason::Forced => "forced",
        RemovalReason::Drained => "drained",
        RemovalReason::Health => "health",
    }
}

/// Parses `registration`, `deregistration` or `keepalive-failure`.
pub fn parse_event_type(text: &str) -> Option<EventType> {
    EventType::ALL.into_iter().find(|e| e.name() == text)
}

pub fn start(raft: Raft, proposer: Proposer, state: SharedState, allow_pipe: bool) {
    tokio::spawn(run(raft, proposer, state, allow_pipe));
}

/// An event's delivery so far, on this leader.
struct Attempts {
    count: u32,
    next_try: Instant,
}

/// An event id and the handler it went to.
struct Sent {
    id: u64,
    handler: String,
    max_attempts: u32,
}

enum Outcome {
    Delivered(Sent),
    Failed(Sent, String),
    /// The record of these ids ended (committed or not).
    Recorded(Vec<u64>),
}

struct Dispatcher {
    proposer: Proposer,
    state: SharedState,
    allow_pipe: bool,
    /// Handlers with a delivery under way.
    busy: HashSet<String>,
    attempts: HashMap<u64, Attempts>,
    /// Delivered or filed, record not yet committed: not to be sent again.
    recording: HashSet<u64>,
    delivered: Vec<u64>,
    failed: Vec<(u64, u32, String)>,
    outcomes_tx: mpsc::UnboundedSender<Outcome>,
}

async fn run(raft: Raft, proposer: Proposer, state: SharedState, allow_pipe: bool) {
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel();
    let mut dispatcher = Dispatcher {
        proposer,
        state,
        allow_pipe,
        busy: HashSet::new(),
        attempts: HashMap::new(),
        recording: HashSet::new(),
        delivered: Vec::new(),
        failed: Vec::new(),
        outcomes_tx,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let leader = raft.metrics().borrow().state == ServerState::Leader;
                if leader != was_leader {
                    // A new term starts with fresh attempt counts.
                    dispatcher.attempts.clear();
                    was_leader = leader;
                }
                if leader {
                    dispatcher.record();
                    dispatcher.dispatch();
                }
            }
            Some(outcome) = outcomes.recv() => dispatcher.take(outcome),
        }
    }
}

impl Dispatcher {
    /// Starts the next delivery of every idle handler.
    fn dispatch(&mut self) {
        let (events, handlers) = match self.read() {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "handlers: cannot read the outbox");
                return;
            }
        };
        let now = Instant::now();
        // Each handler's first event not being recorded, in outbox order.
        let mut heads: BTreeMap<&str, &HandlerEvent> = BTreeMap::new();
        for event in events.iter().filter(|e| !self.recording.contains(&e.id)) {
            heads.entry(event.handler.as_str()).or_insert(event);
        }
        for (name, event) in heads {
            let waiting = self
                .attempts
                .get(&event.id)
                .is_some_and(|a| a.next_try > now);
            if waiting || self.busy.contains(name) {
                continue;
            }
            let Some(def) = handlers.get(name).cloned() else {
                let error = format!("handler {name:?} is not defined (deleted?)");
                self.finish(event.id, 0, error);
                continue;
            };
            self.busy.insert(name.to_string());
            let outcomes = self.outcomes_tx.clone();
            let body = event_json(event).to_string();
            let sent = Sent {
                id: event.id,
                handler: def.name.clone(),
                max_attempts: def.max_attempts,
            };
            let allow_pipe = self.allow_pipe;
            tokio::spawn(async move {
                let outcome = match deliver::deliver(&def, &body, allow_pipe).await {
                    Ok(()) => Outcome::Delivered(sent),
                    Err(e) => Outcome::Failed(sent, e),
                };
                let _ = outcomes.send(outcome);
            });
        }
    }

    fn read(&self) -> Result<(Vec<HandlerEvent>, HashMap<String, HandlerDef>), String> {
        let sm = self.state.read().map_err(|e| e.to_string())?;
        let events = sm.outbox(WINDOW).map_err(|e| e.to_string())?;
        let handlers = sm
            .handlers()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        Ok((events, handlers))
    }

    fn take(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered(sent) => {
                self.busy.remove(&sent.handler);
                self.attempts.remove(&sent.id);
                self.recording.insert(sent.id);
                self.delivered.push(sent.id);
            }
            Outcome::Failed(sent, error) => {
                self.busy.remove(&sent.handler);
                self.retry_or_file(&sent, error);
            }
            Outcome::Recorded(ids) => {
                for id in ids {
                    self.recording.remove(&id);
                }
            }
        }
    }

    fn retry_or_file(&mut self, sent: &Sent, error: String) {
        let attempts = self.attempts.entry(sent.id).or_insert(Attempts {
            count: 0,
            next_try: Instant::now(),
        });
        attempts.count += 1;
        tracing::warn!(event = sent.id, handler = %sent.handler, attempt = attempts.count, %error, "handlers: delivery failed");
        if attempts.count >= sent.max_attempts {
            let count = attempts.count;
            self.attempts.remove(&sent.id);
            self.finish(sent.id, count, error);
            return;
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (attempts.count - 1).min(16))
            .min(MAX_BACKOFF);
        attempts.next_try = Instant::now() + backoff;
    }

    /// Files `id` as failed after `attempts`.
    fn finish(&mut self, id: u64, attempts: u32, error: String) {
        self.recording.insert(id);
        self.failed.push((id, attempts, error));
    }

    /// Commits what was delivered and what failed since the last look.
    fn record(&mut self) {
        let mut commands = Vec::new();
        if !self.delivered.is_empty() {
            let ids = std::mem::take(&mut self.delivered);
            commands.push((ids.clone(), Command::OutboxDelivered { ids }));
        }
        if !self.failed.is_empty() {
            let failures = std::mem::take(&mut self.failed);
            let ids = failures.iter().map(|f| f.0).collect();
            let command = Command::OutboxFailed {
                failures,
                now_ms: now_ms(),
            };
            commands.push((ids, command));
        }
        for (ids, command) in commands {
            let proposer = self.proposer.clone();
            let outcomes = self.outcomes_tx.clone();
            tokio::spawn(async move {
                // Not committed: the ids leave `recording`, so the events are
                // delivered again (at least once).
                if let Err(e) = proposer.propose(command).await {
                    tracing::debug!(error = %e, "handlers: record not committed");
                }
                let _ = outcomes.send(Outcome::Recorded(ids));
            });
        }
    }
}
