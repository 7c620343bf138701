//! The lessor: the whole life cycle of lease clocks in one place (DESIGN.md,
//! "Leases: the rules that make them trustworthy").
//!
//! - Only the leader runs clocks (rule 1). When this node becomes leader of a term it
//!   first makes its state machine current (`ensure_linearizable`), then starts every
//!   lease's clock afresh: the full granted TTL, or the checkpointed remaining TTL
//!   when the log holds one newer than the lease's last acknowledged keepalive
//!   (rule 4). Deadlines sit in a min-heap; one task sleeps until the earliest.
//! - Keepalives are not log writes (rule 2). They are collected in batches; each
//!   batch is acknowledged only after a quorum confirmed our leadership, and only
//!   while less than the leader-lease window has passed since that confirmation
//!   began (batches share confirmations: `confirm`). A lease whose log holds a
//!   checkpoint first gets a `LeaseRenewed` record committed (rule 5), once per
//!   lease per checkpoint.
//! - Expiry goes through the log (rule 3): due leases are proposed in batches as
//!   `LeaseExpire`; a batch that fails to commit is retried, never forgotten.
//! - Every command the clocks decide (expiry, checkpoint, renewal record) is
//!   proposed as `Command::InTerm` with the clocks' term: the proposer may hold
//!   it while this node loses leadership and wins again, and under the new
//!   term's clocks (which may have renewed the lease since) it must change
//!   nothing. Answers about a past term never touch the current clocks.
//! - Long leases are checkpointed through the log (rule 5), so repeated
//!   failovers cannot keep a dead holder's lease alive: every half interval,
//!   those no keepalive renewed for half an interval, so a stopped holder's
//!   lease is checkpointed within one interval, and a lease kept alive often
//!   never is (nor do its keepalives wait for a renewal record).
//!
//! Deadlines are never extended past their passing: a keepalive for a lease whose
//! deadline has passed answers TTL 0 (it is expiring), as etcd answers for an
//! unknown lease.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::ServerState;
use roster_raft::{Raft, SharedState};
use roster_state::{Command, Response};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use crate::batch::spawn_batches;
use crate::proposer::Proposer;

mod confirm;

/// Most leases expired by one log entry.
const EXPIRE_BATCH: usize = 1_000;
/// Most leases checkpointed by one log entry.
const CHECKPOINT_BATCH: usize = 1_000;
/// Pause between two checkpoint entries of one pass: at most 10,000 lease
/// checkpoints a second (DESIGN.md rule 5: bounded rate). With more leases than
/// the interval allows at that rate, a pass takes longer than the interval and
/// the next starts when it ends: an idle cluster with 1M leases spent both
/// cores of the benchmark machine checkpointing back to back.
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(100);
/// Most keepalives acknowledged after one quorum confirmation.
const KEEPALIVE_BATCH: usize = 4_096;
/// Keepalive batches being confirmed at once.
const KEEPALIVE_BATCHES_IN_FLIGHT: usize = 8;
/// Pause after a failed expiry proposal before trying again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Why a keepalive could not be answered here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LessorError {
    /// This node is not (or no longer) the leader running the clocks.
    #[error("not the lease primary")]
    NotPrimary,
    #[error("lease keepalive could not be confirmed: {0}")]
    Unavailable(String),
    /// A lease expiry, checkpoint or renewal record did not commit.
    #[error("lessor proposal not committed: {0}")]
    NotCommitted(String),
}

/// Timing settings of the lessor.
#[derive(Debug, Clone)]
pub struct LessorConfig {
    pub leader_lease_window: Duration,
    pub checkpoint_interval: Duration,
}

/// One lease's clock on the leader.
#[derive(Debug, Clone)]
struct Clock {
    ttl: i64,
    deadline: Instant,
    /// When the lease's one heap entry is due: at or before `deadline`. A
    /// renewal only moves `deadline`; the entry is pushed again, at the new
    /// deadline, when it comes up (so the heap holds one entry per lease,
    /// however many keepalives arrive).
    scheduled: Instant,
    /// The log holds a checkpoint of this lease not followed by `LeaseRenewed`.
    checkpointed: bool,
    /// A `LeaseExpire` for it is in flight.
    expiring: bool,
}

