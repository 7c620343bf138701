//! Roster's Rust client.
//!
//! Services should not hand-write keepalive loops and shutdown hooks, so this
//! crate does them: [`Client::register`] returns a [`Registration`] whose
//! lease is renewed in the background (one keepalive stream per client for
//! every lease), which registers again by itself if the lease was lost, and
//! which drains then deregisters on [`Registration::shutdown`] or drop.
//! [`Client::discover`] returns a [`Discovery`] cache kept current by a
//! watch, with a weighted round-robin [`Discovery::pick`].
//!
//! A client talks to one node at a time, the first of its endpoints that
//! answers, and moves to the next when that node fails or has no leader.
//! Idempotent calls (registration, which is an upsert; deregistration;
//! reads) are retried that way with backoff; others are not.
//!
//! The lower-level gRPC clients are there too ([`Client::kv`],
//! [`Client::lease`], [`Client::watch`], [`Client::registry`]), connected to
//! the node in use.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roster_client::ClientError> {
//! use roster_client::{Client, InstanceBuilder, RegistrationOptions};
//! let client = Client::connect(["127.0.0.1:2379", "127.0.0.1:22379"]).await?;
//! let instance = InstanceBuilder::new("web", "web-1").endpoint("10.0.0.1", 8080, "http");
//! let registration = client.register(instance, RegistrationOptions::default()).await?;
//! let web = client.discover("web", "").await?;
//! let next = web.pick();
//! registration.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod auth;
mod discovery;
mod error;
mod instance;
mod keepalive;
mod pool;
mod registration;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use auth::{AuthChannel, Credentials};
pub use discovery::Discovery;
pub use error::ClientError;
pub use instance::InstanceBuilder;
pub use registration::{Registration, RegistrationEvent, RegistrationOptions};
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::watch_client::WatchClient;
use roster_proto::registry::registry_client::RegistryClient;
pub use roster_proto::registry::Instance;

use crate::keepalive::Keepalive;
use crate::pool::Pool;

/// How long an idempotent call keeps retrying by default: longer than an
/// election, so a leader's death costs a delay, not an error.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(10);

/// A connection to a Roster cluster. Cheap to clone; clones share the
/// connection and the keepalive stream.
#[derive(Clone)]
pub struct Client {
    pool: Arc<Pool>,
    keepalive: Arc<OnceLock<Keepalive>>,
}

impl Client {
    /// Connects to the first of `endpoints` (`host:port` or `http://host:port`)
    /// that answers.
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_with(endpoints, DEFAULT_RETRY_FOR).await
    }

    /// As [`Client::connect`], retrying idempotent calls for `retry_for`.
    pub async fn connect_with<I, S>(
        endpoints: I,
        retry_for: Duration,
    ) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connect_as(endpoints, retry_for, None).await
    }

    /// As [`Client::connect_with`], authenticated as `credentials` on a
    /// cluster with auth on (see [`Credentials`]).
    pub async fn connect_as<I, S>(
        endpoints: I,
        retry_for: Duration,
        credentials: Option<Credentials>,
    ) -> Result<Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        let pool = Arc::new(Pool::new(&endpoints, retry_for, credentials)?);
        pool.channel().await?;
        Ok(Client {
            pool,
            keepalive: Arc::new(OnceLock::new()),
        })
    }

    fn keepalive(&self) -> Keepalive {
        self.keepalive
            .get_or_init(|| Keepalive::start(self.pool.clone()))
            .clone()
    }

    /// Registers an instance and keeps it registered (see [`Registration`]).
    pub async fn register(
        &self,
        instance: InstanceBuilder,
        options: RegistrationOptions,
    ) -> Result<Registration, ClientError> {
        Registration::start(
            self.pool.clone(),
            self.keepalive(),
            instance.into_request(),
            options,
        )
        .await
    }

    /// A cache of `service`'s instances matching `selector` (empty: all),
    /// current once this returns.
    pub async fn discover(&self, service: &str, selector: &str) -> Result<Discovery, ClientError> {
        Discovery::start(self.pool.clone(), service.to_string(), selector.to_string()).await
    }

    /// The channel to the node in use (calls carry the token, if any).
    pub async fn channel(&self) -> Result<AuthChannel, ClientError> {
        Ok(self.pool.channel().await?.1)
    }

    /// The registry API (`roster.v1.Registry`) on the node in use.
    pub async fn registry(&self) -> Result<RegistryClient<AuthChannel>, ClientError> {
        Ok(RegistryClient::new(self.channel().await?))
    }

    /// The etcd KV API on the node in use.
    pub async fn kv(&self) -> Result<KvClient<AuthChannel>, ClientError> {
        Ok(KvClient::new(self.channel().await?))
    }

    /// The etcd Lease API on the node in use.
    pub async fn lease(&self) -> Result<LeaseClient<AuthChannel>, ClientError> {
        Ok(LeaseClient::new(self.channel().await?))
    }

    /// The etcd Watch API on the node in use.
    pub async fn watch(&self) -> Result<WatchClient<AuthChannel>, ClientError> {
        Ok(WatchClient::new(self.channel().await?))
    }
}
