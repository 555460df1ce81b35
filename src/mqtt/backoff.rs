//! Retry delays for the engine's event stream: exponential from 1 s up to a maximum, with jitter; and
//! the agent's one source of randomness, [`Rng`]. (The broker's schedule is `reconnect`.)

use std::time::Duration;

/// splitmix64: enough to spread devices apart, and no dependency. Any seed works, and nearby seeds
/// (devices started in the same second) give unrelated sequences.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]`, to the millisecond.
    pub fn upto(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.next() % (max.as_millis() as u64 + 1))
    }
}

pub struct Backoff {
    attempt: u32,
    max: Duration,
    rng: Rng,
}

impl Backoff {
    pub fn new(max: Duration, seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            max,
            rng: Rng::new(seed),
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
        half + self.rng.upto(half)
    }
}

/// A delay for a log line, as `{:.1}` printed its f32 seconds (`2.4`), without float formatting: the
/// agent's only `{:.1}` of a float, whose Grisu/Dragon code and tables are 6.6 KB of the device binary.
pub struct Seconds(pub Duration);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // The f32 times ten is exact in an f64 (24 + 4 bits of mantissa); rounding it to an integer
        // half to even is what `{:.1}` does with the f32's exact decimal expansion.
        let t = f64::from(self.0.as_secs_f32()) * 10.0;
        let whole = t.floor();
        let mut tenths = whole as u128;
        if t - whole > 0.5 || (t - whole == 0.5 && tenths % 2 == 1) {
            tenths += 1;
        }
        write!(f, "{}.{}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_print_as_f32_with_one_decimal() {
        let check =
            |d: Duration| assert_eq!(Seconds(d).to_string(), format!("{:.1}", d.as_secs_f32()));
        for ms in 0..3_000_000 {
            check(Duration::from_millis(ms));
        }
        for ns in [1, 49_999_999, 50_000_000, 150_000_001, 999_999_999] {
            check(Duration::from_nanos(ns));
        }
        for s in [1 << 20, 1 << 24, (1 << 24) + 1, 1 << 40, u64::MAX] {
            check(Duration::new(s, 999_999_999));
        }
    }

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
