//! `roster bench expiry`: how punctually leases expire. A registry's promise is
//! that a dead instance's key goes away soon after its TTL, and never before.
//!
//! A watch on a fresh prefix is opened first. Then `--leases` leases of
//! `--ttl` seconds are granted, each with one key `<prefix><n>` put with it,
//! and none is kept alive. Every DELETE event is timed on arrival, and for
//! each key:
//!
//! - *early* if it arrived before the grant's **send** time + TTL: the lease
//!   cannot have been granted before it was asked for, so only an expiry that
//!   is truly early counts, however slow the grant's answer was;
//! - *lateness* = arrival - (the grant's **answer** time + TTL): the lease
//!   existed by the time the answer came, so a slow answer never makes an
//!   expiry look late (a delete between the two bounds counts as 0 lateness);
//! - *missing* if no DELETE came within TTL + [`MISSING_GRACE`] after the last
//!   grant's answer.
//!
//! The TTL is the one the server answered (a server raises a TTL under its
//! minimum). `storm` reuses the watch and the setup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::bench::Channel;
use anyhow::{bail, Context};
use clap::Args;
use futures::{stream, StreamExt, TryStreamExt};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{LeaseGrantRequest, PutRequest};
use roster_proto::mvccpb::event::EventType;

use crate::bench::{open_watch, percentiles_ms, GRANT_CONCURRENCY};

/// How long after the last grant's TTL a missing DELETE is waited for.
pub(crate) const MISSING_GRACE: Duration = Duration::from_secs(30);

#[derive(Args, Debug)]
pub struct ExpiryArgs {
    /// Leases granted, each with one key, none kept alive.
    #[arg(long, default_value_t = 1_000)]
    leases: u64,
    /// Their TTL (seconds).
    #[arg(long, default_value_t = 5)]
    ttl: i64,
}

/// One lease granted for the run, with its key attached.
pub(crate) struct Granted {
    pub(crate) id: i64,
    pub(crate) sent: Instant,
    pub(crate) answered: Instant,
    /// As the server granted it.
    pub(crate) ttl: Duration,
}

impl Granted {
    /// When the key is due to go, at the latest measure (answer + TTL).
    pub(crate) fn due(&self) -> Instant {
        self.answered + self.ttl
    }

    /// Whether a delete at `at` came before the lease could have expired.
    pub(crate) fn early(&self, at: Instant) -> bool {
        at < self.sent + self.ttl
    }
}

/// A fresh key prefix for one run of `workload`.
pub(crate) fn fresh_prefix(workload: &str) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let tag = roster_state::splitmix64(seed ^ u64::from(std::process::id()));
    format!("{workload}/{tag:x}/")
}

pub(crate) fn numbered_key(prefix: &str, n: u64) -> Vec<u8> {
    format!("{prefix}{n:08}").into_bytes()
}

/// Grants `count` leases, each followed by a put of the key `<prefix><n>`
/// with it, [`GRANT_CONCURRENCY`] at a time round robin over `channels`
/// (setup: fails on the first error). Each lease asks for the TTL `ttl()`
/// says as its grant is sent. Index `n` is lease `n`.
pub(crate) async fn grant_with_keys(
    channels: &[Channel],
    prefix: &str,
    count: u64,
    ttl: impl Fn() -> i64,
) -> anyhow::Result<Vec<Granted>> {
    let grants = (0..count).map(|n| {
        let ttl = ttl();
        let channel = channels[n as usize % channels.len()].clone();
        let key = numbered_key(prefix, n);
        async move {
            let sent = Instant::now();
            let request = LeaseGrantRequest { ttl, id: 0 };
            let lease = LeaseClient::new(channel.clone())
                .lease_grant(request)
                .await?;
            let answered = Instant::now();
            let lease = lease.into_inner();
            let put = PutRequest {
                key,
                value: b"x".to_vec(),
                lease: lease.id,
                ..Default::default()
            };
            KvClient::new(channel).put(put).await?;
            let ttl = Duration::from_secs(lease.ttl.max(0) as u64);
            let id = lease.id;
            Ok::<_, tonic::Status>((
                n,
                Granted {
                    id,
                    sent,
                    answered,
                    ttl,
                },
            ))
        }
    });
    let mut granted: Vec<(u64, Granted)> = stream::iter(grants)
        .buffer_unordered(GRANT_CONCURRENCY)
        .try_collect()
        .await
        .context("granting the leases and putting their keys")?;
    granted.sort_unstable_by_key(|(n, _)| *n);
    Ok(granted.into_iter().map(|(_, g)| g).collect())
}

