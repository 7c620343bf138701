//! Clients that survive the loss of an endpoint, for `roster bench failover`.
//!
//! Each worker owns a [`Rotor`]: its own lazily connected channel to every
//! endpoint, and the one it uses. A call that fails or takes longer than
//! [`CALL_TIMEOUT`] moves the worker on to the next endpoint, so a killed node
//! is skipped after one failed call (its connections are reset, or refused),
//! and the workers keep writing through the survivors. Keepalive streams do the
//! same: a stream that fails or goes quiet is opened again on the next
//! endpoint, and the lease is renewed there.

use std::time::{Duration, Instant};

use anyhow::Context;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{LeaseKeepAliveRequest, PutRequest};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Longest wait for a unary call before trying the next endpoint.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed call, so that a cluster without a leader (every
/// endpoint refusing at once) is not asked in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One worker's channels to every endpoint and the one in use.
pub(crate) struct Rotor {
    channels: Vec<Channel>,
    at: usize,
}

impl Rotor {
    /// Channels to `endpoints` (connected on first use); starts at `start`.
    pub(crate) fn new(endpoints: &[String], start: usize) -> anyhow::Result<Rotor> {
        let mut channels = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let endpoint = Endpoint::from_shared(format!("http://{ep}"))
                .with_context(|| format!("endpoint {ep}"))?
                .tcp_nodelay(true)
                .connect_timeout(CALL_TIMEOUT);
            channels.push(endpoint.connect_lazy());
        }
        anyhow::ensure!(!channels.is_empty(), "--endpoints must not be empty");
        let at = start % channels.len();
        Ok(Rotor { channels, at })
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channels[self.at].clone()
    }

    /// After a failure: the next endpoint, following a short pause.
    pub(crate) async fn rotate(&mut self) {
        self.at = (self.at + 1) % self.channels.len();
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// A put of a load: when it was sent and when it was answered (`None`: failed).
pub(crate) type Put = (Instant, Option<Instant>);

/// Puts `value` to keys `<prefix><0..1000>` until `stop` turns true, moving
/// to the next endpoint after each failure.
pub(crate) async fn put_loop(
    mut rotor: Rotor,
    prefix: String,
    value: Vec<u8>,
    stop: watch::Receiver<bool>,
) -> Vec<Put> {
    let mut puts = Vec::new();
    for n in 0u64.. {
        if *stop.borrow() {
            break;
        }
        let put = PutRequest {
            key: format!("{prefix}{}", n % 1000).into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        let sent = Instant::now();
        let answer = timeout(CALL_TIMEOUT, KvClient::new(rotor.channel()).put(put)).await;
        if let Ok(Ok(_)) = answer {
            puts.push((sent, Some(Instant::now())));
        } else {
            puts.push((sent, None));
            rotor.rotate().await;
        }
    }
    puts
}

/// How one kept-alive lease fared.
#[derive(Default)]
pub(crate) struct Held {
    /// A keepalive was answered with TTL 0: the lease was gone.
    pub(crate) lost: bool,
    /// Longest time between two renewals (or the start and the first one, or
    /// the last one and the end).
    pub(crate) longest_gap: Duration,
    /// Streams opened again after one failed.
    pub(crate) reconnects: u64,
}

enum StreamEnd {
    Stopped,
    Lost,
    Failed,
}

/// Keeps lease `id` (TTL `ttl`) alive as a client library would, one renewal
/// every third of the TTL, until `stop` turns true; a failed or quiet stream
/// is opened again on the next endpoint.
pub(crate) async fn hold(
    mut rotor: Rotor,
    id: i64,
    ttl: Duration,
    mut stop: watch::Receiver<bool>,
) -> Held {
    let mut held = Held::default();
    let mut last_renewal = Instant::now();
    while !*stop.borrow() {
        let lease = LeaseClient::new(rotor.channel());
        match keep_on_stream(lease, id, ttl, &mut stop, &mut last_renewal, &mut held).await {
            StreamEnd::Stopped => break,
            StreamEnd::Lost => {
                held.lost = true;
                break;
            }
            StreamEnd::Failed => {
                held.reconnects += 1;
                rotor.rotate().await;
            }
        }
    }
    held.longest_gap = held.longest_gap.max(last_renewal.elapsed());
    held
}

/// One keepalive stream, until it fails, the lease is gone, or `stop`.
async fn keep_on_stream(
    mut lease: LeaseClient<Channel>,
    id: i64,
    ttl: Duration,
    stop: &mut watch::Receiver<bool>,
    last_renewal: &mut Instant,
    held: &mut Held,
) -> StreamEnd {
    let wait = (ttl / 3).clamp(Duration::from_millis(500), CALL_TIMEOUT);
    let (tx, rx) = mpsc::channel(1);
    // etcd sends a stream's headers only with its first answer: queue the
    // first request before waiting for the call to be accepted.
    let _ = tx.try_send(LeaseKeepAliveRequest { id });
    let call = timeout(wait, lease.lease_keep_alive(ReceiverStream::new(rx))).await;
    let Ok(Ok(call)) = call else {
        return StreamEnd::Failed;
    };
    let mut answers = call.into_inner();
    loop {
        match timeout(wait, answers.message()).await {
            Ok(Ok(Some(answer))) if answer.ttl > 0 => {
                held.longest_gap = held.longest_gap.max(last_renewal.elapsed());
                *last_renewal = Instant::now();
            }
            Ok(Ok(Some(_))) => return StreamEnd::Lost,
            _ => return StreamEnd::Failed,
        }
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = stop.changed() => return StreamEnd::Stopped,
        }
        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return StreamEnd::Failed;
        }
    }
}
