//! How a node reaches its peers and its clients: real TCP, or a simulated
//! network.
//!
//! A node opens connections to its peers (raft traffic, and requests a
//! follower forwards to the leader) and accepts them on two ports (peer and
//! client). All of these go through a [`Transport`], so that the
//! deterministic simulation can carry them over its own network, with its own
//! partitions and delays, while `roster serve` uses [`TcpTransport`]. (Health
//! probes and HTTP handler deliveries reach services outside the cluster and
//! use tokio's TCP directly.)

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Accepted connections, as a stream.
pub type Incoming = BoxStream<'static, io::Result<Conn>>;

/// Opens channels to peers and listens for connections.
pub trait Transport: Send + Sync + 'static {
    /// A channel to `endpoint` that connects on first use (and again after a
    /// broken connection), so that an unreachable peer never blocks startup.
    fn channel(&self, endpoint: Endpoint) -> Channel;

    /// Listens on `addr`: bound before this returns, so that a port in use is
    /// reported at startup.
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Incoming>>;
}

/// The real network: tokio's TCP, with Nagle's algorithm off both ways.
///
/// Connections leave from `source` when it is set (`--peer-source-ip`), so
/// that firewall rules between members can tell them apart (the
/// real-process chaos test cuts links between nodes on one machine so).
///
/// A channel to an `https://` URL uses `tls` (the member's certificate and
/// the peers' CA, `--peer-cert-file` and the like).
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    pub source: Option<IpAddr>,
    pub tls: Option<ClientTlsConfig>,
}

impl Transport for TcpTransport {
    fn channel(&self, endpoint: Endpoint) -> Channel {
        let https = endpoint.uri().scheme_str() == Some("https");
        let endpoint = match (&self.tls, https) {
            (Some(tls), true) => match endpoint.clone().tls_config(tls.clone()) {
                Ok(with_tls) => with_tls,
                Err(e) => {
                    tracing::warn!(error = %e, "peer TLS setup failed; connecting without");
                    endpoint
                }
            },
            _ => endpoint,
        };
        endpoint
            .tcp_nodelay(true)
            .local_address(self.source)
            .connect_lazy()
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Incoming>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await.map(|(tcp, _)| no_delay(tcp));
                Some((accepted.map(Conn::new), listener))
            });
            Ok(incoming.boxed())
        })
    }
}

/// Turns Nagle's algorithm off on an accepted connection. Streamed answers
/// (watch events, keepalive answers) are small writes that follow one another;
/// with Nagle on, each waits for the peer's delayed ACK (40 ms on Linux).
fn no_delay(tcp: tokio::net::TcpStream) -> tokio::net::TcpStream {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    tcp
}

/// Anything a connection can be.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One accepted connection of any transport.
pub struct Conn(Box<dyn Io>);

impl Conn {
    pub fn new(io: impl Io) -> Self {
        Conn(Box::new(io))
    }
}

impl Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
