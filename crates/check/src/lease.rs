//! Lease safety, as the client that kept a lease alive measures it.
//!
//! The history holds, per lease: the keepalives sent and what they were
//! answered (an acknowledged TTL, or 0 for "gone"), the client's own revoke if
//! any, when the holder stopped renewing, and when a watcher saw the lease's
//! key deleted. All times are on the recorder's clock. The rules:
//!
//! 1. **Never early.** A keepalive sent at `s` and acknowledged with TTL `T`
//!    promises the lease until `s + T`; a deletion the client did not ask for,
//!    seen before that, is an early expiry. (A deletion is seen after it
//!    happened, so seeing it early proves it happened early.)
//! 2. **Never late by more than the bound.** A lease whose holder stopped
//!    (its last acknowledged keepalive sent at `t`, with TTL `T`) must be seen
//!    gone by `max(t, q) + T + bound`, where `q` is when the faults stopped: a
//!    leader change restarts the clock of a lease too short to be
//!    checkpointed, so while leaders keep changing a dead lease may live on;
//!    once they stop it must go within one TTL and the bound.
//! 3. **Never back.** No keepalive sent after the lease was seen gone, or
//!    after the client's revoke completed, is acknowledged with a TTL > 0.

use serde::{Deserialize, Serialize};

use crate::{Nanos, Verdict};

/// One keepalive: when it was sent and the TTL (seconds) it was answered
/// with (`None`: no answer; `Some(0)`: the lease is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keepalive {
    pub sent: Nanos,
    pub ttl: Option<i64>,
}

/// Everything recorded about one lease.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeaseHistory {
    pub id: i64,
    /// Granted TTL, seconds.
    pub ttl: i64,
    pub keepalives: Vec<Keepalive>,
    /// When the client's own revoke completed, if it revoked.
    pub revoked: Option<Nanos>,
    /// When the holder stopped renewing on purpose, if it did.
    pub stopped: Option<Nanos>,
    /// When a watcher first saw the lease's key deleted.
    pub seen_gone: Option<Nanos>,
}

const SECOND: Nanos = 1_000_000_000;

fn secs(ttl: i64) -> Nanos {
    ttl.max(0) as Nanos * SECOND
}

fn ms(n: Nanos) -> f64 {
    n as f64 / 1e6
}

/// When rule 2 expects leases gone: within `late` of their TTL after the
/// later of their last keepalive and `quiet_since` (when faults stopped).
#[derive(Debug, Clone, Copy)]
pub struct Lateness {
    pub late: Nanos,
    pub quiet_since: Nanos,
}

/// Checks every lease; `end` is when the recording stopped (a lease not yet
/// due then is not judged late).
pub fn check(leases: &[LeaseHistory], lateness: Lateness, end: Nanos) -> Verdict {
    let mut anomalies = Vec::new();
    for lease in leases {
        check_one(lease, lateness, end, &mut anomalies);
    }
    Verdict {
        checker: "lease-safety",
        checked: leases.len(),
        anomalies,
    }
}

fn acknowledged(lease: &LeaseHistory) -> impl Iterator<Item = (&Keepalive, i64)> {
    lease
        .keepalives
        .iter()
        .filter_map(|k| k.ttl.filter(|t| *t > 0).map(|t| (k, t)))
}

