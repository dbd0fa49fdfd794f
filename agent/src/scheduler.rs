//! Runs checks on their schedules and sends every result to one channel.
//!
//! - `interval` checks: one task each, driven by `tokio::time::interval`
//!   (`MissedTickBehavior::Delay`), first run at once after a small random
//!   jitter (at most a tenth of the interval, capped at 1 s) so that checks of
//!   many agents restarted together do not fire in lockstep.
//! - `cron` checks: tokio-cron-scheduler (started only when there is at least
//!   one) fires a job that nudges the check's task through a one-slot channel.
//!   It is used for cron only: its repeated jobs can stop firing under load
//!   (mvniekerk/tokio-cron-scheduler #113).
//!
//! Invariant: a check never overlaps itself. Each check runs in its own task,
//! one run after the other; a cron tick that arrives while the check is still
//! running is skipped. On shutdown, scheduling stops, in-flight runs are
//! dropped (each is bounded by its timeout anyway) and [`run`] returns when
//! every check task has ended.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use steward_shared::status::CheckResult;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::checks::{Check, Schedule};

/// Starts every check on its schedule; results go to `sink`. Returns when
/// `shutdown` is cancelled and the running checks have stopped.
pub async fn run(checks: Vec<Arc<Check>>, sink: mpsc::Sender<CheckResult>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut cron = Vec::new();
    for check in checks {
        let span = tracing::info_span!("check", name = %check.name, kind = check.kind);
        match check.schedule.clone() {
            Schedule::Every(period) => {
                tracker.spawn(every(check, period, sink.clone(), shutdown.clone()).instrument(span));
            }
            Schedule::Cron(expr) => cron.push((check, expr)),
        }
    }
    let mut scheduler = None;
    if !cron.is_empty() {
        let cron_checks: Vec<Arc<Check>> = cron.iter().map(|(c, _)| Arc::clone(c)).collect();
        match start_cron(cron, &tracker, &sink, &shutdown).await {
            Ok(started) => scheduler = Some(started),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the cron scheduler; cron checks will not run");
                for check in cron_checks {
                    let _ = sink.try_send(check.failed(format!("cron scheduler failed to start: {e}")));
                }
            }
        }
    }
    tracker.close();
    drop(sink);
    shutdown.cancelled().await;
    if let Some((mut s, jobs)) = scheduler {
        // Removing the jobs drops their closures; the scheduler's own idle
        // listener tasks outlive it (a tokio-cron-scheduler limitation).
        for job in &jobs {
            let _ = s.remove(&job.guid()).await;
        }
        if let Err(e) = s.shutdown().await {
            tracing::warn!(error = %e, "cron scheduler did not shut down cleanly");
        }
    }
    tracker.wait().await;
}

/// Random delay before an interval check's first run.
fn initial_jitter(period: Duration) -> Duration {
    let max_ms = (period / 10).min(Duration::from_secs(1)).as_millis() as u64;
    if max_ms == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::random_range(0..=max_ms))
    }
}

async fn every(check: Arc<Check>, period: Duration, sink: mpsc::Sender<CheckResult>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval_at(Instant::now() + initial_jitter(period), period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !run_and_send(&check, &sink, &shutdown).await {
            return;
        }
    }
}

/// One run; false when the scheduler should stop (shutdown, or nobody listens).
async fn run_and_send(check: &Check, sink: &mpsc::Sender<CheckResult>, shutdown: &CancellationToken) -> bool {
    let result = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return false,
        result = check.run() => result,
    };
    tracing::debug!(status = %result.status, duration_us = result.duration_us, "check ran");
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => false,
        sent = sink.send(result) => sent.is_ok(),
    }
}

