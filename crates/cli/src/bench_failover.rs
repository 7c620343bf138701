//! `roster bench failover`: what clients see when the leader dies. Writes must
//! come back within an election, and no lease whose holder kept it alive may
//! expire on the way (the new leader must not expire what the old one renewed).
//!
//! Setup: `--holders` leases of `--ttl` seconds, each with one key, each kept
//! alive by its own keepalive stream (one renewal per third of the TTL). Then
//! `--clients` workers put keys. All of them fail over between endpoints (see
//! `bench_rotor`). After `--kill-after` the benchmark asks the endpoints'
//! Maintenance.Status which member is the leader (the one whose `leader`
//! field is its own member id, in etcd and Roster alike) and runs `--kill-cmd`
//! with `sh -c`, with `LEADER_ENDPOINT` (host:port as in `--endpoints`),
//! `LEADER_PORT` and `LEADER_ID` (member id, hex) in its environment. The
//! kill time is when the command returned.
//!
//! - *writes back after*: from the kill to the answer of the first put that
//!   was sent after the kill and succeeded;
//! - *wrongly expired*: after `--observe` more (at least twice the TTL, so a
//!   lost lease has expired by then), holders whose key is gone (a
//!   linearizable read through a surviving endpoint) or whose keepalive was
//!   answered with TTL 0. The longest time a holder went without a renewal
//!   is printed too: over the TTL, an expiry would have been right.
//!
//! The common `--total` and `--duration` do not apply: the run lasts
//! `--kill-after` + `--observe`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::bench::Channel;
use anyhow::{bail, Context};
use clap::Args;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::RangeRequest;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::bench::{find_leader, report, BenchArgs, Tally};
use crate::bench_expiry::{fresh_prefix, grant_with_keys, numbered_key};
use crate::bench_rotor::{hold, put_loop, Held, Put, Rotor, CALL_TIMEOUT};

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// Leases kept alive through the failover, each by its own stream.
    #[arg(long, default_value_t = 100)]
    holders: u64,
    /// Their TTL (seconds).
    #[arg(long, default_value_t = 5)]
    ttl: i64,
    /// How long the load runs before the leader is killed.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    kill_after: Duration,
    /// How long the load runs after the kill.
    #[arg(long, default_value = "15s", value_parser = crate::duration::parse)]
    observe: Duration,
    /// Shell command that kills the leader; it finds LEADER_ENDPOINT,
    /// LEADER_PORT and LEADER_ID (hex) in its environment.
    #[arg(long)]
    kill_cmd: String,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
}

pub async fn run(
    args: &BenchArgs,
    channels: &[Channel],
    failover: &FailoverArgs,
) -> anyhow::Result<()> {
    let prefix = fresh_prefix("failover");
    let granted = grant_with_keys(channels, &prefix, failover.holders, || failover.ttl).await?;
    let ttl = granted.first().map_or(Duration::ZERO, |g| g.ttl);
    if failover.observe < ttl * 2 {
        eprintln!("warning: --observe is under twice the TTL: a lost lease may not show");
    }
    let (stop_holders, holding) = watch::channel(false);
    let mut holders = Vec::new();
    for (n, grant) in granted.iter().enumerate() {
        let rotor = Rotor::new(&args.endpoints, n)?;
        holders.push(tokio::spawn(hold(rotor, grant.id, ttl, holding.clone())));
    }
    let (stop_puts, putting) = watch::channel(false);
    let started = Instant::now();
    let puts = start_puts(args, failover.value_size, &putting)?;
    tokio::time::sleep(failover.kill_after).await;
    let killed = kill_leader(&args.endpoints, &failover.kill_cmd, started).await?;
    tokio::time::sleep(failover.observe).await;
    let _ = stop_puts.send(true);
    let mut sent = Vec::new();
    for worker in puts {
        sent.extend(worker.await.context("put worker panicked")?);
    }
    let present = keys_present(&args.endpoints, &prefix).await?;
    let _ = stop_holders.send(true);
    let mut held = Vec::new();
    for holder in holders {
        held.push(holder.await.context("holder panicked")?);
    }
    report_writes(&sent, started, killed);
    let gone = (0..failover.holders).map(|n| !present.contains(&numbered_key(&prefix, n)));
    report_holders(&held, gone.collect(), ttl);
    Ok(())
}