fn check_one(lease: &LeaseHistory, lateness: Lateness, end: Nanos, out: &mut Vec<String>) {
    let id = lease.id;
    // 1. Never early (deletions the client asked for do not count).
    if let (Some(gone), None) = (lease.seen_gone, lease.revoked) {
        if let Some((k, ttl)) = acknowledged(lease).filter(|(k, _)| k.sent < gone).last() {
            let promised = k.sent + secs(ttl);
            if gone < promised {
                out.push(format!(
                    "lease {id:x}: expired early: seen gone at {:.1} ms, but a keepalive sent at {:.1} ms was acknowledged with TTL {ttl} s (until {:.1} ms)",
                    ms(gone), ms(k.sent), ms(promised)
                ));
            }
        }
    }
    // 2. Never late beyond the bound, once the holder stopped.
    if let (Some(stopped), None) = (lease.stopped, lease.revoked) {
        let last = acknowledged(lease)
            .filter(|(k, _)| k.sent <= stopped)
            .last();
        let (from, ttl) = last.map_or((stopped, lease.ttl), |(k, t)| (k.sent, t));
        let due = from.max(lateness.quiet_since) + secs(ttl) + lateness.late;
        let late = match lease.seen_gone {
            Some(gone) => gone > due,
            None => end > due,
        };
        if late {
            out.push(format!(
                "lease {id:x}: holder stopped at {:.1} ms, lease due by {:.1} ms (TTL {ttl} s + {:.0} ms after {:.1} ms), {}",
                ms(stopped),
                ms(due),
                ms(lateness.late),
                ms(from.max(lateness.quiet_since)),
                lease
                    .seen_gone
                    .map_or("never seen gone".to_string(), |g| format!("seen gone at {:.1} ms", ms(g)))
            ));
        }
    }
    // 3. Never back.
    let gone_at = match (lease.seen_gone, lease.revoked) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(gone) = gone_at {
        if let Some((k, ttl)) = acknowledged(lease).find(|(k, _)| k.sent > gone) {
            out.push(format!(
                "lease {id:x}: came back: gone at {:.1} ms, yet a keepalive sent at {:.1} ms was acknowledged with TTL {ttl} s",
                ms(gone),
                ms(k.sent)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;
    const QUIET: Lateness = Lateness {
        late: 500 * MS,
        quiet_since: 0,
    };

    fn kept(sent_ms: &[u64], ttl: i64) -> Vec<Keepalive> {
        sent_ms
            .iter()
            .map(|s| Keepalive {
                sent: s * MS,
                ttl: Some(ttl),
            })
            .collect()
    }

    fn lease(keepalives: Vec<Keepalive>) -> LeaseHistory {
        LeaseHistory {
            id: 7,
            ttl: 2,
            keepalives,
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_kept_alive_then_left_to_expire_in_time_passes() {
        let mut l = lease(kept(&[0, 600, 1200], 2));
        l.stopped = Some(1300 * MS);
        l.seen_gone = Some(3400 * MS);
        let verdict = check(&[l], QUIET, 10_000 * MS);
        assert!(verdict.ok(), "{verdict}");
    }

    #[test]
    fn an_early_expiry_is_caught() {
        let mut l = lease(kept(&[0, 600, 1200], 2));
        l.seen_gone = Some(3000 * MS); // promised until 3200 ms
        let verdict = check(&[l], QUIET, 10_000 * MS);
        assert_eq!(verdict.anomalies.len(), 1, "{verdict}");
        assert!(verdict.anomalies[0].contains("expired early"), "{verdict}");
    }

    #[test]
    fn a_late_or_missing_expiry_is_caught() {
        let mut late = lease(kept(&[0], 2));
        late.stopped = Some(100 * MS);
        late.seen_gone = Some(2600 * MS); // due by 2000 + 500
        let mut never = late.clone();
        never.id = 8;
        never.seen_gone = None;
        let verdict = check(&[late, never], QUIET, 10_000 * MS);
        assert_eq!(verdict.anomalies.len(), 2, "{verdict}");
        assert!(
            verdict.anomalies[1].contains("never seen gone"),
            "{verdict}"
        );
        // Faults until 4000 ms: due only by 4000 + 2000 + 500.
        let mut during_faults = lease(kept(&[0], 2));
        during_faults.stopped = Some(100 * MS);
        during_faults.seen_gone = Some(6000 * MS);
        let faulty = Lateness {
            late: 500 * MS,
            quiet_since: 4000 * MS,
        };
        assert!(check(&[during_faults.clone()], faulty, 10_000 * MS).ok());
        during_faults.seen_gone = Some(6600 * MS);
        assert!(!check(&[during_faults], faulty, 10_000 * MS).ok());
        // Not yet due when the run ended: no verdict on it.
        let mut pending = lease(kept(&[0], 2));
        pending.stopped = Some(0);
        assert!(check(&[pending], QUIET, 2_400 * MS).ok());
    }

    #[test]
    fn a_lease_that_comes_back_is_caught() {
        let mut revoked = lease(kept(&[0, 600], 2));
        revoked.revoked = Some(700 * MS);
        revoked.keepalives.push(Keepalive {
            sent: 800 * MS,
            ttl: Some(2),
        });
        let mut expired = lease(kept(&[0], 2));
        expired.id = 9;
        expired.seen_gone = Some(2100 * MS);
        expired.keepalives.push(Keepalive {
            sent: 2200 * MS,
            ttl: Some(0),
        });
        let verdict = check(&[revoked, expired.clone()], QUIET, 10_000 * MS);
        assert_eq!(verdict.anomalies.len(), 1, "{verdict}");
        assert!(
            verdict.anomalies[0].contains("lease 7: came back"),
            "{verdict}"
        );
        expired.keepalives.push(Keepalive {
            sent: 2300 * MS,
            ttl: Some(2),
        });
        assert!(!check(&[expired], QUIET, 10_000 * MS).ok());
    }
}
