//! The dispatcher: one task per control-plane process that claims due jobs
//! for the hosts connected to this process, sends them as `JobAssignment` on
//! those hosts' streams, delivers cancellations, sweeps expired leases and
//! keeps the queue gauges current. Woken at once by [`JobsHandle::kick`] (a
//! job created, a host connected, an attempt ended) and otherwise every
//! [`TICK`], which also picks up jobs created by other processes.
//!
//! Invariants:
//! - A process dispatches only to hosts whose stream it holds; the claim in
//!   the store makes sure no other process claims the same attempt.
//! - An assignment that could not be delivered stays `dispatched` until its
//!   lease expires; it is then sent again (same attempt ID) to the host's
//!   current stream, so the agent runs it at most once.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use steward_shared::proto::{self, ControlMessage, control_message};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Claimed, JobSettings};
use crate::gateway::registry::Registry;
use crate::metrics::Metrics;
use crate::store::Store;

/// Longest wait between two claim rounds.
pub const TICK: Duration = Duration::from_millis(200);
/// How often leases are swept and gauges refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A cancellation is repeated this often until the agent reports the end.
const CANCEL_RESEND: Duration = Duration::from_secs(5);
/// Attempts claimed per transaction.
const CLAIM_BATCH: usize = 256;

/// What sessions and the REST API use to reach the dispatcher. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JobsHandle {
    notify: Arc<Notify>,
    /// Set when a cancellation was requested here: deliver cancellations now.
    cancels: Arc<std::sync::atomic::AtomicBool>,
    pub settings: JobSettings,
    /// This process's lease-owner name.
    pub owner: String,
}

impl Default for JobsHandle {
    fn default() -> Self {
        JobsHandle::new(JobSettings::default())
    }
}

impl JobsHandle {
    pub fn new(settings: JobSettings) -> Self {
        let host = hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "cp".into());
        let owner = format!("{host}:{}:{:08x}", std::process::id(), rand::rng().random::<u32>());
        JobsHandle {
            notify: Arc::new(Notify::new()),
            cancels: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            settings,
            owner,
        }
    }

    /// Wakes the dispatcher (a job may be due, a host connected, a slot freed).
    pub fn kick(&self) {
        self.notify.notify_one();
    }

    /// A job was asked to stop: deliver cancellations without waiting for the sweep.
    pub fn cancel_requested(&self) {
        self.cancels.store(true, std::sync::atomic::Ordering::Relaxed);
        self.kick();
    }
}

/// Starts the dispatcher task; it ends when `shutdown` is cancelled.
pub fn start(
    store: Store,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    handle: JobsHandle,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(store, registry, metrics, handle, shutdown))
}

async fn run(
    store: Store,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    handle: JobsHandle,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_sweep = Instant::now() - SWEEP_EVERY;
    let mut cancels_sent: HashMap<String, Instant> = HashMap::new();
    tracing::info!(owner = %handle.owner, "job dispatcher started");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = handle.notify.notified() => {}
            _ = tick.tick() => {}
        }
        let hosts = registry.attached_hosts();
        if !hosts.is_empty() {
            loop {
                let now = steward_shared::now_ms();
                match store
                    .claim_jobs(&handle.owner, &hosts, now, CLAIM_BATCH, &handle.settings)
                    .await
                {
                    Ok(claimed) => {
                        let full = claimed.len() >= CLAIM_BATCH;
                        for c in claimed {
                            deliver(&registry, &metrics, c);
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "claiming jobs failed");
                        break;
                    }
                }
            }
        }
        if handle.cancels.swap(false, std::sync::atomic::Ordering::Relaxed) {
            deliver_cancels(&store, &registry, &hosts, &mut cancels_sent).await;
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            sweep(&store, &metrics, &handle).await;
            deliver_cancels(&store, &registry, &hosts, &mut cancels_sent).await;
        }
    }
}

fn deliver(registry: &Registry, metrics: &Metrics, c: Claimed) {
    let latency = (steward_shared::now_ms() - c.ready_ms).max(0) as f64 / 1000.0;
    let Some(out) = registry.outbound(&c.host_id) else {
        tracing::info!(job = %c.job_id, host = %c.host_id, "host left before its assignment was sent; resent on its next stream");
        return;
    };
    let message = ControlMessage {
        msg: Some(control_message::Msg::Job(proto::JobAssignment {
            job_id: c.job_id.clone(),
            attempt_id: c.attempt_id.clone(),
            action: c.action.clone(),
            params: c.params.clone().into_iter().collect(),
            timeout_secs: c.timeout_secs,
        })),
    };
    tracing::info!(job = %c.job_id, attempt = %c.attempt_id, host = %c.host_id, action = %c.action, resend = c.resend, "job dispatched");
    if !c.resend {
        metrics.job_dispatched(latency);
    }
    send(out, message);
}

/// Sends without blocking the dispatcher on one slow stream.
fn send(out: crate::gateway::registry::Outbound, message: ControlMessage) {
    match out.try_send(Ok(message)) {
        Ok(()) => {}
        Err(tokio::sync::mpsc::error::TrySendError::Full(message)) => {
            tokio::spawn(async move {
                if tokio::time::timeout(Duration::from_secs(10), out.send(*message))
                    .await
                    .is_err()
                {
                    tracing::warn!("a job message could not be sent within 10s; the lease will resend it");
                }
            });
        }
        Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
    }
}

async fn sweep(store: &Store, metrics: &Metrics, handle: &JobsHandle) {
    let now = steward_shared::now_ms();
    match store.sweep_jobs(now, &handle.settings).await {
        Ok(applied) => {
            for (state, action) in &applied.finished {
                metrics.job_finished(state.as_str(), action);
            }
            if !applied.finished.is_empty() {
                handle.kick();
            }
        }
        Err(error) => tracing::warn!(%error, "sweeping job leases failed"),
    }
    match store.job_counts().await {
        Ok(counts) => metrics.set_job_counts(&counts),
        Err(error) => tracing::warn!(%error, "counting jobs failed"),
    }
}

async fn deliver_cancels(
    store: &Store,
    registry: &Registry,
    hosts: &[String],
    cancels_sent: &mut HashMap<String, Instant>,
) {
    match store.pending_cancels(hosts).await {
        Ok(orders) => {
            let live: std::collections::HashSet<&str> = orders.iter().map(|o| o.job_id.as_str()).collect();
            cancels_sent.retain(|id, _| live.contains(id.as_str()));
            for o in orders {
                if cancels_sent.get(&o.job_id).is_some_and(|t| t.elapsed() < CANCEL_RESEND) {
                    continue;
                }
                if let Some(out) = registry.outbound(&o.host_id) {
                    tracing::info!(job = %o.job_id, attempt = %o.attempt_id, host = %o.host_id, "job cancellation sent");
                    send(
                        out,
                        ControlMessage {
                            msg: Some(control_message::Msg::Cancel(proto::JobCancel {
                                job_id: o.job_id.clone(),
                                attempt_id: o.attempt_id.clone(),
                            })),
                        },
                    );
                    cancels_sent.insert(o.job_id, Instant::now());
                }
            }
        }
        Err(error) => tracing::warn!(%error, "reading pending cancellations failed"),
    }
}
