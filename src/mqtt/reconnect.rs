//! When to try the broker again. Pure: attempts, outcomes and instants in, the instant of the next
//! attempt out.
//!
//! A fleet that lost its broker at the same second must not come back in one wave, and a broker that
//! accepts a client and drops it again must not be hammered. Full jitter throughout (AWS, "Exponential
//! Backoff And Jitter"): each delay is uniform in `[0, cap]`, and the cap doubles with each failure up to
//! `reconnect_max_delay_in_seconds`.
//! - Before the first connection the cap starts at 1 s.
//! - Losing a live connection starts the cap at the spread: a fleet that lost its broker together spreads
//!   its first retries over it. It is as long as the failover's bound allows, at most [`SPREAD`] and the
//!   maximum delay: a dead node must be replaced within two keep-alives of its death, which came after the
//!   broker was last heard from, and the connect itself is given half a keep-alive, so the spread is what
//!   is left of 1.5 keep-alives since the broker was last heard from (30 s at the default keep-alive of
//!   60 s, 20 s at 20 s with a tick every 10 s). Never less than two fifths of the keep-alive: a silent
//!   death, noticed by the keep-alive after 1.5 keep-alives, is replaced within 1.9. After a
//!   connection that stayed up [`STABLE`] or longer, that is all: the cap is the spread again, whatever it
//!   was. A connection lost sooner keeps its cap where the failures left it (the spread if that is more),
//!   so a broker that accepts and drops a client sees its retries slow down as for any failure.
//! - Doubling from the spread rather than from 1 s keeps a fleet's second and third attempts spread too
//!   (500 devices, a 20 s outage, the unit test's simulation: 38 attempts in the worst second; 141 with
//!   an earlier schedule whose cap doubled from 1 s after a 24 s spread).
//! - Attempts start at least [`MIN_GAP`] apart (a broker that refuses a CONNACK answers in a
//!   millisecond), and never more than [`MAX_PER_WINDOW`] in any [`WINDOW`] (EMQX's flapping detection
//!   bans a client id past 15 connects a minute).

use super::backoff::Rng;
use std::time::{Duration, Instant};

const BASE: Duration = Duration::from_secs(1);
pub const STABLE: Duration = Duration::from_secs(30);
pub const SPREAD: Duration = Duration::from_secs(30);
pub const MIN_GAP: Duration = Duration::from_secs(1);
pub const WINDOW: Duration = Duration::from_secs(60);
pub const MAX_PER_WINDOW: usize = 15;

pub struct Reconnect {
    /// The bound of the next delay; invariant: at most `max`.
    cap: Duration,
    max: Duration,
    keep_alive: Option<Duration>,
    up_since: Option<Instant>,
    /// The starts of the last [`MAX_PER_WINDOW`] attempts, a ring; `next` is the oldest one's slot.
    starts: [Option<Instant>; MAX_PER_WINDOW],
    next: usize,
    pub rng: Rng,
}

impl Reconnect {
    pub fn new(max: Duration, keep_alive_secs: u16, seed: u64) -> Reconnect {
        Reconnect {
            cap: BASE.min(max),
            max,
            keep_alive: (keep_alive_secs > 0)
                .then(|| Duration::from_secs(u64::from(keep_alive_secs))),
            up_since: None,
            starts: [None; MAX_PER_WINDOW],
            next: 0,
            rng: Rng::new(seed),
        }
    }

    /// An attempt (a TCP connect) starts now.
    pub fn attempt(&mut self, now: Instant) {
        self.starts[self.next] = Some(now);
        self.next = (self.next + 1) % MAX_PER_WINDOW;
    }

    /// The broker accepted us (CONNACK).
    pub fn up(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// An attempt failed: when to make the next.
    pub fn failed(&mut self, now: Instant) -> Instant {
        let delay = self.rng.upto(self.cap);
        self.cap = self.cap.saturating_mul(2).min(self.max);
        self.not_before(now + delay)
    }

    /// A live connection was lost, the broker last heard from at `heard`: when to make the next attempt.
    pub fn lost(&mut self, now: Instant, heard: Option<Instant>) -> Instant {
        let stable = self
            .up_since
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE);
        let spread = self.spread_after(now, heard);
        self.cap = if stable { spread } else { self.cap.max(spread) };
        self.failed(now)
    }

