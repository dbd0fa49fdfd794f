//! The job runner: between the stream and the [`Executor`]. It turns
//! assignments into running attempts (bounded concurrency), turns their
//! progress, output and result into `JobEvent` reports written to the spool,
//! cancels attempts on `JobCancel`, runs the locally scheduled backups and
//! verifications, reports attempts a crash cut short, and drains on SIGTERM.
//!
//! Invariants:
//! - Every job event reaches the network only through the spool (acked like
//!   check results), so a control-plane restart mid-job loses nothing.
//! - One `finished` event per attempt run here, written after all of the
//!   attempt's output; output offsets are contiguous from 0.
//! - An attempt already running is never started again (a re-delivery is only
//!   acknowledged); one that ran before is answered from the journal by the
//!   executor, never run twice.
//! - A scheduled backup or verification never overlaps itself and runs
//!   whether or not the control plane is reachable.
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use steward_shared::proto::{self, job_event, report};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backup::BackupConfig;
use super::executor::{CHUNK_BYTES, Executor, run_backup, verify_backup};
use super::journal::Journal;
use super::outcome::{Assignment, INTERRUPTED, JobOutcome, JobResult, Progress};
use crate::spool::Spool;

/// The reason of attempts cancelled because the agent stops.
pub const SHUTTING_DOWN: &str = "agent is shutting down";
/// Longest timeout accepted from an assignment (a week).
const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

struct Running {
    job_id: String,
    cancel: CancellationToken,
}

/// Shared by the stream client (assignments, cancels) and the runtime
/// (start, reload, schedules, drain). Use it as `Arc<JobRunner>`.
pub struct JobRunner {
    spool: Arc<Spool>,
    new_data: Arc<Notify>,
    journal: Arc<Journal>,
    executor: RwLock<Arc<Executor>>,
    permits: Arc<Semaphore>,
    running: Mutex<HashMap<String, Running>>,
    tracker: TaskTracker,
    draining: AtomicBool,
    default_timeout: Duration,
}

/// The wire name of an outcome.
pub fn outcome_name(o: &JobOutcome) -> &'static str {
    match o {
        JobOutcome::Succeeded => "succeeded",
        JobOutcome::Failed { .. } => "failed",
        JobOutcome::RolledBack { .. } => "rolled_back",
        JobOutcome::TimedOut { .. } => "timed_out",
        JobOutcome::Cancelled { .. } => "cancelled",
    }
}

/// A random `local-<uuid>` (version 4 layout) for runs the agent starts itself.
pub fn local_attempt_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "local-{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn event(job_id: &str, attempt_id: &str, e: job_event::Event) -> report::Body {
    report::Body::Job(proto::JobEvent {
        job_id: job_id.to_string(),
        attempt_id: attempt_id.to_string(),
        event: Some(e),
    })
}

/// What a `finished` event says besides the result.
struct Ran<'a> {
    action: &'a str,
    params: &'a BTreeMap<String, String>,
    started_at_ms: i64,
}

fn finished(r: &JobResult, ran: &Ran<'_>) -> report::Body {
    let result_json = if r.result.is_null() {
        String::new()
    } else {
        r.result.to_string()
    };
    event(
        &r.job_id,
        &r.attempt_id,
        job_event::Event::Finished(proto::JobFinished {
            outcome: outcome_name(&r.outcome).into(),
            reason: r.outcome.reason().unwrap_or_default().to_string(),
            result_json,
            finished_at_ms: steward_shared::now_ms(),
            action: ran.action.to_string(),
            params: ran.params.clone().into_iter().collect(),
            started_at_ms: ran.started_at_ms,
        }),
    )
}

fn log_result(r: &JobResult) {
    match &r.outcome {
        JobOutcome::Succeeded => {
            tracing::info!(job = %r.job_id, attempt = %r.attempt_id, action = %r.action, duration_ms = r.duration_ms, "job succeeded")
        }
        JobOutcome::Failed { reason } if reason.starts_with("not allowed by agent policy") => {
            tracing::warn!(job = %r.job_id, attempt = %r.attempt_id, action = %r.action, %reason, "job refused")
        }
        other => {
            tracing::warn!(job = %r.job_id, attempt = %r.attempt_id, action = %r.action, outcome = outcome_name(other),
                reason = other.reason().unwrap_or_default(), "job did not succeed")
        }
    }
}

