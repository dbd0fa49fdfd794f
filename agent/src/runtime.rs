//! Wires the agent together: scheduler → spool writer → spool → stream client,
//! and stream → job runner → executor → spool for jobs.
//! Reload (SIGHUP) re-reads the config and swaps the checks, the job policy
//! (for new jobs) and the backup schedules only when the new config is valid;
//! stop (SIGTERM) stops scheduling, gives running jobs `job_grace` and then
//! cancels them, flushes results into the spool, then gives the stream a grace
//! period to deliver what is spooled.
//!
//! Invariant: a check result or job event reaches the network only through
//! the spool; the spool writer commits before it notifies the stream client.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use steward_shared::config::ConfigError;
use steward_shared::proto::report;
use steward_shared::status::CheckResult;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checks::Check;
use crate::config::{AgentConfig, ServiceManagerKind};
use crate::jobs::deploy::{CommandService, ServiceManager, Systemctl, service::BoxFuture};
use crate::jobs::journal::{JOURNAL_FILE, Journal, JournalError};
use crate::jobs::{ChecksRunner, Executor, JobRunner};
use crate::spool::{Spool, SpoolError};
use crate::stream::StreamClient;
use steward_daemon::notify;

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the spool {path}: {source}")]
    Spool { path: String, source: SpoolError },
    #[error("cannot open the job journal {path}: {source}")]
    Journal { path: String, source: JournalError },
    #[error("[actions]: {0}")]
    Policy(String),
}

/// Signals from the outside world (the binary's signal handler, or the quickstart).
pub struct Control {
    /// Cancelled to stop the agent (SIGTERM / SIGINT).
    pub stop: CancellationToken,
    /// Receives one message per reload request (SIGHUP).
    pub reload: mpsc::Receiver<()>,
}

/// Self-reported facts sent in `Hello` (informational only).
pub fn facts() -> BTreeMap<String, String> {
    let mut f = BTreeMap::new();
    if let Ok(h) = hostname::get() {
        f.insert("hostname".into(), h.to_string_lossy().into_owned());
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        f.insert("kernel".into(), k.trim().to_string());
    }
    if let Ok(os) = std::fs::read_to_string("/etc/os-release")
        && let Some(name) = os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))
    {
        f.insert("os".into(), name.trim_matches('"').to_string());
    }
    if let Ok(n) = std::thread::available_parallelism() {
        f.insert("cpus".into(), n.get().to_string());
    }
    f.insert("arch".into(), std::env::consts::ARCH.to_string());
    f
}

/// Path of the spool file inside the data directory.
pub fn spool_path(data_dir: &Path) -> PathBuf {
    data_dir.join("spool.redb")
}

/// Runs the agent with the config at `config_path` until `control.stop` is cancelled.
pub async fn run(config_path: PathBuf, mut control: Control) -> Result<(), RunError> {
    let mut cfg = AgentConfig::load(&config_path)?;
    let path = spool_path(&cfg.agent.data_dir);
    let spool = Spool::open(&path, cfg.spool.max_size.0).map_err(|source| RunError::Spool {
        path: path.display().to_string(),
        source,
    })?;
    let spool = Arc::new(spool);
    let new_data = Arc::new(Notify::new());

    let (sink, results) = mpsc::channel::<CheckResult>(1024);
    let writer = tokio::spawn(spool_writer(results, spool.clone(), new_data.clone()));

    let journal_path = cfg.agent.data_dir.join(JOURNAL_FILE);
    let journal = Journal::open(&journal_path).map_err(|source| RunError::Journal {
        path: journal_path.display().to_string(),
        source,
    })?;
    let journal = Arc::new(journal);
    let runner = JobRunner::new(
        build_executor(&cfg, &journal, &sink)?,
        journal.clone(),
        spool.clone(),
        new_data.clone(),
        cfg.agent.max_jobs,
        cfg.agent.job_timeout.as_std(),
    );
    // Before the stream starts: no assignment can race the report.
    runner.report_interrupted().await;

    let mut checks = start_checks(&cfg, sink.clone());
    let mut schedules = start_schedules(&cfg, &runner);
    let mut stream = start_stream(&cfg, &spool, &new_data, &runner);
    tracing::info!(checks = cfg.checks.len(), backups = cfg.backups.len(), apps = cfg.apps.len(), spool = %path.display(), "agent running");
    // The spool is open and the checks are scheduled: ready. The watchdog is
    // pinged from this loop, so a hung agent stops pinging and is restarted.
    notify::ready();
    let mut watchdog = notify::Watchdog::from_env();

    loop {
        tokio::select! {
            _ = control.stop.cancelled() => break,
            _ = watchdog.tick() => notify::watchdog_ping(),
            Some(()) = control.reload.recv() => {
                notify::reloading();
                match AgentConfig::load(&config_path) {
                    Err(error) => tracing::error!(%error, "reload refused: the new config is invalid; keeping the running one"),
                    Ok(new_cfg) => {
                        if new_cfg.agent.data_dir != cfg.agent.data_dir || new_cfg.spool.max_size != cfg.spool.max_size {
                            tracing::warn!("agent.data_dir and spool.max_size take effect at the next restart");
                        }
                        match build_executor(&new_cfg, &journal, &sink) {
                            Ok(executor) => runner.replace_executor(executor),
                            Err(error) => tracing::error!(%error, "job policy not reloaded"),
                        }
                        stop_checks(checks).await;
                        checks = start_checks(&new_cfg, sink.clone());
                        stop_checks(schedules).await;
                        schedules = start_schedules(&new_cfg, &runner);
                        if new_cfg.server != cfg.server || new_cfg.agent.heartbeat_interval != cfg.agent.heartbeat_interval {
                            if let Some((token, handle)) = stream.take() {
                                token.cancel();
                                let _ = handle.await;
                            }
                            stream = start_stream(&new_cfg, &spool, &new_data, &runner);
                        }
                        tracing::info!(checks = new_cfg.checks.len(), "config reloaded");
                        cfg = new_cfg;
                    }
                }
                notify::ready();
            }
        }
    }

    notify::stopping();
    tracing::info!("stopping: no new checks or jobs; delivering what is spooled");
    stop_checks(checks).await;
    stop_checks(schedules).await;
    // The stream stays up meanwhile: progress is delivered and cancels still arrive.
    runner.drain(cfg.agent.job_grace.as_std()).await;
    drop(sink);
    let _ = writer.await; // every produced result is now in the spool
    if let Some((token, handle)) = stream {
        token.cancel();
        let _ = handle.await;
    }
    if let Ok(s) = spool.stats() {
        tracing::info!(undelivered = s.depth, "agent stopped");
    }
    Ok(())
}