    /// What is left of 1.5 keep-alives since the broker was last heard from, between two fifths of the
    /// keep-alive and [`SPREAD`], and at most `max`; [`SPREAD`] without a keep-alive.
    fn spread_after(&self, now: Instant, heard: Option<Instant>) -> Duration {
        let most = SPREAD.min(self.max);
        let Some(k) = self.keep_alive else {
            return most;
        };
        let silence = heard.map_or(k * 3 / 2, |h| now.saturating_duration_since(h));
        (k * 3 / 2).saturating_sub(silence).max(k * 2 / 5).min(most)
    }

    /// `at`, or later where the gap or the window's count asks for it.
    fn not_before(&self, at: Instant) -> Instant {
        let last = self.starts[(self.next + MAX_PER_WINDOW - 1) % MAX_PER_WINDOW];
        // Full: the oldest of the last 15 must leave the window before another may start.
        let oldest = self.starts[self.next];
        [
            Some(at),
            last.map(|t| t + MIN_GAP),
            oldest.map(|t| t + WINDOW),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts that all fail at once, from `t0` for `span`: their starts.
    fn failing(r: &mut Reconnect, t0: Instant, span: Duration) -> Vec<Instant> {
        let mut at = t0;
        let mut starts = Vec::new();
        while at < t0 + span {
            r.attempt(at);
            starts.push(at);
            at = r.failed(at);
        }
        starts
    }

    #[test]
    fn full_jitter_within_a_doubling_cap() {
        let t0 = Instant::now();
        // Far apart, so neither the gap nor the window moves them: the delays are the jitter's own.
        let max = Duration::from_secs(60);
        let mut caps_seen = [Duration::ZERO; 8];
        let mut sums = [0u128; 8];
        const RUNS: u32 = 2000;
        for seed in 0..RUNS {
            let mut r = Reconnect::new(max, 60, u64::from(seed));
            for (n, (seen, sum)) in caps_seen.iter_mut().zip(&mut sums).enumerate() {
                let d = r.failed(t0) - t0;
                let cap = Duration::from_secs(1 << n).min(max);
                assert!(d <= cap, "failure {n}: {d:?} over {cap:?}");
                *seen = (*seen).max(d);
                *sum += d.as_millis();
            }
        }
        for n in 0..8 {
            let cap = Duration::from_secs(1 << n).min(max);
            // Uniform: it reaches near the cap, and its mean is near half of it.
            assert!(caps_seen[n] * 100 >= cap * 98, "{n}: {:?}", caps_seen[n]);
            let mean = sums[n] / u128::from(RUNS);
            let half = cap.as_millis() / 2;
            assert!(mean.abs_diff(half) * 10 < half, "{n}: mean {mean} ms");
        }
    }

    #[test]
    fn never_more_than_15_attempts_a_minute_nor_two_within_a_second() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(Duration::from_secs(1), 0, 7);
        let starts = failing(&mut r, t0, Duration::from_secs(600));
        for pair in starts.windows(2) {
            assert!(pair[1] - pair[0] >= MIN_GAP);
        }
        for (i, &s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|&&t| t < s + WINDOW).count();
            assert!(in_window <= MAX_PER_WINDOW, "{in_window} from {:?}", s - t0);
        }
        // The limit is what holds it back: without it, a 1 s cap would allow some 60 a minute.
        assert!(starts.len() >= 10 * MAX_PER_WINDOW - 1, "{}", starts.len());
    }

