//! `roster bench health-checks`: what leader-run health checks cost and how
//! fast a mass failure shows (Roster only).
//!
//! The benchmark serves the checks itself: one local HTTP server answers
//! `GET /i/<n>` for every instance, 200 while healthy and 503 once failing.
//! It registers `--instances` instances with an http check at `--interval`,
//! waits one interval for the first probes, then measures over `--window`
//! while all pass: the leader process's CPU (from `/proc`, so the cluster must
//! run on this machine), the raft log entries and store revisions written per
//! second (from the leader's status), and the probes per second the server
//! saw. Then `--failing` instances start failing at once, and a registry watch
//! times each one's turn to critical.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::Channel;
use anyhow::{bail, Context};
use futures::{stream, StreamExt};
use roster_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use roster_proto::etcdserverpb::StatusRequest;
use roster_proto::registry::register_request::Lease;
use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    Check, CheckKind, EventKind, Health, RegisterRequest, WatchServicesRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the benchmark's HTTP server shares with the benchmark.
struct Target {
    port: u16,
    /// Instances with a number below this answer 503.
    failing_below: AtomicU64,
    probes: AtomicU64,
}

async fn serve_targets() -> anyhow::Result<Arc<Target>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let target = Arc::new(Target {
        port: listener.local_addr()?.port(),
        failing_below: AtomicU64::new(0),
        probes: AtomicU64::new(0),
    });
    let shared = target.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(answer(conn, shared.clone()));
        }
    });
    Ok(target)
}

