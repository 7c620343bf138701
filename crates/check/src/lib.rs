//! Checkers that judge what clients saw, not what the servers say about
//! themselves: a recorded history of operations with invoke and complete
//! times (one clock, the recorder's) goes in, a verdict with counts and the
//! anomalies found comes out.
//!
//! - [`linear`]: linearizability of key-value operations (put, get, delete,
//!   compare-and-set on one key), a Wing–Gong search with Lowe's memoization,
//!   partitioned by key; a failing key's history is cut down to a smaller one
//!   that still fails.
//! - [`lease`]: lease safety as the client that kept a lease alive measures
//!   it: no key of a lease goes before the last acknowledged keepalive's send
//!   time plus its TTL; a lease whose holder stopped goes within TTL plus a
//!   stated bound; a lease that went never comes back.
//! - [`watch`]: every watcher's events are in order, unique, and miss nothing
//!   of the final history between its first and last revision.
//! - [`durability`]: every acknowledged write is still there after a restart.
//!
//! The checkers are pure functions of the history, used by the real-process
//! chaos test and the simulation alike.

pub mod durability;
pub mod lease;
pub mod linear;
pub mod watch;

/// Nanoseconds since the run's start, on the recorder's clock.
pub type Nanos = u64;

/// One line of a run's verdict: a checker's name, what it looked at, and
/// what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub checker: &'static str,
    pub checked: usize,
    pub anomalies: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.anomalies.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = if self.ok() { "ok" } else { "FAILED" };
        write!(
            f,
            "{:<16} {status:<6} checked {:>7}, anomalies {}",
            self.checker,
            self.checked,
            self.anomalies.len()
        )?;
        for anomaly in self.anomalies.iter().take(10) {
            write!(f, "\n    {anomaly}")?;
        }
        Ok(())
    }
}
