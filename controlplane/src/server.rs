//! `steward-controlplane serve`: opens and migrates the store, binds the
//! gateway (mTLS gRPC) and the REST API, runs the retention job, and shuts all
//! of it down when the shutdown token is cancelled, within a grace period.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use steward_daemon::notify;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ControlPlaneConfig;
use crate::gateway::{
    self, GatewaySettings, SessionLimits, enroll::Enroller, ingest::Ingestor, registry::Registry, session::SessionDeps,
};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How long in-flight REST requests get to finish at shutdown.
const REST_GRACE: Duration = Duration::from_secs(10);

/// Errors that stop the control plane from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("database {url}: {source}")]
    Store { url: String, source: StoreError },
    #[error("gateway TLS: {0}")]
    Tls(#[from] gateway::tls::TlsSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("config: {0}")]
    Config(String),
    #[error("REST TLS: {0}")]
    RestTls(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("audit log: {0}")]
    Audit(#[from] crate::audit::checkpointer::AuditStartError),
}

/// Where a started control plane listens (also written to `DATA_DIR/endpoints.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub grpc_addr: SocketAddr,
    pub rest_url: String,
    pub pid: u32,
}

/// A started control plane.
pub struct Running {
    pub endpoints: Endpoints,
    pub store: Store,
    pub registry: Arc<Registry>,
    tasks: Vec<JoinHandle<()>>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Waits until every part has stopped (after the shutdown token was cancelled).
    pub async fn wait(self) -> Result<(), ServeError> {
        let grpc = self.grpc.await;
        for t in self.tasks {
            let _ = t.await;
        }
        match grpc {
            Ok(r) => Ok(r?),
            Err(_) => Ok(()),
        }
    }
}