/// The clocks, present only while this node is the primary of a term.
#[derive(Default)]
struct Clocks {
    term: Option<u64>,
    leases: HashMap<i64, Clock>,
    heap: BinaryHeap<Reverse<(Instant, i64)>>,
}

impl Clocks {
    fn set(&mut self, id: i64, ttl: i64, deadline: Instant, checkpointed: bool) {
        self.leases.insert(
            id,
            Clock {
                ttl,
                deadline,
                scheduled: deadline,
                checkpointed,
                expiring: false,
            },
        );
        self.heap.push(Reverse((deadline, id)));
    }

    /// Puts a live lease back on the heap, due now (its expiry did not commit).
    fn due_now(&mut self, id: i64, now: Instant) {
        if let Some(clock) = self.leases.get_mut(&id) {
            clock.expiring = false;
            clock.deadline = now;
            clock.scheduled = now;
            self.heap.push(Reverse((now, id)));
        }
    }

    /// The earliest live deadline. Drops heap entries that no longer belong to
    /// a lease, and moves those of renewed leases to their new deadline.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            match self.leases.get_mut(&id) {
                Some(clock) if clock.scheduled == at && !clock.expiring => {
                    if clock.deadline == at {
                        return Some(at);
                    }
                    clock.scheduled = clock.deadline;
                    let moved = clock.deadline;
                    self.heap.pop();
                    self.heap.push(Reverse((moved, id)));
                }
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Takes up to `EXPIRE_BATCH` due leases and marks them expiring.
    fn take_due(&mut self, now: Instant) -> Vec<i64> {
        let mut due = Vec::new();
        while due.len() < EXPIRE_BATCH {
            match self.next_deadline() {
                Some(at) if at <= now => {
                    if let Some(Reverse((_, id))) = self.heap.pop() {
                        if let Some(clock) = self.leases.get_mut(&id) {
                            clock.expiring = true;
                        }
                        due.push(id);
                    }
                }
                _ => break,
            }
        }
        due
    }
}

struct KeepaliveRequest {
    id: i64,
    reply: oneshot::Sender<Result<i64, LessorError>>,
}

/// The lessor of one node. Cheap to clone.
#[derive(Clone)]
pub struct Lessor {
    inner: Arc<Inner>,
}

struct Inner {
    raft: Raft,
    /// The lessor's writes share log entries with everything else proposed.
    proposer: Proposer,
    state: SharedState,
    config: LessorConfig,
    clocks: Mutex<Clocks>,
    /// Quorum confirmations of leadership, shared by keepalive batches.
    confirmations: confirm::Confirmations,
    wake: Notify,
    keepalives: mpsc::Sender<KeepaliveRequest>,
    /// Keeps keepalive batches (readers, several at once) and checkpoint passes
    /// (writer) apart, so that in the log a checkpoint of a lease is never newer
    /// than its last acknowledged keepalive unless a `LeaseRenewed` follows it: a
    /// checkpoint is computed from deadlines that include every acknowledged
    /// keepalive, and a keepalive after a checkpoint records the renewal before
    /// it is acknowledged.
    order: tokio::sync::RwLock<()>,
    /// Counts grants and revocations applied, so that `promote` can tell whether
    /// the lease table changed while it read it.
    changes: AtomicU64,
}

