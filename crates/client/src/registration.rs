//! A registered instance that stays registered: its lease is renewed on the
//! process's keepalive stream; if the lease is lost anyway (it expired during
//! a partition longer than its TTL), the instance is registered again on a
//! new lease, and the event says so; `shutdown()` (or dropping the handle)
//! drains it for the configured time, so watchers and load balancers stop
//! sending work, and then deregisters it gracefully.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roster_proto::registry::register_request::Lease;
use roster_proto::registry::registry_client::RegistryClient;
use roster_proto::registry::{DrainRequest, InstanceRequest, RegisterRequest};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::keepalive::Keepalive;
use crate::pool::Pool;

/// How a registration behaves.
#[derive(Debug, Clone)]
pub struct RegistrationOptions {
    /// The instance's lease TTL (whole seconds; the server raises it to its minimum).
    pub ttl: Duration,
    /// How long `shutdown()` keeps the instance draining before deregistering it.
    pub drain: Duration,
}

impl Default for RegistrationOptions {
    fn default() -> Self {
        RegistrationOptions {
            ttl: Duration::from_secs(10),
            drain: Duration::ZERO,
        }
    }
}

/// What happened to a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// The lease was lost (expired or revoked) and the instance registered
    /// again on a new one.
    Reregistered { lost_lease: i64, lease: i64 },
    /// The lease was lost and registering again failed; it is retried.
    RetryingAfterLoss { lost_lease: i64, error: String },
}

struct Shared {
    pool: Arc<Pool>,
    keepalive: Keepalive,
    request: RegisterRequest,
    lease: AtomicI64,
    events: broadcast::Sender<RegistrationEvent>,
}

/// A live registration. Dropping it shuts it down in the background (drain,
/// then deregister); call [`Registration::shutdown`] to wait for that.
pub struct Registration {
    shared: Arc<Shared>,
    options: RegistrationOptions,
    watcher: Option<JoinHandle<()>>,
}

/// Pause between attempts to register again after a loss.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

impl Registration {
    pub(crate) async fn start(
        pool: Arc<Pool>,
        keepalive: Keepalive,
        mut request: RegisterRequest,
        options: RegistrationOptions,
    ) -> Result<Registration, ClientError> {
        let ttl = options.ttl.as_secs().max(1) as i64;
        request.lease = Some(Lease::TtlSeconds(ttl));
        let lease = register(&pool, &request).await?;
        let (events, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            pool,
            keepalive,
            request,
            lease: AtomicI64::new(lease),
            events,
        });
        let (lost_tx, lost) = mpsc::unbounded_channel();
        shared.keepalive.add(lease, ttl, lost_tx.clone());
        let watcher = tokio::spawn(follow_losses(shared.clone(), ttl, lost_tx, lost));
        Ok(Registration {
            shared,
            options,
            watcher: Some(watcher),
        })
    }

    /// The lease the instance lives on now.
    pub fn lease(&self) -> i64 {
        self.shared.lease.load(Ordering::SeqCst)
    }

    /// Events of this registration (re-registrations after a lost lease).
    pub fn events(&self) -> broadcast::Receiver<RegistrationEvent> {
        self.shared.events.subscribe()
    }

    /// Drains the instance for the configured time, then deregisters it.
    pub async fn shutdown(self) -> Result<(), ClientError> {
        let drain = self.options.drain;
        self.shutdown_with(drain).await
    }

    /// Drains the instance for `drain` (zero: not at all), then deregisters it.
    pub async fn shutdown_with(mut self, drain: Duration) -> Result<(), ClientError> {
        let watcher = self.watcher.take();
        shut_down(self.shared.clone(), drain, watcher).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(watcher) = self.watcher.take() else {
            return;
        };
        let shared = self.shared.clone();
        let drain = self.options.drain;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = shut_down(shared, drain, Some(watcher)).await {
                    tracing::warn!(error = %e, "roster client: deregistration on drop failed");
                }
            });
        }
    }
}

/// Registers (an idempotent upsert, so retried); the lease to renew.
async fn register(pool: &Pool, request: &RegisterRequest) -> Result<i64, ClientError> {
    let answer = pool
        .retry(|channel| {
            let request = request.clone();
            async move { RegistryClient::new(channel).register(request).await }
        })
        .await?;
    Ok(answer.into_inner().lease)
}

/// Registers again whenever the keepalive task reports the lease lost.
async fn follow_losses(
    shared: Arc<Shared>,
    ttl: i64,
    lost_tx: mpsc::UnboundedSender<i64>,
    mut lost: mpsc::UnboundedReceiver<i64>,
) {
    while let Some(lost_lease) = lost.recv().await {
        if lost_lease != shared.lease.load(Ordering::SeqCst) {
            continue;
        }
        tracing::warn!(
            lease = lost_lease,
            "roster client: lease lost; registering again"
        );
        loop {
            match register(&shared.pool, &shared.request).await {
                Ok(lease) => {
                    shared.lease.store(lease, Ordering::SeqCst);
                    shared.keepalive.add(lease, ttl, lost_tx.clone());
                    let _ = shared
                        .events
                        .send(RegistrationEvent::Reregistered { lost_lease, lease });
                    break;
                }
                Err(e) => {
                    let event = RegistrationEvent::RetryingAfterLoss {
                        lost_lease,
                        error: e.to_string(),
                    };
                    let _ = shared.events.send(event);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

async fn shut_down(
    shared: Arc<Shared>,
    drain: Duration,
    watcher: Option<JoinHandle<()>>,
) -> Result<(), ClientError> {
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    let which = || InstanceRequest {
        service: shared.request.service.clone(),
        id: shared.request.id.clone(),
    };
    if !drain.is_zero() {
        // The deadline is a fallback: if this process dies while draining,
        // the registry removes the instance itself soon after.
        let deadline_ms = (drain + drain.max(Duration::from_secs(1))).as_millis() as u64;
        shared
            .pool
            .retry(|channel| {
                let request = DrainRequest {
                    service: shared.request.service.clone(),
                    id: shared.request.id.clone(),
                    deadline_ms,
                };
                async move { RegistryClient::new(channel).drain(request).await }
            })
            .await?;
        tokio::time::sleep(drain).await;
    }
    let result = shared
        .pool
        .retry(|channel| {
            let request = which();
            async move { RegistryClient::new(channel).deregister(request).await }
        })
        .await;
    shared.keepalive.remove(shared.lease.load(Ordering::SeqCst));
    match result {
        Ok(_) => Ok(()),
        // Removed already (by a retried deregister that had applied, or by
        // the drain deadline): the goal is reached.
        Err(ClientError::Status(status)) if status.code() == tonic::Code::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