fn start_puts(
    args: &BenchArgs,
    value_size: usize,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<Vec<Put>>>> {
    let prefix = fresh_prefix("failoverload");
    let mut workers = Vec::with_capacity(args.clients);
    for w in 0..args.clients {
        let rotor = Rotor::new(&args.endpoints, w)?;
        let key_prefix = format!("{prefix}{w}/");
        let value = vec![b'x'; value_size];
        workers.push(tokio::spawn(put_loop(
            rotor,
            key_prefix,
            value,
            stop.clone(),
        )));
    }
    Ok(workers)
}

/// Finds the leader and runs `cmd` to kill it; the instant the command returned.
async fn kill_leader(endpoints: &[String], cmd: &str, started: Instant) -> anyhow::Result<Instant> {
    let leader = find_leader(endpoints).await?;
    let port = leader.endpoint.rsplit(':').next().unwrap_or_default();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("LEADER_ENDPOINT", &leader.endpoint)
        .env("LEADER_PORT", port)
        .env("LEADER_ID", format!("{:x}", leader.id))
        .status()
        .await
        .context("running --kill-cmd")?;
    let killed = Instant::now();
    if !status.success() {
        bail!(
            "--kill-cmd failed ({status}) for leader {}",
            leader.endpoint
        );
    }
    println!(
        "failover: killed the leader {} (member {:x}) {:.2} s into the load",
        leader.endpoint,
        leader.id,
        (killed - started).as_secs_f64()
    );
    Ok(killed)
}

/// The keys under `prefix`, read linearizably through the first endpoint
/// that answers.
async fn keys_present(endpoints: &[String], prefix: &str) -> anyhow::Result<HashSet<Vec<u8>>> {
    let mut rotor = Rotor::new(endpoints, 0)?;
    for _ in 0..endpoints.len() * 3 {
        let read = RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: roster_state::prefix_range_end(prefix.as_bytes()),
            keys_only: true,
            ..Default::default()
        };
        let mut kv = KvClient::new(rotor.channel());
        if let Ok(Ok(answer)) = tokio::time::timeout(CALL_TIMEOUT, kv.range(read)).await {
            return Ok(answer
                .into_inner()
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect());
        }
        rotor.rotate().await;
    }
    bail!("no endpoint answered the final read of the holders' keys")
}

fn report_writes(sent: &[Put], started: Instant, killed: Instant) {
    let back = sent
        .iter()
        .filter(|(at, _)| *at >= killed)
        .filter_map(|(_, answered)| *answered)
        .min();
    let mut answers: Vec<Instant> = sent.iter().filter_map(|(_, a)| *a).collect();
    answers.sort_unstable();
    let gap = answers.windows(2).map(|w| w[1] - w[0]).max();
    match back {
        Some(back) => println!(
            "failover: writes back after {:.3} s (the first put sent after the kill to succeed); longest gap between put answers {:.3} s",
            (back - killed).as_secs_f64(),
            gap.unwrap_or_default().as_secs_f64()
        ),
        None => println!("failover: writes back after never (no put sent after the kill succeeded)"),
    }
    let mut tally = Tally::default();
    for (at, answered) in sent {
        match answered {
            Some(answered) => tally.latencies.push(*answered - *at),
            None => tally.errors += 1,
        }
    }
    let end = sent.iter().filter_map(|(_, a)| *a).max().unwrap_or(started);
    report("failover put", vec![tally], end - started);
}

fn report_holders(held: &[Held], gone: Vec<bool>, ttl: Duration) {
    let lost = held.iter().filter(|h| h.lost).count();
    let keys_gone = gone.iter().filter(|g| **g).count();
    let wrong = held
        .iter()
        .zip(&gone)
        .filter(|(h, g)| h.lost || **g)
        .count();
    let longest = held.iter().map(|h| h.longest_gap).max().unwrap_or_default();
    let over_ttl = held.iter().filter(|h| h.longest_gap > ttl).count();
    let reconnects: u64 = held.iter().map(|h| h.reconnects).sum();
    println!(
        "failover holders: {} leases (TTL {} s) kept alive; wrongly expired: {wrong} (keys gone {keys_gone}, keepalives answered TTL 0: {lost}); longest gap between renewals {:.2} s ({over_ttl} over the TTL); {reconnects} stream reconnects",
        held.len(),
        ttl.as_secs(),
        longest.as_secs_f64(),
    );
}
