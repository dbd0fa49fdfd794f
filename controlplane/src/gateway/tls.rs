//! The gateway's TLS front: our own accept loop with tokio-rustls, so the
//! handshake has a deadline, connections are capped, and the verified client
//! certificate becomes the connection's identity before tonic sees a byte.
//!
//! Invariant: a connection carries an identity only after rustls verified its
//! client certificate against the Steward CA (`clientAuth` EKU, validity) and
//! [`steward_shared::pki::identity_from_cert`] read a valid host id from it.
//! Plaintext and foreign-CA clients fail the handshake; a client without a
//! certificate gets a connection whose only use is `Enroll`: such connections
//! have their own small cap (apart from the agents' cap, which they cannot
//! fill once their handshake is done) and a short lifetime.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
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

use crate::metrics::{EnrollOutcome, Metrics};

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
    /// Set by the first `Enroll` on a connection without a certificate: one
    /// enrollment per connection.
    pub enrolled: Option<Arc<AtomicBool>>,
}

/// Connections without a client certificate (admitted for `Enroll` only).
#[derive(Debug, Clone, Copy)]
pub struct UnauthenticatedLimits {
    /// Most such connections at once, apart from the agents' cap.
    pub max_connections: usize,
    /// Most such connections at once from one client address.
    pub max_per_address: usize,
    /// Closed this long after the handshake, whatever they do.
    pub lifetime: Duration,
}

/// Open connections without a certificate, by client address.
#[derive(Debug, Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One slot of [`PerAddress`], given back when the connection is dropped.
struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One verified agent connection. Holds a permit of the connection cap until dropped.
pub struct AgentIo {
    inner: TlsStream<TcpStream>,
    info: AgentConnInfo,
    _permit: OwnedSemaphorePermit,
    /// When a connection without a certificate is closed.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    _address_slot: Option<AddressSlot>,
}

impl Connected for AgentIo {
    type ConnectInfo = AgentConnInfo;
    fn connect_info(&self) -> AgentConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for AgentIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a certificate reached its lifetime",
            )));
        }
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
    unauthenticated: UnauthenticatedLimits,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> mpsc::Receiver<Result<AgentIo, io::Error>> {
    let (tx, rx) = mpsc::channel(256);
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(max_connections));
    let unauth_permits = Arc::new(Semaphore::new(unauthenticated.max_connections));
    let per_address = Arc::new(PerAddress::default());
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
            let unauth_permits = unauth_permits.clone();
            let per_address = per_address.clone();
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
                    Ok(Some(identity)) => {
                        let io = AgentIo {
                            inner: tls,
                            info: AgentConnInfo {
                                remote,
                                identity: Some(identity),
                                enrolled: None,
                            },
                            _permit: permit,
                            deadline: None,
                            _address_slot: None,
                        };
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(None) => {
                        // Off the agents' cap, onto the small one of enrolling clients.
                        drop(permit);
                        let Some(slot) = per_address.take(remote.ip(), unauthenticated.max_per_address) else {
                            metrics.enrollment(EnrollOutcome::over_capacity);
                            tracing::info!(%remote, "connection without a certificate refused: at grpc.max_enrollment_connections_per_address");
                            return;
                        };
                        let Ok(permit) = unauth_permits.try_acquire_owned() else {
                            metrics.enrollment(EnrollOutcome::over_capacity);
                            tracing::info!(%remote, "connection without a certificate refused: at grpc.max_enrollment_connections");
                            return;
                        };
                        let io = AgentIo {
                            inner: tls,
                            info: AgentConnInfo {
                                remote,
                                identity: None,
                                enrolled: Some(Arc::new(AtomicBool::new(false))),
                            },
                            _permit: permit,
                            deadline: Some(Box::pin(tokio::time::sleep(unauthenticated.lifetime))),
                            _address_slot: Some(slot),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_without_a_certificate_are_capped_per_address() {
        let counts = Arc::new(PerAddress::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let first = counts.take(a, 2).unwrap();
        let _second = counts.take(a, 2).unwrap();
        assert!(counts.take(a, 2).is_none(), "a third from the same address");
        assert!(counts.take(b, 2).is_some(), "another address has its own slots");
        drop(first);
        assert!(
            counts.take(a, 2).is_some(),
            "a slot comes back when its connection closes"
        );
    }
}