    #[test]
    fn the_schedule_resets_only_after_30_s_up() {
        let t0 = Instant::now();
        let max = Duration::from_secs(300);
        let mut r = Reconnect::new(max, 60, 3);
        failing(&mut r, t0, Duration::from_secs(200));
        // Up for 29 s and lost: one more failure, its cap well above the spread.
        let up = t0 + Duration::from_secs(1000);
        r.attempt(up);
        r.up(up);
        let lost = up + STABLE - Duration::from_secs(1);
        let mut later = 0;
        for _ in 0..20 {
            r.up(up);
            later += usize::from(r.lost(lost, Some(lost)) - lost > SPREAD);
        }
        assert!(later >= 15, "{later} of 20 beyond the spread");
        // Up for 30 s: the first retry within the spread, whatever the cap was; that failing, the next
        // within twice the spread, then four times; up again for 30 s and lost, the spread again.
        let mut beyond_spread = 0;
        for seed in 0..200 {
            let mut r = Reconnect::new(max, 60, seed);
            failing(&mut r, t0, Duration::from_secs(200));
            r.attempt(up);
            r.up(up);
            let lost = up + STABLE;
            // Heard from 20 s before: a spread of 70 s less that, at most 30 s.
            let heard = Some(lost - Duration::from_secs(20));
            let spread = r.spread_after(lost, heard);
            assert_eq!(spread, SPREAD);
            let retry = r.lost(lost, heard);
            assert!(retry - lost <= spread);
            r.attempt(retry);
            let again = r.failed(retry);
            assert!(again - retry <= spread * 2);
            beyond_spread += usize::from(again - retry > spread);
            r.attempt(again);
            let third = r.failed(again);
            assert!(third - again <= spread * 4);
            r.attempt(third);
            r.up(third);
            let lost = third + STABLE;
            assert!(r.lost(lost, heard) - lost <= spread, "seed {seed}");
        }
        // Uniform over twice the spread: about half of the second retries beyond the spread.
        assert!(
            (70..=130).contains(&beyond_spread),
            "{beyond_spread} of 200"
        );
    }

    #[test]
    fn any_lost_connection_is_retried_over_at_least_the_spread() {
        // A fleet that started together and lost its broker 10 s later: its caps are still near 1 s,
        // but its first retries spread as after a stable connection.
        let t0 = Instant::now();
        let mut beyond_two_seconds = 0;
        for seed in 0..200 {
            let mut r = Reconnect::new(Duration::from_secs(60), 60, seed);
            r.attempt(t0);
            r.up(t0);
            let lost = t0 + Duration::from_secs(10);
            let retry = r.lost(lost, Some(lost)) - lost;
            assert!(retry <= SPREAD, "seed {seed}: {retry:?}");
            beyond_two_seconds += usize::from(retry > Duration::from_secs(2));
        }
        // Uniform over 30 s: fourteen fifteenths beyond 2 s.
        assert!(beyond_two_seconds > 150, "{beyond_two_seconds} of 200");
    }

    #[test]
    fn the_spread_is_what_the_failover_bound_leaves() {
        let t0 = Instant::now();
        let spread = |max: u64, keep_alive: u16, silence: u64| {
            let r = Reconnect::new(Duration::from_secs(max), keep_alive, 1);
            let now = t0 + Duration::from_secs(1000);
            r.spread_after(now, Some(now - Duration::from_secs(silence)))
        };
        let s = Duration::from_secs;
        // The default keep-alive: 30 s, however quiet the link was up to a keep-alive.
        assert_eq!(spread(60, 60, 0), s(30));
        assert_eq!(spread(60, 60, 60), s(30));
        // A silent death noticed by the keep-alive: the least spread, two fifths of it.
        assert_eq!(spread(60, 60, 90), s(24));
        assert_eq!(spread(60, 60, 300), s(24));
        // A cluster's 20 s keep-alive with a tick every 10 s; the test's 10 s with a tick a second.
        assert_eq!(spread(60, 20, 10), s(20));
        assert_eq!(spread(60, 10, 1), s(14));
        // No keep-alive: 30 s; the maximum delay bounds it all.
        assert_eq!(spread(60, 0, 5), s(30));
        assert_eq!(spread(10, 60, 0), s(10));
        // Nothing heard at all: the least.
        let r = Reconnect::new(s(60), 20, 1);
        assert_eq!(r.spread_after(t0, None), s(8));
        // Whatever the silence, the death (no earlier than the last word heard) is replaced within
        // 1.5 keep-alives plus the connect, or, at the least spread, within 1.9 of them.
        for keep_alive in [5u16, 10, 20, 60, 120] {
            let k = s(u64::from(keep_alive));
            for silence in 0..=u64::from(keep_alive) * 3 {
                let sp = spread(3600, keep_alive, silence);
                let back = s(silence) + sp;
                assert!(
                    back <= k * 3 / 2
                        || (back <= k * 19 / 10 && sp <= k * 2 / 5)
                        || silence * 10 > u64::from(keep_alive) * 15,
                    "keep-alive {keep_alive}, silence {silence}: {sp:?}"
                );
            }
        }
    }