impl Lessor {
    /// The whole state was replaced by a snapshot (on a follower): counts as a
    /// change of the lease table.
    pub(crate) fn installed_snapshot(&self) {
        let _clocks = self.clocks();
        self.inner.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Creates the lessor and spawns its tasks (leadership watch, expiry, keepalive
    /// batching, checkpoints) on the current runtime.
    pub fn start(raft: Raft, proposer: Proposer, state: SharedState, config: LessorConfig) -> Self {
        let (tx, rx) = mpsc::channel(KEEPALIVE_BATCH * 4);
        let lessor = Lessor {
            inner: Arc::new(Inner {
                raft,
                proposer,
                state,
                confirmations: confirm::Confirmations::new(config.leader_lease_window),
                config,
                clocks: Mutex::new(Clocks::default()),
                wake: Notify::new(),
                keepalives: tx,
                order: tokio::sync::RwLock::new(()),
                changes: AtomicU64::new(0),
            }),
        };
        tokio::spawn(lessor.clone().watch_leadership());
        tokio::spawn(lessor.clone().expire_loop());
        tokio::spawn(lessor.clone().keepalive_loop(rx));
        tokio::spawn(lessor.clone().checkpoint_loop());
        lessor
    }

    fn clocks(&self) -> MutexGuard<'_, Clocks> {
        // A poisoned lock means a panic while holding it; the clocks are then
        // untrustworthy, but dropping them is safe: we stop being primary.
        match self.inner.clocks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                *guard = Clocks::default();
                guard
            }
        }
    }

    /// The clocks, if they are still those of `term`: what a decision taken
    /// from them in `term` may change once it committed (or failed to).
    fn clocks_of(&self, term: u64) -> Option<MutexGuard<'_, Clocks>> {
        let clocks = self.clocks();
        (clocks.term == Some(term)).then_some(clocks)
    }

    /// Whether this node currently runs the lease clocks.
    pub fn is_primary(&self) -> bool {
        self.clocks().term.is_some()
    }

    /// Follows the applied log (called inside apply, on every node): starts the
    /// clock of a granted lease and stops those of revoked or expired ones at
    /// the moment the state machine changes, so no keepalive can renew a lease
    /// whose keys are already gone.
    pub(crate) fn observe(&self, response: &Response) {
        match response {
            Response::Batch(responses) => responses.iter().for_each(|r| self.observe(r)),
            Response::LeaseGranted { id, ttl, .. } => self.granted(*id, *ttl),
            Response::LeaseRevoked { revoked, .. } => self.revoked(revoked),
            Response::Registry {
                granted, revoked, ..
            } => {
                if let Some((id, ttl)) = granted {
                    self.granted(*id, *ttl);
                }
                if !revoked.is_empty() {
                    self.revoked(revoked);
                }
            }
            _ => {}
        }
    }

    fn granted(&self, id: i64, ttl: i64) {
        let mut clocks = self.clocks();
        self.inner.changes.fetch_add(1, Ordering::SeqCst);
        if clocks.term.is_some() {
            let deadline = Instant::now() + ttl_duration(ttl);
            clocks.set(id, ttl, deadline, false);
            drop(clocks);
            self.inner.wake.notify_one();
        }
    }

    fn revoked(&self, ids: &[i64]) {
        let mut clocks = self.clocks();
        self.inner.changes.fetch_add(1, Ordering::SeqCst);
        for id in ids {
            clocks.leases.remove(id);
        }
    }

    /// The remaining TTL (seconds, rounded up) and granted TTL of a lease, on the
    /// primary. `None`: unknown here.
    pub fn remaining(&self, id: i64) -> Result<Option<(i64, i64)>, LessorError> {
        let clocks = self.clocks();
        if clocks.term.is_none() {
            return Err(LessorError::NotPrimary);
        }
        Ok(clocks.leases.get(&id).map(|clock| {
            let left = clock.deadline.saturating_duration_since(Instant::now());
            (ceil_secs(left), clock.ttl)
        }))
    }

    /// Renews a lease; answers its TTL, or 0 if it does not exist (or is expiring).
    pub async fn keepalive(&self, id: i64) -> Result<i64, LessorError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .keepalives
            .send(KeepaliveRequest { id, reply })
            .await
            .map_err(|_| LessorError::Unavailable("lessor stopped".into()))?;
        rx.await
            .map_err(|_| LessorError::Unavailable("lessor stopped".into()))?
    }

    /// Follows raft's metrics: become primary on winning a term, stop on losing it.
    async fn watch_leadership(self) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            let (is_leader, term) = {
                let m = metrics.borrow_and_update();
                (m.state == ServerState::Leader, m.current_term)
            };
            let current = self.clocks().term;
            if !is_leader && current.is_some() {
                self.demote();
            } else if is_leader && current != Some(term) {
                self.demote();
                if !self.promote(term).await {
                    // Try again after a pause, not at the next change of the
                    // metrics: every failed check changes them, and a leader
                    // cut off from its peers retried thousands of times a
                    // second (found by the simulation).
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    fn demote(&self) {
        let mut clocks = self.clocks();
        if clocks.term.is_some() {
            tracing::info!(term = ?clocks.term, "lessor: no longer primary");
        }
        *clocks = Clocks::default();
        self.inner.confirmations.clear();
    }

    /// Starts every lease's clock for `term` once the state machine is current.
    /// `false`: leadership could not be confirmed, try again.
    async fn promote(&self, term: u64) -> bool {
        if let Err(e) = self.inner.raft.ensure_linearizable().await {
            tracing::info!(term, error = %e, "lessor: leadership not confirmed");
            return false;
        }
        // Read the lease table, then start the clocks under the clocks lock only
        // if no grant or revoke was applied in between (else read again): applies
        // after that point find us primary and update the clocks themselves.
        let (leases, mut clocks) = loop {
            let seen = self.inner.changes.load(Ordering::SeqCst);
            let leases = match self.inner.state.read().map(|sm| sm.leases()) {
                Ok(Ok(leases)) => leases,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "lessor: cannot read leases");
                    return false;
                }
                Err(_) => return false,
            };
            let clocks = self.clocks();
            if self.inner.changes.load(Ordering::SeqCst) == seen {
                break (leases, clocks);
            }
        };
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || m.current_term != term {
            return true;
        }
        let now = Instant::now();
        for lease in &leases {
            let life = match lease.checkpoint_ms {
                Some(ms) => Duration::from_millis(ms),
                None => ttl_duration(lease.ttl),
            };
            clocks.set(
                lease.id,
                lease.ttl,
                now + life,
                lease.checkpoint_ms.is_some(),
            );
        }
        clocks.term = Some(term);
        tracing::debug!(term, leases = ?leases.iter().map(|l| (l.id, l.checkpoint_ms)).collect::<Vec<_>>(), "lessor: clocks started");
        drop(clocks);
        tracing::info!(term, leases = leases.len(), "lessor: primary");
        self.inner.wake.notify_one();
        true
    }

    /// Sleeps until the earliest deadline, then proposes the due leases' expiry.
    async fn expire_loop(self) {
        loop {
            let next = self.clocks().next_deadline();
            match next {
                Some(at) if at > Instant::now() => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.inner.wake.notified() => {}
                    }
                }
                Some(_) => self.expire_due().await,
                None => self.inner.wake.notified().await,
            }
        }
    }

    async fn expire_due(&self) {
        let (term, due) = {
            let mut clocks = self.clocks();
            let Some(term) = clocks.term else { return };
            (term, clocks.take_due(Instant::now()))
        };
        if due.is_empty() {
            return;
        }
        tracing::debug!(term, ?due, "lessor: expiring");
        let command = Command::LeaseExpire {
            ids: due.clone(),
            now_ms: crate::wall_clock::now_ms(),
        };
        match self.propose_in(term, command).await {
            Ok(_) => {
                // Revoked ids left the clocks when applied; ids that were
                // already gone must leave too.
                tracing::debug!(term, count = due.len(), "lessor: expired");
                if let Some(mut clocks) = self.clocks_of(term) {
                    for id in &due {
                        clocks.leases.remove(id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(term, count = due.len(), error = %e, "lessor: expiry not committed, will retry");
                self.retry_later(term, due);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    /// Commits a decision taken from the clocks of `term`, as a command that
    /// changes nothing unless the leader of that same term appended it: the
    /// proposer may hold it while this node loses leadership and wins a later
    /// term, whose clocks started afresh and may have renewed what it expires.
    async fn propose_in(&self, term: u64, command: Command) -> Result<Response, LessorError> {
        match self.inner.proposer.propose(command.in_term(term)).await {
            Ok(Response::Error { error, .. }) => Err(LessorError::NotCommitted(error.to_string())),
            Ok(response) => Ok(response),
            Err(e) => Err(LessorError::NotCommitted(e.to_string())),
        }
    }

    /// Puts leases whose expiry did not commit back on the clock, due now, if
    /// the clocks are still those of `term`.
    fn retry_later(&self, term: u64, ids: Vec<i64>) {
        let Some(mut clocks) = self.clocks_of(term) else {
            return;
        };
        let now = Instant::now();
        for id in ids {
            clocks.due_now(id, now);
        }
    }

    /// Collects keepalives into batches, one quorum confirmation per batch, a few
    /// batches at once.
    async fn keepalive_loop(self, rx: mpsc::Receiver<KeepaliveRequest>) {
        let in_flight = KEEPALIVE_BATCHES_IN_FLIGHT;
        spawn_batches(
            rx,
            in_flight,
            KEEPALIVE_BATCH,
            usize::MAX,
            |_| 1,
            |batch| {
                let lessor = self.clone();
                async move {
                    let ids: Vec<i64> = batch.iter().map(|r| r.id).collect();
                    let result = lessor.renew_batch(&ids).await;
                    for (req, answer) in batch.into_iter().zip(result) {
                        let _ = req.reply.send(answer);
                    }
                }
            },
        )
        .await;
    }

    /// Renews `ids` after confirming leadership; one answer per id.
    async fn renew_batch(&self, ids: &[i64]) -> Vec<Result<i64, LessorError>> {
        let Some(term) = self.clocks().term else {
            return vec![Err(LessorError::NotPrimary); ids.len()];
        };
        let _order = self.inner.order.read().await;
        // The renewal record and the leadership confirmation are independent:
        // both must be done before the answer, so they run at once.
        let (renewed, confirmed) = tokio::join!(self.record_renewals(ids), self.confirmed(term));
        if let Err(e) = renewed {
            return vec![Err(e); ids.len()];
        }
        let mut began = match confirmed {
            Ok(began) => began,
            Err(e) => return vec![Err(e); ids.len()],
        };
        let window = self.inner.config.leader_lease_window;
        if began.elapsed() >= window {
            // The renewal record took longer than what was left of the window.
            began = match self.confirmed(term).await {
                Ok(began) => began,
                Err(e) => return vec![Err(e); ids.len()],
            };
        }
        let mut clocks = self.clocks();
        let now = Instant::now();
        // The confirmation says no other leader existed when it began; raft's
        // own state says whether we gave our vote away since (an old leader may
        // vote for a candidate once its own lease is over). A vote granted after
        // this check reaches its candidate after this acknowledgement leaves, and
        // the new leader starts its clocks only after committing its first entry.
        let m = self.inner.raft.metrics().borrow().clone();
        if clocks.term != Some(m.current_term) || m.state != ServerState::Leader {
            return vec![Err(LessorError::NotPrimary); ids.len()];
        }
        if now.duration_since(began) >= window {
            let reason = "leadership confirmation took longer than the leader lease window";
            return vec![Err(LessorError::Unavailable(reason.into())); ids.len()];
        }
        let answers: Vec<_> = ids
            .iter()
            .map(|id| Ok(renew(&mut clocks, *id, now)))
            .collect();
        tracing::debug!(term = m.current_term, ?ids, ?answers, "lessor: renewed");
        drop(clocks);
        self.inner.wake.notify_one();
        if self.inner.confirmations.aging(began) {
            let lessor = self.clone();
            tokio::spawn(async move {
                let round = || quorum_round(&lessor.inner.raft);
                lessor.inner.confirmations.refresh(term, round).await;
            });
        }
        answers
    }

    /// When a quorum confirmation of our leadership in `term`, usable now,
    /// began (shared with other batches; a new round if none is young enough).
    async fn confirmed(&self, term: u64) -> Result<Instant, LessorError> {
        let round = || quorum_round(&self.inner.raft);
        match self.inner.confirmations.confirmed(term, round).await {
            Ok(began) => Ok(began),
            Err(e) => {
                tracing::debug!(error = %e, "lessor: keepalive batch not confirmed");
                self.demote_if_not_leader();
                Err(LessorError::NotPrimary)
            }
        }
    }

    /// Commits a `LeaseRenewed` record for the leases of `ids` whose log holds a
    /// checkpoint, before their keepalive is acknowledged (rule 5).
    async fn record_renewals(&self, ids: &[i64]) -> Result<(), LessorError> {
        let (term, mut pending): (u64, Vec<i64>) = {
            let clocks = self.clocks();
            let Some(term) = clocks.term else {
                return Err(LessorError::NotPrimary);
            };
            let pending = ids
                .iter()
                .copied()
                .filter(|id| clocks.leases.get(id).is_some_and(|c| c.checkpointed))
                .collect();
            (term, pending)
        };
        if pending.is_empty() {
            return Ok(());
        }
        pending.sort_unstable();
        pending.dedup();
        let command = Command::LeaseRenewed {
            ids: pending.clone(),
        };
        self.propose_in(term, command).await.inspect_err(|_| {
            self.demote_if_not_leader();
        })?;
        let mut clocks = self.clocks_of(term).ok_or(LessorError::NotPrimary)?;
        for id in pending {
            if let Some(clock) = clocks.leases.get_mut(&id) {
                clock.checkpointed = false;
            }
        }
        Ok(())
    }

    fn demote_if_not_leader(&self) {
        let m = self.inner.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader || Some(m.current_term) != self.clocks().term {
            self.demote();
        }
    }

    /// Every half interval, records the remaining TTL of the leases longer
    /// than the interval that no keepalive renewed for half an interval, a
    /// chunk per log entry, [`CHECKPOINT_PAUSE`] apart. A holder that stopped
    /// is so checkpointed within one interval of its last keepalive, the bound
    /// of rule 5, while a lease kept alive more often than every half interval
    /// is never checkpointed and its keepalives never wait for a `LeaseRenewed`
    /// commit. (A live lease needs no checkpoint: a new leader giving it its
    /// full TTL is what its holder was promised anyway.)
    ///
    /// The keepalive order lock is held for one chunk at a time (its remaining
    /// TTLs are read under it), not for the whole pass: with 100,000 leases a
    /// pass is a hundred commits, and keepalives held back for all of them
    /// waited seconds.
    async fn checkpoint_loop(self) {
        let every = self.inner.config.checkpoint_interval;
        let mut tick = tokio::time::interval(every / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some((term, ids)) = self.idle_long_leases(every) else {
                continue;
            };
            for (n, chunk) in ids.chunks(CHECKPOINT_BATCH).enumerate() {
                if n > 0 {
                    tokio::time::sleep(CHECKPOINT_PAUSE).await;
                }
                let _order = self.inner.order.write().await;
                let Some(remaining_ms) = self.checkpoint_chunk(term, chunk) else {
                    break;
                };
                if remaining_ms.is_empty() {
                    continue;
                }
                let command = Command::LeaseCheckpoint { remaining_ms };
                if let Err(e) = self.propose_in(term, command).await {
                    tracing::debug!(term, error = %e, "lessor: checkpoint not committed");
                    break;
                }
            }
        }
    }

    /// The leases longer than `every` not renewed for `every / 2` (in id
    /// order), with the term of the clocks they come from; `None` when not
    /// primary.
    fn idle_long_leases(&self, every: Duration) -> Option<(u64, Vec<i64>)> {
        let clocks = self.clocks();
        let term = clocks.term?;
        let now = Instant::now();
        let mut ids: Vec<i64> = clocks
            .leases
            .iter()
            .filter(|(_, c)| {
                let ttl = ttl_duration(c.ttl);
                // Last renewed at `deadline - ttl` (or started then, at takeover).
                !c.expiring && ttl > every && c.deadline + every / 2 <= now + ttl
            })
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        Some((term, ids))
    }

    /// The remaining TTLs of those of `ids` still live, marked checkpointed,
    /// if the clocks are still those of `term`.
    fn checkpoint_chunk(&self, term: u64, ids: &[i64]) -> Option<Vec<(i64, u64)>> {
        let mut clocks = self.clocks_of(term)?;
        let now = Instant::now();
        let mut remaining = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(clock) = clocks.leases.get_mut(id).filter(|c| !c.expiring) {
                clock.checkpointed = true;
                let left = clock.deadline.saturating_duration_since(now);
                remaining.push((*id, left.as_millis() as u64));
            }
        }
        Some(remaining)
    }
}

/// One round of heartbeats in which a quorum confirms our leadership (the
/// round a [`confirm::Confirmations`] entry stands for).
async fn quorum_round(raft: &Raft) -> Result<(), impl std::fmt::Display> {
    raft.get_read_log_id().await.map(|_| ())
}

/// Extends one lease's deadline to `now + ttl`; 0 when unknown or already due.
fn renew(clocks: &mut Clocks, id: i64, now: Instant) -> i64 {
    let Some(clock) = clocks.leases.get_mut(&id) else {
        return 0;
    };
    if clock.expiring || clock.deadline <= now {
        return 0;
    }
    clock.deadline = now + ttl_duration(clock.ttl);
    clock.ttl
}

fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

fn ceil_secs(d: Duration) -> i64 {
    let ms = d.as_millis() as i64;
    (ms + 999) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks_with(leases: &[(i64, u64)], start: Instant) -> Clocks {
        let mut clocks = Clocks {
            term: Some(1),
            ..Clocks::default()
        };
        for &(id, ttl) in leases {
            clocks.set(id, ttl as i64, start + Duration::from_secs(ttl), false);
        }
        clocks
    }

    #[test]
    fn renewals_keep_one_heap_entry_per_lease() {
        let start = Instant::now();
        let mut clocks = clocks_with(&[(1, 10), (2, 20)], start);
        for n in 1..=1_000u64 {
            let at = start + Duration::from_millis(n);
            assert_eq!(renew(&mut clocks, 1, at), 10);
            assert_eq!(renew(&mut clocks, 2, at), 20);
        }
        assert_eq!(clocks.heap.len(), 2, "renewals push nothing");
        // The entry of lease 1 comes up at its first deadline and moves to the
        // renewed one.
        let renewed_1 = start + Duration::from_millis(1_000) + Duration::from_secs(10);
        assert_eq!(clocks.next_deadline(), Some(renewed_1));
        assert_eq!(clocks.heap.len(), 2);
        assert!(clocks
            .take_due(renewed_1 - Duration::from_millis(1))
            .is_empty());
        assert_eq!(clocks.take_due(renewed_1), vec![1]);
        assert_eq!(renew(&mut clocks, 1, renewed_1), 0, "expiring: not renewed");
    }

    #[test]
    fn due_leases_come_out_in_deadline_order_and_a_failed_expiry_comes_back() {
        let start = Instant::now();
        let mut clocks = clocks_with(&[(3, 30), (1, 10), (2, 20)], start);
        let later = start + Duration::from_secs(25);
        assert_eq!(clocks.take_due(later), vec![1, 2]);
        assert_eq!(
            clocks.next_deadline(),
            Some(start + Duration::from_secs(30))
        );
        clocks.due_now(2, later);
        assert_eq!(clocks.take_due(later), vec![2]);
        // A revoked lease's entry is dropped when it comes up.
        clocks.leases.remove(&3);
        assert_eq!(clocks.next_deadline(), None);
        assert!(clocks.heap.is_empty());
    }
}
