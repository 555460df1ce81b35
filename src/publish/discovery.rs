//! Home Assistant MQTT discovery: which retained config messages to send, and when.
//!
//! Pure: containers seen, Home Assistant's birth messages and instants go in; config messages come out.
//! We use the per-entity form `<prefix>/sensor/<node_id>/<object_id>/config` (one retained message per
//! sensor) rather than the device form with `cmps`: every Home Assistant release and other consumers of
//! the discovery format (openHAB, ioBroker) read it, while the device form needs Home Assistant 2024.11 or
//! later. The sensors of one service share one HA device, so they still appear grouped.
//!
//! Configs go out when a service (or a metric of it) is first seen, all again a little after Home
//! Assistant announces `online` on `<prefix>/status`, and as empty retained payloads (which remove the
//! entities) when a service has been gone for the configured expiry.
//!
//! Configs must not be lost: a sensor whose config is dropped never appears in Home Assistant. So each
//! config carries a tag; the caller hands it to a queue that never drops it and reports its PUBACK back
//! with [`Discovery::delivered`]. A sensor counts as announced only then. At most one message per sensor
//! waits for its PUBACK at a time (a newer one waits here until then), and while the session has no room
//! (during an outage, say) configs are not handed out at all but remembered as a bit per sensor, then
//! handed out as room opens: what waits in the session stays within its in-flight window.

use crate::mqtt::session::Tag;
use crate::stats::Metric;
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const PRODUCT: &str = "balena-multi-container-telemetry";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How figures reach Home Assistant: which topic holds a sensor's state, and how to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadMode {
    /// `{root}/{metric}` with `{"value":N,"timestamp":MS}`.
    PerMetric,
    /// `{root}` with `{"timestamp":MS,"<metric>":N,...}`.
    PerService,
}

pub struct Settings {
    pub prefix: String,
    pub device_id: String,
    /// Where the agent says `online`/`offline`; none for `--once` runs, which say neither.
    pub availability_topic: Option<String>,
    pub mode: PayloadMode,
    pub expire_after: Option<Duration>,
}

/// A retained message to publish; an empty payload removes the entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Names the sensor: hand it to [`Discovery::delivered`] once the broker acknowledged this message.
    pub tag: Tag,
}

/// One HA device. Bits are per `Metric`.
struct Service {
    name: String,
    root_topic: String,
    /// The metrics it publishes: these should have a config, the others none.
    metrics: u16,
    /// Sensors whose current config (or removal) has not been handed out yet.
    todo: u16,
    /// Sensors with a config (or removal) handed out and not acknowledged yet.
    pending: u16,
    /// Expired: its configs are being removed; the entry goes once that is acknowledged.
    gone: bool,
    last_seen: Instant,
}

pub struct Discovery {
    s: Settings,
    /// Keyed by a number that is never reused, so a late acknowledgement cannot hit another service.
    services: BTreeMap<u64, Service>,
    ids: BTreeMap<String, u64>,
    next_id: u64,
    /// Services with sensors in `todo` that may have become ready to go out.
    dirty: BTreeSet<u64>,
    /// The session has no room: [`Discovery::seen`] remembers rather than hands out.
    holding: bool,
    republish_at: Option<Instant>,
}

impl Discovery {
    pub fn new(s: Settings) -> Discovery {
        Discovery {
            s,
            services: BTreeMap::new(),
            ids: BTreeMap::new(),
            next_id: 0,
            dirty: BTreeSet::new(),
            holding: false,
            republish_at: None,
        }
    }

