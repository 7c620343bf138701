//! `roster bench`: load generators that speak only the etcd v3 API, so the same
//! command measures a Roster cluster and an etcd cluster side by side.
//!
//! Each workload runs `--clients` concurrent workers over `--conns` gRPC
//! connections (spread over the endpoints) for `--total` operations or
//! `--duration`, whichever ends first, and prints throughput and latency
//! percentiles of the operations that succeeded, plus the error count.
//! The workloads beyond `put`, `watch` and `keepalive` live in their own
//! modules (`bench_kv`, `bench_expiry`, `bench_storm`, `bench_failover`,
//! `bench_scale`, and the Roster-only `bench_registry`, `bench_health`); this
//! one holds the flags and the helpers they share.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use futures::{stream, StreamExt, TryStreamExt};
use roster_client::auth::{authenticated, Credentials};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_proto::etcdserverpb::watch_client::WatchClient;
use roster_proto::etcdserverpb::watch_request::RequestUnion;
use roster_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, StatusRequest, WatchCreateRequest,
    WatchRequest, WatchResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// The connections workloads run over: their calls carry the token of
/// `--user`, if given.
pub(crate) type Channel = roster_client::AuthChannel;

/// Longest wait for one keepalive answer before it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Comma-separated host:port of the cluster's client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub(crate) endpoints: Vec<String>,
    /// Concurrent workers.
    #[arg(long, default_value_t = 64)]
    pub(crate) clients: usize,
    /// gRPC connections shared by the workers.
    #[arg(long, default_value_t = 8)]
    pub(crate) conns: usize,
    /// Operations in all (the run also ends at --duration).
    #[arg(long, default_value_t = 50_000)]
    pub(crate) total: u64,
    /// Longest run time, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    pub(crate) duration: Duration,
    /// NAME:PASSWORD: every connection logs in and its calls carry the token
    /// (to measure a cluster with auth on).
    #[arg(long, value_parser = crate::service::parse_credentials)]
    pub(crate) user: Option<Credentials>,
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
    /// Put-to-event latency and delivery rate: --watchers watch streams on one
    /// prefix (spread over the connections) while the workers put keys under it;
    /// each value carries its send time, so every delivered event is timed.
    Watch {
        #[arg(long, default_value_t = 1)]
        watchers: usize,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
    /// Registry (Roster only): --total instances over --services services.
    Register {
        #[arg(long, default_value_t = 100)]
        services: u64,
        #[arg(long, default_value = "bench")]
        prefix: String,
    },
    /// Registry (Roster only): Discover of random services registered by `register`.
    Discover {
        #[arg(long, default_value_t = 100)]
        services: u64,
        #[arg(long, default_value = "bench")]
        prefix: String,
    },
    /// Registry (Roster only): register-to-event latency at --watchers streams.
    RegisterWatch {
        #[arg(long, default_value_t = 100)]
        watchers: usize,
    },
    /// Health checks (Roster only): --instances with http checks served by this
    /// program; leader CPU and log writes while all pass, then the time until
    /// --failing of them are critical after they fail together.
    HealthChecks {
        #[arg(long, default_value_t = 10_000)]
        instances: u64,
        #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
        interval: Duration,
        /// How long to measure while all pass.
        #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
        window: Duration,
        #[arg(long, default_value_t = 1_000)]
        failing: u64,
        #[arg(long, default_value_t = 1)]
        failures_before_critical: u32,
    },
    /// Keepalive round trips over --leases live leases, one stream per worker.
    Keepalive {
        #[arg(long, default_value_t = 10_000)]
        leases: usize,
        /// TTL of the leases granted for the run (seconds).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// Range reads of single random keys out of a keyspace filled first.
    Range(crate::bench_kv::RangeArgs),
    /// LeaseGrant round trips.
    LeaseGrant {
        /// TTL of the granted leases (seconds); they are left to expire.
        #[arg(long, default_value_t = 60)]
        ttl: i64,
    },
    /// Expiry timing: leases with a key each, never kept alive; how late each
    /// key's DELETE event comes after its TTL, and none early or missing.
    Expiry(crate::bench_expiry::ExpiryArgs),
    /// Put latency while many leases expire together, and how long they take.
    Storm(crate::bench_storm::StormArgs),
    /// Kills the leader under a put load and kept-alive leases: time until
    /// writes work again, and no lease kept alive lost.
    Failover(crate::bench_failover::FailoverArgs),
    /// Many keys and leases, then the nodes' memory and database size.
    Scale(crate::bench_scale::ScaleArgs),
}

/// Latencies of succeeded operations and the count of failed ones.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) errors: u64,
}

