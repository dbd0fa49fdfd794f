//! The fleet simulator: N lightweight agents in one process, each with its own
//! identity (a client certificate from the control plane's CA, issued directly
//! or through the real `Enroll` RPC) and its own mTLS `AgentGateway.Session`
//! stream. Each agent reports check results at a chosen rate, sends
//! heartbeats at the interval the control plane asks for, and answers job
//! assignments the way the real agent does on the wire: `JobAccepted` on the
//! stream at once, then a `progress{stage:"started"}` report and, after the
//! chosen latency, exactly one `finished` report (succeeded, or failed at the
//! chosen rate / for the chosen `deploy.apply` versions). Reports are kept
//! until acknowledged and sent again after a reconnect, like the spool.
//!
//! Used by `steward-fleetsim` (operators), `bench-dispatch` and the tests.
//! Memory per agent is one TLS connection, two small channels and the
//! unacknowledged reports; everything runs on the caller's tokio runtime.
pub mod local;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rand::Rng;
use steward_controlplane::store::Store;
use steward_shared::pki::{self, Ca};
use steward_shared::proto::{
    self, AgentMessage, ControlMessage, EnrollRequest, agent_gateway_client::AgentGatewayClient, agent_message,
    control_message, job_event, report,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Unacknowledged reports kept per agent (oldest dropped beyond this).
const MAX_UNACKED: usize = 4096;

/// How the simulated agents behave.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of agents.
    pub agents: usize,
    /// Host IDs are `{prefix}-{index:05}`.
    pub prefix: String,
    /// Interval between two check-result batches per agent (`None`: no check results).
    pub report_interval: Option<Duration>,
    /// Check results per batch.
    pub checks_per_report: usize,
    /// Time between `JobAccepted` and the `finished` report.
    pub job_latency: Duration,
    /// Probability (0..=1) that an attempt fails.
    pub failure_rate: f64,
    /// `deploy.apply` attempts whose `version` parameter is listed always fail
    /// (outcome `rolled_back`, like a release whose health check fails).
    pub fail_versions: Vec<String>,
    /// Connections (or enrollments) opened at the same time while starting.
    pub connect_concurrency: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            agents: 10,
            prefix: "sim".into(),
            report_interval: Some(Duration::from_secs(10)),
            checks_per_report: 5,
            job_latency: Duration::from_millis(100),
            failure_rate: 0.0,
            fail_versions: Vec::new(),
            connect_concurrency: 64,
        }
    }
}

impl SimConfig {
    /// The host ID of agent `i`.
    pub fn host_id(&self, i: usize) -> String {
        format!("{}-{i:05}", self.prefix)
    }
}

/// Where the agents' identities come from.
#[derive(Clone)]
pub enum IdentitySource {
    /// Certificates issued in-process by the control plane's CA (its `ca.pem`
    /// and `ca.key`, e.g. from the control plane's data directory), recorded
    /// in the control plane's database (the gateway refuses unrecorded ones).
    Ca { ca: Arc<Ca>, store: Store },
    /// The real enrollment flow: each agent sends a CSR with this enrollment
    /// token (it needs at least N uses); `ca_pem` is the CA that signed the
    /// control plane's server certificate.
    Enroll { token: String, ca_pem: String },
}

/// Where the control plane's gRPC endpoint is.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://HOST:PORT`.
    pub url: String,
    /// Name the server certificate is checked against (default: the URL's host).
    pub server_name: Option<String>,
}

impl Target {
    fn domain(&self) -> Result<String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let uri: http_uri::Uri = self.url.parse().map_err(|_| anyhow!("bad URL {:?}", self.url))?;
        if uri.scheme_str() != Some("https") {
            bail!("the control plane URL must start with https://, got {:?}", self.url);
        }
        Ok(uri
            .host()
            .ok_or_else(|| anyhow!("no host in {:?}", self.url))?
            .trim_matches(['[', ']'])
            .to_string())
    }
}

// tonic re-exports http's Uri.
mod http_uri {
    pub use tonic::codegen::http::Uri;
}

/// A job assignment as one simulated agent received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub host_id: String,
    pub job_id: String,
    pub attempt_id: String,
    pub action: String,
    pub params: BTreeMap<String, String>,
    /// When the `JobAssignment` was read from the stream.
    pub at: Instant,
    /// A re-delivery of an attempt this agent already had.
    pub redelivery: bool,
}

