//! The agent gateway: a tonic gRPC server behind our own rustls accept loop
//! ([`tls`]), one task per agent stream ([`session`]), batched idempotent ingest
//! ([`ingest`]) and the registry of live sessions ([`registry`]). The standard
//! `grpc.health.v1` service runs on the same server.
pub mod ingest;
pub mod registry;
pub mod session;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use steward_shared::proto::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use steward_shared::proto::{AgentMessage, ControlMessage};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use session::SessionDeps;
use tls::AgentConnInfo;

/// The gRPC service implementation.
pub struct GatewayService {
    deps: Arc<SessionDeps>,
}

#[tonic::async_trait]
impl AgentGateway for GatewayService {
    type SessionStream = ReceiverStream<Result<ControlMessage, Status>>;

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
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let span = tracing::info_span!("session", host = %conn.identity.host_id, remote = %conn.remote);
        tokio::spawn(session::run(self.deps.clone(), conn, request.into_inner(), tx).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Settings for [`serve`].
pub struct GatewaySettings {
    pub tls: Arc<rustls::ServerConfig>,
    pub max_connections: usize,
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