pub(crate) async fn connect(args: &BenchArgs) -> anyhow::Result<Vec<Channel>> {
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
        let channel = authenticated(channel, args.user.as_ref())
            .await
            .map_err(|s| anyhow::anyhow!("--user: logging in at {ep}: {}", s.message()))?;
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
            let make = random_puts(*value_size, *key_space);
            let tallies = run_puts(&args, &channels, make, deadline, &issued).await?;
            (tallies, started.elapsed())
        }
        Workload::Watch {
            watchers,
            value_size,
        } => {
            return run_watch(&args, &channels, *watchers, *value_size).await;
        }
        Workload::Register { services, prefix } => {
            return crate::bench_registry::register(&args, &channels, *services, prefix).await;
        }
        Workload::Discover { services, prefix } => {
            return crate::bench_registry::discover(&args, &channels, *services, prefix).await;
        }
        Workload::HealthChecks {
            instances,
            interval,
            window,
            failing,
            failures_before_critical,
        } => {
            let bench = crate::bench_health::HealthBench {
                instances: *instances,
                interval: *interval,
                window: *window,
                failing: *failing,
                failures_before_critical: *failures_before_critical,
            };
            return crate::bench_health::run(&args.endpoints, &channels, args.clients, bench).await;
        }
        Workload::RegisterWatch { watchers } => {
            return crate::bench_registry::register_watch(&args, &channels, *watchers).await;
        }
        Workload::Keepalive { leases, ttl } => {
            let ids = grant_leases(&channels, *leases, *ttl).await?;
            let started = Instant::now();
            let deadline = started + args.duration;
            let tallies = run_keepalives(&args, &channels, ids, deadline, &issued).await?;
            (tallies, started.elapsed())
        }
        Workload::Range(range) => return crate::bench_kv::range(&args, &channels, range).await,
        Workload::LeaseGrant { ttl } => {
            return crate::bench_kv::lease_grant(&args, &channels, *ttl).await;
        }
        Workload::Expiry(expiry) => {
            return crate::bench_expiry::run(&channels, expiry).await;
        }
        Workload::Storm(storm) => return crate::bench_storm::run(&args, &channels, storm).await,
        Workload::Failover(failover) => {
            return crate::bench_failover::run(&args, &channels, failover).await;
        }
        Workload::Scale(scale) => return crate::bench_scale::run(&args, &channels, scale).await,
    };
    report(&format!("{:?}", args.workload), tallies, elapsed);
    Ok(())
}

/// The leader as it reports itself: etcd's Maintenance.Status names the
/// leader's member id, and the header the answering member's own.
pub(crate) struct Leader {
    /// As given in `--endpoints`.
    pub(crate) endpoint: String,
    pub(crate) id: u64,
    pub(crate) client: MaintenanceClient<tonic::transport::Channel>,
}

/// The member of `endpoints` that says it is the leader (endpoints that do
/// not answer within 2 s are skipped).
pub(crate) async fn find_leader(endpoints: &[String]) -> anyhow::Result<Leader> {
    const WAIT: Duration = Duration::from_secs(2);
    for endpoint in endpoints {
        let url = format!("http://{}", endpoint.trim_start_matches("http://"));
        let dial = Endpoint::from_shared(url)?
            .connect_timeout(WAIT)
            .timeout(WAIT);
        let Ok(channel) = dial.connect().await else {
            continue;
        };
        let mut client = MaintenanceClient::new(channel);
        if let Ok(s) = client.status(StatusRequest {}).await {
            let s = s.into_inner();
            if s.leader != 0 && Some(s.leader) == s.header.map(|h| h.member_id) {
                let endpoint = endpoint.clone();
                return Ok(Leader {
                    endpoint,
                    id: s.leader,
                    client,
                });
            }
        }
    }
    bail!("no leader among --endpoints")
}

