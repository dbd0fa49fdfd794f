//! systemd service notifications (sd_notify(3)), used by both daemons:
//! `READY=1` once a daemon does its job, `RELOADING=1` … `READY=1` around a
//! reload, `STOPPING=1` when shutdown begins, and `WATCHDOG=1` pings at half
//! the interval systemd asks for in `WATCHDOG_USEC`.
//!
//! Not under systemd (`NOTIFY_SOCKET` unset) every call is a no-op. A failed
//! send is logged and otherwise ignored: notifications never stop a daemon.
//!
//! Invariant: the watchdog is pinged from a daemon's main loop (a branch of its
//! `select!`), never from a task of its own, so a hung main loop stops pinging
//! and systemd restarts the daemon.
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is up (`READY=1`).
pub fn ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// Tells systemd a reload started (`RELOADING=1` with the monotonic time
/// systemd ≥ 253 expects); follow with [`ready`] when it is over.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING=1", &[NotifyState::Reloading]),
    }
}

/// Tells systemd the daemon is shutting down (`STOPPING=1`).
pub fn stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// One watchdog ping (`WATCHDOG=1`).
pub fn watchdog_ping() {
    if let Err(error) = sd_notify::notify(&[NotifyState::Watchdog]) {
        tracing::debug!(%error, "cannot send WATCHDOG=1 to systemd");
    }
}

fn send(what: &str, state: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, notification = what, "cannot notify systemd");
    }
}

/// The ping interval: half of `WATCHDOG_USEC` when systemd set it for this
/// process (`WATCHDOG_PID` unset or ours, as sd_watchdog_enabled(3) reads
/// them), else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    Some((Duration::from_micros(usec) / 2).max(Duration::from_millis(1)))
}

/// Fires every [`watchdog_interval`], or never when there is no watchdog.
/// Meant for a branch of the main loop's `select!`:
/// `_ = watchdog.tick() => notify::watchdog_ping()`.
pub struct Watchdog {
    interval: Option<tokio::time::Interval>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` / `WATCHDOG_PID`. Must run inside a tokio runtime.
    pub fn from_env() -> Watchdog {
        let interval = watchdog_interval().map(|every| {
            tracing::info!(every = ?every, "systemd watchdog enabled");
            let mut interval = tokio::time::interval(every);
            // A late ping is sent once, not in a burst of catch-up pings.
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        Watchdog { interval }
    }

    /// Whether systemd asked for pings.
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }

    /// Completes when the next ping is due; pending forever without a watchdog.
    pub async fn tick(&mut self) {
        match &mut self.interval {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_interval_is_half_of_watchdog_usec_and_only_for_this_process() {
        assert_eq!(interval_from(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(
            interval_from(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            interval_from(Some("2000000"), Some("1"), 7),
            None,
            "another process's watchdog"
        );
        assert_eq!(interval_from(Some("2000000"), Some("junk"), 7), None);
        assert_eq!(interval_from(Some("1"), None, 7), Some(Duration::from_millis(1)));
        assert_eq!(interval_from(Some("0"), None, 7), None);
        assert_eq!(interval_from(Some("soon"), None, 7), None);
        assert_eq!(interval_from(None, Some("7"), 7), None);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_watchdog_tick_never_completes() {
        let mut w = Watchdog { interval: None };
        assert!(!w.enabled());
        let done = tokio::time::timeout(Duration::from_secs(3600), w.tick()).await;
        assert!(done.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_watchdog_tick_completes_every_interval() {
        let mut w = Watchdog {
            interval: Some(tokio::time::interval(Duration::from_secs(5))),
        };
        w.tick().await; // the first tick is immediate: a ping right at start
        let start = tokio::time::Instant::now();
        w.tick().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
}
