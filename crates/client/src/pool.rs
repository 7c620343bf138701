//! Which node the client talks to. The client keeps one connection, to the
//! first endpoint that answers; when a call fails because that node is gone
//! or has no leader, the connection is dropped and the next call connects to
//! the next endpoint in the list. Idempotent calls are retried that way with
//! backoff until a deadline; others are not retried (a write that may have
//! been applied must not be applied twice). With credentials, each new
//! connection authenticates first, and a refused token drops the connection
//! so the next call authenticates again (`crate::auth`).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::Endpoint;

use crate::auth::{authenticated, token_refused, AuthChannel, Credentials};

use crate::error::{retryable, ClientError};

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause between retries; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub(crate) struct Pool {
    endpoints: Vec<Endpoint>,
    names: Vec<String>,
    /// The endpoint in use and its channel.
    current: Mutex<Option<(usize, AuthChannel)>>,
    /// Who to authenticate as on each new connection (none: no token).
    credentials: Option<Credentials>,
    /// Where the next search for an endpoint starts.
    start: AtomicUsize,
    /// How long an idempotent call keeps retrying.
    pub(crate) retry_for: Duration,
}

impl Pool {
    pub(crate) fn new(
        endpoints: &[String],
        retry_for: Duration,
        credentials: Option<Credentials>,
    ) -> Result<Pool, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::InvalidEndpoint(String::new()));
        }
        let mut parsed = Vec::with_capacity(endpoints.len());
        for name in endpoints {
            let url = match name.contains("://") {
                true => name.clone(),
                false => format!("http://{name}"),
            };
            let endpoint = Endpoint::from_shared(url)
                .map_err(|_| ClientError::InvalidEndpoint(name.clone()))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            parsed.push(endpoint);
        }
        Ok(Pool {
            endpoints: parsed,
            names: endpoints.to_vec(),
            current: Mutex::new(None),
            credentials,
            start: AtomicUsize::new(0),
            retry_for,
        })
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<(usize, AuthChannel)>> {
        // The guarded value is replaced whole, so a poisoned lock is still sound.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection in use, or one to the next endpoint that answers.
    pub(crate) async fn channel(&self) -> Result<(usize, AuthChannel), ClientError> {
        if let Some((i, channel)) = self.current().as_ref() {
            return Ok((*i, channel.clone()));
        }
        let start = self.start.load(Ordering::Relaxed);
        let mut last = String::new();
        for step in 0..self.endpoints.len() {
            let i = (start + step) % self.endpoints.len();
            match self.endpoints[i].connect().await {
                Ok(channel) => {
                    let channel = authenticated(channel, self.credentials.as_ref()).await?;
                    *self.current() = Some((i, channel.clone()));
                    tracing::debug!(endpoint = %self.names[i], "roster client: connected");
                    return Ok((i, channel));
                }
                Err(e) => last = format!("{}: {e}", self.names[i]),
            }
        }
        Err(ClientError::Unreachable(last))
    }

    /// The token of endpoint `i`'s connection was refused: the next call
    /// connects (to the same endpoint) and authenticates again.
    fn reauthenticate(&self, i: usize) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|(c, _)| *c == i) {
            *current = None;
        }
    }

    /// The connection to endpoint `i` failed: the next call moves on to the
    /// endpoint after it.
    pub(crate) fn failed(&self, i: usize) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|(c, _)| *c == i) {
            let next = (i + 1) % self.endpoints.len();
            tracing::debug!(from = %self.names[i], to = %self.names[next], "roster client: failing over");
            *current = None;
            self.start.store(next, Ordering::Relaxed);
        }
    }

    /// Runs an idempotent call, moving to another endpoint and retrying with
    /// backoff while it fails for want of a reachable node or a leader.
    pub(crate) async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match self.channel().await {
                Ok((i, channel)) => match call(channel).await {
                    Ok(answer) => return Ok(answer),
                    Err(status) if retryable(&status) => {
                        self.failed(i);
                        ClientError::Status(status)
                    }
                    Err(status) if token_refused(&status) && self.credentials.is_some() => {
                        self.reauthenticate(i);
                        ClientError::Status(status)
                    }
                    Err(status) => return Err(ClientError::Status(status)),
                },
                Err(e) => e,
            };
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs a call once (not idempotent); a connection failure still moves
    /// the next call to another endpoint.
    pub(crate) async fn once<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let (i, channel) = self.channel().await?;
        call(channel).await.map_err(|status| {
            if retryable(&status) {
                self.failed(i);
            } else if token_refused(&status) {
                self.reauthenticate(i);
            }
            ClientError::Status(status)
        })
    }
}
