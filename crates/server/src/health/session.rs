//! One leadership term of the health checker: the table of checked instances,
//! the probe schedule, and the loop that probes, judges and proposes.
//!
//! The table follows the replicated records (listed at revision R, then every
//! change from R + 1 through a hub watcher), so its health is always the
//! committed one; what the session adds is only in memory: streaks, the next
//! due time, whether a probe or a proposal is under way. A proposal is not
//! repeated while one for the same instance is in flight, and a probe result
//! from before a check was redefined is dropped.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use roster_raft::{Raft, SharedState};
use roster_state::check::{CheckKind, CheckSpec};
use roster_state::registry::{decode_instance, parse_instance_key, Health, Instance};
use roster_state::{Command, EventKind, StateError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::probe::{self, Outcome};
use super::rules::Streak;
use super::{PendingReport, ReportError};
use crate::proposer::Proposer;
use crate::wall_clock::now_ms;
use crate::watch::{Outbound, WatchHub, WatchOptions};

/// Probes in flight at once, at most.
const MAX_IN_FLIGHT: usize = 256;
/// How often the session checks leadership and looks for instances due for
/// removal.
const TICK: Duration = Duration::from_millis(250);
/// Most instances removed by one `RemoveUnhealthy`.
const REMOVAL_BATCH: usize = 1000;
/// Pause before a session that failed to start is tried again.
const RESTART_PAUSE: Duration = Duration::from_millis(500);

/// What a session needs of its node.
pub(super) struct Context {
    pub raft: Raft,
    pub proposer: Proposer,
    pub state: SharedState,
    pub hub: Arc<WatchHub>,
}

/// Service and instance id.
type Key = (String, String);

/// One checked instance, as this leader follows it.
struct Tracked {
    check: CheckSpec,
    /// The committed health and critical time.
    health: Health,
    critical_since_ms: Option<u64>,
    keepalive_expired: bool,
    streak: Streak,
    /// Bumped whenever the check is (re)defined: older probe results are void.
    generation: u64,
    /// The schedule entry that is this instance's next probe or deadline.
    due: (Instant, u64),
    probing: bool,
    proposing: bool,
    removing: bool,
}

/// What a finished background task reports back.
enum Done {
    Probe(Key, u64, Outcome),
    /// A health proposal or a removal ended (committed or not).
    Proposal(Key),
    Removal(Vec<Key>),
}

pub(super) struct Session<'a> {
    context: &'a Context,
    term: u64,
    table: BTreeMap<Key, Tracked>,
    /// Due times with a ticket each; an entry whose ticket is not its
    /// instance's current one is stale and skipped.
    schedule: BTreeSet<(Instant, u64, Key)>,
    tickets: u64,
    in_flight: usize,
    done_tx: mpsc::UnboundedSender<Done>,
    done: mpsc::UnboundedReceiver<Done>,
}

impl<'a> Session<'a> {
    /// Runs the checker until this node stops leading `term`.
    pub(super) async fn run(
        context: &'a Context,
        term: u64,
        reports: &mut mpsc::Receiver<PendingReport>,
    ) {
        let (done_tx, done) = mpsc::unbounded_channel();
        let mut session = Session {
            context,
            term,
            table: BTreeMap::new(),
            schedule: BTreeSet::new(),
            tickets: 0,
            in_flight: 0,
            done_tx,
            done,
        };
        let hub = context.hub.clone();
        let guard = hub.open_stream();
        let (out, mut changes) = mpsc::channel(1024);
        let revision = match session.load() {
            Ok(revision) => revision,
            Err(e) => {
                tracing::warn!(error = %e, "health: cannot list instances; retrying");
                tokio::time::sleep(RESTART_PAUSE).await;
                return;
            }
        };
        let selector = crate::registry_watch::key_range("");
        hub.add(
            (guard.id, 0),
            selector,
            WatchOptions::default(),
            revision + 1,
            &out,
        )
        .await;
        drop(out);
        tracing::info!(
            term,
            checks = session.table.len(),
            "health: checking as leader"
        );
        let mut tick = tokio::time::interval(TICK);
        loop {
            // With every probe slot taken, a finished probe starts the next
            // one; waking for the (past) due time would only spin.
            let next_due = session.schedule.first().map(|(at, _, _)| *at);
            let wake = match next_due {
                Some(at) if session.in_flight < MAX_IN_FLIGHT => at,
                _ => Instant::now() + TICK,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => session.fire_due(),
                _ = tick.tick() => {
                    if !session.still_leading() {
                        break;
                    }
                    session.remove_overdue();
                }
                message = changes.recv() => match message {
                    Some(Outbound::Events { events, .. }) => {
                        for event in events {
                            session.follow(&event);
                        }
                    }
                    Some(Outbound::Created { .. } | Outbound::Progress { .. }) => {}
                    other => {
                        tracing::warn!(?other, "health: registry watch ended; restarting");
                        tokio::time::sleep(RESTART_PAUSE).await;
                        break;
                    }
                },
                Some(done) = session.done.recv() => session.finished(done),
                report = reports.recv() => match report {
                    Some(report) => session.report(report),
                    None => break,
                },
            }
        }
        tracing::info!(term, "health: session ended");
    }

