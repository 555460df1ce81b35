//! Reconnect delays: exponential from 1 s up to a maximum, with jitter so a fleet of devices that lost the
//! same broker does not come back in step.

use std::time::Duration;

pub struct Backoff {
    attempt: u32,
    max: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(max: Duration, seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            max,
            rng: seed | 1,
        }
    }

    /// After a successful CONNACK.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt: a random point in the upper half of `min(max, 2^n s)`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Duration::from_secs(1u64 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ms = self.random() % (half.as_millis() as u64 + 1);
        half + Duration::from_millis(jitter_ms)
    }

    /// xorshift64: enough to spread devices apart, and no dependency. The agent's one source of jitter
    /// (also for Home Assistant re-announcements).
    pub fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(60), 42);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = Duration::from_secs(1 << i).min(Duration::from_secs(60));
            assert!(*d >= ceiling / 2 && *d <= ceiling, "attempt {i}: {d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let mut a = Backoff::new(Duration::from_secs(60), 1);
        let mut b = Backoff::new(Duration::from_secs(60), 2);
        let da: Vec<_> = (0..6).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_ne!(da, db);
    }
}