/// Arrival times of the DELETE events of keys `<prefix><n>`, by `n`.
pub(crate) struct Deletes {
    arrived: Mutex<Vec<Option<Instant>>>,
    count: AtomicU64,
}

impl Deletes {
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// The arrival times, by key number.
    pub(crate) fn arrived(&self) -> MutexGuard<'_, Vec<Option<Instant>>> {
        self.arrived.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, n: usize, at: Instant) {
        let mut arrived = self.arrived();
        if let Some(slot @ None) = arrived.get_mut(n) {
            *slot = Some(at);
            self.count.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Waits until all `expected` deletes came or `deadline` passed.
    pub(crate) async fn wait(&self, expected: u64, deadline: Instant) {
        while self.count() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The first and the last arrival.
    pub(crate) fn span(&self) -> Option<(Instant, Instant)> {
        let arrived = self.arrived();
        let first = arrived.iter().flatten().min()?;
        let last = arrived.iter().flatten().max()?;
        Some((*first, *last))
    }
}

/// Opens a watch on `prefix` (before any of its `count` keys is written) and
/// records every DELETE of a key `<prefix><n>` as it arrives.
pub(crate) async fn watch_deletes(
    channel: &Channel,
    prefix: &str,
    count: u64,
) -> anyhow::Result<Arc<Deletes>> {
    let (requests, mut stream) = open_watch(channel, prefix).await?;
    let deletes = Arc::new(Deletes {
        arrived: Mutex::new(vec![None; count as usize]),
        count: AtomicU64::new(0),
    });
    let (log, prefix) = (deletes.clone(), prefix.to_string());
    tokio::spawn(async move {
        // The request side stays open while the answers are read.
        let _requests = requests;
        while let Ok(Some(response)) = stream.message().await {
            let at = Instant::now();
            for event in response.events {
                let number = event.kv.as_ref().and_then(|kv| {
                    let suffix = kv.key.strip_prefix(prefix.as_bytes())?;
                    std::str::from_utf8(suffix).ok()?.parse::<usize>().ok()
                });
                if let (true, Some(n)) = (event.r#type == EventType::Delete as i32, number) {
                    log.record(n, at);
                }
            }
            if log.count() >= count {
                break;
            }
        }
    });
    Ok(deletes)
}

/// Early, missing, and the lateness of the others, as explained above.
pub(crate) struct Punctuality {
    pub(crate) early: u64,
    pub(crate) missing: u64,
    pub(crate) lateness: Vec<Duration>,
}

pub(crate) fn punctuality(granted: &[Granted], deletes: &Deletes) -> Punctuality {
    let mut outcome = Punctuality {
        early: 0,
        missing: 0,
        lateness: Vec::with_capacity(granted.len()),
    };
    for (grant, arrived) in granted.iter().zip(deletes.arrived().iter()) {
        match arrived {
            None => outcome.missing += 1,
            Some(at) => {
                outcome.early += u64::from(grant.early(*at));
                outcome
                    .lateness
                    .push(at.saturating_duration_since(grant.due()));
            }
        }
    }
    outcome
}

pub async fn run(channels: &[Channel], args: &ExpiryArgs) -> anyhow::Result<()> {
    if args.leases == 0 {
        bail!("--leases must be at least 1");
    }
    let prefix = fresh_prefix("expiry");
    let deletes = watch_deletes(&channels[0], &prefix, args.leases).await?;
    let started = Instant::now();
    let granted = grant_with_keys(channels, &prefix, args.leases, || args.ttl).await?;
    let granted_ttl = granted.first().map_or(0, |g| g.ttl.as_secs());
    eprintln!(
        "granted {} leases (TTL {granted_ttl} s) with a key each in {:.1} s; waiting for them to expire",
        granted.len(),
        started.elapsed().as_secs_f64()
    );
    let last_due = granted.iter().map(Granted::due).max().unwrap_or(started);
    deletes.wait(args.leases, last_due + MISSING_GRACE).await;
    let mut outcome = punctuality(&granted, &deletes);
    let deleted = outcome.lateness.len();
    println!(
        "expiry of {} leases (TTL {granted_ttl} s): {deleted} deleted, {} early, {} missing; lateness ms {}",
        args.leases,
        outcome.early,
        outcome.missing,
        percentiles_ms(&mut outcome.lateness),
    );
    Ok(())
}
