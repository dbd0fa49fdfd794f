//! The gateway's TLS front: our own accept loop with tokio-rustls, so the
//! handshake has a deadline, connections are capped, and the verified client
//! certificate becomes the connection's identity before tonic sees a byte.
//!
//! Invariant: a connection carries an identity only after rustls verified its
//! client certificate against the Steward CA (`clientAuth` EKU, validity) and
//! [`steward_shared::pki::identity_from_cert`] read a valid host id from it.
//! Plaintext and foreign-CA clients fail the handshake; a client without a
//! certificate gets a connection whose only use is `Enroll`.
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use steward_shared::pki::{self, PeerIdentity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The ring provider: the workspace's one rustls crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the gateway's rustls config: our server certificate, client
/// certificates required and verified against `client_ca`, ALPN `h2`.
pub fn server_config(cert: &Path, key: &Path, client_ca: &Path) -> Result<rustls::ServerConfig, TlsSetupError> {
    let invalid = |p: &Path, m: String| TlsSetupError::Invalid {
        path: p.display().to_string(),
        message: m,
    };
    let mut certs = pki::certs_from_pem(&pki::read_file(cert)?).map_err(|e| invalid(cert, e.to_string()))?;
    let key_der = pki::key_from_pem(&pki::read_file(key)?).map_err(|e| invalid(key, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    let cas = pki::certs_from_pem(&pki::read_file(client_ca)?).map_err(|e| invalid(client_ca, e.to_string()))?;
    for ca in &cas {
        roots.add(ca.clone()).map_err(|e| invalid(client_ca, e.to_string()))?;
        // Serve the CA with our chain, so an enrolling agent can pin it by fingerprint.
        if !certs.contains(ca) {
            certs.push(ca.clone());
        }
    }
    // Client certificates are verified when presented; a connection without
    // one is admitted only to `Enroll` (the session refuses it).
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| invalid(client_ca, e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key_der)
        .map_err(|e| invalid(key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What the gRPC service learns about a connection (request extension).
#[derive(Debug, Clone)]
pub struct AgentConnInfo {
    pub remote: SocketAddr,
    /// The verified identity; `None` for a client without a certificate.
    pub identity: Option<PeerIdentity>,
}

/// One verified agent connection. Holds a permit of the connection cap until dropped.
pub struct AgentIo {
    inner: TlsStream<TcpStream>,
    info: AgentConnInfo,
    _permit: OwnedSemaphorePermit,
}

impl Connected for AgentIo {
    type ConnectInfo = AgentConnInfo;
    fn connect_info(&self) -> AgentConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for AgentIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, performs the TLS handshake (bounded by
/// `handshake_timeout`) in its own task, and yields verified connections on
/// the returned channel. Connections beyond `max_connections` are closed at once.
pub fn accept_loop(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    max_connections: usize,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Result<AgentIo, io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(max_connections));
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                metrics.stream_rejected("over_capacity");
                tracing::warn!(%remote, max_connections, "connection refused: at the connection cap");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        metrics.stream_rejected("tls");
                        tracing::info!(%remote, %error, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        metrics.stream_rejected("tls");
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let identity = {
                    let (_, session) = tls.get_ref();
                    match session.peer_certificates().and_then(|c| c.first()) {
                        Some(leaf) => pki::identity_from_cert(leaf.as_ref()).map(Some),
                        None => Ok(None),
                    }
                };
                match identity {
                    Ok(identity) => {
                        let io = AgentIo {
                            inner: tls,
                            info: AgentConnInfo { remote, identity },
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(error) => {
                        metrics.stream_rejected("identity");
                        tracing::warn!(%remote, %error, "client certificate carries no valid identity");
                    }
                }
            });
        }
    });
    rx
}
