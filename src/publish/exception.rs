//! Report by exception (`"report": "on_change"`): which of a container's figures and lifecycle values
//! to publish this tick.
//!
//! Most figures of a resting container do not change between ticks, and sending them again carries no
//! information but costs a cellular device its bytes. A figure goes out when it has moved beyond its
//! deadband since the value last *published* (so a slow drift is reported once it adds up), and every
//! figure goes out again at least every heartbeat, so a dashboard's last-seen time and Home Assistant's
//! `expire_after` keep working. Lifecycle values go out on every change; `uptime_in_seconds`, which
//! changes every tick by design, only with the heartbeat, or when it went back (the container started
//! again). In `per_service` mode the service's payload goes out with all its figures when any of them is
//! due. A figure absent from a record (docker had no sample, a stopped container, a tick of lifecycle
//! changes) keeps its last published value: it is judged against it when it comes back.
//!
//! Pure: a tick's instant and each container's figures go in, which of them to publish comes out. What
//! it hands out counts as published; the caller calls [`Exceptions::reset`] when that may not be true
//! (a reconnect) and when a consumer lost what it had (Home Assistant's birth): every figure then goes
//! out once, a fresh baseline. State is kept per topic root,
//! only for the containers the last collection listed.
//!
//! Deadbands are integers, in the units the payloads carry: percentages in hundredths (as published,
//! two decimals), bytes and counts as they are.

use crate::publish::discovery::PayloadMode;
use crate::publish::lifecycle::Topic;
use crate::publish::payload::{hundredths, Field};
use crate::stats::{Figures, Metric, Value};
use std::time::{Duration, Instant};

/// How much a figure must move to be published again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadbands {
    /// CPU, in hundredths of a percentage point.
    pub cpu: u64,
    /// Memory usage, in hundredths of a percent of the value last published.
    pub memory: u64,
    /// Network counters, bytes.
    pub network: u64,
    /// Block I/O counters, bytes.
    pub block_io: u64,
    /// The device's CPU temperature, in hundredths of a degree Celsius.
    pub temperature: u64,
    /// The device's storage used, bytes.
    pub storage: u64,
}

/// The `report` keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// `on_change`: by exception; otherwise every figure every tick.
    pub on_change: bool,
    pub heartbeat: Duration,
    pub deadbands: Deadbands,
}

pub const DEFAULT_HEARTBEAT_SECONDS: u64 = 900;
pub const DEFAULT_DEADBANDS: Deadbands = Deadbands {
    cpu: 100,
    memory: 200,
    network: 1 << 20,
    block_io: 1 << 20,
    temperature: 100,
    storage: 16 << 20,
};

/// Which of one container's values to publish: a bit per metric, then one per lifecycle topic; and of
/// those, which only repeat a value already published (the heartbeat), not news (a crossing, a change,
/// a first value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    all: u32,
    news: u32,
}

const LIFE_SHIFT: usize = Metric::ALL.len();
const _: () = assert!(LIFE_SHIFT + Topic::ALL.len() <= 32);

impl Picked {
    pub const ALL: Picked = Picked {
        all: u32::MAX,
        news: u32::MAX,
    };

    pub fn metric(self, m: Metric) -> bool {
        self.all & 1 << m as usize != 0
    }

    pub fn life(self, t: Topic) -> bool {
        self.all & 1 << (LIFE_SHIFT + t as usize) != 0
    }

    /// Picked for the heartbeat alone: the value as last published, unchanged within its deadband.
    pub fn repeat_metric(self, m: Metric) -> bool {
        self.metric(m) && self.news & 1 << m as usize == 0
    }

    pub fn repeat_life(self, t: Topic) -> bool {
        self.life(t) && self.news & 1 << (LIFE_SHIFT + t as usize) == 0
    }

    /// In `per_service` mode a payload is one message: a repeat only when all of it is.
    pub fn all_repeat(self) -> bool {
        self.news == 0
    }

    pub fn any(self) -> bool {
        self.all != 0
    }
}

/// A value as last published, and when (seconds from [`Exceptions`]' origin).
#[derive(Clone, Copy)]
struct Sent<T> {
    value: T,
    at: u32,
}

