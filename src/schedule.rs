//! Ticks at a fixed rate from the start: slot k is due at `start + k * interval`. Slots are counted, not
//! re-based on when a tick ran, so there is no drift; a tick that overruns skips the slots it missed.

use std::time::{Duration, Instant};

pub struct Schedule {
    start: Instant,
    interval: Duration,
    next_slot: u64,
}

impl Schedule {
    /// The first tick is due at `start`.
    pub fn new(start: Instant, interval: Duration) -> Schedule {
        Schedule {
            start,
            interval,
            next_slot: 0,
        }
    }

    pub fn next_due(&self) -> Instant {
        self.start + self.interval * self.next_slot as u32
    }

    /// Call when `now >= next_due()`: moves to the slot after `now` and returns how many slots were
    /// missed (0 when on time).
    pub fn fire(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        let current = (elapsed.as_nanos() / self.interval.as_nanos().max(1)) as u64;
        let skipped = current.saturating_sub(self.next_slot);
        self.next_slot = current.max(self.next_slot) + 1;
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_rate_without_drift() {
        let t0 = Instant::now();
        let s10 = Duration::from_secs(10);
        let mut s = Schedule::new(t0, s10);
        assert_eq!(s.next_due(), t0);
        assert_eq!(s.fire(t0), 0);
        assert_eq!(s.next_due(), t0 + s10);
        // Late by 3 s: the next one is still on the grid.
        assert_eq!(s.fire(t0 + Duration::from_secs(13)), 0);
        assert_eq!(s.next_due(), t0 + Duration::from_secs(20));
    }

    #[test]
    fn overruns_skip_missed_slots() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, Duration::from_secs(1));
        s.fire(t0);
        assert_eq!(s.fire(t0 + Duration::from_millis(3500)), 2);
        assert_eq!(s.next_due(), t0 + Duration::from_secs(4));
    }
}
