//! Runs simulated clusters from seeds and prints each run's verdicts.
//!
//! ```text
//! cargo run -p roster-sim --example sim -- --seed 42 [--nodes 3] [--secs 20]
//! cargo run --release -p roster-sim --example sim -- --seeds 1..1000 --nodes 3,5 [--secs 20]
//! ```
//!
//! `--seed` runs one simulation in this process and prints every verdict and
//! fault. `--seeds` (a soak) runs each seed in a child process of its own
//! (a run replays exactly only as the first of its process: see
//! `Summary::LINE_PREFIX`), prints one line per run and a summary; every
//! failing seed is listed with the command that replays it, and the exit
//! code is 1 if any run failed.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::process::{Command, ExitCode};
use std::time::Instant;

use roster_sim::cluster::{fault_counts, Summary};
use roster_sim::{run, FaultLog, SimOptions};

struct Args {
    seed: Option<u64>,
    seeds: RangeInclusive<u64>,
    nodes: Vec<usize>,
    secs: u64,
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
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// One run in this process, told in full.
fn one(options: SimOptions) -> ExitCode {
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

/// Each run in a child process; one line per run, then the totals.
fn soak(args: &Args) -> ExitCode {
    let started = Instant::now();
    let (mut runs, mut ops, mut anomalies) = (0usize, 0usize, 0usize);
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("sim: cannot find my own executable: {e}");
            return ExitCode::from(2);
        }
    };
    for seed in args.seeds.clone() {
        for &nodes in &args.nodes {
            runs += 1;
            let child = Command::new(&exe)
                .args(["--seed", &seed.to_string(), "--nodes", &nodes.to_string()])
                .args(["--secs", &args.secs.to_string()])
                .output();
            let output = child.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            let Some(summary) = output.as_deref().ok().and_then(Summary::parse) else {
                println!("sim: seed {seed} nodes {nodes}: no summary ({output:?})");
                failed.push(format!(
                    "cargo run -p roster-sim --example sim -- --seed {seed} --nodes {nodes} --secs {}",
                    args.secs
                ));
                continue;
            };
            ops += summary.ops;
            anomalies += summary.anomalies;
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
                *faults.entry(kind).or_default() += n;
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
                failed.push(summary.replay());
            }
        }
    }
    let total: usize = faults.values().sum();
    println!(
        "sim: {runs} runs, {ops} kv operations, {total} faults {faults:?}, {anomalies} anomalies, {} failed runs, {:.0} s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for replay in &failed {
        println!("sim: FAILED, replay with: {replay}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
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
