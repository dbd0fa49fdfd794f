//! The agent gateway: a tonic gRPC server behind our own rustls accept loop
//! ([`tls`]), one task per agent stream ([`session`]), batched idempotent ingest
//! ([`ingest`]) and the registry of live sessions ([`registry`]). The standard
//! `grpc.health.v1` service runs on the same server.
pub mod enroll;
pub mod ingest;
pub mod registry;
pub mod session;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use steward_shared::proto::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use steward_shared::proto::{AgentMessage, EnrollRequest, EnrollResponse};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use session::SessionDeps;
use tls::AgentConnInfo;

/// The gRPC service implementation.
pub struct GatewayService {
    deps: Arc<SessionDeps>,
}

/// A session's messages to its agent, unboxed from its [`registry::Outbound`] queue.
pub type SessionStream = tokio_stream::adapters::Map<
    ReceiverStream<Box<registry::OutItem>>,
    fn(Box<registry::OutItem>) -> registry::OutItem,
>;

#[tonic::async_trait]
impl AgentGateway for GatewayService {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // Identity comes only from the verified certificate, attached by the accept loop.
        let conn = request
            .extensions()
            .get::<AgentConnInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let Some(identity) = conn.identity.clone() else {
            self.deps.metrics.stream_rejected("unauthenticated");
            return Err(Status::unauthenticated(
                "a client certificate from the Steward CA is required",
            ));
        };
        let revoked = self
            .deps
            .store
            .is_cert_revoked(&identity.host_id, &identity.serial)
            .await
            .map_err(|error| {
                tracing::error!(%error, "revocation check failed");
                Status::unavailable("the control plane cannot read its data right now")
            })?;
        if revoked {
            self.deps.metrics.stream_rejected("revoked");
            tracing::warn!(host = %identity.host_id, serial = %identity.serial, remote = %conn.remote, "revoked certificate refused");
            return Err(Status::permission_denied(
                "this host's certificate has been revoked: re-enroll it",
            ));
        }
        let (tx, rx) = registry::Outbound::channel(16);
        let span = tracing::info_span!("session", host = %identity.host_id, remote = %conn.remote);
        tokio::spawn(session::run(self.deps.clone(), identity, request.into_inner(), tx).instrument(span));
        let unbox: fn(Box<registry::OutItem>) -> registry::OutItem = |item| *item;
        Ok(Response::new(ReceiverStream::new(rx).map(unbox)))
    }

    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let Some(enroller) = self.deps.enroller.clone() else {
            return Err(Status::unavailable(
                "this control plane has no CA key to sign certificates with",
            ));
        };
        let Some(conn) = request.extensions().get::<AgentConnInfo>().cloned() else {
            return Err(Status::unavailable("no connection information"));
        };
        // One enrollment per connection without a certificate.
        if let Some(enrolled) = &conn.enrolled
            && enrolled.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.deps
                .metrics
                .enrollment(crate::metrics::EnrollOutcome::rate_limited);
            return Err(Status::resource_exhausted(
                "one enrollment per connection: open a new connection",
            ));
        }
        let req = request.into_inner();
        if req.csr_der.len() > 16 * 1024 {
            return Err(Status::invalid_argument("certificate signing request too large"));
        }
        let (host_id, cert_pem, ca_pem) = enroller.enroll(&req.token, &req.csr_der, conn.remote.ip()).await?;
        Ok(Response::new(EnrollResponse {
            host_id,
            cert_pem,
            ca_pem,
        }))
    }
}

/// Settings for [`serve`].
pub struct GatewaySettings {
    pub tls: Arc<rustls::ServerConfig>,
    pub max_connections: usize,
    /// Connections without a certificate (enrolling clients).
    pub unauthenticated: tls::UnauthenticatedLimits,
    pub max_message_size: usize,
    pub handshake_timeout: Duration,
}

/// Serves the gateway on `listener` until `deps.shutdown` is cancelled; live
/// sessions are told to go away, then the server stops.
pub async fn serve(
    listener: TcpListener,
    settings: GatewaySettings,
    deps: Arc<SessionDeps>,
) -> Result<(), tonic::transport::Error> {
    let shutdown = deps.shutdown.clone();
    let incoming = tls::accept_loop(
        listener,
        settings.tls,
        settings.max_connections,
        settings.unauthenticated,
        settings.handshake_timeout,
        deps.metrics.clone(),
        shutdown.clone(),
    );
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentGatewayServer<GatewayService>>()
        .await;
    let service = AgentGatewayServer::new(GatewayService { deps })
        .max_decoding_message_size(settings.max_message_size)
        .max_encoding_message_size(settings.max_message_size);
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown.cancelled_owned())
        .await
}

pub use session::SessionLimits;
