//! TLS for the client and peer ports, with etcd's flags: `--cert-file`,
//! `--key-file`, `--trusted-ca-file`, `--client-cert-auth` for clients, the
//! same with `--peer-` for members. rustls with the ring provider.
//!
//! The server side does the handshake itself, before tonic sees the
//! connection: on the client port the bytes after it still go through
//! `url_authority`, which must read the HTTP/2 frames in the clear. Each
//! handshake runs in its own task with a deadline, so a client that never
//! finishes one holds up no one else. The client side (this member calling
//! its peers) is tonic's: a peer channel to an `https://` URL carries the
//! member's certificate and trusts the peer CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use roster_raft::transport::{Conn, Incoming};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections whose handshake finished, waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The certificate files of one port (clients or peers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the certificates of clients (or peers) to accept.
    /// Given, a connection without such a certificate is refused, as etcd
    /// does.
    pub trusted_ca: Option<PathBuf>,
    /// Refuse a connection without a certificate the trusted CA signed
    /// (needs `trusted_ca`).
    pub client_cert_auth: bool,
    /// Which flags these came from (`""` or `"peer-"`), for the messages.
    pub prefix: &'static str,
}

/// Why the TLS setup failed; each names the flag or file to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--{flag} {}: {reason}", path.display())]
    File {
        flag: String,
        path: PathBuf,
        reason: String,
    },
    #[error("--{0}client-cert-auth needs --{0}trusted-ca-file")]
    NoTrustedCa(&'static str),
    #[error("{0}")]
    Config(String),
}

impl TlsFiles {
    fn file_error(&self, flag: &str, path: &Path, reason: impl ToString) -> TlsError {
        TlsError::File {
            flag: format!("{}{flag}", self.prefix),
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn certs(&self, flag: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| self.file_error(flag, path, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.file_error(flag, path, e))?;
        if certs.is_empty() {
            return Err(self.file_error(flag, path, "no certificate in it"));
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| self.file_error("key-file", &self.key, e))
    }

    fn read(&self, flag: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|e| self.file_error(flag, path, e))
    }

    /// The server side of this port.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        if self.client_cert_auth && self.trusted_ca.is_none() {
            return Err(TlsError::NoTrustedCa(self.prefix));
        }
        let builder = if let Some(ca) = &self.trusted_ca {
            let mut roots = RootCertStore::empty();
            for cert in self.certs("trusted-ca-file", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| self.file_error("trusted-ca-file", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| self.file_error("trusted-ca-file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let certs = self.certs("cert-file", &self.cert)?;
        let mut config = builder
            .with_single_cert(certs, self.key()?)
            .map_err(|e| self.file_error("key-file", &self.key, e))?;
        // gRPC is HTTP/2; clients that negotiate ALPN insist on it.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// The client side, for this member's calls to its peers: its own
    /// certificate, and the CA that signed theirs.
    pub fn peer_client(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let cert = self.read("cert-file", &self.cert)?;
        let key = self.read("key-file", &self.key)?;
        let mut config = tonic::transport::ClientTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = &self.trusted_ca {
            let ca = self.read("trusted-ca-file", ca)?;
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
        }
        // Parsed now, so a bad file is refused at start rather than at the
        // first call to a peer.
        tonic::transport::Endpoint::from_static("https://127.0.0.1:2380")
            .tls_config(config.clone())
            .map_err(|e| {
                TlsError::Config(format!(
                    "--{}cert-file, --{}key-file or --{}trusted-ca-file: {e}",
                    self.prefix, self.prefix, self.prefix
                ))
            })?;
        Ok(config)
    }
}

/// The connections of `incoming` after a TLS handshake each. A connection
/// whose handshake fails or takes too long is dropped (and logged at debug).
pub fn accept(mut incoming: Incoming, acceptor: TlsAcceptor) -> Incoming {
    let (accepted, queue) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                conn = incoming.next() => conn,
                // The server stopped: let the listener go.
                _ = accepted.closed() => return,
            };
            let Some(conn) = conn else { return };
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    if accepted.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let (acceptor, accepted) = (acceptor.clone(), accepted.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(Conn::new(tls))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(queue).boxed()
}
