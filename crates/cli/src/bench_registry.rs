//! `roster bench register|discover|register-watch`: the native registry
//! workloads (Roster only; etcd has no equivalent).
//!
//! - `register`: `--total` instances (no lease) spread over `--services`
//!   services named `<prefix>-<n>`, registered by `--clients` workers.
//! - `discover`: `Discover` of a random one of those services, linearizable.
//! - `register-watch`: `--watchers` `WatchServices` streams on one fresh service
//!   while the workers register into it; each registration carries its send time,
//!   so every delivered event is timed (register-to-event latency).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::Channel;
use anyhow::{bail, Context};
use roster_proto::registry::register_request::Lease;
use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{
    DiscoverRequest, RegisterRequest, RegistryEvent, WatchServicesRequest, WatchServicesResponse,
};

use crate::bench::{join, report, time_deliveries, BenchArgs, Tally};

fn instance(service: String, id: String, sent_ns: Option<u128>) -> RegisterRequest {
    let metadata = sent_ns
        .map(|t| ("sent_ns".to_string(), t.to_string()))
        .into_iter()
        .collect();
    RegisterRequest {
        service,
        id,
        endpoints: Vec::new(),
        metadata,
        tags: Vec::new(),
        weight: 1,
        check: None,
        deregister: None,
        deregistration_handler: String::new(),
        lease: Some(Lease::NoLease(true)),
    }
}

/// [`crate::bench::run_ops`] with a registry client.
async fn run_ops<F, Fut>(
    args: &BenchArgs,
    channels: &[Channel],
    op: F,
) -> anyhow::Result<(Vec<Tally>, Duration)>
where
    F: Fn(RegistryClient<Channel>, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    crate::bench::run_ops(args, channels, RegistryClient::new, op).await
}

pub async fn register(
    args: &BenchArgs,
    channels: &[Channel],
    services: u64,
    prefix: &str,
) -> anyhow::Result<()> {
    let prefix = prefix.to_string();
    let services = services.max(1);
    let (tallies, elapsed) = run_ops(args, channels, move |mut client, n| {
        let request = instance(format!("{prefix}-{}", n % services), format!("i{n}"), None);
        async move { client.register(request).await.is_ok() }
    })
    .await?;
    report("register", tallies, elapsed);
    Ok(())
}

pub async fn discover(
    args: &BenchArgs,
    channels: &[Channel],
    services: u64,
    prefix: &str,
) -> anyhow::Result<()> {
    let prefix = prefix.to_string();
    let services = services.max(1);
    let returned = Arc::new(AtomicU64::new(0));
    let counted = returned.clone();
    let (tallies, elapsed) = run_ops(args, channels, move |mut client, n| {
        let request = DiscoverRequest {
            service: format!("{prefix}-{}", roster_state::splitmix64(n) % services),
            ..Default::default()
        };
        let counted = counted.clone();
        async move {
            match client.discover(request).await {
                Ok(answer) => {
                    counted.fetch_add(
                        answer.into_inner().instances.len() as u64,
                        Ordering::Relaxed,
                    );
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await?;
    let queries: usize = tallies.iter().map(|t| t.latencies.len()).sum();
    report("discover", tallies, elapsed);
    println!(
        "instances per answer: {:.0}",
        returned.load(Ordering::Relaxed) as f64 / queries.max(1) as f64
    );
    Ok(())
}

pub async fn register_watch(
    args: &BenchArgs,
    channels: &[Channel],
    watchers: usize,
) -> anyhow::Result<()> {
    if watchers == 0 {
        bail!("--watchers must be at least 1");
    }
    // Roster answers the call once the watch is in place, so registrations made
    // after every call returned are all seen.
    let epoch = Instant::now();
    let service = format!(
        "watchbench-{:x}",
        roster_state::splitmix64(u64::from(std::process::id()))
    );
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut client = RegistryClient::new(channels[i % channels.len()].clone());
        let request = WatchServicesRequest {
            service: service.clone(),
            ..Default::default()
        };
        let stream = client
            .watch_services(request)
            .await
            .context("opening a watch")?
            .into_inner();
        let sent_ns = |response: WatchServicesResponse| {
            let sent = |e: RegistryEvent| e.instance?.metadata.get("sent_ns")?.parse().ok();
            response.events.into_iter().map(sent).collect()
        };
        tasks.push(tokio::spawn(time_deliveries(
            stream,
            sent_ns,
            epoch,
            expected.clone(),
        )));
    }
    let name = service.clone();
    let (puts, elapsed) = run_ops(args, channels, move |mut client, n| {
        let request = instance(
            name.clone(),
            format!("i{n}"),
            Some(epoch.elapsed().as_nanos()),
        );
        async move { client.register(request).await.is_ok() }
    })
    .await?;
    let acknowledged: u64 = puts.iter().map(|t| t.latencies.len() as u64).sum();
    expected.store(acknowledged, Ordering::SeqCst);
    let events = join(tasks).await?;
    let missing: u64 = events
        .iter()
        .map(|t| acknowledged.saturating_sub(t.latencies.len() as u64))
        .sum();
    report("register (watched)", puts, elapsed);
    report(
        &format!("register-to-event x{watchers}"),
        events,
        epoch.elapsed(),
    );
    println!("events missing at the end: {missing}");
    Ok(())
}
