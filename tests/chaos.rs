//! Real-process chaos: a three-node cluster of real `roster` processes with
//! real sled data, under a nemesis that SIGKILLs the leader or a random node,
//! SIGSTOPs and SIGCONTs nodes (the leader too), restarts every node at once,
//! and cuts links between nodes (each node has its own loopback address;
//! iptables drops packets between two of them, both ways or one way), while
//! clients record what they saw: key-value operations, lease
//! keepalives and their acknowledged TTLs, and watch events. At the end every
//! node restarts once more, and the checkers of `roster-check` judge the
//! history: linearizability, lease safety, watch order and completeness,
//! durability. Each prints one verdict line with its counts.
//!
//! The clients are `roster_sim::workload`, the same the deterministic
//! simulation runs. Link cuts need root and iptables; without them the test
//! says so and runs the other faults.
//!
//! Bounded for CI: `ROSTER_CHAOS_SECS` (default 20) seconds of faults,
//! `ROSTER_CHAOS_SEED` (default: from the clock, printed) for the random
//! choices; `scripts/chaos.sh` runs it longer. (Roster's own flags: not for
//! etcd.)

mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{Cluster, ClusterOptions};
use roster_check::Nanos;
use roster_sim::workload::{Connect, Mix, Rng, Workload};

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    KillOne,
    PauseLeader,
    PauseOne,
    RestartAll,
    IsolateLeader,
    IsolateOne,
    CutOneWay,
}

/// Drops packets between node addresses with iptables rules (tagged, and
/// removed when it goes, also when the test fails).
struct Firewall {
    rules: Vec<(String, String)>,
}

const RULE_TAG: &str = "roster-chaos";

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Firewall {
    /// A firewall if iptables can be used here; rules a killed earlier run
    /// left behind are removed first.
    fn open() -> Result<Firewall, String> {
        let out = std::process::Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .output()
            .map_err(|e| format!("iptables: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(rule) = line
                .strip_prefix("-A INPUT ")
                .filter(|r| r.contains(RULE_TAG))
            {
                let mut args = vec!["-D", "INPUT"];
                args.extend(rule.split_whitespace());
                iptables(&args)?;
            }
        }
        // The rules this test needs must be accepted too (the comment match
        // may be missing): insert one that matches nothing, then remove it.
        iptables(&drop_rule("-I", "127.0.7.250", "127.0.7.251"))?;
        iptables(&drop_rule("-D", "127.0.7.250", "127.0.7.251"))?;
        Ok(Firewall { rules: Vec::new() })
    }

    /// Drops every packet from `from` to `to`.
    fn cut(&mut self, from: &str, to: &str) {
        iptables(&drop_rule("-I", from, to)).unwrap_or_else(|e| panic!("{e}"));
        self.rules.push((from.to_string(), to.to_string()));
    }

    /// Removes every rule; one that cannot be removed is kept and tried
    /// again next time (and when the firewall goes).
    fn heal(&mut self) {
        self.rules
            .retain(|(from, to)| match iptables(&drop_rule("-D", from, to)) {
                Ok(()) => false,
                Err(e) => {
                    eprintln!("chaos: {e}");
                    true
                }
            });
    }
}

/// The iptables arguments that insert (`-I`) or delete (`-D`) the rule
/// dropping packets from `from` to `to`.
fn drop_rule<'a>(op: &'a str, from: &'a str, to: &'a str) -> Vec<&'a str> {
    let tag = ["-m", "comment", "--comment", RULE_TAG];
    let mut args = vec![op, "INPUT", "-s", from, "-d", to];
    args.extend(tag);
    args.extend(["-j", "DROP"]);
    args
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}