    /// The topic Home Assistant announces itself on.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.s.prefix)
    }

    /// Whether the session has no room for configs now: then [`Discovery::seen`] hands out nothing, and
    /// [`Discovery::poll`] hands the sensors out later. Two bytes per service wait here instead of an
    /// encoded message per sensor in the session.
    pub fn hold(&mut self, holding: bool) {
        self.holding = holding;
    }

    /// A container was collected: returns configs for whatever of it was not handed out yet (nothing
    /// while holding).
    pub fn seen(
        &mut self,
        now: Instant,
        service: &str,
        root_topic: &str,
        metrics: impl Iterator<Item = Metric>,
    ) -> Vec<Config> {
        let id = match self.ids.get(service) {
            Some(id) => *id,
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(service.to_owned(), id);
                self.services.insert(
                    id,
                    Service {
                        name: service.to_owned(),
                        root_topic: root_topic.to_owned(),
                        metrics: 0,
                        todo: 0,
                        pending: 0,
                        gone: false,
                        last_seen: now,
                    },
                );
                id
            }
        };
        let Some(svc) = self.services.get_mut(&id) else {
            return Vec::new();
        };
        svc.last_seen = now;
        svc.gone = false;
        if svc.root_topic != root_topic {
            // Same service under a new root (a template naming the container id): follow the newest.
            svc.root_topic = root_topic.to_owned();
            svc.todo |= svc.metrics;
        }
        let seen = metrics.fold(0, |bits, m| bits | bit(m));
        svc.todo |= seen & !svc.metrics;
        svc.metrics |= seen;
        let mut out = Vec::new();
        if self.holding {
            if svc.todo != 0 {
                self.dirty.insert(id);
            }
        } else {
            self.hand_out(id, &mut out);
        }
        out
    }

    /// The broker acknowledged the config (or removal) of this tag.
    pub fn delivered(&mut self, tag: Tag) {
        let id = tag >> 4;
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        svc.pending &= !(1 << (tag & 15));
        if svc.todo != 0 {
            // A newer config of the same sensor waited for this one.
            self.dirty.insert(id);
        } else if svc.gone && svc.pending == 0 {
            self.forget(id);
        }
    }

    /// Moves the service's due sensors (in `todo`, none pending) to `out`, marking them pending.
    fn hand_out(&mut self, id: u64, out: &mut Vec<Config>) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        let due = svc.todo & !svc.pending;
        if due == 0 {
            return;
        }
        svc.todo &= !due;
        svc.pending |= due;
        let (name, root, metrics) = (svc.name.clone(), svc.root_topic.clone(), svc.metrics);
        for m in Metric::ALL.iter().filter(|m| due & bit(**m) != 0) {
            let mut c = if metrics & bit(*m) != 0 {
                self.config(&name, &root, *m)
            } else {
                Config {
                    topic: self.config_topic(&name, *m),
                    payload: Vec::new(),
                    tag: 0,
                }
            };
            c.tag = id << 4 | Tag::from(*m as u16);
            out.push(c);
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(svc) = self.services.remove(&id) {
            self.ids.remove(&svc.name);
        }
        self.dirty.remove(&id);
    }

    /// The sample read at `read_at` still stands (its file was not rewritten): the services it listed are
    /// still there, so they do not expire, though none of them was published again.
    pub fn still_present(&mut self, read_at: Instant, now: Instant) {
        for s in self.services.values_mut() {
            if s.last_seen >= read_at {
                s.last_seen = now;
            }
        }
    }

    /// A message arrived on a subscribed topic; `rand` spreads a fleet's answers to one HA restart.
    pub fn on_message(&mut self, now: Instant, topic: &str, payload: &[u8], rand: u64) {
        if topic == self.status_topic() && payload.eq_ignore_ascii_case(b"online") {
            // A re-announcement already pending stays: births repeated faster than the delay (another
            // client flooding the status topic) must not postpone it for ever.
            let delay = Duration::from_millis(500 + rand % 4_500);
            self.republish_at.get_or_insert(now + delay);
        }
    }

    /// When [`Discovery::poll`] next has something to do on its own (it also hands out, at every call,
    /// what [`Discovery::delivered`] made ready).
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.s.expire_after.and_then(|e| {
            self.services
                .values()
                .filter(|s| !s.gone)
                .map(|s| s.last_seen + e)
                .min()
        });
        [self.republish_at, expiry].into_iter().flatten().min()
    }

    /// Re-announcements after an HA birth, removals of expired services, and configs that waited for an
    /// earlier one of the same sensor to be acknowledged, or for room: about `room` of them at most (whole
    /// services), the rest at later calls.
    pub fn poll(&mut self, now: Instant, room: usize) -> Vec<Config> {
        if let Some(expire) = self.s.expire_after {
            for (id, svc) in self.services.iter_mut() {
                if !svc.gone && now >= svc.last_seen + expire {
                    svc.gone = true;
                    svc.todo |= svc.metrics;
                    svc.metrics = 0;
                    self.dirty.insert(*id);
                }
            }
        }
        if self.republish_at.is_some_and(|t| now >= t) {
            self.republish_at = None;
            for (id, svc) in self.services.iter_mut() {
                // Those pending are on their way already.
                svc.todo |= svc.metrics & !svc.pending;
                self.dirty.insert(*id);
            }
        }
        let mut out = Vec::new();
        while out.len() < room {
            let Some(id) = self.dirty.pop_first() else {
                break;
            };
            self.hand_out(id, &mut out);
            if let Some(svc) = self.services.get(&id) {
                if svc.gone && svc.todo == 0 && svc.pending == 0 {
                    self.forget(id);
                }
            }
        }
        out
    }

    fn node_id(&self, service: &str) -> String {
        id_safe(&format!("{}_{}", self.s.device_id, service))
    }

    fn config_topic(&self, service: &str, metric: Metric) -> String {
        format!(
            "{}/sensor/{}/{}/config",
            self.s.prefix,
            self.node_id(service),
            metric.name()
        )
    }

    fn config(&self, service: &str, root_topic: &str, metric: Metric) -> Config {
        let (state_topic, key) = match self.s.mode {
            PayloadMode::PerMetric => (format!("{root_topic}/{}", metric.name()), "value"),
            PayloadMode::PerService => (root_topic.to_owned(), metric.name()),
        };
        let mut c = json!({
            "name": label(metric),
            "unique_id": id_safe(&format!("{}_{}_{}", self.s.device_id, service, metric.name())),
            "object_id": id_safe(&format!("{}_{}", service, metric.name())),
            "state_topic": state_topic,
            "value_template": format!("{{{{ value_json.{key} }}}}"),
            "device": {
                "identifiers": [format!("{PRODUCT}_{}", self.node_id(service))],
                "name": format!("{service} on {}", self.s.device_id),
                "manufacturer": PRODUCT,
                "model": "balena container telemetry",
                "sw_version": VERSION,
            },
            "origin": { "name": PRODUCT, "sw_version": VERSION },
        });
        if let Some(topic) = &self.s.availability_topic {
            c["availability_topic"] = json!(topic);
            c["payload_available"] = json!("online");
            c["payload_not_available"] = json!("offline");
        }
        let extra = classes(metric);
        if let (Json::Object(map), Json::Object(more)) = (&mut c, extra) {
            map.extend(more);
        }
        Config {
            topic: self.config_topic(service, metric),
            payload: c.to_string().into_bytes(),
            tag: 0,
        }
    }
}

