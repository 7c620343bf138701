//! `roster bench`: load generators that speak only the etcd v3 API, so the same
//! command measures a Roster cluster and an etcd cluster side by side.
//!
//! Each workload runs `--clients` concurrent workers over `--conns` gRPC
//! connections (spread over the endpoints) for `--total` operations or
//! `--duration`, whichever ends first, and prints throughput and latency
//! percentiles of the operations that succeeded, plus the error count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for one keepalive answer before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated host:port of the cluster's client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Concurrent workers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections shared by the workers.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// Operations in all (the run also ends at --duration).
    #[arg(long, default_value_t = 50_000)]
    total: u64,
    /// Longest run time, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    duration: Duration,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Put random keys with values of --value-size bytes.
    Put {
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Distinct keys written.
        #[arg(long, default_value_t = 100_000)]
        key_space: u64,
    },
    /// Keepalive round trips over --leases live leases, one stream per worker.
    Keepalive {
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// TTL of the leases granted for the run (seconds).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
}

/// Latencies of succeeded operations and the count of failed ones.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
}

async fn connect(args: &BenchArgs) -> anyhow::Result<Vec<Channel>> {
    if args.endpoints.is_empty() || args.conns == 0 || args.clients == 0 {
        bail!("--endpoints, --conns and --clients must not be empty or zero");
    }
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let ep = &args.endpoints[i % args.endpoints.len()];
        let url = format!("http://{ep}");
        let channel = Endpoint::from_shared(url.clone())
            .with_context(|| format!("endpoint {ep}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {ep}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let channels = connect(&args).await?;
    let issued = Arc::new(AtomicU64::new(0));
    let (tallies, elapsed) = match &args.workload {
        Workload::Put {
            value_size,
            key_space,
        } => {
            let started = Instant::now();
            let deadline = started + args.duration;
            let tallies =
                run_puts(&args, &channels, *value_size, *key_space, deadline, &issued).await?;
            (tallies, started.elapsed())
        }
        Workload::Keepalive { leases, ttl } => {
            let ids = grant_leases(&channels, *leases, *ttl).await?;
            eprintln!("granted {} leases", ids.len());
            let started = Instant::now();
            let deadline = started + args.duration;
            let tallies = run_keepalives(&args, &channels, ids, deadline, &issued).await?;
            (tallies, started.elapsed())
        }
    };
    report(&format!("{:?}", args.workload), tallies, elapsed);
    Ok(())
}

/// Claims the next operation number, or `None` when the run is over.
fn claim(issued: &AtomicU64, total: u64, deadline: Instant) -> Option<u64> {
    if Instant::now() >= deadline {
        return None;
    }
    let n = issued.fetch_add(1, Ordering::Relaxed);
    (n < total).then_some(n)
}

async fn run_puts(
    args: &BenchArgs,
    channels: &[Channel],
    value_size: usize,
    key_space: u64,
    deadline: Instant,
    issued: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Tally>> {
    let value = vec![b'x'; value_size];
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let mut kv = KvClient::new(channels[w % channels.len()].clone());
        let (issued, value, total) = (issued.clone(), value.clone(), args.total);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while let Some(n) = claim(&issued, total, deadline) {
                let key = format!(
                    "bench/{:016x}",
                    roster_state::splitmix64(n) % key_space.max(1)
                );
                let req = PutRequest {
                    key: key.into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                };
                let t = Instant::now();
                match kv.put(req).await {
                    Ok(_) => tally.latencies.push(t.elapsed()),
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    join(workers).await
}

/// Grants `count` leases with 64 concurrent requests (setup, not measured).
async fn grant_leases(channels: &[Channel], count: usize, ttl: i64) -> anyhow::Result<Vec<i64>> {
    const WORKERS: usize = 64;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mut lease = LeaseClient::new(channels[w % channels.len()].clone());
        let share = count / WORKERS + usize::from(w < count % WORKERS);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                let resp = lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?;
                ids.push(resp.into_inner().id);
            }
            Ok::<_, tonic::Status>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        let granted = task.await.context("grant worker panicked")?;
        ids.extend(granted.context("granting the benchmark's leases")?);
    }
    Ok(ids)
}

async fn run_keepalives(
    args: &BenchArgs,
    channels: &[Channel],
    ids: Vec<i64>,
    deadline: Instant,
    issued: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Tally>> {
    if ids.is_empty() {
        bail!("--leases must be at least 1");
    }
    let ids = Arc::new(ids);
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let mut client = LeaseClient::new(channels[w % channels.len()].clone());
        let (issued, ids, total) = (issued.clone(), ids.clone(), args.total);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let (tx, rx) = mpsc::channel(1);
            let mut next = claim(&issued, total, deadline);
            // etcd sends the stream's headers only with its first answer: queue
            // the first request before waiting for the call to be accepted.
            let mut sent_at = Instant::now();
            if let Some(n) = next {
                let _ = tx.try_send(LeaseKeepAliveRequest {
                    id: ids[n as usize % ids.len()],
                });
            }
            let Ok(resp) = client.lease_keep_alive(ReceiverStream::new(rx)).await else {
                tally.errors += 1;
                return tally;
            };
            let mut answers = resp.into_inner();
            while next.is_some() {
                match tokio::time::timeout(ANSWER_TIMEOUT, answers.message()).await {
                    Ok(Ok(Some(r))) if r.ttl > 0 => tally.latencies.push(sent_at.elapsed()),
                    _ => tally.errors += 1,
                }
                next = claim(&issued, total, deadline);
                if let Some(n) = next {
                    sent_at = Instant::now();
                    let id = ids[n as usize % ids.len()];
                    if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                        tally.errors += 1;
                        break;
                    }
                }
            }
            tally
        }));
    }
    join(workers).await
}

async fn join(workers: Vec<tokio::task::JoinHandle<Tally>>) -> anyhow::Result<Vec<Tally>> {
    let mut tallies = Vec::with_capacity(workers.len());
    for w in workers {
        tallies.push(w.await.context("benchmark worker panicked")?);
    }
    Ok(tallies)
}

fn report(name: &str, tallies: Vec<Tally>, elapsed: Duration) {
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut all: Vec<Duration> = tallies.into_iter().flat_map(|t| t.latencies).collect();
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 - 1.0) * p).round() as usize;
        all.get(i).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name}: {} ok, {errors} errors in {:.2} s = {:.0} ops/s; latency ms p50 {:.2} p99 {:.2} max {:.2}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(all.last().copied().unwrap_or_default()),
    );
}