fn nemesis(c: &mut Cluster, rng: &mut Rng, faults: &AtomicU64, firewall: &mut Option<Firewall>) {
    let kinds = if firewall.is_some() { 8 } else { 5 };
    let fault = match rng.below(kinds) {
        0 => Fault::KillLeader,
        1 => Fault::KillOne,
        2 => Fault::PauseLeader,
        3 => Fault::PauseOne,
        4 => Fault::RestartAll,
        5 => Fault::IsolateLeader,
        6 => Fault::IsolateOne,
        _ => Fault::CutOneWay,
    };
    faults.fetch_add(1, Ordering::Relaxed);
    let n = c.size();
    let victim = match fault {
        Fault::KillLeader | Fault::PauseLeader | Fault::IsolateLeader => c.leader(),
        _ => rng.below(n as u64) as usize,
    };
    eprintln!("chaos: {fault:?} (node {victim})");
    match fault {
        Fault::KillLeader | Fault::KillOne => {
            c.kill(victim);
            std::thread::sleep(Duration::from_millis(1000));
            c.restart(victim);
        }
        Fault::PauseLeader | Fault::PauseOne => {
            c.signal(victim, "STOP");
            std::thread::sleep(Duration::from_millis(2500));
            c.signal(victim, "CONT");
        }
        Fault::RestartAll => restart_all(c),
        Fault::IsolateLeader | Fault::IsolateOne | Fault::CutOneWay => {
            let Some(fw) = firewall.as_mut() else { return };
            let me = c.ip(victim).to_string();
            if matches!(fault, Fault::CutOneWay) {
                let other = (victim + 1 + rng.below(n as u64 - 1) as usize) % n;
                fw.cut(&me, c.ip(other));
            } else {
                for other in (0..n).filter(|&o| o != victim) {
                    fw.cut(&me, c.ip(other));
                    fw.cut(c.ip(other), &me);
                }
            }
            std::thread::sleep(Duration::from_millis(1500 + rng.below(2500)));
            fw.heal();
        }
    }
}

fn restart_all(c: &mut Cluster) {
    c.kill_all();
    for i in 0..c.size() {
        c.restart_no_wait(i);
    }
    for i in 0..c.size() {
        c.wait_node_ready(i, Duration::from_secs(30));
    }
}

#[test]
fn chaos_histories_are_linearizable_and_leases_safe() {
    let secs: u64 = std::env::var("ROSTER_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("ROSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos: seed {seed} for {secs} s (replay: ROSTER_CHAOS_SEED={seed} ROSTER_CHAOS_SECS={secs})");
    let mut firewall = match Firewall::open() {
        Ok(fw) => Some(fw),
        Err(e) => {
            eprintln!("chaos: no link cuts (iptables unusable: {e})");
            None
        }
    };
    let mut c = Cluster::start_with(ClusterOptions {
        own_ips: true,
        ..ClusterOptions::new(3)
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let connect = Arc::new(Connect::tcp((0..3).map(|i| c.endpoint(i)).collect()));
    // One holder stops early enough for its lease to be due before the end.
    let mix = Mix {
        kv_clients: 4,
        lease_holders: 3,
        stop_one_holder_at: Some(Duration::from_secs(secs / 4).as_nanos() as Nanos),
    };
    let mut workload = rt.block_on(async { Workload::spawn(connect, seed, mix) });
    let faults = AtomicU64::new(0);
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
        nemesis(&mut c, &mut rng, &faults, &mut firewall);
    }
    let quiet_since = workload.now();
    // The stopped holder's lease is due within its TTL and the bound after the
    // last fault; the watchers stay until then.
    let due = Workload::leases_due(quiet_since);
    while workload.now() < due {
        std::thread::sleep(Duration::from_millis(100));
    }
    let end = rt.block_on(workload.stop());
    // Durability: every node restarts, then the state is read.
    restart_all(&mut c);
    let leader = c.leader();
    let judgement = rt
        .block_on(workload.judge(leader, quiet_since, end))
        .unwrap_or_else(|e| panic!("no verdict: {e}"));
    if let Some(failing) = &judgement.failing_ops {
        // The whole history of each failing key, for replaying the check.
        let path = std::env::temp_dir().join(format!("roster-chaos-{seed}.json"));
        let written = std::fs::write(&path, failing);
        eprintln!(
            "chaos: failing histories written to {} ({written:?})",
            path.display()
        );
    }
    eprintln!(
        "chaos: seed {seed}, {secs} s, {} faults, {} kv operations ({} with unknown outcome), {} keepalives, {} watch segments",
        faults.load(Ordering::Relaxed),
        judgement.ops,
        judgement.unknown,
        judgement.keepalives,
        judgement.watch_segments
    );
    for verdict in &judgement.verdicts {
        eprintln!("chaos: {verdict}");
    }
    assert!(
        judgement.ops > 50,
        "the workload ran: {} operations",
        judgement.ops
    );
    assert!(
        judgement.ok(),
        "anomalies found with seed {seed} (replay: ROSTER_CHAOS_SEED={seed} ROSTER_CHAOS_SECS={secs})"
    );
}
