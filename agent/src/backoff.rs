//! Capped exponential backoff with full jitter (AWS architecture blog): the
//! wait is uniform in `[0, min(cap, base * 2^attempt)]`. At the cap the wait
//! stays random, so a fleet reconnecting after an outage spreads out instead of
//! stampeding (REFERENCE.md: fleetdm PR #53357 clamped jitter to zero at the cap).
use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// The ceiling for the current attempt: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait, drawn uniformly from `[0, ceiling]`, and advances the attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::rng())
    }

    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Back to the first attempt (after a connection that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling());
            b.next_delay();
        }
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[5], Duration::from_millis(3200));
        assert_eq!(ceilings[6], Duration::from_secs(5));
        assert_eq!(ceilings[9], Duration::from_secs(5));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_random_at_the_cap() {
        let cap = Duration::from_secs(60);
        let mut b = Backoff::new(Duration::from_secs(1), cap);
        for _ in 0..100 {
            b.next_delay(); // far past the cap
        }
        let delays: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= cap));
        let distinct: std::collections::BTreeSet<_> = delays.iter().map(|d| d.as_millis()).collect();
        assert!(
            distinct.len() > 900,
            "delays at the cap must not collapse to a few values"
        );
        let below_half = delays.iter().filter(|d| **d < cap / 2).count();
        assert!(
            (350..=650).contains(&below_half),
            "uniform in [0, cap]: got {below_half} of 1000 below half"
        );
        let mean_ms = delays.iter().map(|d| d.as_millis()).sum::<u128>() / 1000;
        assert!(
            (25_000..=35_000).contains(&mean_ms),
            "mean {mean_ms} ms should be about cap/2"
        );
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        b.attempt = u32::MAX;
        assert!(b.next_delay() <= Duration::from_secs(30));
    }
}
