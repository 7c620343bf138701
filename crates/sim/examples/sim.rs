//! Runs simulated clusters from seeds and prints each run's verdicts.
//!
//! ```text
//! cargo run -p roster-sim --example sim -- --seed 42 [--nodes 3] [--secs 20]
//! cargo run --release -p roster-sim --example sim -- --seeds 1..1000 --nodes 3,5 [--secs 20] [--jobs 2]
//! ```
//!
//! `--seed` runs one simulation in this process and prints every verdict and
//! fault. `--seeds` (a soak) runs each seed in a child process of its own
//! (a run replays exactly only as the first of its process: see
//! `Summary::LINE_PREFIX`), `--jobs` at a time, bounded in real time, and
//! prints one line per run and a summary; every
//! failing seed is listed with the command that replays it, and the exit
//! code is 1 if any run failed. With `RUST_LOG` set, `--seed` logs with
//! simulated timestamps.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::process::{Command, ExitCode};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use roster_sim::child::{run_child, ChildRun};
use roster_sim::cluster::{fault_counts, Summary};
use roster_sim::{run, FaultLog, SimOptions};

/// Real time one run may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(600);

struct Args {
    seed: Option<u64>,
    seeds: RangeInclusive<u64>,
    nodes: Vec<usize>,
    secs: u64,
    jobs: usize,
}

fn number(flag: &str, v: &str) -> Result<u64, String> {
    v.parse().map_err(|e| format!("{flag} {v}: {e}"))
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seed: None,
        seeds: 1..=1,
        nodes: vec![3],
        secs: 20,
        jobs: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seed" => args.seed = Some(number("--seed", &value)?),
            "--seeds" => {
                let (a, b) = value
                    .split_once("..")
                    .ok_or_else(|| format!("--seeds {value}: expected FIRST..LAST"))?;
                args.seeds = number("--seeds", a)?..=number("--seeds", b)?;
            }
            "--nodes" => {
                args.nodes = value
                    .split(',')
                    .map(|n| match n.parse() {
                        Ok(n @ (3 | 5)) => Ok(n),
                        _ => Err(format!("--nodes {value}: each must be 3 or 5")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--secs" => args.secs = number("--secs", &value)?,
            "--jobs" => args.jobs = number("--jobs", &value)? as usize,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// One run in this process, told in full.
fn one(options: SimOptions) -> ExitCode {
    if !cfg!(tokio_unstable) {
        eprintln!("sim: built without --cfg tokio_unstable: this run will not replay exactly");
    }
    let result = run(options);
    match &result {
        Ok(outcome) => {
            println!("{outcome}");
            for FaultLog { at_ms, fault } in &outcome.faults {
                println!("sim:   at {at_ms:>6} ms: {fault}");
            }
            if let Some(ops) = &outcome.judgement.failing_ops {
                let name = format!("roster-sim-{}-{}.json", options.seed, options.nodes);
                let path = std::env::temp_dir().join(name);
                let written = std::fs::write(&path, ops);
                println!("sim: failing histories in {} ({written:?})", path.display());
            }
        }
        Err(e) => println!("sim: {e}"),
    }
    let summary = Summary::of(options, &result);
    println!("{}", summary.line());
    if summary.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the soak adds up.
#[derive(Default)]
struct Totals {
    runs: usize,
    ops: usize,
    anomalies: usize,
    faults: BTreeMap<String, usize>,
    failed: Vec<String>,
}

impl Totals {
    /// Counts one run and prints its line (and its verdicts if it failed).
    fn add(&mut self, seed: u64, nodes: usize, secs: u64, run: Result<ChildRun, String>) {
        self.runs += 1;
        let replay = format!(
            "cargo run -p roster-sim --example sim -- --seed {seed} --nodes {nodes} --secs {secs}"
        );
        let summary = match run {
            Ok(ChildRun {
                summary: Some(summary),
                ..
            }) => summary,
            Ok(child) => {
                let why = if child.timed_out {
                    "no end in time"
                } else {
                    "no summary"
                };
                println!(
                    "sim: seed {seed} nodes {nodes} FAILED: {why}\n{}",
                    child.stderr_tail
                );
                self.failed.push(replay);
                return;
            }
            Err(e) => {
                println!("sim: seed {seed} nodes {nodes} FAILED: {e}");
                self.failed.push(replay);
                return;
            }
        };
        self.ops += summary.ops;
        self.anomalies += summary.anomalies;
        let logged: Vec<FaultLog> = summary
            .faults
            .iter()
            .map(|f| FaultLog {
                at_ms: 0,
                fault: f
                    .split_once(": ")
                    .map_or(f.as_str(), |(_, what)| what)
                    .to_string(),
            })
            .collect();
        for (kind, n) in fault_counts(&logged) {
            *self.faults.entry(kind).or_default() += n;
        }
        let status = if summary.ok() { "ok" } else { "FAILED" };
        println!(
            "sim: seed {seed} nodes {nodes} {status}: {} faults, {} kv operations ({} unknown), {} keepalives, {} virtual ms, digest {:016x}",
            summary.faults.len(),
            summary.ops,
            summary.unknown,
            summary.keepalives,
            summary.virtual_ms,
            summary.digest
        );
        if !summary.ok() {
            for line in summary.verdicts.iter().chain(&summary.error) {
                println!("sim:     {line}");
            }
            self.failed.push(replay);
        }
    }
}

/// Each run in a child process, `jobs` at a time; one line per run, then
/// the totals.
fn soak(args: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("sim: cannot find my own executable: {e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let runs: Vec<(u64, usize)> = args
        .seeds
        .clone()
        .flat_map(|seed| args.nodes.iter().map(move |&n| (seed, n)))
        .collect();
    let queue = Arc::new(Mutex::new(runs.into_iter()));
    let (tx, rx) = mpsc::channel();
    let secs = args.secs;
    for _ in 0..args.jobs.max(1) {
        let (queue, tx, exe) = (queue.clone(), tx.clone(), exe.clone());
        std::thread::spawn(move || loop {
            let next = queue.lock().map(|mut q| q.next()).unwrap_or(None);
            let Some((seed, nodes)) = next else { return };
            let mut command = Command::new(&exe);
            command
                .args(["--seed", &seed.to_string(), "--nodes", &nodes.to_string()])
                .args(["--secs", &secs.to_string()]);
            let run = run_child(command, RUN_LIMIT);
            if tx.send((seed, nodes, run)).is_err() {
                return;
            }
        });
    }
    drop(tx);
    let mut totals = Totals::default();
    for (seed, nodes, run) in rx {
        totals.add(seed, nodes, secs, run);
    }
    let faults: usize = totals.faults.values().sum();
    println!(
        "sim: {} runs, {} kv operations, {faults} faults {:?}, {} anomalies, {} failed runs, {:.0} s",
        totals.runs,
        totals.ops,
        totals.faults,
        totals.anomalies,
        totals.failed.len(),
        started.elapsed().as_secs_f64()
    );
    for replay in &totals.failed {
        println!("sim: FAILED, replay with: {replay}");
    }
    if totals.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Log lines stamped with the simulated time (`RUST_LOG=roster_server::lessor=debug`).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(d) => write!(w, "{:>8}ms", d.as_millis()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_timer(SimTime)
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("sim: {e}");
            return ExitCode::from(2);
        }
    };
    match args.seed {
        Some(seed) => one(SimOptions {
            seed,
            nodes: args.nodes[0],
            fault_secs: args.secs,
        }),
        None => soak(&args),
    }
}
