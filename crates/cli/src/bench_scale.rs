//! `roster bench scale`: what a large registry costs the nodes: memory and
//! disk after `--keys` keys and `--leases` leases.
//!
//! The keys `scale/<n>` (values of `--value-size` bytes) are written in Txns
//! of `--batch` puts (64 by default: several times faster than single puts on
//! both servers, and this workload measures the state held, not the write
//! path), `--clients` Txns at a time. Then `--leases` leases of `--ttl`
//! seconds are granted (no keys attached), many at once; failed grants are
//! counted and reported, and the run goes on. Both loads are timed.
//! Then it prints, for each of `--pids` (processes on this machine, e.g. the
//! nodes), VmRSS from `/proc/<pid>/status` before and after the load, and for
//! each endpoint the `db_size` its Maintenance.Status reports.

use std::time::{Duration, Instant};

use crate::bench::Channel;
use anyhow::Context;
use clap::Args;
use futures::{stream, StreamExt};
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_proto::etcdserverpb::{LeaseGrantRequest, StatusRequest};

use crate::bench::{BenchArgs, GRANT_CONCURRENCY};
use crate::bench_kv::put_batches;

#[derive(Args, Debug)]
pub struct ScaleArgs {
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Puts per Txn (1: a Txn per key).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 1_000_000)]
    leases: usize,
    /// TTL of the leases (seconds): long enough to outlive the run.
    #[arg(long, default_value_t = 3600)]
    ttl: i64,
    /// Comma-separated process ids whose resident memory is reported.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
}

/// Grants `count` leases, many at once, and counts the grants that succeeded
/// and failed: a failed grant is a finding of the run (it is reported), not a
/// reason to stop before the memory is measured.
async fn grant_counting(channels: &[Channel], count: usize, ttl: i64) -> (u64, u64) {
    let grants = (0..count).map(|n| {
        let mut lease = LeaseClient::new(channels[n % channels.len()].clone());
        async move {
            lease
                .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                .await
                .is_ok()
        }
    });
    stream::iter(grants)
        .buffer_unordered(GRANT_CONCURRENCY)
        .fold((0, 0), |(ok, failed), granted| async move {
            if granted {
                (ok + 1, failed)
            } else {
                (ok, failed + 1)
            }
        })
        .await
}

/// VmRSS of `pid` in kB, from `/proc/<pid>/status`.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn per_second(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(f64::EPSILON)
}

pub async fn run(args: &BenchArgs, channels: &[Channel], scale: &ScaleArgs) -> anyhow::Result<()> {
    let before: Vec<Option<u64>> = scale.pids.iter().map(|&pid| rss_kb(pid)).collect();
    let started = Instant::now();
    let value = vec![b's'; scale.value_size];
    let make = |n| (format!("scale/{n:08}").into_bytes(), value.clone());
    put_batches(channels, scale.keys, scale.batch, args.clients, make).await?;
    let keys_took = started.elapsed();
    println!(
        "scale: {} keys ({}-byte values, Txns of {} puts) in {:.1} s = {:.0} keys/s",
        scale.keys,
        scale.value_size,
        scale.batch.max(1),
        keys_took.as_secs_f64(),
        per_second(scale.keys, keys_took)
    );
    let granting = Instant::now();
    let (granted, failed) = grant_counting(channels, scale.leases, scale.ttl).await;
    let leases_took = granting.elapsed();
    println!(
        "scale: {granted} leases (TTL {} s) in {:.1} s = {:.0} grants/s, {failed} grants failed; whole load {:.1} s",
        scale.ttl,
        leases_took.as_secs_f64(),
        per_second(granted, leases_took),
        started.elapsed().as_secs_f64()
    );
    for (pid, before) in scale.pids.iter().zip(before) {
        let kb = |v: Option<u64>| v.map_or("unknown".to_string(), |kb| format!("{kb} kB"));
        println!(
            "scale: pid {pid} VmRSS {} (before the load {})",
            kb(rss_kb(*pid)),
            kb(before)
        );
    }
    for endpoint in &args.endpoints {
        let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))?
            .connect()
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        let status = MaintenanceClient::new(channel)
            .status(StatusRequest {})
            .await
            .with_context(|| format!("status of {endpoint}"))?
            .into_inner();
        println!("scale: {endpoint} db_size {} bytes", status.db_size);
    }
    Ok(())
}