    fn still_leading(&self) -> bool {
        let metrics = self.context.raft.metrics();
        let m = metrics.borrow();
        m.state == ServerState::Leader && m.current_term == self.term
    }

    /// Lists every instance with a check; the revision of the listing.
    fn load(&mut self) -> Result<i64, String> {
        let (instances, revision) = {
            let sm = self.context.state.read().map_err(|e| e.to_string())?;
            (
                sm.instances(None).map_err(|e| e.to_string())?,
                sm.revision(),
            )
        };
        for (instance, _) in instances {
            self.upsert(instance);
        }
        Ok(revision)
    }

    /// Follows one change of a registry record.
    fn follow(&mut self, event: &roster_state::Event) {
        let Some((service, id)) = parse_instance_key(&event.kv.key) else {
            return;
        };
        let key = (service.to_string(), id.to_string());
        match event.kind {
            EventKind::Delete => {
                self.table.remove(&key);
            }
            EventKind::Put => match decode_instance(&event.kv.value) {
                Ok(instance) => self.upsert(instance),
                Err(e) => tracing::warn!(error = %e, "health: unreadable record"),
            },
        }
    }

    /// Takes a record: a new or redefined check starts afresh (first probe at
    /// its offset in the interval); an unchanged one takes the committed health.
    fn upsert(&mut self, instance: Instance) {
        let key = (instance.spec.service.clone(), instance.spec.id.clone());
        let Some(check) = instance.spec.check else {
            self.table.remove(&key);
            return;
        };
        if let Some(tracked) = self.table.get_mut(&key).filter(|t| t.check == check) {
            tracked.health = instance.health;
            tracked.critical_since_ms = instance.critical_since_ms;
            tracked.keepalive_expired = instance.keepalive_expired;
            return;
        }
        let first = Instant::now() + first_delay(&key, &check);
        let generation = self.table.get(&key).map_or(0, |t| t.generation + 1);
        let due = self.schedule_at(first, &key);
        self.table.insert(
            key,
            Tracked {
                check,
                health: instance.health,
                critical_since_ms: instance.critical_since_ms,
                keepalive_expired: instance.keepalive_expired,
                streak: Streak::default(),
                generation,
                due,
                probing: false,
                proposing: false,
                removing: false,
            },
        );
    }

    fn schedule_at(&mut self, at: Instant, key: &Key) -> (Instant, u64) {
        self.tickets += 1;
        self.schedule.insert((at, self.tickets, key.clone()));
        (at, self.tickets)
    }

    /// Starts the probes (and passes the ttl deadlines) that are due, as many
    /// as the in-flight bound allows; the rest wait for a probe to finish.
    fn fire_due(&mut self) {
        let now = Instant::now();
        while self.in_flight < MAX_IN_FLIGHT {
            let Some(first) = self.schedule.first().cloned() else {
                return;
            };
            if first.0 > now {
                return;
            }
            self.schedule.remove(&first);
            let (at, ticket, key) = first;
            let Some(tracked) = self.table.get(&key).filter(|t| t.due == (at, ticket)) else {
                continue;
            };
            let interval = Duration::from_millis(tracked.check.interval_ms);
            // Keep the instance's offset unless it fell a whole interval behind.
            let next = if at + interval > now {
                at + interval
            } else {
                now + interval
            };
            let kind = tracked.check.kind;
            let due = self.schedule_at(next, &key);
            let Some(tracked) = self.table.get_mut(&key) else {
                continue;
            };
            tracked.due = due;
            match kind {
                CheckKind::Ttl => self.ttl_missed(&key),
                _ if tracked.probing => {}
                _ => self.start_probe(key),
            }
        }
    }