async fn answer(mut conn: tokio::net::TcpStream, target: Arc<Target>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    target.probes.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(&request);
    let number: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|path| path.strip_prefix("/i/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    let failing = number < target.failing_below.load(Ordering::Relaxed);
    let reply: &[u8] = if failing {
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndown"
    } else {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    };
    let _ = conn.write_all(reply).await;
}

pub struct HealthBench {
    pub instances: u64,
    pub interval: Duration,
    pub window: Duration,
    pub failing: u64,
    pub failures_before_critical: u32,
}

pub async fn run(
    endpoints: &[String],
    channels: &[Channel],
    clients: usize,
    bench: HealthBench,
) -> anyhow::Result<()> {
    if bench.failing > bench.instances || bench.instances == 0 {
        bail!("--failing must be at most --instances, which must be positive");
    }
    let target = serve_targets().await?;
    let service = format!(
        "hcbench-{:x}",
        roster_state::splitmix64(u64::from(std::process::id()))
    );
    let started = Instant::now();
    register_all(channels, clients, &service, &bench, target.port).await?;
    println!(
        "registered {} instances with http checks every {:?} in {:.1} s",
        bench.instances,
        bench.interval,
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(bench.interval + Duration::from_secs(2)).await;
    let crate::bench::Leader {
        client: leader,
        endpoint: leader_endpoint,
        ..
    } = crate::bench::find_leader(endpoints).await?;
    let pid = find_pid(&leader_endpoint);
    let before = (
        status(&leader).await?,
        pid.and_then(cpu_ticks),
        target.probes.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(bench.window).await;
    let after = (
        status(&leader).await?,
        pid.and_then(cpu_ticks),
        target.probes.load(Ordering::Relaxed),
    );
    let seconds = t0.elapsed().as_secs_f64();
    println!("all passing, over {seconds:.1} s on the leader ({leader_endpoint}):");
    println!(
        "  probes/s seen by the targets: {:.0}",
        (after.2 - before.2) as f64 / seconds
    );
    println!(
        "  raft log entries/s: {:.2}",
        (after.0 .0 - before.0 .0) as f64 / seconds
    );
    println!(
        "  store revisions/s: {:.2}",
        (after.0 .1 - before.0 .1) as f64 / seconds
    );
    match (before.1, after.1) {
        (Some(a), Some(b)) => println!(
            "  leader CPU: {:.1}% of one core",
            (b - a) as f64 / clock_ticks() / seconds * 100.0
        ),
        _ => println!("  leader CPU: unknown (no local process serving {leader_endpoint})"),
    }
    mass_failure(channels, &service, &bench, &target).await
}

async fn register_all(
    channels: &[Channel],
    clients: usize,
    service: &str,
    bench: &HealthBench,
    port: u16,
) -> anyhow::Result<()> {
    let requests = (0..bench.instances).map(|n| {
        let check = Check {
            kind: CheckKind::Http as i32,
            target: format!("http://127.0.0.1:{port}/i/{n}"),
            interval_ms: bench.interval.as_millis() as u64,
            timeout_ms: 2_000.min(bench.interval.as_millis() as u64),
            failures_before_warning: bench.failures_before_critical,
            failures_before_critical: bench.failures_before_critical,
            successes_before_passing: 1,
            ..Default::default()
        };
        let mut client = RegistryClient::new(channels[n as usize % channels.len()].clone());
        let request = RegisterRequest {
            service: service.to_string(),
            id: format!("i{n}"),
            weight: 1,
            lease: Some(Lease::NoLease(true)),
            check: Some(check),
            ..Default::default()
        };
        async move { client.register(request).await.map(|_| ()) }
    });
    let failures = stream::iter(requests)
        .buffer_unordered(clients.max(1))
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    if failures > 0 {
        bail!("{failures} registrations failed");
    }
    Ok(())
}

/// Turns the first `--failing` instances bad and times their critical events.
async fn mass_failure(
    channels: &[Channel],
    service: &str,
    bench: &HealthBench,
    target: &Target,
) -> anyhow::Result<()> {
    let mut watch = RegistryClient::new(channels[0].clone())
        .watch_services(WatchServicesRequest {
            service: service.to_string(),
            ..Default::default()
        })
        .await
        .context("watching the service")?
        .into_inner();
    let t0 = Instant::now();
    target.failing_below.store(bench.failing, Ordering::SeqCst);
    let mut seen = HashSet::new();
    let mut times = Vec::new();
    let deadline = bench.interval * (bench.failures_before_critical + 3);
    while (seen.len() as u64) < bench.failing && t0.elapsed() < deadline {
        let left = deadline.saturating_sub(t0.elapsed());
        let Ok(Some(response)) = tokio::time::timeout(left, watch.message()).await? else {
            break;
        };
        for event in response.events {
            let critical = event.kind == EventKind::HealthChanged as i32
                && event
                    .instance
                    .as_ref()
                    .is_some_and(|i| i.health == Health::Critical as i32);
            let id = event.instance.map(|i| i.id).unwrap_or_default();
            if critical && seen.insert(id) {
                times.push(t0.elapsed());
            }
        }
    }
    times.sort();
    let at =
        |q: f64| times.get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)));
    println!(
        "mass failure of {}: {} critical; first after {:.2} s, half after {:.2} s, all after {:.2} s",
        bench.failing,
        times.len(),
        at(0.0).map_or(0.0, Duration::as_secs_f64),
        at(0.5).map_or(0.0, Duration::as_secs_f64),
        times.last().map_or(0.0, Duration::as_secs_f64),
    );
    Ok(())
}

/// (raft index, revision) of the leader.
async fn status(
    client: &MaintenanceClient<tonic::transport::Channel>,
) -> anyhow::Result<(u64, i64)> {
    let s = client.clone().status(StatusRequest {}).await?.into_inner();
    Ok((s.raft_index, s.header.map_or(0, |h| h.revision)))
}

/// The local `roster serve` process listening on `endpoint`'s port, if any.
fn find_pid(endpoint: &str) -> Option<u32> {
    let port = endpoint.rsplit(':').next()?;
    let needle = format!("127.0.0.1:{port}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let listens = text
                .split("--listen-client-urls")
                .nth(1)?
                .split_whitespace()
                .next()?;
            (text.contains("serve") && listens.contains(&needle)).then_some(pid)
        })
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux everywhere we run).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