/// Counters of the whole fleet.
#[derive(Debug, Default)]
pub struct Stats {
    pub connected: AtomicU64,
    pub connections: AtomicU64,
    pub connect_errors: AtomicU64,
    pub disconnects: AtomicU64,
    pub reports_sent: AtomicU64,
    pub reports_acked: AtomicU64,
    pub heartbeats: AtomicU64,
    pub jobs_received: AtomicU64,
    pub jobs_redelivered: AtomicU64,
    pub jobs_succeeded: AtomicU64,
    pub jobs_failed: AtomicU64,
    pub jobs_cancelled: AtomicU64,
    connected_notify: tokio::sync::Notify,
}

impl Stats {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Summary as JSON (counters at this instant).
    pub fn to_json(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "connected": g(&self.connected),
            "connections": g(&self.connections),
            "connect_errors": g(&self.connect_errors),
            "disconnects": g(&self.disconnects),
            "reports_sent": g(&self.reports_sent),
            "reports_acked": g(&self.reports_acked),
            "heartbeats": g(&self.heartbeats),
            "jobs_received": g(&self.jobs_received),
            "jobs_redelivered": g(&self.jobs_redelivered),
            "jobs_succeeded": g(&self.jobs_succeeded),
            "jobs_failed": g(&self.jobs_failed),
            "jobs_cancelled": g(&self.jobs_cancelled),
        })
    }
}

/// A running simulated fleet.
pub struct Fleet {
    pub stats: Arc<Stats>,
    /// Host IDs, in agent order.
    pub hosts: Vec<String>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Raises this process's open-file limit to its hard limit (one socket per agent).
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

impl Fleet {
    /// Obtains every agent's identity and starts its stream. Returns once all
    /// identities exist (streams connect in the background; see
    /// [`Fleet::wait_connected`]). `received` gets every job assignment.
    pub async fn start(
        cfg: SimConfig,
        identities: IdentitySource,
        target: Target,
        received: Option<mpsc::UnboundedSender<Received>>,
    ) -> Result<Fleet> {
        let domain = target.domain()?;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();
        let hosts: Vec<String> = (0..cfg.agents).map(|i| cfg.host_id(i)).collect();
        let ids = obtain_identities(&cfg, &identities, &target, &domain, &hosts).await?;
        let ca_pem = match &identities {
            IdentitySource::Ca { ca, .. } => ca.cert_pem().to_string(),
            IdentitySource::Enroll { ca_pem, .. } => ca_pem.clone(),
        };
        let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
        let mut tasks = Vec::with_capacity(ids.len());
        for (host_id, cert_pem, key_pem) in ids {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&ca_pem))
                .identity(Identity::from_pem(cert_pem, key_pem))
                .domain_name(domain.clone());
            let endpoint = Endpoint::from_shared(target.url.clone())?
                .connect_timeout(Duration::from_secs(20))
                .tls_config(tls)?;
            let agent = SimAgent {
                host_id,
                endpoint,
                cfg: cfg.clone(),
                stats: stats.clone(),
                stop: stop.clone(),
                received: received.clone(),
                gate: gate.clone(),
            };
            tasks.push(tokio::spawn(agent.run()));
        }
        Ok(Fleet {
            stats,
            hosts,
            stop,
            tasks,
        })
    }

    /// Waits until `n` agents hold an open stream (after their `Welcome`).
    pub async fn wait_connected(&self, n: usize, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.stats.connected_notify.notified();
            let now = self.stats.connected.load(Ordering::Relaxed) as usize;
            if now >= n {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("only {now} of {n} simulated agents connected within {timeout:?}");
            }
        }
    }

    /// Closes every stream and waits for the agents to end.
    pub async fn stop(self) -> Arc<Stats> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats
    }
}