/// What was last published on one topic root.
struct Tracked {
    root: Box<str>,
    /// Listed by the collection under way.
    seen: bool,
    /// Percentages in hundredths, bytes and counts as they are.
    metrics: [Option<Sent<u64>>; Metric::ALL.len()],
    life: [Option<Sent<Field<'static>>>; Topic::ALL.len()],
}

pub struct Exceptions {
    heartbeat: u32,
    deadbands: Deadbands,
    per_service: bool,
    /// Instants are kept as seconds from the first tick: 4 bytes a value rather than 16.
    origin: Option<Instant>,
    /// The tick under way, in those seconds.
    now: u32,
    /// The tick under way is a collection, which lists every container: those it did not list are gone.
    collection: bool,
    /// By root, sorted: a map of these cost the device binary kilobytes a vector does not.
    tracked: Vec<Tracked>,
}

impl Exceptions {
    pub fn new(report: &Report, mode: PayloadMode) -> Exceptions {
        Exceptions {
            heartbeat: report.heartbeat.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
            deadbands: report.deadbands,
            per_service: mode == PayloadMode::PerService,
            origin: None,
            now: 0,
            collection: false,
            tracked: Vec::new(),
        }
    }

    /// A tick starts at `now`; `collection` when it lists every container (not a tick of lifecycle
    /// changes between collections).
    pub fn begin(&mut self, now: Instant, collection: bool) {
        let origin = *self.origin.get_or_insert(now);
        // Rounded: ticks due every 10 s arrive a little early or late, and a heartbeat's boundary must
        // not move them into the epoch before.
        let ms = now.saturating_duration_since(origin).as_millis();
        self.now = ((ms + 500) / 1000).min(u128::from(u32::MAX)) as u32;
        self.collection = collection;
    }

    /// The tick is over: a collection's end forgets the containers it did not list.
    pub fn end(&mut self) {
        if self.collection {
            self.tracked.retain(|t| t.seen);
        }
        for t in &mut self.tracked {
            t.seen = false;
        }
        self.collection = false;
    }

    /// Nothing counts as published any more: the next tick is a full baseline.
    pub fn reset(&mut self) {
        self.tracked.clear();
    }

