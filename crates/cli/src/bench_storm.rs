//! `roster bench storm`: what a mass expiry (a rack of instances dying at
//! once) does to everyone else's writes, and how long the cluster takes to
//! clear it.
//!
//! A watch on a fresh prefix is opened, then `--leases` leases are granted
//! with a key each (as in `expiry`) and never kept alive. Granting 100,000
//! leases takes a minute on a small machine, so one fixed TTL would spread
//! their expiry over that minute: instead all are made due at one instant,
//! `--ttl` seconds after the first grant is sent, each lease asking for the
//! whole seconds left until then (so they come due within about a second of
//! each other, provided granting takes less than `--ttl` - `--calm`).
//! A put load of `--clients` workers (keys outside the prefix) starts
//! `--calm` before the first lease is due and runs until every key is deleted
//! or 30 s after the last was due. Puts are classed by their send time:
//!
//! - *calm*: sent before the first DELETE event arrived;
//! - *storm*: sent between the first and the last DELETE event.
//!
//! It prints both put lines, the ratio of their p99s, and when the expiry
//! ended relative to the deadlines (grant answer + TTL): the last key's
//! DELETE after the last lease's deadline (how long the cluster took to clear
//! the storm), and after the first one's. Early and missing deletes are
//! counted as in `expiry`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::Channel;
use anyhow::bail;
use clap::Args;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::PutRequest;
use tokio::sync::watch;

use crate::bench::{quantile, report, BenchArgs, Tally};
use crate::bench_expiry::{
    fresh_prefix, grant_with_keys, punctuality, watch_deletes, Granted, MISSING_GRACE,
};

#[derive(Args, Debug)]
pub struct StormArgs {
    /// Leases that expire together, each with one key.
    #[arg(long, default_value_t = 100_000)]
    leases: u64,
    /// Seconds from the first grant until every lease is due; granting all
    /// of them must take less (minus --calm).
    #[arg(long, default_value_t = 120)]
    ttl: u64,
    /// How long the put load runs before the first lease is due.
    #[arg(long, default_value = "3s", value_parser = crate::duration::parse)]
    calm: Duration,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
}

/// One put of the load: when it was sent, and its latency if it succeeded.
type Sent = (Instant, Option<Duration>);

/// `--clients` workers putting random keys until `stop` turns true.
fn start_puts(
    args: &BenchArgs,
    channels: &[Channel],
    value_size: usize,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
    let prefix = fresh_prefix("stormload");
    let value = Arc::new(vec![b'x'; value_size]);
    (0..args.clients)
        .map(|w| {
            let mut kv = KvClient::new(channels[w % channels.len()].clone());
            let (prefix, value, stop) = (prefix.clone(), value.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                for n in 0u64.. {
                    if *stop.borrow() {
                        break;
                    }
                    let put = PutRequest {
                        key: format!("{prefix}{w}/{}", n % 1000).into_bytes(),
                        value: value.to_vec(),
                        ..Default::default()
                    };
                    let t = Instant::now();
                    let ok = kv.put(put).await.is_ok();
                    sent.push((t, ok.then(|| t.elapsed())));
                }
                sent
            })
        })
        .collect()
}

/// The puts sent in `from..to`, as a tally.
fn window(sent: &[Sent], from: Instant, to: Instant) -> Tally {
    let mut tally = Tally::default();
    for (_, latency) in sent.iter().filter(|(at, _)| (from..to).contains(at)) {
        match latency {
            Some(l) => tally.latencies.push(*l),
            None => tally.errors += 1,
        }
    }
    tally
}

fn p99_of(tally: &Tally) -> Duration {
    let mut all = tally.latencies.clone();
    all.sort_unstable();
    quantile(&all, 0.99)
}

pub async fn run(args: &BenchArgs, channels: &[Channel], storm: &StormArgs) -> anyhow::Result<()> {
    if storm.leases == 0 {
        bail!("--leases must be at least 1");
    }
    let prefix = fresh_prefix("storm");
    let deletes = watch_deletes(&channels[0], &prefix, storm.leases).await?;
    let started = Instant::now();
    let due = started + Duration::from_secs(storm.ttl);
    let left = || {
        due.saturating_duration_since(Instant::now())
            .as_secs_f64()
            .ceil() as i64
    };
    let granted = grant_with_keys(channels, &prefix, storm.leases, || left().max(1)).await?;
    let setup = started.elapsed();
    let first_due = granted.iter().map(Granted::due).min().unwrap_or(started);
    let last_due = granted.iter().map(Granted::due).max().unwrap_or(started);
    eprintln!(
        "granted {} leases with a key each in {:.1} s; due within {:.1} s of each other",
        granted.len(),
        setup.as_secs_f64(),
        (last_due - first_due).as_secs_f64()
    );
    let load_from = first_due.checked_sub(storm.calm).unwrap_or(first_due);
    if Instant::now() > load_from {
        eprintln!("warning: the grants ran into the calm window; raise --ttl or lower --leases");
    }
    tokio::time::sleep_until(load_from.into()).await;
    let (stop_tx, stop) = watch::channel(false);
    let workers = start_puts(args, channels, storm.value_size, &stop);
    let load_started = Instant::now();
    deletes.wait(storm.leases, last_due + MISSING_GRACE).await;
    let _ = stop_tx.send(true);
    let mut sent = Vec::new();
    for worker in workers {
        sent.extend(worker.await?);
    }
    report_storm(
        storm,
        &granted,
        &deletes,
        &sent,
        load_started,
        first_due,
        last_due,
    );
    Ok(())
}

fn report_storm(
    storm: &StormArgs,
    granted: &[Granted],
    deletes: &crate::bench_expiry::Deletes,
    sent: &[Sent],
    load_started: Instant,
    first_due: Instant,
    last_due: Instant,
) {
    let outcome = punctuality(granted, deletes);
    let Some((first, last)) = deletes.span() else {
        println!("storm: no lease expired within TTL + 30 s");
        return;
    };
    let calm = window(sent, load_started, first);
    let during = window(sent, first, last);
    let ratio = p99_of(&during).as_secs_f64() / p99_of(&calm).as_secs_f64();
    report("storm put (calm)", vec![calm], first - load_started);
    report("storm put (during expiry)", vec![during], last - first);
    println!("storm put p99 during / calm: {ratio:.2}");
    let secs = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
    println!(
        "storm expiry of {} leases: {} deleted, {} early, {} missing; last key gone {:.2} s after the last deadline ({:.2} s after the first); first delete {:.2} s after the first deadline",
        storm.leases,
        deletes.count(),
        outcome.early,
        outcome.missing,
        secs(last_due, last),
        secs(first_due, last),
        secs(first_due, first),
    );
}
