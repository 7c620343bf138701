//! Automatic compaction (etcd's `--auto-compaction-mode` and
//! `--auto-compaction-retention`), so the revision history does not grow forever.
//!
//! Only the leader compacts, by proposing `Compact` through the log like a client
//! would; a node that is not the leader forgets what it sampled, so a new leader
//! starts its own count. Two policies:
//! - `Revision(n)`: keep the last `n` revisions; checked every second.
//! - `Periodic(d)`: keep what was written in the last `d`; the revision is sampled
//!   every `d / 10` (between 1 s and 1 h), and the history is compacted to the
//!   newest sample at least `d` old.
//!
//! A compaction runs inside one apply, so a large backlog is compacted in steps of
//! at most [`STEP`] revisions, one entry each.

use std::collections::VecDeque;
use std::time::Duration;

use openraft::ServerState;
use roster_raft::{Raft, SharedState};
use roster_state::{Command, Response};
use tokio::time::Instant;

use crate::proposer::Proposer;

/// The most revisions one `Compact` entry discards.
const STEP: i64 = 10_000;

/// What history automatic compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoCompaction {
    #[default]
    Off,
    /// Keep the revisions written in this much time.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl AutoCompaction {
    fn tick(&self) -> Option<Duration> {
        match *self {
            AutoCompaction::Off => None,
            AutoCompaction::Revision(_) => Some(Duration::from_secs(1)),
            AutoCompaction::Periodic(keep) => {
                Some((keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)))
            }
        }
    }
}

/// Starts the compactor task (nothing if `policy` is `Off`).
pub fn start(raft: Raft, proposer: Proposer, state: SharedState, policy: AutoCompaction) {
    if let Some(tick) = policy.tick() {
        tokio::spawn(run(raft, proposer, state, policy, tick));
    }
}

async fn run(
    raft: Raft,
    proposer: Proposer,
    state: SharedState,
    policy: AutoCompaction,
    tick: Duration,
) {
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        tokio::time::sleep(tick).await;
        if raft.metrics().borrow().state != ServerState::Leader {
            samples.clear();
            continue;
        }
        let Ok((revision, compacted)) = read_revisions(&state) else {
            continue;
        };
        let now = Instant::now();
        samples.push_back((now, revision));
        let target = match policy {
            AutoCompaction::Off => return,
            AutoCompaction::Revision(keep) => revision - keep,
            AutoCompaction::Periodic(keep) => oldest_kept(&mut samples, now, keep),
        };
        if target > compacted {
            let step = target.min(compacted.max(1) + STEP);
            match proposer.propose(Command::Compact { revision: step }).await {
                Ok(Response::Done { .. }) => {
                    tracing::info!(revision = step, "auto-compacted history")
                }
                Ok(other) => tracing::debug!(?other, "auto-compaction not applied"),
                Err(e) => tracing::debug!(error = %e, "auto-compaction proposal failed"),
            }
        }
    }
}

/// The revision of the newest sample at least `keep` old (0 if none yet), with
/// the samples before it dropped.
fn oldest_kept(samples: &mut VecDeque<(Instant, i64)>, now: Instant, keep: Duration) -> i64 {
    let old_enough = |t: &Instant| now.duration_since(*t) >= keep;
    while samples.len() > 1 && samples.get(1).is_some_and(|(t, _)| old_enough(t)) {
        samples.pop_front();
    }
    match samples.front() {
        Some((t, revision)) if old_enough(t) => *revision,
        _ => 0,
    }
}

fn read_revisions(state: &SharedState) -> Result<(i64, i64), ()> {
    let sm = state.read().map_err(|_| ())?;
    Ok((sm.revision(), sm.compacted().map_err(|_| ())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_keeps_the_newest_sample_old_enough() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut samples: VecDeque<_> = [(at(0), 10), (at(6), 20), (at(12), 30)].into();
        let keep = Duration::from_secs(10);
        assert_eq!(
            oldest_kept(&mut samples, at(9), keep),
            0,
            "nothing 10 s old yet"
        );
        assert_eq!(oldest_kept(&mut samples, at(17), keep), 20);
        assert_eq!(
            samples.front().map(|s| s.1),
            Some(20),
            "older samples dropped"
        );
        assert_eq!(oldest_kept(&mut samples, at(40), keep), 30);
    }

    #[test]
    fn ticks_follow_the_policy() {
        assert_eq!(AutoCompaction::Off.tick(), None);
        assert_eq!(
            AutoCompaction::Revision(5).tick(),
            Some(Duration::from_secs(1))
        );
        let hour = Duration::from_secs(3600);
        assert_eq!(
            AutoCompaction::Periodic(hour).tick(),
            Some(Duration::from_secs(360))
        );
        assert_eq!(
            AutoCompaction::Periodic(Duration::from_secs(2)).tick(),
            Some(Duration::from_secs(1))
        );
    }
}