    fn start_probe(&mut self, key: Key) {
        let Some(tracked) = self.table.get_mut(&key) else {
            return;
        };
        tracked.probing = true;
        self.in_flight += 1;
        let check = tracked.check.clone();
        let generation = tracked.generation;
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = probe::run(&check).await;
            let _ = done.send(Done::Probe(key, generation, outcome));
        });
    }

    /// A ttl check's deadline passed without a report.
    fn ttl_missed(&mut self, key: &Key) {
        let Some(tracked) = self.table.get(key) else {
            return;
        };
        let output = format!(
            "ttl check: no report within {} ms",
            tracked.check.interval_ms
        );
        self.change(key, Health::Critical, output);
    }

    fn finished(&mut self, done: Done) {
        match done {
            Done::Probe(key, generation, outcome) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.judge(&key, generation, outcome);
                self.fire_due();
            }
            Done::Proposal(key) => {
                if let Some(tracked) = self.table.get_mut(&key) {
                    tracked.proposing = false;
                }
            }
            Done::Removal(keys) => {
                for key in keys {
                    if let Some(tracked) = self.table.get_mut(&key) {
                        tracked.removing = false;
                    }
                }
            }
        }
    }

    /// Counts a probe result and proposes the change it calls for, if any.
    fn judge(&mut self, key: &Key, generation: u64, outcome: Outcome) {
        let Some(tracked) = self
            .table
            .get_mut(key)
            .filter(|t| t.generation == generation)
        else {
            return;
        };
        tracked.probing = false;
        // A record kept after its lease expired stays critical until the
        // instance registers again, whatever its probes say.
        if tracked.keepalive_expired {
            return;
        }
        if let Some(wanted) = tracked
            .streak
            .observe(outcome.ok, &tracked.check, tracked.health)
        {
            self.change(key, wanted, outcome.output);
        }
    }

    /// Proposes a health change unless one is in flight or it is no change.
    fn change(&mut self, key: &Key, health: Health, output: String) {
        let Some(tracked) = self.table.get_mut(key) else {
            return;
        };
        if tracked.proposing || tracked.health == health || tracked.keepalive_expired {
            return;
        }
        tracked.proposing = true;
        let command = set_health(key, health, output).in_term(self.term);
        let proposer = self.context.proposer.clone();
        let done = self.done_tx.clone();
        let key = key.clone();
        tokio::spawn(async move {
            if let Err(e) = proposer.propose(command).await {
                tracing::debug!(error = %e, "health: change not committed; will retry");
            }
            let _ = done.send(Done::Proposal(key));
        });
    }

    /// Proposes the removal of instances critical for longer than allowed.
    fn remove_overdue(&mut self) {
        let now = now_ms();
        let mut due = Vec::new();
        for (key, tracked) in &mut self.table {
            let after = tracked.check.deregister_critical_after_ms;
            let overdue = tracked.health == Health::Critical
                && after > 0
                && !tracked.removing
                && tracked
                    .critical_since_ms
                    .is_some_and(|since| now >= since.saturating_add(after));
            if overdue && due.len() < REMOVAL_BATCH {
                tracked.removing = true;
                due.push((key.clone(), tracked.critical_since_ms.unwrap_or(0)));
            }
        }
        if due.is_empty() {
            return;
        }
        let keys: Vec<Key> = due.iter().map(|(k, _)| k.clone()).collect();
        let command = Command::RemoveUnhealthy {
            instances: due
                .into_iter()
                .map(|((service, id), since)| (service, id, since))
                .collect(),
            now_ms: now,
        }
        .in_term(self.term);
        let proposer = self.context.proposer.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = proposer.propose(command).await {
                tracing::debug!(error = %e, "health: removal not committed; will retry");
            }
            let _ = done.send(Done::Removal(keys));
        });
    }

    /// A ttl check's report: restarts its deadline; answers the health after
    /// it and the change to commit (the caller commits it, so the session
    /// never waits on the log).
    fn report(&mut self, pending: PendingReport) {
        let key = (pending.service.clone(), pending.id.clone());
        let answer = self.take_report(&key, &pending);
        let _ = pending.reply.send(answer);
    }

    fn take_report(
        &mut self,
        key: &Key,
        pending: &PendingReport,
    ) -> Result<(Health, Option<Command>), ReportError> {
        if !self.table.contains_key(key) {
            // The session may not have seen a registration that just committed.
            let record = self
                .context
                .state
                .read()
                .map_err(|e| ReportError::Failed(e.to_string()))?
                .instance(&key.0, &key.1)
                .map_err(|e| ReportError::Failed(e.to_string()))?;
            let (instance, _) = record.ok_or(ReportError::State(StateError::InstanceNotFound))?;
            self.upsert(instance);
        }
        let tracked = self
            .table
            .get(key)
            .ok_or(ReportError::State(StateError::NotTtlCheck))?;
        if tracked.check.kind != CheckKind::Ttl {
            return Err(ReportError::State(StateError::NotTtlCheck));
        }
        let interval = Duration::from_millis(tracked.check.interval_ms);
        let due = self.schedule_at(Instant::now() + interval, key);
        let Some(tracked) = self.table.get_mut(key) else {
            return Err(ReportError::State(StateError::InstanceNotFound));
        };
        tracked.due = due;
        let wanted = pending.report.health();
        if tracked.keepalive_expired || wanted == tracked.health {
            return Ok((tracked.health, None));
        }
        let command = set_health(key, wanted, pending.output.clone()).in_term(self.term);
        Ok((wanted, Some(command)))
    }
}

fn set_health(key: &Key, health: Health, output: String) -> Command {
    Command::SetHealth {
        service: key.0.clone(),
        id: key.1.clone(),
        health,
        output,
        now_ms: now_ms(),
    }
}

/// When a newly followed check first acts: a ttl check after a whole interval
/// (its reporter gets a full deadline from this leader), a probe at an offset
/// within the interval drawn from the instance's name.
fn first_delay(key: &Key, check: &CheckSpec) -> Duration {
    if check.kind == CheckKind::Ttl {
        return Duration::from_millis(check.interval_ms);
    }
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    Duration::from_millis(hasher.finish() % check.interval_ms.max(1))
}
