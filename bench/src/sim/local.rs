//! A real control plane started in this process on 127.0.0.1 (fresh CA,
//! server certificate and database; SQLite in a temporary directory or a
//! fresh PostgreSQL database), for benchmarks and tests that drive it with
//! simulated agents.
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use steward_controlplane::config::ControlPlaneConfig;
use steward_controlplane::store::testdb::{TestBackend, TestDatabase};
use steward_shared::pki::Ca;
use tokio_util::sync::CancellationToken;

use super::{IdentitySource, Target};

/// A running in-process control plane.
pub struct LocalControlPlane {
    pub backend: TestBackend,
    /// gRPC endpoint for agents (`https://localhost:PORT`).
    pub grpc_url: String,
    /// REST base URL (`http://127.0.0.1:PORT`).
    pub rest_url: String,
    /// An admin API token.
    pub token: String,
    pub ca: Arc<Ca>,
    running: Option<steward_controlplane::server::Running>,
    shutdown: CancellationToken,
    // Dropped last: removes the directory / database.
    _db: TestDatabase,
    _dir: tempfile::TempDir,
}

impl LocalControlPlane {
    /// Starts a control plane on `backend` (PostgreSQL: a fresh database on
    /// the server named by `STEWARD_TEST_PG_URL`, default 127.0.0.1:5432).
    pub async fn start(backend: TestBackend) -> Result<LocalControlPlane> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let data = dir.path().to_path_buf();
        steward_controlplane::pki_cli::init(&data)?;
        steward_controlplane::pki_cli::issue_server(
            &data,
            &["localhost".into(), "127.0.0.1".into()],
            &data.join("server.pem"),
            &data.join("server.key"),
            Duration::from_secs(86400),
        )?;
        let db = TestDatabase::create(backend).await;
        let mut cfg = ControlPlaneConfig::parse(
            "<local>",
            // No per-token request limit: benchmarks send as fast as the API answers.
            "[grpc]\nlisten = \"127.0.0.1:0\"\n[rest]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_second = 0\n",
        )?;
        cfg.data_dir = data.clone();
        cfg.database_url = Some(db.url().to_string());
        let shutdown = CancellationToken::new();
        let running = steward_controlplane::server::start(&cfg, shutdown.clone())
            .await
            .context("starting the control plane")?;
        let token = steward_controlplane::api::auth::create_admin_token(&running.store, "bench", None).await?;
        let grpc_url = format!("https://localhost:{}", running.endpoints.grpc_addr.port());
        let rest_url = running.endpoints.rest_url.clone();
        let ca = Arc::new(Ca::load_dir(&data)?);
        Ok(LocalControlPlane {
            backend,
            grpc_url,
            rest_url,
            token,
            ca,
            running: Some(running),
            shutdown,
            _db: db,
            _dir: dir,
        })
    }

    /// Where simulated agents connect.
    pub fn target(&self) -> Target {
        Target {
            url: self.grpc_url.clone(),
            server_name: Some("localhost".into()),
        }
    }

    /// Agent certificates issued by this control plane's CA.
    pub fn identities(&self) -> IdentitySource {
        IdentitySource::Ca {
            ca: self.ca.clone(),
            store: self.store().clone(),
        }
    }

    /// The store the control plane uses.
    pub fn store(&self) -> &steward_controlplane::store::Store {
        &self.running.as_ref().expect("running").store
    }

    /// Stops every part and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            let _ = r.wait().await;
        }
    }
}