async fn start_cron(
    cron: Vec<(Arc<Check>, String)>,
    tracker: &TaskTracker,
    sink: &mpsc::Sender<CheckResult>,
    shutdown: &CancellationToken,
) -> Result<(JobScheduler, Vec<Job>), tokio_cron_scheduler::JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    let mut jobs = Vec::new();
    for (check, expr) in cron {
        let (nudge, ticks) = mpsc::channel::<()>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let job = {
            let busy = Arc::clone(&busy);
            let name = check.name.clone();
            Job::new_async(expr.as_str(), move |_, _| {
                if busy.load(Ordering::Acquire) {
                    tracing::debug!(check = %name, "still running: cron tick skipped");
                } else {
                    // A full slot means a tick is already waiting: this one merges into it.
                    let _ = nudge.try_send(());
                }
                Box::pin(async {})
            })?
        };
        jobs.push(job.clone());
        scheduler.add(job).await?;
        let span = tracing::info_span!("check", name = %check.name, kind = check.kind);
        tracker.spawn(on_ticks(check, ticks, busy, sink.clone(), shutdown.clone()).instrument(span));
    }
    scheduler.start().await?;
    Ok((scheduler, jobs))
}

async fn on_ticks(
    check: Arc<Check>,
    mut ticks: mpsc::Receiver<()>,
    busy: Arc<AtomicBool>,
    sink: mpsc::Sender<CheckResult>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            tick = ticks.recv() => if tick.is_none() { return },
        }
        busy.store(true, Ordering::Release);
        let go_on = run_and_send(&check, &sink, &shutdown).await;
        busy.store(false, Ordering::Release);
        if !go_on {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::test_probe::{Counters, TestProbe};
    use std::sync::atomic::Ordering::SeqCst;

    fn check(name: &str, schedule: Schedule, delay: Duration, counters: &Counters) -> Arc<Check> {
        let probe = TestProbe {
            delay,
            counters: counters.clone(),
        };
        Arc::new(Check::for_test(name, schedule, Duration::from_secs(30), probe))
    }

    #[test]
    fn jitter_stays_small() {
        for _ in 0..100 {
            assert!(initial_jitter(Duration::from_secs(30)) <= Duration::from_secs(1));
            assert!(initial_jitter(Duration::from_secs(2)) <= Duration::from_millis(200));
        }
        assert_eq!(initial_jitter(Duration::from_millis(5)), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn interval_schedule_fires_repeatedly_and_never_overlaps() {
        let fast = Counters::default();
        let slow = Counters::default();
        let checks = vec![
            check("fast", Schedule::Every(Duration::from_secs(10)), Duration::ZERO, &fast),
            // Runs take longer than the interval: ticks are delayed, never concurrent.
            check(
                "slow",
                Schedule::Every(Duration::from_secs(1)),
                Duration::from_millis(2500),
                &slow,
            ),
        ];
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let task = tokio::spawn(run(checks, tx, shutdown.clone()));
        let mut seen = (0, 0);
        while seen.0 < 3 || seen.1 < 5 {
            let r = rx.recv().await.expect("scheduler stopped early");
            if r.name == "fast" { seen.0 += 1 } else { seen.1 += 1 }
        }
        // Third fast run at ~20 s (plus jitter below 1 s): first run was immediate.
        assert!(started.elapsed() >= Duration::from_secs(20), "{:?}", started.elapsed());
        assert!(started.elapsed() < Duration::from_secs(22), "{:?}", started.elapsed());
        assert_eq!(slow.max_active.load(SeqCst), 1, "a check never overlaps itself");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("run returns after shutdown")
            .unwrap();
        while rx.recv().await.is_some() {}
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_drops_in_flight_runs_and_returns() {
        let counters = Counters::default();
        let checks = vec![check(
            "stuck",
            Schedule::Every(Duration::from_secs(5)),
            Duration::from_secs(3600),
            &counters,
        )];
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(checks, tx, shutdown.clone()));
        counters.started.notified().await;
        shutdown.cancel();
        // The in-flight run would take an hour; run() must not wait for it.
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run returned")
            .unwrap();
        assert!(
            rx.recv().await.is_none(),
            "no result from the dropped run, and the sink is released"
        );
    }

    #[tokio::test]
    async fn cron_schedule_every_second_fires_at_least_twice() {
        let counters = Counters::default();
        let schedule = Schedule::Cron("*/1 * * * * *".into());
        let checks = vec![check("cron", schedule, Duration::ZERO, &counters)];
        let (tx, mut rx) = mpsc::channel(8);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(checks, tx, shutdown.clone()));
        for _ in 0..2 {
            let r = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a cron run within 10 s")
                .expect("scheduler running");
            assert_eq!(r.name, "cron");
        }
        assert_eq!(counters.max_active.load(SeqCst), 1);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("run returns after shutdown")
            .unwrap();
    }
}