fn bit(m: Metric) -> u16 {
    1 << (m as u16)
}

fn label(m: Metric) -> &'static str {
    match m {
        Metric::CpuPercent => "CPU usage",
        Metric::MemoryPercent => "Memory usage (percent)",
        Metric::MemoryUsage => "Memory usage",
        Metric::MemoryLimit => "Memory limit",
        Metric::NetworkReceived => "Network received",
        Metric::NetworkSent => "Network sent",
        Metric::BlockRead => "Block read",
        Metric::BlockWritten => "Block written",
        Metric::Pids => "PIDs",
    }
}

/// Units and classes: counters that reset when a container restarts are `total_increasing`, which Home
/// Assistant's statistics tolerate; levels are `measurement`.
fn classes(m: Metric) -> Json {
    match m {
        Metric::CpuPercent | Metric::MemoryPercent => {
            json!({"unit_of_measurement": "%", "state_class": "measurement"})
        }
        Metric::MemoryUsage | Metric::MemoryLimit => {
            json!({"unit_of_measurement": "B", "device_class": "data_size", "state_class": "measurement"})
        }
        Metric::NetworkReceived
        | Metric::NetworkSent
        | Metric::BlockRead
        | Metric::BlockWritten => {
            json!({"unit_of_measurement": "B", "device_class": "data_size", "state_class": "total_increasing"})
        }
        Metric::Pids => json!({"state_class": "measurement"}),
    }
}

