//! Bounds the audit records of refused requests. Every failed authentication
//! is audited, but a client sending bad tokens in a loop must not grow the
//! (append-only, never pruned) log or hog SQLite's one writer without limit.
//! A token bucket admits `per_minute` denials per minute (bursting up to that
//! many); the ones beyond are counted, and the count goes into the next
//! recorded denial (`details.suppressed_before`), so none vanishes silently.
//!
//! The bucket is per control-plane process and global, not per client (the
//! REST layer does not know client addresses); per-token rate limits come
//! with the API hardening. Time is tokio's, so tests run it paused.
use std::sync::Mutex;

use tokio::time::Instant;

/// Whether to record one denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Record it, noting how many were suppressed since the last recorded one.
    Record { suppressed_before: u64 },
    /// Count it only; `first` is true for the first of a suppressed run.
    Suppress { first: bool },
}

/// One token in bucket units: the bucket gains `per_minute` units a
/// nanosecond, so refills are exact integer arithmetic.
const UNITS_PER_TOKEN: u128 = 60_000_000_000;

/// A token bucket of denial records.
#[derive(Debug)]
pub struct DenialLimiter {
    per_minute: u128,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    units: u128,
    last: Instant,
    suppressed: u64,
}

impl DenialLimiter {
    /// At most `per_minute` (≥ 1) recorded denials a minute, bursting to as many.
    pub fn per_minute(per_minute: u32) -> Self {
        let per_minute = u128::from(per_minute.max(1));
        DenialLimiter {
            per_minute,
            state: Mutex::new(State {
                units: per_minute * UNITS_PER_TOKEN,
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// Decides about one denial, now.
    pub fn admit(&self) -> Admission {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed_ns = now.saturating_duration_since(s.last).as_nanos();
        let capacity = self.per_minute * UNITS_PER_TOKEN;
        s.units = s
            .units
            .saturating_add(elapsed_ns.saturating_mul(self.per_minute))
            .min(capacity);
        s.last = now;
        if s.units >= UNITS_PER_TOKEN {
            s.units -= UNITS_PER_TOKEN;
            Admission::Record {
                suppressed_before: std::mem::take(&mut s.suppressed),
            }
        } else {
            s.suppressed += 1;
            Admission::Suppress {
                first: s.suppressed == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_one_per_refill_and_the_suppressed_are_counted() {
        let limiter = DenialLimiter::per_minute(3);
        for _ in 0..3 {
            assert_eq!(limiter.admit(), Admission::Record { suppressed_before: 0 });
        }
        assert_eq!(limiter.admit(), Admission::Suppress { first: true });
        assert_eq!(limiter.admit(), Admission::Suppress { first: false });
        // 3 a minute: one token every 20 s.
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(limiter.admit(), Admission::Suppress { first: false });
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(limiter.admit(), Admission::Record { suppressed_before: 3 });
        assert_eq!(limiter.admit(), Admission::Suppress { first: true });
        // A long quiet period refills the burst, never beyond it.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(limiter.admit(), Admission::Record { suppressed_before: 1 });
        assert_eq!(limiter.admit(), Admission::Record { suppressed_before: 0 });
        assert_eq!(limiter.admit(), Admission::Record { suppressed_before: 0 });
        assert_eq!(limiter.admit(), Admission::Suppress { first: true });
    }
}