impl JobRunner {
    /// A runner around `executor`, writing to `spool` and waking the stream through `new_data`.
    pub fn new(
        executor: Executor,
        journal: Arc<Journal>,
        spool: Arc<Spool>,
        new_data: Arc<Notify>,
        max_jobs: usize,
        default_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            spool,
            new_data,
            journal,
            executor: RwLock::new(Arc::new(executor)),
            permits: Arc::new(Semaphore::new(max_jobs.max(1))),
            running: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            draining: AtomicBool::new(false),
            default_timeout,
        })
    }

    /// Swaps the executor (SIGHUP): new attempts use the new policy, running ones finish with the old.
    pub fn replace_executor(&self, executor: Executor) {
        *self.executor.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(executor);
    }

    fn executor(&self) -> Arc<Executor> {
        self.executor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attempts running or waiting for a slot.
    pub fn active(&self) -> usize {
        self.running().len()
    }

    /// Appends to the spool, retrying until the disk accepts (job events are never discarded here).
    async fn spool(&self, bodies: Vec<report::Body>) {
        if bodies.is_empty() {
            return;
        }
        loop {
            let (s, batch) = (self.spool.clone(), bodies.clone());
            match tokio::task::spawn_blocking(move || s.append(batch)).await {
                Ok(Ok(_)) => break,
                Ok(Err(error)) => tracing::error!(%error, "cannot write a job event to the spool; retrying"),
                Err(error) => tracing::error!(%error, "spool task failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.new_data.notify_one();
    }

    /// Reports attempts begun but never finished (the agent died running
    /// them) as `failed` / `interrupted`: spooled first, then journalled, so a
    /// crash in between reports them again rather than never. Call at start,
    /// before the stream can deliver assignments.
    pub async fn report_interrupted(&self) -> usize {
        let entries = match self.journal.interrupted() {
            Ok(e) => e,
            Err(error) => {
                tracing::error!(%error, "cannot read the job journal; interrupted attempts are not reported");
                return 0;
            }
        };
        let n = entries.len();
        for e in entries {
            let result = JobResult {
                job_id: e.job_id.clone(),
                attempt_id: e.attempt_id.clone(),
                action: e.action.clone(),
                outcome: JobOutcome::failed(INTERRUPTED),
                result: serde_json::Value::Null,
                output_truncated: false,
                duration_ms: 0,
            };
            tracing::warn!(job = %e.job_id, attempt = %e.attempt_id, action = %e.action, "attempt was interrupted by an agent stop; reporting it failed");
            let params = BTreeMap::new();
            let ran = Ran {
                action: &e.action,
                params: &params,
                started_at_ms: e.begun_at.saturating_mul(1000),
            };
            self.spool(vec![finished(&result, &ran)]).await;
            if let Err(error) = self.journal.finish(&result) {
                tracing::error!(%error, attempt = %e.attempt_id, "cannot journal an interrupted attempt");
            }
        }
        n
    }

    /// Takes an assignment (the stream has already sent `JobAccepted`). An
    /// attempt already running is left alone; during a drain the attempt is
    /// not started and reported `cancelled` (`agent is shutting down`).
    pub fn assign(self: &Arc<Self>, a: proto::JobAssignment) {
        let params: BTreeMap<String, String> = a.params.into_iter().collect();
        let timeout = if a.timeout_secs == 0 {
            self.default_timeout
        } else {
            Duration::from_secs(a.timeout_secs).min(MAX_TIMEOUT)
        };
        let assignment = Assignment {
            job_id: a.job_id,
            attempt_id: a.attempt_id,
            action: a.action,
            params,
            timeout,
        };
        let cancel = CancellationToken::new();
        {
            let mut running = self.running();
            if running.contains_key(&assignment.attempt_id) {
                tracing::info!(job = %assignment.job_id, attempt = %assignment.attempt_id, "attempt re-delivered while running; not started again");
                return;
            }
            if !self.draining.load(Ordering::SeqCst) {
                running.insert(
                    assignment.attempt_id.clone(),
                    Running {
                        job_id: assignment.job_id.clone(),
                        cancel: cancel.clone(),
                    },
                );
            } else {
                drop(running);
                tracing::info!(job = %assignment.job_id, "assignment during shutdown; not started");
                let this = self.clone();
                self.tracker.spawn(async move {
                    let result = JobResult {
                        job_id: assignment.job_id.clone(),
                        attempt_id: assignment.attempt_id.clone(),
                        action: assignment.action.clone(),
                        outcome: JobOutcome::Cancelled {
                            reason: SHUTTING_DOWN.into(),
                        },
                        result: serde_json::Value::Null,
                        output_truncated: false,
                        duration_ms: 0,
                    };
                    let ran = Ran {
                        action: &assignment.action,
                        params: &assignment.params,
                        started_at_ms: steward_shared::now_ms(),
                    };
                    this.spool(vec![finished(&result, &ran)]).await;
                });
                return;
            }
        }
        tracing::info!(job = %assignment.job_id, attempt = %assignment.attempt_id, action = %assignment.action, "job assigned");
        let this = self.clone();
        self.tracker
            .spawn(async move { this.run_assignment(assignment, cancel).await });
    }

    async fn run_assignment(self: Arc<Self>, a: Assignment, cancel: CancellationToken) {
        // Wait for a slot; a cancel while waiting still goes through the
        // executor (journalled as cancelled, nothing dispatched).
        let _permit = tokio::select! {
            biased;
            p = self.permits.clone().acquire_owned() => p.ok(),
            _ = cancel.cancelled() => None,
        };
        let started_at_ms = steward_shared::now_ms();
        let (tx, rx) = mpsc::channel::<Progress>(64);
        let forwarder = tokio::spawn(self.clone().forward(rx, a.job_id.clone(), a.attempt_id.clone()));
        let executor = self.executor();
        let (action, params, attempt) = (a.action.clone(), a.params.clone(), a.attempt_id.clone());
        let mut result = executor.run_cancellable(a, tx, cancel).await;
        let _ = forwarder.await;
        if matches!(result.outcome, JobOutcome::Cancelled { .. }) && self.draining.load(Ordering::SeqCst) {
            result.outcome = JobOutcome::Cancelled {
                reason: SHUTTING_DOWN.into(),
            };
            if let Err(error) = self.journal.finish(&result) {
                tracing::debug!(%error, "cannot re-journal the shutdown reason");
            }
        }
        log_result(&result);
        let ran = Ran {
            action: &action,
            params: &params,
            started_at_ms,
        };
        self.spool(vec![finished(&result, &ran)]).await;
        self.running().remove(&attempt);
    }

    /// Spools an attempt's progress: `started`, then output coalesced into
    /// chunks of at most [`CHUNK_BYTES`] with contiguous offsets, then one
    /// empty `truncated` chunk if the executor's cap was reached.
    async fn forward(self: Arc<Self>, mut rx: mpsc::Receiver<Progress>, job_id: String, attempt_id: String) {
        let mut offset = 0u64;
        let mut buf = Vec::with_capacity(64);
        while rx.recv_many(&mut buf, 64).await > 0 {
            let mut bodies = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let flush = |pending: &mut Vec<u8>, offset: &mut u64, bodies: &mut Vec<report::Body>| {
                if pending.is_empty() {
                    return;
                }
                let data = std::mem::take(pending);
                let len = data.len() as u64;
                bodies.push(event(
                    &job_id,
                    &attempt_id,
                    job_event::Event::Output(proto::JobOutput {
                        offset: *offset,
                        data,
                        truncated: false,
                    }),
                ));
                *offset += len;
            };
            for p in buf.drain(..) {
                match p {
                    Progress::Started { .. } => {
                        flush(&mut pending, &mut offset, &mut bodies);
                        bodies.push(event(
                            &job_id,
                            &attempt_id,
                            job_event::Event::Progress(proto::JobProgress {
                                stage: "started".into(),
                                percent: 0.0,
                                message: String::new(),
                            }),
                        ));
                    }
                    Progress::Output { chunk, .. } => {
                        let mut bytes = chunk.as_bytes();
                        while !bytes.is_empty() {
                            let room = CHUNK_BYTES - pending.len();
                            let take = bytes.len().min(room);
                            pending.extend_from_slice(&bytes[..take]);
                            bytes = &bytes[take..];
                            if pending.len() >= CHUNK_BYTES {
                                flush(&mut pending, &mut offset, &mut bodies);
                            }
                        }
                    }
                    Progress::Truncated { .. } => {
                        flush(&mut pending, &mut offset, &mut bodies);
                        bodies.push(event(
                            &job_id,
                            &attempt_id,
                            job_event::Event::Output(proto::JobOutput {
                                offset,
                                data: Vec::new(),
                                truncated: true,
                            }),
                        ));
                    }
                }
            }
            flush(&mut pending, &mut offset, &mut bodies);
            self.spool(bodies).await;
        }
    }

    /// Cancels a running (or waiting) attempt; `attempt_id` empty matches by
    /// `job_id`. Returns whether one was found.
    pub fn cancel(&self, job_id: &str, attempt_id: &str) -> bool {
        let running = self.running();
        let found = running.iter().find(|(a, r)| {
            if attempt_id.is_empty() {
                r.job_id == job_id
            } else {
                a.as_str() == attempt_id
            }
        });
        match found {
            Some((attempt, r)) => {
                tracing::info!(job = %r.job_id, %attempt, "cancelling the attempt at the control plane's request");
                r.cancel.cancel();
                true
            }
            None => {
                tracing::info!(job = %job_id, attempt = %attempt_id, "cancel for an attempt not running here; ignored");
                false
            }
        }
    }

    /// Runs one local backup (`verify` false) or verification of the latest
    /// snapshot, reported with an empty job ID and a `local-<uuid>` attempt.
    pub async fn run_local(self: &Arc<Self>, cfg: BackupConfig, verify: bool) {
        let attempt = local_attempt_id();
        let cancel = CancellationToken::new();
        {
            let mut running = self.running();
            if self.draining.load(Ordering::SeqCst) {
                return;
            }
            running.insert(
                attempt.clone(),
                Running {
                    job_id: String::new(),
                    cancel: cancel.clone(),
                },
            );
        }
        let _permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            p = self.permits.clone().acquire_owned() => p.ok(),
        };
        let action = if verify { "backup.verify" } else { "backup.run" };
        let params = BTreeMap::from([("name".to_string(), cfg.name.clone())]);
        let started = std::time::Instant::now();
        let started_at_ms = steward_shared::now_ms();
        tracing::info!(backup = %cfg.name, %action, %attempt, "scheduled run starting");
        let work = async {
            if verify {
                verify_backup(cfg.clone(), None).await
            } else {
                run_backup(cfg.clone(), started_at_ms / 1000).await
            }
        };
        let (outcome, value) = tokio::select! {
            biased;
            _ = cancel.cancelled() => (JobOutcome::Cancelled { reason: SHUTTING_DOWN.into() }, serde_json::Value::Null),
            ended = work => ended,
        };
        let result = JobResult {
            job_id: String::new(),
            attempt_id: attempt.clone(),
            action: action.into(),
            outcome,
            result: value,
            output_truncated: false,
            duration_ms: started.elapsed().as_millis() as u64,
        };
        log_result(&result);
        let ran = Ran {
            action,
            params: &params,
            started_at_ms,
        };
        self.spool(vec![finished(&result, &ran)]).await;
        self.running().remove(&attempt);
    }

    /// Runs `[[backups]]` `schedule` and `verify_schedule` (cron, UTC) until
    /// `stop` is cancelled. A run still going when its next tick comes skips that tick.
    pub async fn run_schedules(self: Arc<Self>, backups: Vec<BackupConfig>, stop: CancellationToken) {
        let mut entries = Vec::new();
        for b in &backups {
            for (expr, verify) in [(&b.schedule, false), (&b.verify_schedule, true)] {
                if let Some(expr) = expr {
                    match crate::checks::normalize_cron(expr) {
                        Ok(six) => entries.push((b.clone(), six, verify)),
                        Err(error) => tracing::error!(backup = %b.name, %error, "schedule not usable"),
                    }
                }
            }
        }
        if entries.is_empty() {
            return;
        }
        let scheduler = match self.clone().start_cron(entries, &stop).await {
            Ok(s) => s,
            Err(error) => {
                tracing::error!(%error, "cannot start the backup scheduler; scheduled backups will not run");
                return;
            }
        };
        stop.cancelled().await;
        let (mut s, jobs) = scheduler;
        for job in &jobs {
            let _ = s.remove(&job.guid()).await;
        }
        if let Err(error) = s.shutdown().await {
            tracing::warn!(%error, "backup scheduler did not shut down cleanly");
        }
    }

    async fn start_cron(
        self: Arc<Self>,
        entries: Vec<(BackupConfig, String, bool)>,
        stop: &CancellationToken,
    ) -> Result<(JobScheduler, Vec<Job>), tokio_cron_scheduler::JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        let mut jobs = Vec::new();
        for (cfg, expr, verify) in entries {
            let busy = Arc::new(AtomicBool::new(false));
            let (this, stop) = (self.clone(), stop.clone());
            let job = Job::new_async(expr.as_str(), move |_, _| {
                let (this, cfg, busy, stop) = (this.clone(), cfg.clone(), busy.clone(), stop.clone());
                Box::pin(async move {
                    if stop.is_cancelled() {
                        return;
                    }
                    if busy.swap(true, Ordering::AcqRel) {
                        tracing::info!(backup = %cfg.name, verify, "previous scheduled run still going: tick skipped");
                        return;
                    }
                    let runner = this.clone();
                    this.tracker.spawn(async move {
                        runner.run_local(cfg, verify).await;
                        busy.store(false, Ordering::Release);
                    });
                })
            })?;
            jobs.push(job.clone());
            scheduler.add(job).await?;
        }
        scheduler.start().await?;
        Ok((scheduler, jobs))
    }

    /// SIGTERM: starts no new attempt, lets running ones go on for `grace`,
    /// then cancels them (reported `cancelled`, reason [`SHUTTING_DOWN`]) and
    /// waits until their results are spooled.
    pub async fn drain(&self, grace: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        self.tracker.close();
        let n = self.active();
        if n > 0 {
            tracing::info!(
                running = n,
                grace_ms = grace.as_millis() as u64,
                "waiting for running jobs"
            );
        }
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            let running = self.running();
            tracing::warn!(
                running = running.len(),
                "job grace period over; cancelling running jobs"
            );
            for r in running.values() {
                r.cancel.cancel();
            }
        }
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests;