async fn obtain_identities(
    cfg: &SimConfig,
    source: &IdentitySource,
    target: &Target,
    domain: &str,
    hosts: &[String],
) -> Result<Vec<(String, String, String)>> {
    match source {
        IdentitySource::Ca { ca, store } => {
            let mut out = Vec::with_capacity(hosts.len());
            for chunk in hosts.chunks(1_000) {
                let issued = steward_controlplane::pki_cli::issue_agents_recorded(
                    ca,
                    store,
                    chunk,
                    Duration::from_secs(30 * 86400),
                    "simulator",
                )
                .await
                .with_context(|| format!("issuing certificates for {} hosts", chunk.len()))?;
                out.extend(issued.into_iter().map(|c| (c.host_id, c.cert_pem, c.key_pem)));
            }
            Ok(out)
        }
        IdentitySource::Enroll { token, ca_pem } => {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name(domain.to_string());
            // The gateway serves one Enroll per connection without a certificate.
            let endpoint = Endpoint::from_shared(target.url.clone())?
                .connect_timeout(Duration::from_secs(20))
                .tls_config(tls)?;
            let gate = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
            let mut tasks = Vec::new();
            for h in hosts {
                let (h, token, endpoint, gate) = (h.clone(), token.clone(), endpoint.clone(), gate.clone());
                let url = target.url.clone();
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await?;
                    let channel = endpoint
                        .connect()
                        .await
                        .with_context(|| format!("connecting to {url} to enroll"))?;
                    let key_pem = pki::new_private_key_pem()?;
                    let csr = pki::agent_csr(&key_pem, &h)?;
                    let resp = AgentGatewayClient::new(channel)
                        .enroll(EnrollRequest {
                            token: token.trim().to_string(),
                            csr_der: csr,
                        })
                        .await
                        .map_err(|s| anyhow!("enrollment of {h} refused: {}", s.message()))?
                        .into_inner();
                    anyhow::Ok((h, resp.cert_pem, key_pem))
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                out.push(t.await??);
            }
            Ok(out)
        }
    }
}

struct SimAgent {
    host_id: String,
    endpoint: Endpoint,
    cfg: Arc<SimConfig>,
    stats: Arc<Stats>,
    stop: CancellationToken,
    received: Option<mpsc::UnboundedSender<Received>>,
    gate: Arc<Semaphore>,
}

/// What outlives one stream: sequence numbers, unacknowledged reports, jobs.
struct State {
    next_seq: u64,
    unacked: VecDeque<proto::Report>,
    /// Attempts this agent has seen (never run twice).
    seen: HashSet<String>,
    /// Running attempts: attempt ID → (job ID, the task that will finish it).
    running: HashMap<String, (String, tokio::task::AbortHandle)>,
    done_tx: mpsc::UnboundedSender<proto::JobEvent>,
    done_rx: mpsc::UnboundedReceiver<proto::JobEvent>,
}

