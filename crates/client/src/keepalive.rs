//! One keepalive stream for every lease of the process: etcd's
//! `LeaseKeepAlive`, each lease renewed at a third of its TTL.
//!
//! The task owns the stream and the table of leases. When the stream breaks
//! (the node died, or lost its leader), it reconnects through the pool (the
//! next endpoint) and renews every lease at once, so a failover costs a lease
//! at most the time to find the next node. A lease the server answers with a
//! TTL of 0 is gone (it expired during a long partition, or was revoked): its
//! owner is told, and the lease leaves the table; it never comes back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::LeaseKeepAliveRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::pool::Pool;

/// How often the task looks for leases due for renewal.
const TICK: Duration = Duration::from_millis(100);
/// Pause before reconnecting after the stream broke.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// A stream that answers nothing this long after a renewal was sent is taken
/// for dead (a frozen or cut-off node never closes it).
const STALL: Duration = Duration::from_millis(1500);

enum Request {
    /// Keep `lease` (TTL in seconds) alive; tell `lost` when it is gone.
    Add {
        lease: i64,
        ttl: i64,
        lost: mpsc::UnboundedSender<i64>,
    },
    Remove {
        lease: i64,
    },
}

struct Kept {
    ttl: Duration,
    next_send: Instant,
    lost: mpsc::UnboundedSender<i64>,
}

/// The handle on the process's keepalive task. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Keepalive {
    requests: mpsc::UnboundedSender<Request>,
}

impl Keepalive {
    pub(crate) fn start(pool: Arc<Pool>) -> Keepalive {
        let (requests, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, queue));
        Keepalive { requests }
    }

    pub(crate) fn add(&self, lease: i64, ttl: i64, lost: mpsc::UnboundedSender<i64>) {
        let _ = self.requests.send(Request::Add { lease, ttl, lost });
    }

    pub(crate) fn remove(&self, lease: i64) {
        let _ = self.requests.send(Request::Remove { lease });
    }
}

async fn run(pool: Arc<Pool>, mut requests: mpsc::UnboundedReceiver<Request>) {
    let mut leases: HashMap<i64, Kept> = HashMap::new();
    loop {
        // With nothing to keep, wait for a lease rather than hold a stream.
        while leases.is_empty() {
            match requests.recv().await {
                Some(request) => take(&mut leases, request),
                None => return,
            }
        }
        let Ok((i, channel)) = pool.channel().await else {
            tokio::time::sleep(RECONNECT_PAUSE).await;
            continue;
        };
        let (send, outgoing) = mpsc::channel(1024);
        let mut answers = match LeaseClient::new(channel)
            .lease_keep_alive(ReceiverStream::new(outgoing))
            .await
        {
            Ok(answers) => answers.into_inner(),
            Err(status) => {
                tracing::debug!(%status, "roster client: keepalive stream refused");
                pool.failed(i);
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
        };
        // A new stream renews everything at once.
        let now = Instant::now();
        for kept in leases.values_mut() {
            kept.next_send = now;
        }
        let mut tick = tokio::time::interval(TICK);
        // Since when a renewal has waited for an answer.
        let mut waiting: Option<Instant> = None;
        let ended = loop {
            tokio::select! {
                _ = tick.tick() => {
                    if waiting.is_some_and(|since| since.elapsed() > STALL) {
                        break "no answer";
                    }
                    match send_due(&mut leases, &send) {
                        None => break "stream closed",
                        Some(true) => { waiting.get_or_insert_with(Instant::now); }
                        Some(false) => {}
                    }
                }
                request = requests.recv() => match request {
                    Some(request) => take(&mut leases, request),
                    None => return,
                },
                answer = answers.message() => match answer {
                    Ok(Some(answer)) if answer.ttl <= 0 => {
                        waiting = None;
                        if let Some(kept) = leases.remove(&answer.id) {
                            let _ = kept.lost.send(answer.id);
                        }
                    }
                    Ok(Some(_)) => waiting = None,
                    Ok(None) => break "stream ended",
                    Err(status) => {
                        tracing::debug!(%status, "roster client: keepalive stream failed");
                        break "stream failed";
                    }
                },
            }
        };
        tracing::debug!(
            reason = ended,
            "roster client: reconnecting the keepalive stream"
        );
        pool.failed(i);
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

fn take(leases: &mut HashMap<i64, Kept>, request: Request) {
    match request {
        Request::Add { lease, ttl, lost } => {
            let ttl = Duration::from_secs(ttl.max(1) as u64);
            let next_send = Instant::now() + ttl / 3;
            leases.insert(
                lease,
                Kept {
                    ttl,
                    next_send,
                    lost,
                },
            );
        }
        Request::Remove { lease } => {
            leases.remove(&lease);
        }
    }
}

/// Sends a renewal for every lease due: whether any was sent, or `None` if
/// the stream is gone.
fn send_due(
    leases: &mut HashMap<i64, Kept>,
    send: &mpsc::Sender<LeaseKeepAliveRequest>,
) -> Option<bool> {
    let now = Instant::now();
    let mut sent = false;
    for (&id, kept) in leases.iter_mut().filter(|(_, k)| k.next_send <= now) {
        match send.try_send(LeaseKeepAliveRequest { id }) {
            Ok(()) => {
                kept.next_send = now + kept.ttl / 3;
                sent = true;
            }
            Err(mpsc::error::TrySendError::Full(_)) => break,
            Err(mpsc::error::TrySendError::Closed(_)) => return None,
        }
    }
    Some(sent)
}
