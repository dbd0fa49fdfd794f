//! Runs one assignment: policy check, journal, dispatch to the action, timeout,
//! and output streamed as bounded chunks. The stream layer feeds assignments
//! in and sends [`Progress`] and the returned [`JobResult`] (through the spool) out.
//!
//! Invariants:
//! - Nothing runs unless [`Policy::check`] accepts it; a refusal is a
//!   `failed` result whose reason starts with `not allowed by agent policy:`.
//! - An attempt runs at most once: [`Journal::begin`] commits before the
//!   action starts; a re-delivered attempt gets the journalled result (or
//!   `interrupted` if the agent died while running it) and runs nothing.
//! - Output beyond `output_cap` bytes is dropped and marked truncated, once.
//! - On timeout or cancellation, child processes (`exec`, hooks, `systemctl`) are killed; file
//!   work already on tokio's blocking pool (a backup in progress) finishes in
//!   the background under its lock, and the attempt reports `timed_out` or `cancelled`.
//! - Deploys and rollbacks of one app never overlap (one async lock per app).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backup::{self, BackupConfig};
use super::deploy::{self, AppConfig, DeployOutcome, ServiceManager, service::BoxFuture};
use super::journal::{Journal, JournalError};
use super::outcome::{Assignment, INTERRUPTED, JobOutcome, JobResult, OutputStream, Progress};
use super::policy::{Action, Policy, PolicyConfigError};

/// Largest output chunk sent in one [`Progress::Output`].
pub const CHUNK_BYTES: usize = 16 * 1024;
/// Default cap on an attempt's output (AWS SSM cuts at ~2,500 characters; we keep more).
pub const DEFAULT_OUTPUT_CAP: usize = 256 * 1024;

/// Runs `checks.run` (the runtime owns the checks; it plugs itself in here).
pub trait ChecksRunner: Send + Sync {
    /// Runs every check now; the JSON summarises what ran.
    fn run_checks(&self) -> BoxFuture<'_, Result<serde_json::Value, String>>;
}

/// A clock returning unix seconds (injected in tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The executor. Share it behind an `Arc`; `run` takes `&self`.
pub struct Executor {
    policy: Policy,
    journal: Arc<Journal>,
    backups: Vec<BackupConfig>,
    apps: Vec<AppConfig>,
    services: Arc<dyn ServiceManager>,
    checks: Option<Arc<dyn ChecksRunner>>,
    output_cap: usize,
    clock: Clock,
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Forwards output as bounded chunks and stops at the cap.
struct Output<'a> {
    tx: &'a mpsc::Sender<Progress>,
    job_id: &'a str,
    attempt_id: &'a str,
    left: usize,
    truncated: bool,
}

impl Output<'_> {
    async fn send(&mut self, stream: OutputStream, bytes: &[u8]) {
        let take = bytes.len().min(self.left);
        for chunk in bytes[..take].chunks(CHUNK_BYTES) {
            let _ = self
                .tx
                .send(Progress::Output {
                    job_id: self.job_id.to_string(),
                    attempt_id: self.attempt_id.to_string(),
                    stream,
                    chunk: String::from_utf8_lossy(chunk).into_owned(),
                })
                .await;
        }
        self.left -= take;
        if take < bytes.len() && !self.truncated {
            self.truncated = true;
            let _ = self
                .tx
                .send(Progress::Truncated {
                    job_id: self.job_id.to_string(),
                    attempt_id: self.attempt_id.to_string(),
                })
                .await;
        }
    }
}

/// An action's ending before it becomes a [`JobResult`].
type Ended = (JobOutcome, serde_json::Value);

