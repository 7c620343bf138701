//! Process-wide metrics in the Prometheus text format, without a metrics
//! library: counters, histograms and labelled counters as `static`s that any
//! crate of the node bumps where the thing happens (the WAL's fsync, apply,
//! the lessor, watch streams, handler deliveries), and [`render`], which
//! writes them all for a scrape of `/metrics`.
//!
//! Why statics: a metric is a fact about the process, and passing a registry
//! through every constructor from the WAL up to the watch hub would touch
//! every signature for no gain. Several nodes in one process (tests, the
//! simulation) share them, as their process's metrics would.
//!
//! Values the node knows better at scrape time than by counting (its raft
//! term, role, applied index, the registry's instances) are not here: the
//! server renders them next to these (`roster_server::metrics`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A count that only goes up.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

/// Counts by the value of one label (`reason`, `outcome`...).
pub struct LabeledCounter {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: Mutex<BTreeMap<&'static str, u64>>,
}

impl LabeledCounter {
    pub const fn new(name: &'static str, help: &'static str, label: &'static str) -> Self {
        LabeledCounter {
            name,
            help,
            label,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn add(&self, value: &'static str, n: u64) {
        // A poisoned lock (a panic while counting) loses nothing worth a panic.
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        *values.entry(value).or_insert(0) += n;
    }

    pub fn get(&self, value: &str) -> u64 {
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values.get(value).copied().unwrap_or(0)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        let values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        for (value, n) in values.iter() {
            let _ = writeln!(out, "{}{{{}=\"{}\"}} {n}", self.name, self.label, value);
        }
    }
}

/// Upper bounds (seconds) of the latency buckets: 100 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Durations in fixed buckets ([`LATENCY_BUCKETS`]).
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(at) = LATENCY_BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[at].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let mut cumulative = 0;
        for (le, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{}_bucket{{le=\"{le}\"}} {cumulative}", self.name);
        }
        let count = self.count();
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", self.name);
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {count}", self.name);
    }
}

/// `# HELP` and `# TYPE` lines of one metric.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

// The metrics themselves, in one place so that `render` lists every one.

pub static WAL_FSYNC: Histogram = Histogram::new(
    "roster_wal_fsync_duration_seconds",
    "Time of one fdatasync of the write-ahead log (it makes a group of appends durable).",
);
pub static APPLY: Histogram = Histogram::new(
    "roster_apply_duration_seconds",
    "Time to apply one committed log entry to the state machine.",
);
pub static PROPOSALS: LabeledCounter = LabeledCounter::new(
    "roster_proposals_total",
    "Commands this member proposed as leader, by outcome (committed, failed).",
    "outcome",
);
pub static LEADER_CHANGES: Counter = Counter::new(
    "roster_leader_changes_seen_total",
    "Times this member saw the leader change.",
);
pub static LEASE_GRANTS: Counter = Counter::new(
    "roster_lease_grants_total",
    "Leases granted (applied on this member).",
);
pub static LEASE_KEEPALIVES: Counter = Counter::new(
    "roster_lease_keepalives_total",
    "Keepalives this member received from clients.",
);
pub static LEASE_REMOVALS: LabeledCounter = LabeledCounter::new(
    "roster_lease_removals_total",
    "Leases removed (applied on this member), by reason (expired, revoked).",
    "reason",
);
pub static WATCH_EVENTS_SENT: Counter = Counter::new(
    "roster_watch_events_sent_total",
    "Events this member sent to watchers.",
);
pub static HANDLER_DELIVERIES: LabeledCounter = LabeledCounter::new(
    "roster_handler_deliveries_total",
    "Registry events this member delivered to handlers, by outcome (delivered, failed).",
    "outcome",
);

/// Every metric above, in the text format.
pub fn render(out: &mut String) {
    WAL_FSYNC.render(out);
    APPLY.render(out);
    PROPOSALS.render(out);
    LEADER_CHANGES.render(out);
    LEASE_GRANTS.render(out);
    LEASE_KEEPALIVES.render(out);
    LEASE_REMOVALS.render(out);
    WATCH_EVENTS_SENT.render(out);
    HANDLER_DELIVERIES.render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = Histogram::new("t_seconds", "test");
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("# TYPE t_seconds histogram"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_sum 60.00305\n"), "{out}");
        assert!(out.contains("t_seconds_count 3\n"), "{out}");
    }

    #[test]
    fn a_labeled_counter_renders_each_value() {
        let c = LabeledCounter::new("t_total", "test", "reason");
        c.add("expired", 3);
        c.add("revoked", 1);
        c.add("expired", 2);
        let mut out = String::new();
        c.render(&mut out);
        assert!(out.contains("t_total{reason=\"expired\"} 5\n"), "{out}");
        assert!(out.contains("t_total{reason=\"revoked\"} 1\n"), "{out}");
    }
}
