//! Smoke test of `roster bench`'s workloads against a 3-node cluster of the
//! debug binary, with tiny numbers: each runs to the end and prints what it
//! should (every operation succeeded, no early or missing expiry, no lease lost
//! in a failover, numbers that parse). The figures themselves mean nothing in a
//! debug build on a shared machine; `scripts/bench-compare.sh` is for those.

mod harness;

use std::process::Command;
use std::time::Instant;

use harness::Cluster;

/// `host:port` of every node, as `--endpoints` takes them.
fn endpoints(c: &Cluster) -> String {
    let eps: Vec<String> = c
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    eps.join(",")
}

/// Runs `roster bench --endpoints <c> <args>`; its stdout, after checking it
/// exited 0.
fn bench(c: &Cluster, args: &str) -> String {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["bench", "--endpoints", &endpoints(c)])
        .args(args.split_whitespace())
        .output()
        .expect("run roster bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "roster bench {args} ({:.1} s):\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(out.status.success(), "roster bench {args} failed");
    stdout
}

/// The line of `out` that starts with `start`.
#[track_caller]
fn line<'a>(out: &'a str, start: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{out}"))
}

/// The number that follows `label` in `text`.
#[track_caller]
fn number_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text:?}"));
    let rest = text[at + label.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("no number after {label:?} in {text:?}: {e}"))
}

/// The number just before `label` in `text`.
#[track_caller]
fn number_before(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text:?}"));
    let word = text[..at].split_whitespace().last().unwrap_or_default();
    word.parse()
        .unwrap_or_else(|e| panic!("no number before {label:?} in {text:?}: {e}"))
}

/// A `report()` line: `<ok> ok, <errors> errors ... latency ms p50 .. p99 .. max ..`.
#[track_caller]
fn check_report(report: &str, ok: f64) {
    assert_eq!(number_before(report, " ok,"), ok, "{report}");
    assert_eq!(number_after(report, "ok,"), 0.0, "errors: {report}");
    let p50 = number_after(report, "p50");
    let max = number_after(report, "max");
    assert!(p50 > 0.0 && p50 <= max, "{report}");
}

/// Whether process `pid` is gone or a zombie (killed, not yet reaped).
fn dead(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
    state.is_none_or(|s| s.starts_with('Z'))
}

#[test]
fn reads_grants_expiry_storm_and_scale() {
    let c = Cluster::start(3);
    let common = "--clients 8 --conns 3 --total 200 --duration 20s";

    let out = bench(&c, &format!("{common} put"));
    check_report(line(&out, "Put"), 200.0);
    let out = bench(&c, &format!("{common} range --keys 500"));
    check_report(line(&out, "range (linearizable):"), 200.0);
    let out = bench(&c, &format!("{common} range --keys 500 --serializable"));
    check_report(line(&out, "range (serializable):"), 200.0);

    let out = bench(&c, &format!("{common} lease-grant --ttl 60"));
    check_report(line(&out, "lease-grant (TTL 60 s):"), 200.0);

    let out = bench(&c, &format!("{common} keepalive --leases 300 --ttl 30"));
    check_report(line(&out, "Keepalive"), 200.0);

    let out = bench(&c, "--conns 3 expiry --leases 50 --ttl 2");
    let expiry = line(&out, "expiry of 50 leases (TTL 2 s):");
    assert!(
        expiry.contains("50 deleted, 0 early, 0 missing"),
        "{expiry}"
    );
    assert!(number_after(expiry, "max") < 10_000.0, "{expiry}");

    let out = bench(
        &c,
        "--clients 4 --conns 3 storm --leases 500 --ttl 3 --calm 1s",
    );
    let storm = line(&out, "storm expiry of 500 leases:");
    assert!(storm.contains("500 deleted, 0 early, 0 missing"), "{storm}");
    assert!(number_after(storm, "last key gone") < 30.0, "{storm}");
    assert!(number_before(line(&out, "storm put (calm):"), " ok,") > 0.0);
    number_after(line(&out, "storm put p99 during / calm:"), ":");

    let pids: Vec<String> = (0..3)
        .filter_map(|i| c.pid(i))
        .map(|p| p.to_string())
        .collect();
    let args = format!(
        "--conns 3 scale --keys 1000 --leases 1000 --pids {}",
        pids.join(",")
    );
    let out = bench(&c, &args);
    assert!(line(&out, "scale: 1000 keys").contains("Txns of 64 puts"));
    let leases = line(&out, "scale: 1000 leases");
    assert!(leases.contains(" 0 grants failed"), "{leases}");
    number_after(leases, "whole load");
    for pid in &pids {
        let rss = number_after(line(&out, &format!("scale: pid {pid} ")), "VmRSS");
        assert!(rss > 0.0, "{out}");
    }
    for endpoint in endpoints(&c).split(',') {
        let db = number_after(line(&out, &format!("scale: {endpoint} ")), "db_size");
        assert!(db > 0.0, "{out}");
    }
}

#[test]
fn failover_loses_no_kept_alive_lease() {
    let c = Cluster::start(3);
    // The kill command finds the leader's process id by its client port.
    let pids = c.dir().join("pids");
    std::fs::create_dir_all(&pids).expect("pid dir");
    for i in 0..3 {
        let port = c.config(i).client_port;
        let pid = c.pid(i).expect("running").to_string();
        std::fs::write(pids.join(format!("{port}.pid")), pid).expect("pid file");
    }
    let kill = format!("kill -9 $(cat {}/$LEADER_PORT.pid)", pids.display());
    let out = Command::new(env!("CARGO_BIN_EXE_roster"))
        .args(["bench", "--endpoints", &endpoints(&c), "--clients", "8"])
        .args(["failover", "--holders", "20", "--ttl", "2"])
        .args(["--kill-after", "2s", "--observe", "6s", "--kill-cmd", &kill])
        .output()
        .expect("run roster bench failover");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "roster bench failover failed");

    let killed = line(&stdout, "failover: killed the leader");
    let leader = (0..3).find(|&i| killed.contains(&format!(":{} ", c.config(i).client_port)));
    let leader = leader.unwrap_or_else(|| panic!("which node? {killed}"));
    let pid = c.pid(leader).expect("the harness started it");
    assert!(dead(pid), "the leader (pid {pid}) still runs");
    let back = number_after(line(&stdout, "failover: writes back after"), "after");
    assert!(back < 10.0, "{stdout}");
    let holders = line(&stdout, "failover holders: 20 leases");
    assert!(holders.contains("wrongly expired: 0 "), "{holders}");
    assert!(number_before(line(&stdout, "failover put:"), " ok,") > 0.0);
}
