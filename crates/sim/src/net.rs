//! Roster's network seams over turmoil's simulated TCP: the [`Transport`] a
//! simulated node uses for raft traffic, forwarded requests and its two
//! listeners, and the [`Connect`] the simulated clients use. Host names are
//! turmoil's (`n0`, `n1`, ...), resolved by its DNS; no byte leaves the
//! process.

use std::io;
use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use roster_raft::transport::{Conn, Incoming, Transport};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::workload::{client_endpoint, connect_within, Connect, CONNECT_TIMEOUT};

/// Opens a simulated TCP connection to the host and port of `uri`.
async fn dial(uri: Uri) -> io::Result<TokioIo<turmoil::net::TcpStream>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let port = uri.port_u16().unwrap_or(80);
    tracing::trace!(%uri, "dial");
    let stream = turmoil::net::TcpStream::connect((host, port)).await?;
    Ok(TokioIo::new(stream))
}

/// A node's network inside the simulation.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimTransport;

impl Transport for SimTransport {
    fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(tower::service_fn(dial))
    }

    fn listen(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Incoming>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await.map(|(stream, _)| Conn::new(stream));
                Some((accepted, listener))
            });
            Ok(incoming.boxed())
        })
    }
}

/// The simulated clients' way to the nodes: client URLs such as `http://n0:2379`.
pub fn sim_connect(urls: Vec<String>) -> Connect {
    Connect::new(urls, |url, call_timeout| {
        Box::pin(async move {
            let endpoint = client_endpoint(url, call_timeout, CONNECT_TIMEOUT)?;
            let connect = endpoint.connect_with_connector(tower::service_fn(dial));
            connect_within(CONNECT_TIMEOUT, connect).await
        })
    })
}