    /// Which of the values of the container published on `root` go out now; they count as published.
    pub fn judge(
        &mut self,
        root: &str,
        figures: &Figures,
        life: &[Option<(Topic, Field<'static>)>],
    ) -> Picked {
        let (now, heartbeat, deadbands) = (self.now, self.heartbeat, self.deadbands);
        let per_service = self.per_service;
        let t = self.tracked(root);
        t.seen = true;
        // One heartbeat for all: a figure is due when a heartbeat epoch (counted from the first tick)
        // has begun since it was last published. Everything due leaves in the same tick, so a resting
        // device sends one burst per heartbeat, in as few segments and acknowledgements as can be, and
        // no figure waits longer than a heartbeat.
        let due = |at: u32| now / heartbeat > at / heartbeat;
        let (mut picked, mut news) = (0u32, 0u32);
        for (m, v) in figures.iter() {
            let new =
                t.metrics[m as usize].is_none_or(|s| crossed(&deadbands, m, s.value, code(v)));
            let due = t.metrics[m as usize].is_some_and(|s| due(s.at));
            news |= u32::from(new) << m as usize;
            picked |= u32::from(new || due) << m as usize;
        }
        // The percentage is usage over limit: it goes out with either, as a consumer reads them together.
        // Without a usage figure, it is held to the memory deadband itself.
        let bit = |m: Metric| 1u32 << m as usize;
        let has = |m: Metric| figures.get(m).is_some();
        if has(Metric::MemoryPercent) && has(Metric::MemoryUsage) {
            let with = bit(Metric::MemoryUsage) | bit(Metric::MemoryLimit);
            let sent = t.metrics[Metric::MemoryPercent as usize];
            let percent = bit(Metric::MemoryPercent);
            let new = news & with != 0 || sent.is_none();
            let follows = new || picked & with != 0 || sent.is_some_and(|s| due(s.at));
            picked = picked & !percent | if follows { percent } else { 0 };
            news = news & !percent | if new { percent } else { 0 };
        }
        for (topic, field) in life.iter().flatten() {
            let sent = t.life[*topic as usize];
            let new = sent.is_none_or(|s| changed(*topic, s.value, *field));
            let pick = new || sent.is_some_and(|s| due(s.at));
            news |= u32::from(new) << (LIFE_SHIFT + *topic as usize);
            picked |= u32::from(pick) << (LIFE_SHIFT + *topic as usize);
        }
        if per_service && picked != 0 {
            picked = u32::MAX;
            news = if news != 0 { u32::MAX } else { 0 };
        }
        let picked = Picked { all: picked, news };
        for (m, v) in figures.iter().filter(|(m, _)| picked.metric(*m)) {
            t.metrics[m as usize] = Some(Sent {
                value: code(v),
                at: now,
            });
        }
        for (topic, field) in life.iter().flatten() {
            let slot = &mut t.life[*topic as usize];
            if picked.life(*topic) {
                *slot = Some(Sent {
                    value: *field,
                    at: now,
                });
            } else if let Some(s) = slot.as_mut().filter(|_| *topic == Topic::Uptime) {
                // The uptime seen, not published: it going back is how a restart shows.
                s.value = *field;
            }
        }
        picked
    }

    /// How many topic roots are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.tracked.len()
    }

    fn tracked(&mut self, root: &str) -> &mut Tracked {
        let i = match self.tracked.binary_search_by(|t| (*t.root).cmp(root)) {
            Ok(i) => i,
            Err(i) => {
                let fresh = Tracked {
                    root: root.into(),
                    seen: false,
                    metrics: [None; Metric::ALL.len()],
                    life: [None; Topic::ALL.len()],
                };
                self.tracked.insert(i, fresh);
                i
            }
        };
        &mut self.tracked[i]
    }
}

/// A figure as compared: what its payload says, percentages in hundredths.
fn code(v: Value) -> u64 {
    match v {
        Value::Count(n) => n,
        Value::Percent(p) => hundredths(p).unwrap_or(0),
        // Shifted by 2^63, so that differences between negative and positive values stay right.
        Value::Hundredths(h) => (h as u64).wrapping_add(1 << 63),
        Value::Flag(b) => u64::from(b),
    }
}

/// The device's load averages have a deadband of their own, built in: 0.5 (in hundredths, as published).
/// A load moves by whole runnable tasks, so 0.5 is a change a person would notice.
const LOAD_DEADBAND: u64 = 50;

/// Moved beyond its deadband from `last` (published) to `now`.
fn crossed(d: &Deadbands, m: Metric, last: u64, now: u64) -> bool {
    let moved = last.abs_diff(now);
    match m {
        Metric::CpuPercent => moved > d.cpu,
        // Relative: `memory` hundredths of a percent of the last value. Wide, so nothing overflows.
        Metric::MemoryUsage | Metric::MemoryPercent => {
            u128::from(moved) * 10_000 > u128::from(last) * u128::from(d.memory)
        }
        Metric::NetworkReceived | Metric::NetworkSent => moved > d.network,
        Metric::BlockRead | Metric::BlockWritten => moved > d.block_io,
        Metric::LoadAverage1m | Metric::LoadAverage5m | Metric::LoadAverage15m => {
            moved > LOAD_DEADBAND
        }
        Metric::CpuTemperature => moved > d.temperature,
        Metric::StorageUsed => moved > d.storage,
        // Swap is memory: the same relative deadband.
        Metric::SwapUsage => u128::from(moved) * 10_000 > u128::from(last) * u128::from(d.memory),
        // Uptime grows every tick by design: with the heartbeat, or at once after a reboot.
        Metric::Uptime => now < last,
        Metric::MemoryLimit
        | Metric::Pids
        | Metric::SwapTotal
        | Metric::StorageTotal
        | Metric::UnderVoltage
        | Metric::FrequencyCapped
        | Metric::Throttled
        | Metric::SoftTemperatureLimit
        | Metric::UnderVoltageSinceBoot
        | Metric::FrequencyCappedSinceBoot
        | Metric::ThrottledSinceBoot
        | Metric::SoftTemperatureLimitSinceBoot => moved > 0,
    }
}

/// A lifecycle value changed in a way worth a message: any change, but for uptime only a restart.
fn changed(topic: Topic, last: Field, now: Field) -> bool {
    match (topic, last, now) {
        (Topic::Uptime, Field::Count(last), Field::Count(now)) => now < last,
        _ => last != now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::lifecycle::{Lifecycle, State};

    const ROOT: &str = "root/dev/telemetry/system/web";
    /// The nine figures a container has (the rest of `Metric::ALL` are the device's).
    const CONTAINER_METRICS: &[Metric] = Metric::ALL.split_at(9).0;

    fn report(heartbeat: u64) -> Report {
        Report {
            on_change: true,
            heartbeat: Duration::from_secs(heartbeat),
            deadbands: DEFAULT_DEADBANDS,
        }
    }

    fn figures(values: &[(Metric, Value)]) -> Figures {
        let mut f = Figures::default();
        for (m, v) in values {
            f.set(*m, *v);
        }
        f
    }

    /// A filter with `base` published at second 0.
    fn baseline(mode: PayloadMode, base: &Figures) -> (Exceptions, Instant) {
        let mut x = Exceptions::new(&report(900), mode);
        let t0 = Instant::now();
        x.begin(t0, true);
        let p = x.judge(ROOT, base, &[]);
        assert!(base.iter().all(|(m, _)| p.metric(m)), "all at first");
        x.end();
        (x, t0)
    }

    /// The metrics picked at `secs` for `now`.
    fn tick(x: &mut Exceptions, t0: Instant, secs: u64, now: &Figures) -> Vec<Metric> {
        x.begin(t0 + Duration::from_secs(secs), true);
        let p = x.judge(ROOT, now, &[]);
        x.end();
        Metric::ALL.into_iter().filter(|m| p.metric(*m)).collect()
    }

    fn every_metric() -> Figures {
        figures(&[
            (Metric::CpuPercent, Value::Percent(5.0)),
            (Metric::MemoryPercent, Value::Percent(10.0)),
            (Metric::MemoryUsage, Value::Count(100 << 20)),
            (Metric::MemoryLimit, Value::Count(1000 << 20)),
            (Metric::NetworkReceived, Value::Count(10_000_000)),
            (Metric::NetworkSent, Value::Count(10_000_000)),
            (Metric::BlockRead, Value::Count(10_000_000)),
            (Metric::BlockWritten, Value::Count(10_000_000)),
            (Metric::Pids, Value::Count(3)),
        ])
    }

    fn with(base: &Figures, m: Metric, v: Value) -> Figures {
        let mut f = base.clone();
        f.set(m, v);
        f
    }

    #[test]
    fn each_deadband_just_below_and_just_above() {
        use Metric::*;
        let base = every_metric();
        let mib = 1u64 << 20;
        // (metric, just inside its deadband, just beyond it, what goes out with it)
        let cases: &[(Metric, Value, Value, &[Metric])] = &[
            (CpuPercent, Value::Percent(6.0), Value::Percent(6.01), &[]),
            (CpuPercent, Value::Percent(4.0), Value::Percent(3.99), &[]),
            // 2 % of 100 MiB is 2,097,152 bytes.
            (
                MemoryUsage,
                Value::Count((100 << 20) + 2_097_152),
                Value::Count((100 << 20) + 2_097_153),
                &[MemoryPercent],
            ),
            (
                MemoryUsage,
                Value::Count((100 << 20) - 2_097_152),
                Value::Count((100 << 20) - 2_097_153),
                &[MemoryPercent],
            ),
            (
                NetworkReceived,
                Value::Count(10_000_000 + mib),
                Value::Count(10_000_001 + mib),
                &[],
            ),
            (
                NetworkSent,
                Value::Count(10_000_000 + mib),
                Value::Count(10_000_001 + mib),
                &[],
            ),
            (
                BlockRead,
                Value::Count(10_000_000 + mib),
                Value::Count(10_000_001 + mib),
                &[],
            ),
            (
                BlockWritten,
                Value::Count(10_000_000 - mib),
                Value::Count(9_999_999 - mib),
                &[],
            ),
            (Pids, Value::Count(3), Value::Count(4), &[]),
            (
                MemoryLimit,
                Value::Count(1000 << 20),
                Value::Count((1000 << 20) + 1),
                &[MemoryPercent],
            ),
        ];
        for &(m, inside, beyond, also) in cases {
            let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
            assert_eq!(
                tick(&mut x, t0, 10, &with(&base, m, inside)),
                [],
                "{m:?} inside"
            );
            let mut expected = vec![m];
            expected.extend_from_slice(also);
            expected.sort_by_key(|m| *m as usize);
            assert_eq!(
                tick(&mut x, t0, 20, &with(&base, m, beyond)),
                expected,
                "{m:?} beyond"
            );
        }
    }

    #[test]
    fn a_slow_drift_is_reported_once_it_adds_up() {
        let base = every_metric();
        let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
        let cpu = |p| with(&base, Metric::CpuPercent, Value::Percent(p));
        // 0.4 points a tick: never beyond 1 from one tick to the next, but from the value published.
        assert_eq!(tick(&mut x, t0, 10, &cpu(5.4)), []);
        assert_eq!(tick(&mut x, t0, 20, &cpu(5.8)), []);
        assert_eq!(tick(&mut x, t0, 30, &cpu(6.2)), [Metric::CpuPercent]);
        // Now measured from 6.2.
        assert_eq!(tick(&mut x, t0, 40, &cpu(7.0)), []);
        assert_eq!(tick(&mut x, t0, 50, &cpu(7.21)), [Metric::CpuPercent]);
    }

    #[test]
    fn every_figure_goes_out_again_with_the_heartbeat() {
        let base = every_metric();
        let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
        assert_eq!(tick(&mut x, t0, 899, &base), []);
        assert_eq!(tick(&mut x, t0, 900, &base), CONTAINER_METRICS);
        // A figure published by exception goes out again with everything else at the next heartbeat.
        let busy = with(&base, Metric::Pids, Value::Count(9));
        assert_eq!(tick(&mut x, t0, 1000, &busy), [Metric::Pids]);
        assert_eq!(tick(&mut x, t0, 1799, &busy), []);
        assert_eq!(tick(&mut x, t0, 1800, &busy), CONTAINER_METRICS);
        assert_eq!(tick(&mut x, t0, 1900, &busy), []);
    }

    #[test]
    fn figures_first_published_a_tick_apart_share_one_heartbeat() {
        let base = every_metric();
        let mut x = Exceptions::new(&report(900), PayloadMode::PerMetric);
        let t0 = Instant::now();
        x.begin(t0, true);
        assert!(x.judge(ROOT, &base, &[]).any());
        x.end();
        // A second container appears a tick later, and ticks come a few milliseconds early or late.
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut judge = |ms: u64, root: &str| {
            x.begin(at(ms), true);
            let p = x.judge(root, &base, &[]);
            x.judge(if root == ROOT { "other" } else { ROOT }, &base, &[]);
            x.end();
            p.any()
        };
        assert!(judge(9_996, "other"), "the newcomer's baseline");
        assert!(!judge(890_004, "other"));
        assert!(judge(899_997, "other"), "one heartbeat for both, at 900 s");
        assert!(!judge(909_998, "other"));
    }

    #[test]
    fn the_devices_figures_have_deadbands_of_their_own() {
        use Metric::*;
        let base = figures(&[
            (LoadAverage1m, Value::Hundredths(100)),
            (CpuTemperature, Value::Hundredths(-50)),
            (SwapUsage, Value::Count(100 << 20)),
            (StorageUsed, Value::Count(1 << 30)),
            (StorageTotal, Value::Count(8 << 30)),
            (Uptime, Value::Count(1000)),
            (Throttled, Value::Flag(false)),
        ]);
        let cases = [
            (
                LoadAverage1m,
                Value::Hundredths(150),
                Value::Hundredths(151),
            ),
            // From -0.5 °C: 0.5 °C is 1.00 away (inside), 0.51 °C beyond.
            (CpuTemperature, Value::Hundredths(50), Value::Hundredths(51)),
            (
                SwapUsage,
                Value::Count(102 << 20),
                Value::Count((102 << 20) + 1),
            ),
            (
                StorageUsed,
                Value::Count((1 << 30) + (16 << 20)),
                Value::Count((1 << 30) + (16 << 20) + 1),
            ),
            (
                StorageTotal,
                Value::Count(8 << 30),
                Value::Count((8 << 30) + 1),
            ),
            (Throttled, Value::Flag(false), Value::Flag(true)),
        ];
        for (m, inside, beyond) in cases {
            let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
            assert_eq!(tick(&mut x, t0, 10, &with(&base, m, inside)), [], "{m:?}");
            assert_eq!(tick(&mut x, t0, 20, &with(&base, m, beyond)), [m], "{m:?}");
        }
        // The temperature's and storage's are keys: 3 °C and 1 KiB here.
        let mut r = report(900);
        (r.deadbands.temperature, r.deadbands.storage) = (300, 1024);
        for (m, inside, beyond) in [
            (
                CpuTemperature,
                Value::Hundredths(250),
                Value::Hundredths(251),
            ),
            (
                StorageUsed,
                Value::Count((1 << 30) + 1024),
                Value::Count((1 << 30) + 1025),
            ),
        ] {
            let mut x = Exceptions::new(&r, PayloadMode::PerMetric);
            let t0 = Instant::now();
            x.begin(t0, true);
            x.judge(ROOT, &base, &[]);
            x.end();
            assert_eq!(tick(&mut x, t0, 10, &with(&base, m, inside)), [], "{m:?}");
            assert_eq!(tick(&mut x, t0, 20, &with(&base, m, beyond)), [m], "{m:?}");
        }
        // Uptime grows every tick: only with the heartbeat, or at once when it went back (a reboot).
        let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
        let up = |secs| with(&base, Uptime, Value::Count(secs));
        assert_eq!(tick(&mut x, t0, 10, &up(1010)), []);
        assert_eq!(tick(&mut x, t0, 20, &up(5)), [Uptime]);
        assert_eq!(
            tick(&mut x, t0, 900, &up(885)).len(),
            7,
            "one heartbeat for all, the uptime published at 20 included"
        );
        assert_eq!(
            tick(&mut x, t0, 920, &up(905)),
            [],
            "with the next heartbeat only"
        );
        assert_eq!(tick(&mut x, t0, 1800, &up(1785)).len(), 7);
    }

    #[test]
    fn per_service_sends_everything_when_anything_is_due() {
        let base = every_metric();
        let (mut x, t0) = baseline(PayloadMode::PerService, &base);
        let inside = with(&base, Metric::CpuPercent, Value::Percent(6.0));
        assert_eq!(tick(&mut x, t0, 10, &inside), []);
        let beyond = with(&inside, Metric::Pids, Value::Count(4));
        assert_eq!(tick(&mut x, t0, 20, &beyond), Metric::ALL);
        // Everything counts as published at 20: the CPU's 6.0 too.
        let back = with(&beyond, Metric::CpuPercent, Value::Percent(5.0));
        assert_eq!(tick(&mut x, t0, 30, &back), []);
        assert_eq!(tick(&mut x, t0, 920, &back), Metric::ALL);
    }

    fn life(state: State, started_at_ms: u64, at_ms: u64) -> crate::publish::lifecycle::Values {
        let l = Lifecycle {
            state,
            health: None,
            restart_count: Some(0),
            exit_code: Some(0),
            oom_killed: Some(false),
            started_at_ms: Some(started_at_ms),
        };
        crate::publish::lifecycle::values(&l, at_ms)
    }

    fn picked_life(p: Picked) -> Vec<&'static str> {
        Topic::ALL
            .into_iter()
            .filter(|t| p.life(*t))
            .map(Topic::name)
            .collect()
    }

    #[test]
    fn lifecycle_changes_go_out_at_once_and_uptime_with_the_heartbeat() {
        let mut x = Exceptions::new(&report(900), PayloadMode::PerMetric);
        let t0 = Instant::now();
        let none = Figures::default();
        let mut at = |secs: u64, values: &crate::publish::lifecycle::Values| {
            x.begin(t0 + Duration::from_secs(secs), true);
            let p = x.judge(ROOT, &none, values);
            x.end();
            picked_life(p)
        };
        let running = |secs: u64| life(State::Running, 0, secs * 1000);
        assert_eq!(
            at(0, &running(0)),
            ["state", "restart_count", "oom_killed", "uptime_in_seconds"]
        );
        assert_eq!(at(10, &running(10)), Vec::<&str>::new(), "uptime moved");
        assert_eq!(
            at(20, &life(State::Exited, 0, 20_000)),
            ["state", "exit_code"]
        );
        // Started again: the uptime starts from zero, which is news.
        let again = life(State::Running, 25_000, 30_000);
        assert_eq!(at(30, &again), ["state", "uptime_in_seconds"]);
        assert_eq!(
            at(899, &life(State::Running, 25_000, 899_000)),
            Vec::<&str>::new()
        );
        assert_eq!(
            at(900, &life(State::Running, 25_000, 900_000)),
            ["state", "restart_count", "oom_killed", "uptime_in_seconds"],
            "one heartbeat for all, those published at 20 and 30 included"
        );
    }

    #[test]
    fn a_tick_of_changes_does_not_forget_figures() {
        let base = every_metric();
        let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
        // Lifecycle only, between collections: the figures' last values stay.
        x.begin(t0 + Duration::from_secs(5), false);
        let p = x.judge(ROOT, &Figures::default(), &life(State::Running, 0, 5_000));
        x.end();
        assert!(!Metric::ALL.into_iter().any(|m| p.metric(m)));
        assert_eq!(tick(&mut x, t0, 10, &base), []);
    }

    #[test]
    fn containers_gone_from_a_collection_are_forgotten() {
        let base = every_metric();
        let mut x = Exceptions::new(&report(900), PayloadMode::PerMetric);
        let t0 = Instant::now();
        x.begin(t0, true);
        for root in ["a", "b", "c"] {
            x.judge(root, &base, &[]);
        }
        x.end();
        assert_eq!(x.len(), 3);
        // A tick of changes names one container: nothing is forgotten.
        x.begin(t0, false);
        x.judge("a", &Figures::default(), &[]);
        x.end();
        assert_eq!(x.len(), 3);
        x.begin(t0 + Duration::from_secs(10), true);
        assert!(!x.judge("b", &base, &[]).any());
        x.end();
        assert_eq!(x.len(), 1);
        // Back after being forgotten: a fresh baseline for it.
        x.begin(t0 + Duration::from_secs(20), true);
        assert!(x.judge("a", &base, &[]).metric(Metric::Pids));
        assert!(!x.judge("b", &base, &[]).any());
        x.end();
    }

    #[test]
    fn a_reset_makes_the_next_tick_a_baseline() {
        let base = every_metric();
        let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
        assert_eq!(tick(&mut x, t0, 10, &base), []);
        x.reset();
        assert_eq!(tick(&mut x, t0, 20, &base), CONTAINER_METRICS);
        assert_eq!(tick(&mut x, t0, 30, &base), []);
    }

    #[test]
    fn memory_percent_follows_usage_or_stands_alone() {
        use Metric::*;
        let base = every_metric();
        let (mut x, t0) = baseline(PayloadMode::PerMetric, &base);
        // The percentage moved (rounding, a limit docker read differently) but usage did not: held.
        let pct = with(&base, MemoryPercent, Value::Percent(10.5));
        assert_eq!(tick(&mut x, t0, 10, &pct), []);
        // Without a usage figure it is held to the relative deadband itself: 2 % of 10.00 is 0.20.
        let mut alone = Figures::default();
        alone.set(MemoryPercent, Value::Percent(10.2));
        let (mut x, t0) = baseline(
            PayloadMode::PerMetric,
            &figures(&[(MemoryPercent, Value::Percent(10.0))]),
        );
        assert_eq!(tick(&mut x, t0, 10, &alone), []);
        alone.set(MemoryPercent, Value::Percent(10.21));
        assert_eq!(tick(&mut x, t0, 20, &alone), [MemoryPercent]);
    }

    #[test]
    fn zero_deadbands_report_any_change_and_nothing_else() {
        let mut r = report(900);
        r.deadbands = Deadbands {
            cpu: 0,
            memory: 0,
            network: 0,
            block_io: 0,
            temperature: 0,
            storage: 0,
        };
        let mut x = Exceptions::new(&r, PayloadMode::PerMetric);
        let t0 = Instant::now();
        let base = every_metric();
        x.begin(t0, true);
        x.judge(ROOT, &base, &[]);
        x.end();
        assert_eq!(tick(&mut x, t0, 10, &base), []);
        let moved = with(&base, Metric::NetworkSent, Value::Count(10_000_001));
        assert_eq!(tick(&mut x, t0, 20, &moved), [Metric::NetworkSent]);
    }
}