/// Starts every part of the control plane; returns once all listeners are bound.
pub async fn start(cfg: &ControlPlaneConfig, shutdown: CancellationToken) -> Result<Running, ServeError> {
    // Also checked when the file is loaded; here for configs built in code.
    cfg.check_database_tls()
        .map_err(|e| ServeError::Config(format!("key `database_url`: {e}")))?;
    cfg.check_rest_plaintext()
        .map_err(|e| ServeError::Config(format!("key `rest.listen`: {e}")))?;
    let url = cfg.database_url_with_password().map_err(ServeError::Config)?;
    let store_err = |source| ServeError::Store {
        url: steward_daemon::redact::url(&url),
        source,
    };
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| ServeError::Write {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
    }
    let store = Store::connect(&url).await.map_err(store_err)?;
    store.migrate().await.map_err(store_err)?;
    // The SLO counting index, before the gateway ingests anything.
    if let Err(error) = store.reload_sli_index().await {
        tracing::warn!(%error, "cannot load SLO definitions at start; the SLO engine retries");
    }
    // Signing key, `start` checkpoint, and the checkpointer task.
    let audit = crate::audit::checkpointer::start(&cfg.audit, &cfg.data_dir, store.clone(), shutdown.clone()).await?;
    let metrics = Arc::new(Metrics::new());

    let tls = gateway::tls::server_config(&cfg.server_cert_path(), &cfg.server_key_path(), &cfg.client_ca_path())?;
    let grpc_listener = TcpListener::bind(cfg.grpc.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.grpc.listen,
            source,
        })?;
    let rest_listener = TcpListener::bind(cfg.rest.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.rest.listen,
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.grpc.listen,
        source,
    })?;
    let rest_addr = rest_listener.local_addr().map_err(|source| ServeError::Bind {
        addr: cfg.rest.listen,
        source,
    })?;

    let registry = Arc::new(Registry::default());
    let jobs = crate::jobs::dispatcher::JobsHandle::new(cfg.jobs.settings());
    let ingestor = Ingestor::start_with_jobs(
        store.clone(),
        metrics.clone(),
        cfg.ingest_workers(),
        cfg.grpc.ingest_max_rows,
        jobs.settings.clone(),
    );
    // The CA key signs enrollments and renewals; a replica without it only serves streams.
    // One budget of audited refusals for the REST API and the gateway's enrollments.
    let denials = Arc::new(crate::audit::denials::DenialLimiter::per_minute(
        cfg.audit.denials_per_minute,
    ));
    let enroller = match steward_shared::pki::Ca::load_dir(&cfg.data_dir) {
        Ok(ca) => Some(Enroller::new(
            ca,
            cfg.pki.agent_cert_lifetime.as_std(),
            store.clone(),
            metrics.clone(),
            denials.clone(),
            cfg.grpc.enroll_limits(),
        )),
        Err(error) => {
            tracing::warn!(%error, "no usable CA in the data directory: enrollment and renewal are disabled here");
            None
        }
    };
    let deps = Arc::new(SessionDeps {
        store: store.clone(),
        ingestor,
        registry: registry.clone(),
        metrics: metrics.clone(),
        limits: SessionLimits {
            max_batch: cfg.grpc.max_batch,
            heartbeat_interval: cfg.grpc.heartbeat_interval.as_std(),
            hello_timeout: cfg.grpc.handshake_timeout.as_std(),
        },
        shutdown: shutdown.clone(),
        enroller: enroller.clone(),
        jobs: jobs.clone(),
    });
    let settings = GatewaySettings {
        tls: Arc::new(tls),
        max_connections: cfg.grpc.max_connections,
        unauthenticated: crate::gateway::tls::UnauthenticatedLimits {
            max_connections: cfg.grpc.max_enrollment_connections,
            max_per_address: cfg.grpc.max_enrollment_connections_per_address,
            lifetime: cfg.grpc.enrollment_connection_lifetime.as_std(),
        },
        max_message_size: cfg.grpc.max_message_size.0 as usize,
        handshake_timeout: cfg.grpc.handshake_timeout.as_std(),
    };
    let grpc = tokio::spawn(gateway::serve(grpc_listener, settings, deps));

    let rest_tls = match (&cfg.rest.tls_cert, &cfg.rest.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(rest_tls_config(cert, key)?)),
        _ => None,
    };
    let scheme = if rest_tls.is_some() { "https" } else { "http" };
    let ca_fingerprint = enroller.as_ref().and_then(|e| e.ca_fingerprint());
    let state = crate::api::ApiState::new(store.clone(), metrics.clone(), cfg.rest.offline_after.as_std())
        .with_enrollment(ca_fingerprint, cfg.pki.enrollment_token_ttl.as_std())
        .with_audit_budget(audit.signer.clone(), denials)
        .with_rbac(crate::api::rbac::RbacApi::new(
            // Validated when the config was loaded.
            cfg.rbac.role_defs().unwrap_or_default(),
            cfg.rest.rate_limit_per_second,
            cfg.rest.rate_limit_burst,
        ))
        .with_jobs(jobs.clone());
    let config_roles = state.rbac.config_roles.clone();
    // SLOs: the engine loop keeps the counting index fresh and flushes API requests.
    let slo_engine = tokio::spawn(crate::slo::engine::run(
        store.clone(),
        state.api_sli.clone(),
        shutdown.clone(),
    ));
    let routes = {
        use warp::{Filter, Reply};
        crate::api::routes(state).map(Reply::into_response).boxed()
    };
    let rest = tokio::spawn(crate::rest_serve::serve(
        rest_listener,
        rest_tls,
        routes,
        cfg.rest.limits(),
        shutdown.clone(),
        REST_GRACE,
    ));

    let retention = tokio::spawn(retention_loop(
        store.clone(),
        cfg.retention.results.as_std(),
        cfg.retention.interval.as_std(),
        shutdown.clone(),
    ));

    let sweep = tokio::spawn(revocation_sweep(store.clone(), registry.clone(), shutdown.clone()));
    let rollouts = crate::rollouts::driver::start(
        store.clone(),
        jobs.clone(),
        config_roles,
        Arc::new(crate::slo::gate::StoreSloGate { store: store.clone() }),
        shutdown.clone(),
    );
    // Alerts: every source reconciled each round; the outbox drained to the receivers.
    let alerts = crate::alert::evaluator::start(store.clone(), cfg.alerts.clone(), metrics.clone(), shutdown.clone());
    let dispatcher =
        crate::jobs::dispatcher::start(store.clone(), registry.clone(), metrics.clone(), jobs, shutdown.clone());
    let kpi_sampler = tokio::spawn(crate::kpi::sampler::run(
        store.clone(),
        cfg.kpi.settings(),
        metrics.clone(),
        shutdown.clone(),
    ));

    let endpoints = Endpoints {
        grpc_addr,
        rest_url: format!("{scheme}://{rest_addr}"),
        pid: std::process::id(),
    };
    tracing::info!(grpc = %grpc_addr, rest = %endpoints.rest_url, backend = store.backend_name(), "control plane listening");
    Ok(Running {
        endpoints,
        store,
        registry,
        tasks: vec![
            rest,
            retention,
            sweep,
            dispatcher,
            rollouts,
            audit.task,
            slo_engine,
            alerts,
            kpi_sampler,
        ],
        grpc,
    })
}