/// How long watchers wait for the events of puts that were acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The watch workload: opens the watchers, runs the puts, waits until every
/// watcher has every event (or [`DRAIN_TIMEOUT`]), and reports both.
async fn run_watch(
    args: &BenchArgs,
    channels: &[Channel],
    watchers: usize,
    value_size: usize,
) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let prefix = format!(
        "watchbench/{:x}/",
        roster_state::splitmix64(epoch.elapsed().as_nanos() as u64 ^ std::process::id() as u64)
    );
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let (requests, stream) = open_watch(&channels[i % channels.len()], &prefix).await?;
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            // The request side stays open while the answers are read.
            let _requests = requests;
            time_deliveries(stream, put_send_times, epoch, expected).await
        }));
    }
    eprintln!("{watchers} watchers on {prefix}");
    let started = Instant::now();
    let deadline = started + args.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let make = timed_puts(prefix.clone(), value_size, epoch);
    let put_tallies = run_puts(args, channels, make, deadline, &issued).await?;
    let put_elapsed = started.elapsed();
    let acknowledged: u64 = put_tallies.iter().map(|t| t.latencies.len() as u64).sum();
    expected.store(acknowledged, Ordering::SeqCst);
    let watch_tallies = join(tasks).await?;
    let delivered_in = started.elapsed();
    let missing: u64 = watch_tallies
        .iter()
        .map(|t| acknowledged.saturating_sub(t.latencies.len() as u64))
        .sum();
    report("put (watched)", put_tallies, put_elapsed);
    report(
        &format!("watch x{watchers} put-to-event"),
        watch_tallies,
        delivered_in,
    );
    println!("events missing at the end: {missing}");
    Ok(())
}

/// The request side of a watch stream (kept open while its answers are read)
/// and the answers.
pub(crate) type WatchStream = (mpsc::Sender<WatchRequest>, tonic::Streaming<WatchResponse>);

/// One watch stream on `prefix` from now on, created.
pub(crate) async fn open_watch(channel: &Channel, prefix: &str) -> anyhow::Result<WatchStream> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: roster_state::prefix_range_end(prefix.as_bytes()),
            ..Default::default()
        })),
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(create).await.context("queueing the watch")?;
    let mut stream = WatchClient::new(channel.clone())
        .watch(ReceiverStream::new(rx))
        .await
        .context("opening a watch stream")?
        .into_inner();
    let created = stream.message().await.context("watch creation")?;
    if !created.is_some_and(|c| c.created && !c.canceled) {
        bail!("the watch was not created");
    }
    Ok((tx, stream))
}

/// Times every delivered event (its send time, ns since `epoch`, read by
/// `sent_ns`; `None` counts as an error) until `expected` have come, or no more
/// come for [`DRAIN_TIMEOUT`] once the count is known.
pub(crate) async fn time_deliveries<T>(
    mut stream: tonic::Streaming<T>,
    sent_ns: impl Fn(T) -> Vec<Option<u64>>,
    epoch: Instant,
    expected: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let want = expected.load(Ordering::SeqCst);
        if tally.latencies.len() as u64 >= want {
            return tally;
        }
        // While the writes run the count is unknown: look again every 100 ms.
        let unknown = want == u64::MAX;
        let wait = if unknown {
            Duration::from_millis(100)
        } else {
            DRAIN_TIMEOUT
        };
        match tokio::time::timeout(wait, stream.message()).await {
            Err(_) if unknown => continue,
            Ok(Ok(Some(response))) => {
                let now = epoch.elapsed();
                for sent in sent_ns(response) {
                    match sent {
                        Some(ns) => tally
                            .latencies
                            .push(now.saturating_sub(Duration::from_nanos(ns))),
                        None => tally.errors += 1,
                    }
                }
            }
            _ => return tally,
        }
    }
}

/// The send times a timed put wrote at the start of each event's value.
fn put_send_times(response: WatchResponse) -> Vec<Option<u64>> {
    response
        .events
        .into_iter()
        .map(|event| {
            let kv = event.kv?;
            std::str::from_utf8(&kv.value[..20.min(kv.value.len())])
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

/// Claims the next operation number, or `None` when the run is over.
pub(crate) fn claim(issued: &AtomicU64, total: u64, deadline: Instant) -> Option<u64> {
    if Instant::now() >= deadline {
        return None;
    }
    let n = issued.fetch_add(1, Ordering::Relaxed);
    (n < total).then_some(n)
}

/// Runs `op(client, n)` for every claimed operation number on `--clients`
/// workers, each with a client made by `client` from its channel (round robin
/// over `channels`); `op` says whether the operation succeeded.
pub(crate) async fn run_ops<C, F, Fut>(
    args: &BenchArgs,
    channels: &[Channel],
    client: impl Fn(Channel) -> C,
    op: F,
) -> anyhow::Result<(Vec<Tally>, Duration)>
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let client = client(channels[w % channels.len()].clone());
        let (op, issued, total) = (op.clone(), issued.clone(), args.total);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while let Some(n) = claim(&issued, total, deadline) {
                let t = Instant::now();
                if op(client.clone(), n).await {
                    tally.latencies.push(t.elapsed());
                } else {
                    tally.errors += 1;
                }
            }
            tally
        }));
    }
    let tallies = join(workers).await?;
    Ok((tallies, started.elapsed()))
}