fn failed(reason: impl Into<String>) -> Ended {
    (JobOutcome::failed(reason), serde_json::Value::Null)
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

impl Executor {
    /// Builds the executor from the agent's `[actions]`, `[[backups]]` and `[[apps]]`.
    pub fn new(
        actions: &super::policy::ActionsSection,
        backups: Vec<BackupConfig>,
        apps: Vec<AppConfig>,
        journal: Arc<Journal>,
        services: Arc<dyn ServiceManager>,
    ) -> Result<Self, PolicyConfigError> {
        Ok(Self {
            policy: Policy::from_config(actions)?,
            journal,
            backups,
            apps,
            services,
            checks: None,
            output_cap: DEFAULT_OUTPUT_CAP,
            clock: Arc::new(system_clock),
            app_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Plugs in the runtime's `checks.run`.
    pub fn with_checks(mut self, checks: Arc<dyn ChecksRunner>) -> Self {
        self.checks = Some(checks);
        self
    }

    /// Sets the output cap per attempt, in bytes.
    pub fn with_output_cap(mut self, cap: usize) -> Self {
        self.output_cap = cap;
        self
    }

    /// Replaces the clock (unix seconds) used for snapshot times and the journal.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Results for attempts the journal shows begun but never finished (a
    /// crash): `failed` with reason `interrupted`. Spool each, then record it
    /// with [`Journal::finish`] (a crash in between reports it again, which the
    /// control plane's fenced writes make harmless; the reverse would lose it).
    pub fn interrupted_results(&self) -> Result<Vec<JobResult>, JournalError> {
        Ok(self
            .journal
            .interrupted()?
            .into_iter()
            .map(|e| JobResult {
                job_id: e.job_id,
                attempt_id: e.attempt_id,
                action: e.action,
                outcome: JobOutcome::failed(INTERRUPTED),
                result: serde_json::Value::Null,
                output_truncated: false,
                duration_ms: 0,
            })
            .collect())
    }

    /// Runs one assignment to its end and journals the result.
    pub async fn run(&self, a: Assignment, progress: mpsc::Sender<Progress>) -> JobResult {
        self.run_cancellable(a, progress, CancellationToken::new()).await
    }

    /// [`Executor::run`], stopped early when `cancel` fires (result `cancelled`).
    pub async fn run_cancellable(
        &self,
        a: Assignment,
        progress: mpsc::Sender<Progress>,
        cancel: CancellationToken,
    ) -> JobResult {
        let started = Instant::now();
        let mut result = JobResult {
            job_id: a.job_id.clone(),
            attempt_id: a.attempt_id.clone(),
            action: a.action.chars().take(64).collect(),
            outcome: JobOutcome::Succeeded,
            result: serde_json::Value::Null,
            output_truncated: false,
            duration_ms: 0,
        };
        let action = match self.policy.check(&a.action, &a.params) {
            Ok(action) => action,
            Err(refusal) => {
                tracing::warn!(job = %a.job_id, action = %result.action, %refusal, "job refused by local policy");
                result.outcome = JobOutcome::failed(refusal.to_string());
                return result;
            }
        };
        match self
            .journal
            .begin(&a.attempt_id, &a.job_id, action.name(), (self.clock)())
        {
            Ok(()) => {}
            Err(JournalError::AlreadyBegun(_)) => {
                tracing::info!(job = %a.job_id, attempt = %a.attempt_id, "attempt already run; not running it again");
                return match self.journal.get(&a.attempt_id) {
                    Ok(Some(entry)) if entry.result.is_some() => entry.result.unwrap_or(result),
                    _ => {
                        result.outcome = JobOutcome::failed(INTERRUPTED);
                        result
                    }
                };
            }
            Err(e) => {
                result.outcome = JobOutcome::failed(format!("not run: {e}"));
                return result;
            }
        }
        let _ = progress
            .send(Progress::Started {
                job_id: a.job_id.clone(),
                attempt_id: a.attempt_id.clone(),
            })
            .await;
        let mut out = Output {
            tx: &progress,
            job_id: &a.job_id,
            attempt_id: &a.attempt_id,
            left: self.output_cap,
            truncated: false,
        };
        // Biased: an attempt cancelled before it started (queued behind the
        // concurrency limit) ends at once without dispatching anything.
        let (outcome, value) = tokio::select! {
            biased;
            _ = cancel.cancelled() => (
                JobOutcome::Cancelled { reason: "cancelled by the control plane".into() },
                serde_json::Value::Null,
            ),
            ended = tokio::time::timeout(a.timeout, self.dispatch(action, &mut out)) => match ended {
                Ok(ended) => ended,
                Err(_) => (
                    JobOutcome::TimedOut { reason: format!("timed out after {:?}", a.timeout) },
                    serde_json::Value::Null,
                ),
            },
        };
        if let Some(reason) = outcome.reason() {
            out.send(OutputStream::Agent, format!("{reason}\n").as_bytes()).await;
        }
        result.outcome = outcome;
        result.result = value;
        result.output_truncated = out.truncated;
        result.duration_ms = started.elapsed().as_millis() as u64;
        if let Err(e) = self.journal.finish(&result) {
            tracing::error!(error = %e, attempt = %a.attempt_id, "cannot journal a job result");
        }
        result
    }

    async fn dispatch(&self, action: Action, out: &mut Output<'_>) -> Ended {
        match action {
            Action::ChecksRun => match &self.checks {
                Some(runner) => match runner.run_checks().await {
                    Ok(v) => (JobOutcome::Succeeded, v),
                    Err(e) => failed(e),
                },
                None => failed("checks.run is handled by the agent runtime, which is not connected to this executor"),
            },
            Action::BackupRun { name } => {
                let Some(cfg) = self.backup(&name) else {
                    return failed(format!("no backup named {name:?} in [[backups]]"));
                };
                out.send(
                    OutputStream::Agent,
                    format!("backup {name}: writing a snapshot\n").as_bytes(),
                )
                .await;
                let (outcome, value) = run_backup(cfg, (self.clock)()).await;
                if outcome == JobOutcome::Succeeded {
                    let line = format!(
                        "backup {name}: snapshot {} ({} files, {} bytes), {} deleted by retention\n",
                        value["snapshot"].as_str().unwrap_or_default(),
                        value["files"],
                        value["bytes"],
                        value["deleted"].as_array().map_or(0, Vec::len)
                    );
                    out.send(OutputStream::Agent, line.as_bytes()).await;
                }
                (outcome, value)
            }
            Action::BackupVerify { name, snapshot } => {
                let Some(cfg) = self.backup(&name) else {
                    return failed(format!("no backup named {name:?} in [[backups]]"));
                };
                verify_backup(cfg, snapshot).await
            }
            Action::DeployApply {
                app,
                version,
                artifact,
                sha256,
            } => {
                let Some(cfg) = self.app(&app) else {
                    return failed(format!("no app named {app:?} in [[apps]]"));
                };
                let lock = self.app_lock(&app);
                let _held = lock.lock().await;
                out.send(OutputStream::Agent, format!("deploy {app} {version}\n").as_bytes())
                    .await;
                match deploy::apply(cfg, self.services.as_ref(), &version, &artifact, &sha256).await {
                    Ok(report) => match &report.outcome {
                        DeployOutcome::RolledBack { reason } => {
                            (JobOutcome::RolledBack { reason: reason.clone() }, to_json(&report))
                        }
                        _ => (JobOutcome::Succeeded, to_json(&report)),
                    },
                    Err(e) => failed(e.to_string()),
                }
            }
            Action::DeployRollback { app, version } => {
                let Some(cfg) = self.app(&app) else {
                    return failed(format!("no app named {app:?} in [[apps]]"));
                };
                let lock = self.app_lock(&app);
                let _held = lock.lock().await;
                match deploy::rollback(cfg, self.services.as_ref(), version.as_deref()).await {
                    Ok(report) => (JobOutcome::Succeeded, to_json(&report)),
                    Err(e) => failed(e.to_string()),
                }
            }
            Action::ServiceRestart { unit } => match self.services.restart(&unit).await {
                Ok(()) => (JobOutcome::Succeeded, serde_json::json!({ "unit": unit })),
                Err(e) => failed(e),
            },
            Action::Exec { argv } => exec(&argv, out).await,
        }
    }

    fn backup(&self, name: &str) -> Option<BackupConfig> {
        self.backups.iter().find(|b| b.name == name).cloned()
    }

    fn app_lock(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.app_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(app.to_string()).or_default().clone()
    }

    fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }
}

/// Writes a snapshot of `cfg` (on the blocking pool) with retention and,
/// if configured, verification; the JSON is [`backup::run_json`] or [`backup::failed_json`].
/// Used by `backup.run` and by the local schedule.
pub async fn run_backup(cfg: BackupConfig, now: i64) -> (JobOutcome, serde_json::Value) {
    let c = cfg.clone();
    match tokio::task::spawn_blocking(move || backup::run(&c, now)).await {
        Ok(Ok(report)) => (JobOutcome::Succeeded, backup::run_json(&cfg, &report, now)),
        Ok(Err(e)) => (JobOutcome::failed(e.to_string()), backup::failed_json(&cfg, false)),
        Err(e) => (
            JobOutcome::failed(format!("backup task failed: {e}")),
            backup::failed_json(&cfg, false),
        ),
    }
}

/// Verifies `snapshot` (default: the latest) of `cfg` by restoring it; used by
/// `backup.verify` and by the local `verify_schedule`.
pub async fn verify_backup(cfg: BackupConfig, snapshot: Option<String>) -> (JobOutcome, serde_json::Value) {
    let c = cfg.clone();
    match tokio::task::spawn_blocking(move || backup::verify(&c, snapshot.as_deref())).await {
        Ok(Ok(report)) => (JobOutcome::Succeeded, backup::verify_json(&cfg, &report)),
        Ok(Err(e)) => (JobOutcome::failed(e.to_string()), backup::failed_json(&cfg, true)),
        Err(e) => (
            JobOutcome::failed(format!("verify task failed: {e}")),
            backup::failed_json(&cfg, true),
        ),
    }
}

/// Runs a listed command without a shell, streaming stdout and stderr.
async fn exec(argv: &[String], out: &mut Output<'_>) -> Ended {
    let Some(program) = argv.first() else {
        return failed("empty command");
    };
    let mut child = match tokio::process::Command::new(program)
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {program}: {e}")),
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return failed("cannot capture the command's output");
    };
    let (mut obuf, mut ebuf) = (vec![0u8; 8192], vec![0u8; 8192]);
    let (mut o_open, mut e_open) = (true, true);
    while o_open || e_open {
        tokio::select! {
            r = stdout.read(&mut obuf), if o_open => match r {
                Ok(0) | Err(_) => o_open = false,
                Ok(n) => out.send(OutputStream::Stdout, &obuf[..n]).await,
            },
            r = stderr.read(&mut ebuf), if e_open => match r {
                Ok(0) | Err(_) => e_open = false,
                Ok(n) => out.send(OutputStream::Stderr, &ebuf[..n]).await,
            },
        }
    }
    match child.wait().await {
        Ok(status) => {
            let value = serde_json::json!({ "exit_code": status.code() });
            if status.success() {
                (JobOutcome::Succeeded, value)
            } else {
                (JobOutcome::failed(format!("{program} exited with {status}")), value)
            }
        }
        Err(e) => failed(format!("wait for {program}: {e}")),
    }
}

#[cfg(test)]
mod tests;
