//! End-to-end test harness: starts the real `steward-controlplane` and
//! `steward-agent` binaries on 127.0.0.1 with real certificates, real mTLS and
//! a real database (SQLite, or PostgreSQL with `STEWARD_TEST_BACKEND=postgres`),
//! and offers bounded waits instead of sleeps.
//!
//! The binaries are found next to the test executable (`target/<profile>/`);
//! `cargo test --workspace` builds them, since the agent and control-plane
//! packages have integration tests of their own.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub mod grpc;
pub use steward_controlplane::store::testdb::TestBackend;
use steward_controlplane::store::testdb::fresh_database_url;

/// Path of a workspace binary built by cargo.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (or `cargo build --workspace --bins` first)",
        path.display()
    );
    path
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a command to completion and returns (status, stdout, stderr).
pub fn run_cmd(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `binary --config CONFIG SUBCOMMAND` with its output appended to `log`.
fn spawn_daemon(binary: &str, config: &Path, subcommand: &str, env: &[(String, String)], log: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Command::new(bin(binary))
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .env("STEWARD_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {binary}"))
}

/// A port for a daemon to listen on. Taken below the kernel's ephemeral range
/// (32768-60999 by default), where outgoing connections get their source
/// ports: a port found free there could be taken by any connection before the
/// daemon binds it. Ports are handed out once per test process (a counter
/// from an offset by process ID) and only when nothing listens on them.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = (std::process::id() % 100) * (COUNT / 100);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// A control plane process and its files.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub database_url: String,
    pub grpc_addr: SocketAddr,
    pub rest_url: String,
    pub token: String,
    /// Extra environment for the `serve` process (set before [`ControlPlane::spawn`]).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl ControlPlane {
    /// CA, server certificate, config, database, admin token; then `serve`.
    pub async fn start(root: &Path) -> Result<ControlPlane> {
        let backend = TestBackend::from_env();
        let database_url = fresh_database_url(backend).await;
        Self::start_with(root, &database_url).await
    }

    pub async fn start_with(root: &Path, database_url: &str) -> Result<ControlPlane> {
        Self::start_opts(root, database_url, false, "").await
    }

    /// A control plane with extra config sections appended (e.g. `[pki]`).
    pub async fn start_with_config(root: &Path, extra: &str) -> Result<ControlPlane> {
        let database_url = fresh_database_url(TestBackend::from_env()).await;
        Self::start_opts(root, &database_url, false, extra).await
    }

    /// A control plane whose REST API serves HTTPS with a certificate from its own CA.
    pub async fn start_with_rest_tls(root: &Path) -> Result<ControlPlane> {
        let database_url = fresh_database_url(TestBackend::from_env()).await;
        Self::start_opts(root, &database_url, true, "").await
    }

    async fn start_opts(root: &Path, database_url: &str, rest_tls: bool, extra: &str) -> Result<ControlPlane> {
        // reqwest and rustls in this process use ring, the workspace's one provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = root.join("cp");
        std::fs::create_dir_all(&dir)?;
        let cp = bin("steward-controlplane");
        let (st, _, err) = run_cmd(Command::new(&cp).args(["ca", "init", "--data-dir"]).arg(&dir));
        if !st.success() {
            bail!("ca init failed: {err}");
        }
        let (st, _, err) = run_cmd(Command::new(&cp).args(["ca", "issue-server", "--data-dir"]).arg(&dir));
        if !st.success() {
            bail!("ca issue-server failed: {err}");
        }
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let rest_port = free_port();
        let mut rest_extra = String::new();
        if rest_tls {
            let (st, _, err) = run_cmd(
                Command::new(&cp)
                    .args(["ca", "issue-server", "--name", "localhost", "--data-dir"])
                    .arg(&dir)
                    .arg("--cert")
                    .arg(dir.join("rest.pem"))
                    .arg("--key")
                    .arg(dir.join("rest.key")),
            );
            if !st.success() {
                bail!("ca issue-server for REST failed: {err}");
            }
            rest_extra = format!(
                "tls_cert = {:?}\ntls_key = {:?}\n",
                dir.join("rest.pem").display().to_string(),
                dir.join("rest.key").display().to_string()
            );
        }
        let config = dir.join("controlplane.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\ndatabase_url = {:?}\n\n[grpc]\nlisten = \"{grpc_addr}\"\nheartbeat_interval = \"2s\"\nhandshake_timeout = \"3s\"\n\n[rest]\nlisten = \"127.0.0.1:{rest_port}\"\n{rest_extra}\n{extra}\n",
                dir.display().to_string(),
                database_url
            ),
        )?;
        let (st, out, err) =
            run_cmd(
                Command::new(&cp)
                    .arg("--config")
                    .arg(&config)
                    .args(["admin", "create-token", "--name", "e2e"]),
            );
        if !st.success() {
            bail!("admin create-token failed: {err}");
        }
        let token = out.trim().to_string();
        let mut this = ControlPlane {
            dir,
            config,
            database_url: database_url.to_string(),
            grpc_addr,
            rest_url: if rest_tls {
                format!("https://localhost:{rest_port}")
            } else {
                format!("http://127.0.0.1:{rest_port}")
            },
            token,
            env: Vec::new(),
            child: None,
        };
        this.spawn().await?;
        Ok(this)
    }

    /// Starts (or restarts) the `serve` process and waits until it is ready.
    pub async fn spawn(&mut self) -> Result<()> {
        let _ = std::fs::remove_file(self.dir.join("endpoints.json"));
        let log = self.dir.join("controlplane.log");
        self.child = Some(spawn_daemon(
            "steward-controlplane",
            &self.config,
            "serve",
            &self.env,
            &log,
        )?);
        let url = format!("{}/readyz", self.rest_url);
        let client = self.http()?;
        let dir = self.dir.clone();
        wait_for("control plane /readyz", Duration::from_secs(60), || {
            let client = client.clone();
            let url = url.clone();
            let ready = dir.join("endpoints.json").exists();
            async move {
                if !ready {
                    return None;
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                }
            }
        })
        .await
        .map_err(|e| anyhow!("{e}; log:\n{}", self.log()))
    }

    /// An HTTP client that trusts this control plane's CA (for HTTPS REST).
    pub fn http(&self) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.dir.join("ca.pem"))?)?;
        Ok(reqwest::Client::builder().add_root_certificate(ca).build()?)
    }

    /// The `serve` process's ID while it runs (the lease owners it writes carry it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        sigterm(&c);
        c.wait().ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controlplane.log")).unwrap_or_default()
    }

    /// GET a REST path with the admin token.
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        let resp = self
            .http()?
            .get(format!("{}{path}", self.rest_url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body = resp.text().await?;
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
        Ok((status, json))
    }

    /// POST a JSON body to a REST path with the admin token: (status, JSON body).
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
        let resp = self
            .http()?
            .post(format!("{}{path}", self.rest_url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }

    /// `POST /api/v1/jobs` with `body`; the first job of the answer (fails on a non-2xx).
    pub async fn create_job(&self, body: &serde_json::Value) -> Result<serde_json::Value> {
        let (status, v) = self.post("/api/v1/jobs", body).await?;
        if !(200..300).contains(&status) {
            bail!("POST /api/v1/jobs: {status} {v}");
        }
        Ok(v["items"][0].clone())
    }

    /// Waits until `host` has an open stream to this control plane's database.
    pub async fn wait_connected(&self, host: &str) -> Result<()> {
        wait_for(&format!("host {host} to connect"), Duration::from_secs(60), || async {
            let (s, v) = self.get(&format!("/api/v1/hosts/{host}")).await.ok()?;
            (s == 200 && v["connected"] == true).then_some(())
        })
        .await
    }

    /// Waits until job `id` is in one of `states` (e.g. `&["running"]`); returns its view.
    pub async fn wait_job_state(&self, id: &str, states: &[&str], timeout: Duration) -> Result<serde_json::Value> {
        wait_for(&format!("job {id} in {states:?}"), timeout, || async {
            let (status, v) = self.get(&format!("/api/v1/jobs/{id}")).await.ok()?;
            (status == 200 && states.contains(&v["state"].as_str()?)).then_some(v)
        })
        .await
    }

    /// Waits until job `id` ended (succeeded, failed, timed_out, cancelled, discarded); returns its view.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.wait_job_state(
            id,
            &["succeeded", "failed", "timed_out", "cancelled", "discarded"],
            timeout,
        )
        .await
    }

    /// A second control plane on the same database as `primary`, sharing its
    /// CA and server certificate (so `primary`'s agents trust it); the admin
    /// token of `primary` works for it too.
    pub async fn start_replica(root: &Path, name: &str, primary: &ControlPlane) -> Result<ControlPlane> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
            std::fs::copy(primary.dir.join(f), dir.join(f))?;
        }
        let grpc_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let rest_port = free_port();
        let config = dir.join("controlplane.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\ndatabase_url = {:?}\n\n[grpc]\nlisten = \"{grpc_addr}\"\nheartbeat_interval = \"2s\"\nhandshake_timeout = \"3s\"\n\n[rest]\nlisten = \"127.0.0.1:{rest_port}\"\n",
                dir.display().to_string(),
                primary.database_url
            ),
        )?;
        let mut this = ControlPlane {
            dir,
            config,
            database_url: primary.database_url.clone(),
            grpc_addr,
            rest_url: format!("http://127.0.0.1:{rest_port}"),
            token: primary.token.clone(),
            env: Vec::new(),
            child: None,
        };
        this.spawn().await?;
        Ok(this)
    }

    /// Runs `stewardctl` against this control plane: (success, stdout, stderr).
    pub fn stewardctl(&self, args: &[&str]) -> (bool, String, String) {
        let (st, out, err) = run_cmd(
            Command::new(bin("stewardctl"))
                .args(args)
                .env("STEWARD_SERVER", &self.rest_url)
                .env("STEWARD_TOKEN", &self.token),
        );
        (st.success(), out, err)
    }

    /// A fresh enrollment token (via `stewardctl enroll-tokens create`).
    pub fn enrollment_token(&self, extra_args: &[&str]) -> Result<String> {
        let mut args = vec!["-o", "json", "enroll-tokens", "create"];
        args.extend_from_slice(extra_args);
        let (ok, out, err) = self.stewardctl(&args);
        if !ok {
            bail!("enroll-tokens create failed: {err}");
        }
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["token"]
            .as_str()
            .ok_or_else(|| anyhow!("no token in {out}"))?
            .to_string())
    }

    /// Issues an agent certificate for `host` into `out`.
    pub fn issue_agent(&self, host: &str, out: &Path) -> Result<()> {
        let (st, _, err) = run_cmd(
            // With the control plane's config: the certificate is recorded in its database.
            Command::new(bin("steward-controlplane"))
                .arg("--config")
                .arg(&self.config)
                .args(["ca", "issue-agent", "--host", host, "--out"])
                .arg(out),
        );
        if st.success() {
            Ok(())
        } else {
            bail!("issue-agent failed: {err}")
        }
    }

    /// The sequences stored for `host`, ascending, read from the database itself.
    pub async fn stored_seqs(&self, host: &str) -> Result<Vec<i64>> {
        let sql = "SELECT seq FROM check_results WHERE host_id = $1 ORDER BY seq";
        if self.database_url.starts_with("sqlite:") {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&self.database_url)
                .await?;
            let rows: Vec<(i64,)> = sqlx::query_as(sql).bind(host).fetch_all(&pool).await?;
            pool.close().await;
            Ok(rows.into_iter().map(|r| r.0).collect())
        } else {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&self.database_url)
                .await?;
            let rows: Vec<(i64,)> = sqlx::query_as(sql).bind(host).fetch_all(&pool).await?;
            pool.close().await;
            Ok(rows.into_iter().map(|r| r.0).collect())
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An agent process and its files.
pub struct Agent {
    pub host: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Extra environment for the agent process (set before [`Agent::spawn`]).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// Checks that produce a result every second, cheap and deterministic.
pub fn fast_checks(n: usize) -> String {
    (0..n)
        .map(|i| {
            let kind = if i % 2 == 0 { "memory" } else { "cpu" };
            format!("[[checks]]\nname = \"c{i}\"\nkind = \"{kind}\"\ninterval = \"1s\"\n\n")
        })
        .collect()
}

impl Agent {
    /// Writes identity and config for `host` pointing at `cp`; does not start it.
    pub fn prepare(root: &Path, cp: &ControlPlane, host: &str, checks: &str, extra: &str) -> Result<Agent> {
        let dir = root.join(format!("agent-{host}"));
        std::fs::create_dir_all(&dir)?;
        cp.issue_agent(host, &dir)?;
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\ndata_dir = {:?}\nheartbeat_interval = \"2s\"\nshutdown_grace = \"10s\"\n\n[server]\nurl = \"https://localhost:{}\"\nreconnect_max = \"1s\"\n\n{extra}\n{checks}",
                dir.display().to_string(),
                cp.grpc_addr.port()
            ),
        )?;
        Ok(Agent {
            host: host.to_string(),
            dir,
            config,
            env: Vec::new(),
            child: None,
        })
    }

    /// Config for `host` pointing at `cp`, with no identity yet (it must enroll).
    pub fn prepare_unenrolled(root: &Path, cp: &ControlPlane, host: &str, checks: &str, extra: &str) -> Result<Agent> {
        let dir = root.join(format!("agent-{host}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[agent]\ndata_dir = {:?}\nheartbeat_interval = \"2s\"\nshutdown_grace = \"10s\"\n\n[server]\nurl = \"https://localhost:{}\"\nreconnect_max = \"1s\"\n{extra}\n\n{checks}",
                dir.display().to_string(),
                cp.grpc_addr.port()
            ),
        )?;
        Ok(Agent {
            host: host.to_string(),
            dir,
            config,
            env: Vec::new(),
            child: None,
        })
    }

    /// `steward-agent enroll` with this agent's config: (success, stdout, stderr).
    pub fn enroll(&self, token: &str, extra_args: &[&str]) -> (bool, String, String) {
        let (st, out, err) = run_cmd(
            Command::new(bin("steward-agent"))
                .arg("--config")
                .arg(&self.config)
                .args(["enroll", "--host-id", &self.host, "--token", token])
                .args(extra_args),
        );
        (st.success(), out, err)
    }

    pub async fn start(root: &Path, cp: &ControlPlane, host: &str, checks: &str) -> Result<Agent> {
        let mut a = Self::prepare(root, cp, host, checks, "")?;
        a.spawn()?;
        Ok(a)
    }

    pub fn spawn(&mut self) -> Result<()> {
        self.child = Some(spawn_daemon(
            "steward-agent",
            &self.config,
            "run",
            &self.env,
            &self.dir.join("agent.log"),
        )?);
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }

    /// SIGTERM and the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        sigterm(&c);
        c.wait().ok()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The spool's counters. Only while the agent is stopped (it holds the file).
    pub fn spool_stats(&self) -> Result<steward_agent::spool::SpoolStats> {
        let spool = steward_agent::spool::Spool::open(&self.dir.join("spool.redb"), u64::MAX)?;
        Ok(spool.stats()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn sigterm(c: &Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Asserts `seqs` is exactly `1..=n`: nothing lost, nothing twice.
pub fn assert_contiguous(seqs: &[i64], n: u64) {
    assert_eq!(
        seqs.len() as u64,
        n,
        "expected {n} stored reports, found {}",
        seqs.len()
    );
    for (i, s) in seqs.iter().enumerate() {
        assert_eq!(*s, i as i64 + 1, "gap or duplicate at position {i}");
    }
}