type Running = (CancellationToken, JoinHandle<()>);

fn start_checks(cfg: &AgentConfig, sink: mpsc::Sender<CheckResult>) -> Running {
    let token = CancellationToken::new();
    let checks = crate::checks::build(cfg);
    let handle = tokio::spawn(crate::scheduler::run(checks, sink, token.clone()));
    (token, handle)
}

async fn stop_checks((token, handle): Running) {
    token.cancel();
    let _ = handle.await;
}

fn start_schedules(cfg: &AgentConfig, runner: &Arc<JobRunner>) -> Running {
    let token = CancellationToken::new();
    let handle = tokio::spawn(runner.clone().run_schedules(cfg.backups.clone(), token.clone()));
    (token, handle)
}

/// The service manager `[agent] service_manager` names.
pub fn service_manager(cfg: &AgentConfig) -> Arc<dyn ServiceManager> {
    match (cfg.agent.service_manager, &cfg.agent.restart_command) {
        (ServiceManagerKind::Command, Some(argv)) => Arc::new(CommandService {
            argv: argv.clone(),
            timeout: std::time::Duration::from_secs(90),
        }),
        _ => Arc::new(Systemctl::default()),
    }
}

fn build_executor(
    cfg: &AgentConfig,
    journal: &Arc<Journal>,
    sink: &mpsc::Sender<CheckResult>,
) -> Result<Executor, RunError> {
    let checks = RunChecks {
        checks: crate::checks::build(cfg),
        sink: sink.downgrade(),
    };
    Ok(Executor::new(
        &cfg.actions,
        cfg.backups.clone(),
        cfg.apps.clone(),
        journal.clone(),
        service_manager(cfg),
    )
    .map_err(|e| RunError::Policy(e.to_string()))?
    .with_checks(Arc::new(checks)))
}

/// `checks.run`: every configured check once, results into the spool like scheduled ones.
struct RunChecks {
    checks: Vec<Arc<Check>>,
    /// Weak, so that the spool writer still ends at shutdown.
    sink: mpsc::WeakSender<CheckResult>,
}

impl ChecksRunner for RunChecks {
    fn run_checks(&self) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let mut set = tokio::task::JoinSet::new();
            for check in &self.checks {
                let check = check.clone();
                set.spawn(async move { check.run().await });
            }
            let mut results = Vec::new();
            while let Some(r) = set.join_next().await {
                results.push(r.map_err(|e| format!("check task failed: {e}"))?);
            }
            results.sort_by(|a, b| a.name.cmp(&b.name));
            let summary: Vec<serde_json::Value> = results
                .iter()
                .map(|r| serde_json::json!({ "name": r.name, "status": r.status.to_string(), "message": r.message }))
                .collect();
            let sink = self.sink.upgrade().ok_or("the agent is stopping")?;
            for r in results {
                sink.send(r).await.map_err(|_| "the agent is stopping".to_string())?;
            }
            Ok(serde_json::json!({ "checks": summary }))
        })
    }
}

fn start_stream(
    cfg: &AgentConfig,
    spool: &Arc<Spool>,
    new_data: &Arc<Notify>,
    runner: &Arc<JobRunner>,
) -> Option<Running> {
    let server = cfg.server.clone()?;
    let client = StreamClient {
        server,
        data_dir: cfg.agent.data_dir.clone(),
        heartbeat: cfg.agent.heartbeat_interval.as_std(),
        max_batch: cfg.spool.max_batch,
        spool: spool.clone(),
        new_data: new_data.clone(),
        facts: facts(),
        jobs: Some(runner.clone()),
    };
    let token = CancellationToken::new();
    let grace = cfg.agent.shutdown_grace.as_std();
    let handle = tokio::spawn(client.run(token.clone(), grace));
    Some((token, handle))
}

/// Moves results from the scheduler into the spool, many per transaction,
/// and wakes the stream client after each commit. Ends when every sender is gone
/// and the channel is drained.
async fn spool_writer(mut results: mpsc::Receiver<CheckResult>, spool: Arc<Spool>, new_data: Arc<Notify>) {
    let mut buf = Vec::with_capacity(64);
    while results.recv_many(&mut buf, 256).await > 0 {
        let bodies: Vec<report::Body> = buf.drain(..).map(|r| report::Body::Check(r.into())).collect();
        // Retry until the disk accepts the write: results are never discarded here.
        loop {
            let (s, batch) = (spool.clone(), bodies.clone());
            match tokio::task::spawn_blocking(move || s.append(batch)).await {
                Ok(Ok(_)) => break,
                Ok(Err(error)) => tracing::error!(%error, "cannot write to the spool; retrying"),
                Err(error) => tracing::error!(%error, "spool task failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        new_data.notify_one();
    }
}
