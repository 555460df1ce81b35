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

use crate::stats::Metric;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
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
}

struct Service {
    root_topic: String,
    /// Bit per `Metric` already announced.
    announced: u16,
    last_seen: Instant,
}

pub struct Discovery {
    s: Settings,
    /// Keyed by service name: one HA device per service.
    services: BTreeMap<String, Service>,
    republish_at: Option<Instant>,
}

impl Discovery {
    pub fn new(s: Settings) -> Discovery {
        Discovery {
            s,
            services: BTreeMap::new(),
            republish_at: None,
        }
    }

    /// The topic Home Assistant announces itself on.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.s.prefix)
    }

    /// A container was collected: returns configs for whatever of it was not announced yet.
    pub fn seen(
        &mut self,
        now: Instant,
        service: &str,
        root_topic: &str,
        metrics: impl Iterator<Item = Metric>,
    ) -> Vec<Config> {
        let entry = self
            .services
            .entry(service.to_owned())
            .or_insert_with(|| Service {
                root_topic: root_topic.to_owned(),
                announced: 0,
                last_seen: now,
            });
        entry.last_seen = now;
        if entry.root_topic != root_topic {
            // Same service under a new root (a template naming the container id): follow the newest.
            entry.root_topic = root_topic.to_owned();
            entry.announced = 0;
        }
        let new: Vec<Metric> = metrics.filter(|m| entry.announced & bit(*m) == 0).collect();
        for m in &new {
            entry.announced |= bit(*m);
        }
        let root = entry.root_topic.clone();
        new.into_iter()
            .map(|m| self.config(service, &root, m))
            .collect()
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
            let delay = Duration::from_millis(500 + rand % 4_500);
            self.republish_at = Some(now + delay);
        }
    }

    /// When [`Discovery::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self
            .s
            .expire_after
            .and_then(|e| self.services.values().map(|s| s.last_seen + e).min());
        [self.republish_at, expiry].into_iter().flatten().min()
    }

    /// Re-announcements after an HA birth, and removals of expired services.
    pub fn poll(&mut self, now: Instant) -> Vec<Config> {
        let mut out = Vec::new();
        if let Some(expire) = self.s.expire_after {
            let gone: Vec<String> = self
                .services
                .iter()
                .filter(|(_, s)| now >= s.last_seen + expire)
                .map(|(k, _)| k.clone())
                .collect();
            for name in gone {
                if let Some(svc) = self.services.remove(&name) {
                    for m in Metric::ALL.iter().filter(|m| svc.announced & bit(**m) != 0) {
                        out.push(Config {
                            topic: self.config_topic(&name, *m),
                            payload: Vec::new(),
                        });
                    }
                }
            }
        }
        if self.republish_at.is_some_and(|t| now >= t) {
            self.republish_at = None;
            for (name, svc) in &self.services {
                for m in Metric::ALL.iter().filter(|m| svc.announced & bit(**m) != 0) {
                    out.push(self.config(name, &svc.root_topic, *m));
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
        d.seen(t0, "a", "r/a", Metric::ALL.iter().copied());
        d.seen(t0, "b", "r/b", [Metric::Pids].into_iter());
        d.on_message(t0, "homeassistant/status", b"offline", 7);
        assert_eq!(d.next_deadline(), None);
        d.on_message(t0, "homeassistant/status", b"online", 1_000);
        let due = d.next_deadline().unwrap();
        assert_eq!(due, t0 + Duration::from_millis(1_500));
        assert!(d.poll(t0).is_empty());
        let again = d.poll(due);
        assert_eq!(again.len(), 10);
        assert!(again.iter().all(|c| !c.payload.is_empty()));
        assert!(d.poll(due).is_empty(), "once per birth");
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
    fn an_unchanged_sample_keeps_its_services_but_not_the_ones_it_lost() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        let s = |secs| t0 + Duration::from_secs(secs);
        d.seen(s(0), "gone", "r/gone", [Metric::Pids].into_iter());
        // The sample read at 10 s lists only "kept"; it is still the file's content at 50 s and 100 s.
        d.seen(s(10), "kept", "r/kept", [Metric::Pids].into_iter());
        d.still_present(s(10), s(50));
        d.still_present(s(10), s(100));
        let removed: Vec<_> = d.poll(s(100)).into_iter().map(|c| c.topic).collect();
        assert_eq!(removed, vec!["homeassistant/sensor/dev_1_gone/pids/config"]);
        assert_eq!(d.next_deadline(), Some(s(160)));
    }

    #[test]
    fn services_gone_for_the_expiry_are_removed_with_empty_payloads() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        d.seen(
            t0,
            "old",
            "r/old",
            [Metric::CpuPercent, Metric::Pids].into_iter(),
        );
        d.seen(
            t0 + Duration::from_secs(30),
            "new",
            "r/new",
            [Metric::Pids].into_iter(),
        );
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_secs(60)));
        let removed = d.poll(t0 + Duration::from_secs(60));
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
    fn ids_are_reduced_to_what_home_assistant_allows() {
        assert_eq!(id_safe("a b/c+d#e.f-g_h9"), "a_b_c_d_e_f-g_h9");
    }
}