/// Home Assistant ids allow `[a-zA-Z0-9_-]`; anything else becomes `_`.
pub fn id_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery(mode: PayloadMode, expire: Option<u64>) -> Discovery {
        Discovery::new(Settings {
            prefix: "homeassistant".into(),
            device_id: "dev.1".into(),
            availability_topic: Some("root/dev.1/telemetry/system/availability".into()),
            mode,
            expire_after: expire.map(Duration::from_secs),
        })
    }

    /// The broker acknowledged these.
    fn deliver(d: &mut Discovery, configs: &[Config]) {
        for c in configs {
            d.delivered(c.tag);
        }
    }

    fn parse(c: &Config) -> Json {
        serde_json::from_slice(&c.payload).unwrap()
    }

    #[test]
    fn first_sight_announces_each_metric_once() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        let root = "root/dev.1/telemetry/system/web";
        let configs = d.seen(
            t0,
            "web",
            root,
            [Metric::CpuPercent, Metric::NetworkSent].into_iter(),
        );
        assert_eq!(configs.len(), 2);
        assert_eq!(
            configs[0].topic,
            "homeassistant/sensor/dev_1_web/cpu_usage_in_percent/config"
        );
        let cpu = parse(&configs[0]);
        assert_eq!(cpu["unique_id"], "dev_1_web_cpu_usage_in_percent");
        assert_eq!(
            cpu["state_topic"],
            "root/dev.1/telemetry/system/web/cpu_usage_in_percent"
        );
        assert_eq!(cpu["value_template"], "{{ value_json.value }}");
        assert_eq!(cpu["unit_of_measurement"], "%");
        assert_eq!(cpu["state_class"], "measurement");
        assert_eq!(
            cpu["availability_topic"],
            "root/dev.1/telemetry/system/availability"
        );
        assert_eq!(cpu["device"]["name"], "web on dev.1");
        assert_eq!(
            cpu["device"]["identifiers"][0],
            "balena-multi-container-telemetry_dev_1_web"
        );
        assert_eq!(cpu["origin"]["name"], "balena-multi-container-telemetry");
        let net = parse(&configs[1]);
        assert_eq!(net["device_class"], "data_size");
        assert_eq!(net["unit_of_measurement"], "B");
        assert_eq!(net["state_class"], "total_increasing");
        // Seen again: nothing new, except a metric that was absent before.
        assert!(d
            .seen(t0, "web", root, [Metric::CpuPercent].into_iter())
            .is_empty());
        let more = d.seen(
            t0,
            "web",
            root,
            [Metric::CpuPercent, Metric::Pids].into_iter(),
        );
        assert_eq!(more.len(), 1);
        assert_eq!(parse(&more[0])["state_class"], "measurement");
        assert!(parse(&more[0]).get("unit_of_measurement").is_none());
    }

    #[test]
    fn memory_is_a_measured_data_size() {
        let mut d = discovery(PayloadMode::PerMetric, None);
        let c = d.seen(
            Instant::now(),
            "db",
            "r/db",
            [Metric::MemoryUsage].into_iter(),
        );
        let j = parse(&c[0]);
        assert_eq!(
            (j["device_class"].as_str(), j["state_class"].as_str()),
            (Some("data_size"), Some("measurement"))
        );
    }

    #[test]
    fn per_service_mode_points_at_the_right_key() {
        let mut d = discovery(PayloadMode::PerService, None);
        let c = d.seen(
            Instant::now(),
            "web",
            "r/web",
            [Metric::BlockRead].into_iter(),
        );
        let j = parse(&c[0]);
        assert_eq!(j["state_topic"], "r/web");
        assert_eq!(j["value_template"], "{{ value_json.block_read_in_bytes }}");
    }

    #[test]
    fn home_assistant_birth_republishes_everything_after_a_delay() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        let mut first = d.seen(t0, "a", "r/a", Metric::ALL.iter().copied());
        first.extend(d.seen(t0, "b", "r/b", [Metric::Pids].into_iter()));
        deliver(&mut d, &first);
        d.on_message(t0, "homeassistant/status", b"offline", 7);
        assert_eq!(d.next_deadline(), None);
        d.on_message(t0, "homeassistant/status", b"online", 1_000);
        let due = d.next_deadline().unwrap();
        assert_eq!(due, t0 + Duration::from_millis(1_500));
        assert!(d.poll(t0, usize::MAX).is_empty());
        let again = d.poll(due, usize::MAX);
        assert_eq!(again.len(), 10);
        assert!(again.iter().all(|c| !c.payload.is_empty()));
        assert!(d.poll(due, usize::MAX).is_empty(), "once per birth");
    }

    #[test]
    fn without_an_availability_topic_configs_name_none() {
        let mut d = Discovery::new(Settings {
            availability_topic: None,
            ..discovery(PayloadMode::PerMetric, None).s
        });
        let c = d.seen(Instant::now(), "web", "r/web", [Metric::Pids].into_iter());
        let json: Json = serde_json::from_slice(&c[0].payload).unwrap();
        assert!(json.get("availability_topic").is_none(), "{json}");
        assert!(json.get("payload_available").is_none(), "{json}");
        assert_eq!(json["state_topic"], "r/web/pids");
    }

    #[test]
    fn repeated_births_do_not_postpone_the_re_announcement() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        d.on_message(t0, "homeassistant/status", b"online", 1_000);
        let first = d.next_deadline();
        assert_eq!(first, Some(t0 + Duration::from_millis(1_500)));
        for ms in 1..100 {
            let at = t0 + Duration::from_millis(ms * 10);
            d.on_message(at, "homeassistant/status", b"online", 4_000);
        }
        assert_eq!(d.next_deadline(), first);
    }

    #[test]
    fn an_unchanged_sample_keeps_its_services_but_not_the_ones_it_lost() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        let s = |secs| t0 + Duration::from_secs(secs);
        let gone = d.seen(s(0), "gone", "r/gone", [Metric::Pids].into_iter());
        deliver(&mut d, &gone);
        // The sample read at 10 s lists only "kept"; it is still the file's content at 50 s and 100 s.
        let kept = d.seen(s(10), "kept", "r/kept", [Metric::Pids].into_iter());
        deliver(&mut d, &kept);
        d.still_present(s(10), s(50));
        d.still_present(s(10), s(100));
        let removed: Vec<_> = d
            .poll(s(100), usize::MAX)
            .into_iter()
            .map(|c| c.topic)
            .collect();
        assert_eq!(removed, vec!["homeassistant/sensor/dev_1_gone/pids/config"]);
        assert_eq!(d.next_deadline(), Some(s(160)));
    }

    #[test]
    fn services_gone_for_the_expiry_are_removed_with_empty_payloads() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        let old = d.seen(
            t0,
            "old",
            "r/old",
            [Metric::CpuPercent, Metric::Pids].into_iter(),
        );
        deliver(&mut d, &old);
        let new = d.seen(
            t0 + Duration::from_secs(30),
            "new",
            "r/new",
            [Metric::Pids].into_iter(),
        );
        deliver(&mut d, &new);
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_secs(60)));
        let removed = d.poll(t0 + Duration::from_secs(60), usize::MAX);
        let topics: Vec<_> = removed
            .iter()
            .map(|c| (c.topic.as_str(), c.payload.len()))
            .collect();
        assert_eq!(
            topics,
            vec![
                (
                    "homeassistant/sensor/dev_1_old/cpu_usage_in_percent/config",
                    0
                ),
                ("homeassistant/sensor/dev_1_old/pids/config", 0)
            ]
        );
        deliver(&mut d, &removed);
        assert_eq!(d.services.len(), 1, "forgotten once removed");
        // Seen again later: announced afresh.
        assert_eq!(
            d.seen(
                t0 + Duration::from_secs(70),
                "old",
                "r/old",
                [Metric::Pids].into_iter()
            )
            .len(),
            1
        );
    }

    #[test]
    fn a_config_counts_as_announced_only_once_acknowledged() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        let sent = d.seen(t0, "web", "r/web", [Metric::CpuPercent].into_iter());
        assert_eq!(sent.len(), 1);
        // Home Assistant restarts before the broker acknowledged it: the config is on its way, so the
        // birth does not send it twice...
        d.on_message(t0, "homeassistant/status", b"online", 0);
        let later = t0 + Duration::from_secs(5);
        assert!(d.poll(later, usize::MAX).is_empty());
        // ...but once it is acknowledged, the next birth does.
        deliver(&mut d, &sent);
        d.on_message(later, "homeassistant/status", b"online", 0);
        let again = d.poll(later + Duration::from_secs(5), usize::MAX);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].topic, sent[0].topic);
        assert_eq!(again[0].tag, sent[0].tag, "the same sensor");
    }

    #[test]
    fn one_message_per_sensor_waits_for_its_acknowledgement() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(1));
        let first = d.seen(t0, "web", "r/web/0", [Metric::Pids].into_iter());
        assert_eq!(first.len(), 1);
        // An outage: the container restarts under new roots and expires again and again. Nothing more
        // is handed out while the first config waits, however long that is.
        for i in 1..1000u64 {
            let now = t0 + Duration::from_secs(2 * i);
            assert!(d.poll(now, usize::MAX).is_empty());
            let root = format!("r/web/{i}");
            assert!(d
                .seen(now, "web", &root, [Metric::Pids].into_iter())
                .is_empty());
        }
        deliver(&mut d, &first);
        let now = t0 + Duration::from_secs(2000);
        let next = d.seen(now, "web", "r/web/1000", [Metric::Pids].into_iter());
        assert!(d.poll(now, usize::MAX).is_empty());
        assert_eq!(next.len(), 1, "only the latest state of the sensor");
        assert_eq!(parse(&next[0])["state_topic"], "r/web/1000/pids");
        assert_eq!(d.services.len(), 1);
    }

    #[test]
    fn a_removal_waits_for_the_config_it_removes() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        let config = d.seen(t0, "old", "r/old", [Metric::Pids].into_iter());
        let expired = t0 + Duration::from_secs(60);
        assert!(
            d.poll(expired, usize::MAX).is_empty(),
            "the config is still on its way"
        );
        deliver(&mut d, &config);
        let removal = d.poll(expired, usize::MAX);
        assert_eq!(removal.len(), 1);
        assert!(removal[0].payload.is_empty());
        assert_eq!(
            d.next_deadline(),
            None,
            "a gone service does not expire again"
        );
        deliver(&mut d, &removal);
        assert!(d.services.is_empty() && d.ids.is_empty());
        // A late or repeated acknowledgement of a forgotten service is ignored.
        deliver(&mut d, &removal);
    }

    #[test]
    fn without_room_configs_wait_here_and_go_out_as_room_opens() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        d.hold(true);
        for i in 0..100 {
            let name = format!("svc{i}");
            assert!(d
                .seen(t0, &name, &name, Metric::ALL.iter().copied())
                .is_empty());
        }
        assert!(d.poll(t0, 0).is_empty());
        d.hold(false);
        // Whole services, about as many sensors as there is room for.
        let first = d.poll(t0, 20);
        assert_eq!(first.len(), 27);
        let rest = d.poll(t0, usize::MAX);
        assert_eq!(rest.len(), 873);
        let mut topics: Vec<_> = first.iter().chain(&rest).map(|c| &c.topic).collect();
        topics.sort();
        topics.dedup();
        assert_eq!(topics.len(), 900, "each sensor once");
        assert!(d
            .seen(t0, "svc0", "svc0", [Metric::Pids].into_iter())
            .is_empty());
    }

    #[test]
    fn ids_are_reduced_to_what_home_assistant_allows() {
        assert_eq!(id_safe("a b/c+d#e.f-g_h9"), "a_b_c_d_e_f-g_h9");
    }
}