    #[test]
    fn the_least_spread_keeps_within_two_fifths_of_the_keep_alive_and_the_maximum() {
        // The least: nothing heard, as after a silent death.
        let spread = |max: u64, keep_alive: u16| {
            Reconnect::new(Duration::from_secs(max), keep_alive, 1)
                .spread_after(Instant::now(), None)
        };
        assert_eq!(spread(60, 60), Duration::from_secs(24));
        assert_eq!(spread(60, 300), SPREAD);
        assert_eq!(spread(60, 0), SPREAD);
        assert_eq!(spread(60, 10), Duration::from_secs(4));
        assert_eq!(spread(1, 60), Duration::from_secs(1));
    }

    #[test]
    fn seeds_differ() {
        let t0 = Instant::now();
        let delays = |seed| {
            let mut r = Reconnect::new(Duration::from_secs(60), 60, seed);
            (0..6).map(|_| r.failed(t0)).collect::<Vec<_>>()
        };
        assert_ne!(delays(1), delays(2));
        assert_eq!(delays(1), delays(1));
    }

    /// 500 devices that lost their broker in the same second (each up for minutes), the broker away for
    /// `outage`: the attempts of the worst second, and the last device's return after the broker's.
    fn fleet(outage: Duration, max: Duration) -> (usize, Duration) {
        let t0 = Instant::now();
        let keep_alive = 60;
        let back = t0 + outage;
        let mut per_second = vec![0usize; 4000];
        let mut last_up = t0;
        for seed in 0..500 {
            let mut r = Reconnect::new(max, keep_alive, seed);
            let up = t0 - Duration::from_secs(300);
            r.attempt(up);
            r.up(up);
            // Heard from at the last tick, 5 s before.
            let mut at = r.lost(t0, Some(t0 - Duration::from_secs(5)));
            loop {
                r.attempt(at);
                per_second[(at - t0).as_secs() as usize] += 1;
                if at >= back {
                    last_up = last_up.max(at);
                    break;
                }
                at = r.failed(at);
            }
        }
        let peak = per_second.into_iter().max().unwrap();
        (peak, last_up.saturating_duration_since(back))
    }

    #[test]
    fn a_fleet_returns_spread_out_and_within_the_spread_plus_the_cap() {
        for secs in [5, 20, 60, 200] {
            let (peak, after) = fleet(Duration::from_secs(secs), Duration::from_secs(60));
            eprintln!(
                "outage {secs} s: peak {peak} attempts/s, last back {after:?} after the broker"
            );
            // The bounds: a tenth of the fleet a second; back within the spread plus the cap.
            assert!(peak <= 50, "outage {secs} s: {peak} attempts in one second");
            assert!(
                after <= Duration::from_secs(30 + 60),
                "outage {secs} s: {after:?}"
            );
        }
    }

    #[test]
    fn a_long_maximum_delay_does_not_keep_a_fleet_away_after_a_short_outage() {
        // The cap doubles from the spread: a 20 s outage costs a device a few doublings (30, 60, 120,
        // 240 s caps for attempts that all fell inside it), not the hour the maximum allows.
        let (peak, after) = fleet(Duration::from_secs(20), Duration::from_secs(3600));
        eprintln!("maximum 3600 s, outage 20 s: peak {peak} attempts/s, last back {after:?}");
        assert!(peak <= 50, "{peak} attempts in one second");
        assert!(after <= Duration::from_secs(30 * 16), "{after:?}");
    }
}