/// Makes the key and value of put number `n`.
type PutMaker = Arc<dyn Fn(u64) -> (Vec<u8>, Vec<u8>) + Send + Sync>;

/// Random keys out of `key_space`, fixed values.
fn random_puts(value_size: usize, key_space: u64) -> PutMaker {
    let value = vec![b'x'; value_size];
    Arc::new(move |n| {
        let key = format!(
            "bench/{:016x}",
            roster_state::splitmix64(n) % key_space.max(1)
        );
        (key.into_bytes(), value.clone())
    })
}

/// Keys `<prefix><n>`, values that start with the send time (ns since `epoch`).
fn timed_puts(prefix: String, value_size: usize, epoch: Instant) -> PutMaker {
    Arc::new(move |n| {
        let mut value = format!("{:020}", epoch.elapsed().as_nanos()).into_bytes();
        value.resize(value_size.max(20), b'x');
        (format!("{prefix}{n}").into_bytes(), value)
    })
}

async fn run_puts(
    args: &BenchArgs,
    channels: &[Channel],
    make: PutMaker,
    deadline: Instant,
    issued: &Arc<AtomicU64>,
) -> anyhow::Result<Vec<Tally>> {
    let mut workers = Vec::new();
    for w in 0..args.clients {
        let mut kv = KvClient::new(channels[w % channels.len()].clone());
        let (issued, make, total) = (issued.clone(), make.clone(), args.total);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while let Some(n) = claim(&issued, total, deadline) {
                let (key, value) = make(n);
                let req = PutRequest {
                    key,
                    value,
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

/// Requests in flight while a workload sets up leases (grants are small, so
/// many at once keep every node busy).
pub(crate) const GRANT_CONCURRENCY: usize = 256;

/// Grants `count` leases of `ttl` seconds, [`GRANT_CONCURRENCY`] at a time
/// (setup, not measured; fails on the first error). Warns when granting took
/// so long that the first leases may have expired before the last was granted.
pub(crate) async fn grant_leases(
    channels: &[Channel],
    count: usize,
    ttl: i64,
) -> anyhow::Result<Vec<i64>> {
    let started = Instant::now();
    let grants = (0..count).map(|n| {
        let mut lease = LeaseClient::new(channels[n % channels.len()].clone());
        async move {
            let granted = lease.lease_grant(LeaseGrantRequest { ttl, id: 0 }).await?;
            Ok::<_, tonic::Status>(granted.into_inner().id)
        }
    });
    let ids: Vec<i64> = stream::iter(grants)
        .buffer_unordered(GRANT_CONCURRENCY)
        .try_collect()
        .await
        .context("granting the benchmark's leases")?;
    let took = started.elapsed();
    eprintln!(
        "granted {} leases (TTL {ttl} s) in {:.1} s",
        ids.len(),
        took.as_secs_f64()
    );
    if took.as_secs_f64() > ttl as f64 / 2.0 {
        eprintln!("warning: granting took over half the TTL; raise --ttl");
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

pub(crate) async fn join(
    workers: Vec<tokio::task::JoinHandle<Tally>>,
) -> anyhow::Result<Vec<Tally>> {
    let mut tallies = Vec::with_capacity(workers.len());
    for w in workers {
        tallies.push(w.await.context("benchmark worker panicked")?);
    }
    Ok(tallies)
}

/// The `p` quantile (0 to 1) of `sorted`; zero if it is empty.
pub(crate) fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// `p50 .. p99 .. max ..` of `all` in milliseconds (sorts it).
pub(crate) fn percentiles_ms(all: &mut [Duration]) -> String {
    all.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.2} p99 {:.2} max {:.2}",
        ms(quantile(all, 0.5)),
        ms(quantile(all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
    )
}

pub(crate) fn report(name: &str, tallies: Vec<Tally>, elapsed: Duration) {
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let mut all: Vec<Duration> = tallies.into_iter().flat_map(|t| t.latencies).collect();
    let percentiles = percentiles_ms(&mut all);
    println!(
        "{name}: {} ok, {errors} errors in {:.2} s = {:.0} ops/s; latency ms {percentiles}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
    );
}