/// `serve`: start, record the endpoints, tell systemd it is ready, run until
/// shutdown. The watchdog is pinged from this loop (see [`steward_daemon::notify`]).
pub async fn serve(cfg: &ControlPlaneConfig, shutdown: CancellationToken) -> Result<(), ServeError> {
    let running = start(cfg, shutdown.clone()).await?;
    write_endpoints(&cfg.data_dir, &running.endpoints)?;
    notify::ready();
    let mut watchdog = notify::Watchdog::from_env();
    let wait = running.wait();
    tokio::pin!(wait);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = &mut wait => return result,
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                notify::stopping();
            }
            _ = watchdog.tick() => notify::watchdog_ping(),
        }
    }
}

/// Writes `DATA_DIR/endpoints.json`, so scripts and tests find the bound ports.
pub fn write_endpoints(data_dir: &Path, endpoints: &Endpoints) -> Result<(), ServeError> {
    let path = data_dir.join("endpoints.json");
    let json = serde_json::to_string_pretty(endpoints).unwrap_or_default();
    steward_shared::pki::write_file_mode(&path, &json, 0o644).map_err(|e| ServeError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })
}

fn rest_tls_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, ServeError> {
    use steward_shared::pki;
    let err = |e: &dyn std::fmt::Display| ServeError::RestTls(e.to_string());
    let certs = pki::certs_from_pem(&pki::read_file(cert).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    let key = pki::key_from_pem(&pki::read_file(key).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn retention_loop(store: Store, keep: Duration, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = steward_shared::now_ms() - keep.as_millis() as i64;
        match store.prune_results(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention: pruned old check results"),
            Err(error) => tracing::warn!(%error, "retention job failed"),
        }
    }
}

/// How often live streams are checked against revocations (made here or on
/// another replica): a revoked host's stream closes within this period.
const REVOCATION_SWEEP: Duration = Duration::from_millis(500);

async fn revocation_sweep(store: Store, registry: Arc<Registry>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(REVOCATION_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if registry.connected() == 0 {
            continue;
        }
        match store.revoked_hosts().await {
            Ok(hosts) => {
                for host in hosts {
                    if registry.kick(&host) {
                        tracing::warn!(%host, "closed the stream of a revoked host");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "revocation sweep failed"),
        }
        // Certificates revoked on their own: a re-enrolled host's earlier ones.
        match store.revoked_certs(steward_shared::now_ms()).await {
            Ok(certs) => {
                for (host, serial) in certs {
                    if registry.kick_serial(&host, &serial) {
                        tracing::warn!(%host, %serial, "closed a stream opened with a revoked certificate");
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "revocation sweep failed"),
        }
    }
}