/// Decrements the connected gauge when a session ends.
struct ConnectedGuard(Arc<Stats>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimAgent {
    async fn run(self) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let mut st = State {
            next_seq: 1,
            unacked: VecDeque::new(),
            seen: HashSet::new(),
            running: HashMap::new(),
            done_tx,
            done_rx,
        };
        let mut backoff = Duration::from_millis(200);
        let mut first = true;
        while !self.stop.is_cancelled() {
            let result = self.session(&mut st, first).await;
            first = false;
            match result {
                Ok(()) => break,
                Err(e) => {
                    Stats::add(&self.stats.disconnects, 1);
                    if self.stop.is_cancelled() {
                        break;
                    }
                    tracing::debug!(host = %self.host_id, error = %format!("{e:#}"), "simulated agent stream ended; reconnecting");
                }
            }
            let wait = rand::rng().random_range(Duration::ZERO..=backoff);
            backoff = (backoff * 2).min(Duration::from_secs(10));
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        for (_, (_, h)) in st.running.drain() {
            h.abort();
        }
    }

    async fn session(&self, st: &mut State, first: bool) -> Result<()> {
        let permit = if first { Some(self.gate.acquire().await?) } else { None };
        let channel = match tokio::select! {
            _ = self.stop.cancelled() => return Ok(()),
            c = self.endpoint.connect() => c,
        } {
            Ok(c) => c,
            Err(e) => {
                Stats::add(&self.stats.connect_errors, 1);
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel::<AgentMessage>(32);
        let mut facts = HashMap::new();
        facts.insert("hostname".to_string(), self.host_id.clone());
        facts.insert("simulated".to_string(), "true".to_string());
        tx.send(msg(agent_message::Msg::Hello(proto::Hello {
            agent_version: format!("fleetsim-{}", env!("CARGO_PKG_VERSION")),
            facts,
            last_acked_seq: st.next_seq - 1 - st.unacked.len() as u64,
            spool_dropped_total: 0,
            protocol: 1,
        })))
        .await?;
        let mut inbound = AgentGatewayClient::new(channel)
            .max_encoding_message_size(16 << 20)
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let Some(ControlMessage {
            msg: Some(control_message::Msg::Welcome(w)),
        }) = inbound.message().await?
        else {
            bail!("no Welcome from the control plane");
        };
        drop(permit);
        Stats::add(&self.stats.connections, 1);
        self.stats.connected.fetch_add(1, Ordering::Relaxed);
        self.stats.connected_notify.notify_waiters();
        let _guard = ConnectedGuard(self.stats.clone());

        // The control plane has everything up to acked_seq.
        while st.unacked.front().is_some_and(|r| r.seq <= w.acked_seq) {
            st.unacked.pop_front();
        }
        st.next_seq = st.next_seq.max(w.acked_seq + 1);
        let max_batch = (w.max_batch as usize).max(1);
        let resend: Vec<proto::Report> = st.unacked.iter().cloned().collect();
        for chunk in resend.chunks(max_batch) {
            send_batch(&tx, &self.stats, chunk.to_vec()).await?;
        }

        let hb_every = Duration::from_secs(u64::from(w.heartbeat_interval_secs.max(1)));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + hb_every, hb_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let report_every = self.cfg.report_interval.filter(|d| !d.is_zero());
        // Spread the fleet's reports over the interval.
        let mut reports = report_every.map(|every| {
            let offset = rand::rng().random_range(Duration::ZERO..=every);
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        let mut batch_no = 0u64;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = heartbeat.tick() => {
                    tx.send(msg(agent_message::Msg::Heartbeat(proto::Heartbeat {
                        sent_at_ms: steward_shared::now_ms(),
                        spool_depth: st.unacked.len() as u64,
                        spool_dropped_total: 0,
                    }))).await?;
                    Stats::add(&self.stats.heartbeats, 1);
                }
                _ = async { reports.as_mut().expect("guarded").tick().await }, if reports.is_some() => {
                    batch_no += 1;
                    let bodies = (0..self.cfg.checks_per_report).map(|i| check(i, batch_no)).collect();
                    self.push_reports(st, &tx, bodies, max_batch).await?;
                }
                Some(ev) = st.done_rx.recv() => {
                    if let Some(job_event::Event::Finished(f)) = &ev.event {
                        if st.running.remove(&ev.attempt_id).is_none() {
                            continue; // cancelled meanwhile: its end is already reported
                        }
                        match f.outcome.as_str() {
                            "succeeded" => Stats::add(&self.stats.jobs_succeeded, 1),
                            _ => Stats::add(&self.stats.jobs_failed, 1),
                        }
                    }
                    self.push_reports(st, &tx, vec![report::Body::Job(ev)], max_batch).await?;
                }
                m = inbound.message() => match m? {
                    None => bail!("the control plane closed the stream"),
                    Some(ControlMessage { msg: Some(m) }) => self.on_message(st, &tx, m, max_batch).await?,
                    Some(_) => {}
                },
            }
        }
    }

    async fn on_message(
        &self,
        st: &mut State,
        tx: &mpsc::Sender<AgentMessage>,
        m: control_message::Msg,
        max_batch: usize,
    ) -> Result<()> {
        match m {
            control_message::Msg::Ack(a) => {
                while st.unacked.front().is_some_and(|r| r.seq <= a.acked_seq) {
                    st.unacked.pop_front();
                    Stats::add(&self.stats.reports_acked, 1);
                }
            }
            control_message::Msg::Job(j) => {
                let at = Instant::now();
                let redelivery = !st.seen.insert(j.attempt_id.clone());
                if let Some(r) = &self.received {
                    let _ = r.send(Received {
                        host_id: self.host_id.clone(),
                        job_id: j.job_id.clone(),
                        attempt_id: j.attempt_id.clone(),
                        action: j.action.clone(),
                        params: j.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                        at,
                        redelivery,
                    });
                }
                tx.send(msg(agent_message::Msg::JobAccepted(proto::JobAccepted {
                    job_id: j.job_id.clone(),
                    attempt_id: j.attempt_id.clone(),
                })))
                .await?;
                if redelivery {
                    Stats::add(&self.stats.jobs_redelivered, 1);
                    return Ok(());
                }
                Stats::add(&self.stats.jobs_received, 1);
                let started_ms = steward_shared::now_ms();
                let started = proto::JobEvent {
                    job_id: j.job_id.clone(),
                    attempt_id: j.attempt_id.clone(),
                    event: Some(job_event::Event::Progress(proto::JobProgress {
                        stage: "started".into(),
                        percent: 0.0,
                        message: String::new(),
                    })),
                };
                self.push_reports(st, tx, vec![report::Body::Job(started)], max_batch)
                    .await?;
                let (outcome, reason) = self.outcome(&j);
                let latency = self.cfg.job_latency;
                let done = st.done_tx.clone();
                let (job_id, attempt_id) = (j.job_id.clone(), j.attempt_id.clone());
                let task = tokio::spawn(async move {
                    tokio::time::sleep(latency).await;
                    let _ = done.send(finished(&j, outcome, &reason, started_ms));
                });
                st.running.insert(attempt_id, (job_id, task.abort_handle()));
            }
            control_message::Msg::Cancel(c) => {
                if let Some((job_id, h)) = st.running.remove(&c.attempt_id) {
                    h.abort();
                    Stats::add(&self.stats.jobs_cancelled, 1);
                    let ev = proto::JobEvent {
                        job_id,
                        attempt_id: c.attempt_id.clone(),
                        event: Some(job_event::Event::Finished(proto::JobFinished {
                            outcome: "cancelled".into(),
                            reason: "cancelled by the control plane".into(),
                            result_json: "{}".into(),
                            finished_at_ms: steward_shared::now_ms(),
                            ..Default::default()
                        })),
                    };
                    self.push_reports(st, tx, vec![report::Body::Job(ev)], max_batch)
                        .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Succeeded, or failed for a listed version / at the failure rate.
    fn outcome(&self, j: &proto::JobAssignment) -> (&'static str, String) {
        if j.action == "deploy.apply"
            && let Some(v) = j.params.get("version")
            && self.cfg.fail_versions.iter().any(|f| f == v)
        {
            return (
                "rolled_back",
                format!("simulated failure: the health check failed for version {v}; rolled back"),
            );
        }
        if self.cfg.failure_rate > 0.0 && rand::rng().random_bool(self.cfg.failure_rate.clamp(0.0, 1.0)) {
            return ("failed", "simulated failure".into());
        }
        ("succeeded", String::new())
    }

    async fn push_reports(
        &self,
        st: &mut State,
        tx: &mpsc::Sender<AgentMessage>,
        bodies: Vec<report::Body>,
        max_batch: usize,
    ) -> Result<()> {
        let mut batch = Vec::with_capacity(bodies.len());
        for body in bodies {
            let r = proto::Report {
                seq: st.next_seq,
                body: Some(body),
            };
            st.next_seq += 1;
            if st.unacked.len() >= MAX_UNACKED {
                st.unacked.pop_front();
            }
            st.unacked.push_back(r.clone());
            batch.push(r);
        }
        for chunk in batch.chunks(max_batch) {
            send_batch(tx, &self.stats, chunk.to_vec()).await?;
        }
        Ok(())
    }
}

fn finished(j: &proto::JobAssignment, outcome: &str, reason: &str, started_ms: i64) -> proto::JobEvent {
    let result = if outcome == "succeeded" {
        serde_json::json!({ "simulated": true, "action": j.action })
    } else {
        serde_json::json!({ "simulated": true })
    };
    proto::JobEvent {
        job_id: j.job_id.clone(),
        attempt_id: j.attempt_id.clone(),
        event: Some(job_event::Event::Finished(proto::JobFinished {
            outcome: outcome.into(),
            reason: reason.into(),
            result_json: result.to_string(),
            finished_at_ms: steward_shared::now_ms(),
            action: j.action.clone(),
            params: j.params.clone(),
            started_at_ms: started_ms,
        })),
    }
}

async fn send_batch(tx: &mpsc::Sender<AgentMessage>, stats: &Stats, reports: Vec<proto::Report>) -> Result<()> {
    Stats::add(&stats.reports_sent, reports.len() as u64);
    tx.send(msg(agent_message::Msg::Reports(proto::ReportBatch {
        reports,
        spool_dropped_total: 0,
    })))
    .await
    .map_err(|_| anyhow!("the stream is closed"))
}

fn msg(m: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

fn check(i: usize, batch_no: u64) -> report::Body {
    let used = 40.0 + ((batch_no as usize + i) % 20) as f64;
    report::Body::Check(proto::CheckResult {
        name: format!("sim-check-{i}"),
        kind: "disk".into(),
        status: proto::CheckStatus::Ok as i32,
        values: vec![proto::Value {
            name: "used_percent:/".into(),
            value: used,
            unit: "percent".into(),
        }],
        message: format!("{used:.1}% used"),
        observed_at_ms: steward_shared::now_ms(),
        duration_us: 100,
    })
}

/// One `--labels` rule: labels for the hosts whose ID matches `pattern`
/// (`*` matches any run of characters; no pattern = every host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRule {
    pub pattern: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl std::str::FromStr for LabelRule {
    type Err = String;
    /// `k=v[,k=v...]` or `PATTERN:k=v[,k=v...]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pattern, rest) = match s.split_once(':') {
            Some((p, r)) if !p.contains('=') => (Some(p.trim().to_string()), r),
            _ => (None, s),
        };
        let mut labels = BTreeMap::new();
        for kv in rest.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("expected k=v or PATTERN:k=v[,k=v], got {s:?}"))?;
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
        if labels.is_empty() {
            return Err(format!("no label in {s:?}: expected k=v or PATTERN:k=v[,k=v]"));
        }
        Ok(LabelRule { pattern, labels })
    }
}

impl LabelRule {
    pub fn matches(&self, host: &str) -> bool {
        self.pattern.as_deref().is_none_or(|p| glob(p, host))
    }
}

/// The labels each host gets from `rules` (later rules win per key); hosts
/// no rule matches are left out.
pub fn labels_for(rules: &[LabelRule], hosts: &[String]) -> Vec<(String, BTreeMap<String, String>)> {
    hosts
        .iter()
        .filter_map(|h| {
            let mut out = BTreeMap::new();
            for r in rules.iter().filter(|r| r.matches(h)) {
                out.extend(r.labels.clone());
            }
            (!out.is_empty()).then(|| (h.clone(), out))
        })
        .collect()
}

/// Sets the hosts' labels through the REST API (`PUT /api/v1/hosts/{id}/labels`).
pub async fn apply_labels(rest_url: &str, token: &str, labels: &[(String, BTreeMap<String, String>)]) -> Result<()> {
    let http = reqwest::Client::builder().build()?;
    for (host, l) in labels {
        let resp = http
            .put(format!("{}/api/v1/hosts/{host}/labels", rest_url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(&serde_json::json!({ "labels": l }))
            .send()
            .await
            .with_context(|| format!("setting the labels of {host}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            bail!("setting the labels of {host}: {status} {}", body.trim());
        }
    }
    Ok(())
}

fn glob(pattern: &str, s: &str) -> bool {
    steward_shared::hostpattern::matches(pattern, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules_parse_and_match() {
        let all: LabelRule = "env=prod,team=a".parse().unwrap();
        assert_eq!(all.pattern, None);
        assert_eq!(all.labels.len(), 2);
        let some: LabelRule = "sim-0000*:ring=canary".parse().unwrap();
        assert_eq!(some.pattern.as_deref(), Some("sim-0000*"));
        assert!(some.matches("sim-00003") && !some.matches("sim-00010"));
        assert!("nolabel".parse::<LabelRule>().is_err());
        assert!("p*:".parse::<LabelRule>().is_err());
        let hosts = vec!["sim-00001".to_string(), "sim-00011".to_string()];
        let out = labels_for(&[all, some], &hosts);
        assert_eq!(out[0].1.get("ring").map(String::as_str), Some("canary"));
        assert_eq!(out[1].1.get("ring"), None);
        assert!(glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXc") && glob("*", "") && glob("x", "x"));
    }
}
