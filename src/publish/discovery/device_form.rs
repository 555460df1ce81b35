//! The device form of Home Assistant discovery (`home_assistant_discovery_form: "device"`, Home Assistant
//! 2024.11 and later): one retained message per service, `<prefix>/device/<device id>/<service>/config`,
//! with the HA device, the origin and the availability topic once (and in `per_service` mode the shared
//! state topic), and each entity under `cmps` with only its own options, keys abbreviated as Home
//! Assistant documents them. One HA device per service, as in the entity form: one message per service.
//!
//! Entities the entity form announced keep their ids and settings through Home Assistant's documented
//! migration: `{"migrate_discovery":true}` on each old per-entity topic (Home Assistant unloads the
//! entity but keeps its registry entry), then, once those are acknowledged and [`SETTLE`] has passed, the
//! device message (the same `unique_id`s take the entries over) with an empty retained payload on each
//! old topic (clearing the broker's copy). The agent cannot know whether an entity was ever announced one
//! by one, so each entity goes through this once per run, when first seen; for an entity that never was,
//! Home Assistant ignores both messages without a word. The device topic has two levels so that its
//! entities' discovery ids differ from the old topics' (Home Assistant warns of a "conflicting discovery
//! message" on every such repeat otherwise).

use super::{bit, Config, Discovery, Entity, Obj, PayloadMode, Tag, TAG_BITS};
use crate::publish::resend::SETTLE;
use std::time::Instant;

/// The device message's bit in a service's `pending` and the low bits of its tag (past the entities').
pub(super) const DEVICE_INDEX: u32 = 63;
const _: () = assert!((Entity::ALL.len() as u32) < DEVICE_INDEX && DEVICE_INDEX < 1 << TAG_BITS);

/// The migration of a service's entities from their per-entity topics, as bits per `Entity`.
#[derive(Default)]
pub(super) struct Migration {
    /// First seen in this run: their old topics get the migration request.
    pub todo: u64,
    /// Requested: their old topics get an empty retained payload with the next device message.
    pub cleanup: u64,
    /// Requests handed out and not all acknowledged yet.
    pub requested: bool,
    /// Acknowledged: the device message waits until then, for Home Assistant to unload the old entities.
    pub settle_until: Option<Instant>,
}

impl Discovery {
    /// The device form of `hand_out`: first the migration requests of entities new in this run, then
    /// (once they settled) the device message with the old topics' removals; one at a time per service.
    pub(super) fn hand_out_device(&mut self, now: Instant, id: u64, out: &mut Vec<Config>) {
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        if svc.pending != 0 || svc.migration.settle_until.is_some_and(|t| now < t) {
            return;
        }
        svc.migration.settle_until = None;
        let tag = |index: u32| id << TAG_BITS | Tag::from(index);
        let migrate = svc.migration.todo & svc.metrics;
        if migrate != 0 {
            svc.migration.todo &= !migrate;
            svc.migration.cleanup |= migrate;
            svc.migration.requested = true;
            svc.pending |= migrate;
            let name = svc.name.clone();
            for e in Entity::ALL.into_iter().filter(|e| migrate & bit(*e) != 0) {
                out.push(Config {
                    topic: self.config_topic(&name, e),
                    payload: br#"{"migrate_discovery":true}"#.to_vec(),
                    tag: tag(e.index()),
                });
            }
            return;
        }
        let cleanup = std::mem::take(&mut svc.migration.cleanup);
        if svc.todo == 0 && cleanup == 0 {
            return;
        }
        svc.todo = 0;
        svc.pending |= 1 << DEVICE_INDEX | cleanup;
        svc.announced |= svc.metrics != 0;
        let (name, root, metrics) = (svc.name.clone(), svc.root_topic.clone(), svc.metrics);
        let payload = if metrics == 0 {
            Vec::new() // removes the device and every entity of it
        } else {
            self.device_payload(&name, &root, metrics)
        };
        out.push(Config {
            topic: self.device_topic(&name),
            payload,
            tag: tag(DEVICE_INDEX),
        });
        for e in Entity::ALL.into_iter().filter(|e| cleanup & bit(*e) != 0) {
            out.push(Config {
                topic: self.config_topic(&name, e),
                payload: Vec::new(),
                tag: tag(e.index()),
            });
        }
    }

    /// Every migration request of the service acknowledged at `now`: its device message waits [`SETTLE`].
    pub(super) fn requests_acknowledged(&mut self, now: Instant, id: u64) {
        if let Some(svc) = self.services.get_mut(&id) {
            if svc.pending == 0 && std::mem::take(&mut svc.migration.requested) {
                svc.migration.settle_until = Some(now + SETTLE);
            }
        }
    }

    /// Services whose migration requests have settled by `now` become due.
    pub(super) fn settled(&mut self, now: Instant) {
        for (id, svc) in self.services.iter_mut() {
            if svc.migration.settle_until.is_some_and(|t| now >= t) {
                self.dirty.insert(*id);
            }
        }
    }

    /// Some service's device message waits for its migration requests to settle (`--once` waits too).
    pub fn settling(&self) -> bool {
        self.next_settled().is_some()
    }

    pub(super) fn next_settled(&self) -> Option<Instant> {
        self.services
            .values()
            .filter_map(|s| s.migration.settle_until)
            .min()
    }

    fn device_topic(&self, service: &str) -> String {
        format!(
            "{}/device/{}/{}/config",
            self.s.prefix,
            super::id_safe(&self.s.device_id),
            super::id_safe(service)
        )
    }

    fn device_payload(&self, service: &str, root_topic: &str, metrics: u64) -> Vec<u8> {
        let mut o = Obj::new(true);
        self.device(service, &mut o);
        self.origin(&mut o);
        o.open("cmps");
        let part = super::split(service).1;
        for e in Entity::ALL.into_iter().filter(|e| metrics & bit(*e) != 0) {
            o.open(&super::object(e, part));
            self.entity_options(service, root_topic, e, &mut o);
            o.str("p", e.component());
            o.close(b'}');
        }
        o.close(b'}');
        if let Some(topic) = &self.s.availability_topic {
            // `online` and `offline` are Home Assistant's default payloads.
            o.str("availability_topic", topic);
        }
        if self.s.mode == PayloadMode::PerService {
            o.str("state_topic", root_topic); // shared by the components
        }
        o.end()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{deliver, parse, CONTAINER_METRICS};
    use super::super::{Form, Settings};
    use super::*;
    use crate::publish::lifecycle::Topic;
    use crate::stats::Metric;
    use std::time::Duration;

    fn discovery(mode: PayloadMode, remove_after: Option<u64>) -> Discovery {
        Discovery::new(Settings {
            prefix: "homeassistant".into(),
            device_id: "dev.1".into(),
            availability_topic: Some("root/dev.1/telemetry/system/availability".into()),
            mode,
            expire_after: Some(Duration::from_secs(30)),
            remove_after: remove_after.map(Duration::from_secs),
            resend_values: true,
            form: Form::Device,
        })
    }

    fn topics(c: &[Config]) -> Vec<(&str, &str)> {
        c.iter()
            .map(|c| (c.topic.as_str(), std::str::from_utf8(&c.payload).unwrap()))
            .collect()
    }

    /// Seen, migration requests acknowledged and settled: the device message and the removals.
    fn announce(d: &mut Discovery, t0: Instant, service: &str, e: &[Entity]) -> Vec<Config> {
        let requests = d.seen(t0, service, "r/web", e.iter().copied());
        for c in &requests {
            d.delivered(t0, c.tag);
        }
        d.poll(t0 + SETTLE, usize::MAX)
    }

    #[test]
    fn entities_are_migrated_then_announced_in_one_message() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        let entities = [
            Entity::Metric(Metric::CpuPercent),
            Entity::Life(Topic::State),
        ];
        let requests = d.seen(t0, "web", "r/web", entities.into_iter());
        // First the documented migration request on each old per-entity topic, and nothing else.
        let migrate = r#"{"migrate_discovery":true}"#;
        assert_eq!(
            topics(&requests),
            [
                (
                    "homeassistant/sensor/dev_1_web/cpu_usage_in_percent/config",
                    migrate
                ),
                ("homeassistant/sensor/dev_1_web/state/config", migrate),
                (
                    "homeassistant/binary_sensor/dev_1_web/running/config",
                    migrate
                ),
            ]
        );
        assert!(d.poll(t0, usize::MAX).is_empty());
        // Acknowledged: the device message waits for Home Assistant to unload the old entities.
        let acked = t0 + Duration::from_millis(50);
        for c in &requests {
            d.delivered(acked, c.tag);
        }
        assert_eq!(d.next_deadline(), Some(acked + SETTLE));
        assert!(d
            .poll(acked + SETTLE - Duration::from_millis(1), usize::MAX)
            .is_empty());
        let out = d.poll(acked + SETTLE, usize::MAX);
        let t = topics(&out);
        assert_eq!(t[0].0, "homeassistant/device/dev_1/web/config");
        assert_eq!(
            &t[1..],
            [
                (
                    "homeassistant/sensor/dev_1_web/cpu_usage_in_percent/config",
                    ""
                ),
                ("homeassistant/sensor/dev_1_web/state/config", ""),
                ("homeassistant/binary_sensor/dev_1_web/running/config", ""),
            ],
            "the old topics cleared"
        );
        let j = parse(&out[0]);
        assert_eq!(j["dev"]["name"], "web on dev.1");
        assert_eq!(
            j["dev"]["ids"][0], "balena-multi-container-telemetry_dev_1_web",
            "the entity form's device"
        );
        assert_eq!(j["dev"]["mf"], "balena-multi-container-telemetry");
        assert_eq!(j["o"]["name"], "balena-multi-container-telemetry");
        assert_eq!(j["avty_t"], "root/dev.1/telemetry/system/availability");
        assert!(j.get("stat_t").is_none(), "per metric: a state topic each");
        let cpu = &j["cmps"]["cpu_usage_in_percent"];
        assert_eq!(cpu["p"], "sensor");
        assert_eq!(cpu["uniq_id"], "dev_1_web_cpu_usage_in_percent");
        assert_eq!(cpu["def_ent_id"], "sensor.dev_1_web_cpu_usage_in_percent");
        assert_eq!(cpu["stat_t"], "r/web/cpu_usage_in_percent");
        assert_eq!(cpu["val_tpl"], "{{ value_json.value }}");
        assert_eq!(cpu["exp_aft"], 30);
        assert_eq!(cpu["unit_of_meas"], "%");
        assert_eq!(cpu["stat_cla"], "measurement");
        assert_eq!(j["cmps"]["running"]["p"], "binary_sensor");
        assert_eq!(j["cmps"]["state"]["dev_cla"], "enum");
        assert!(j["cmps"]["state"]["ops"].is_array());
        assert_eq!(j["cmps"].as_object().unwrap().len(), 3);
        // Once all of it is acknowledged and settled, the values go out again.
        let record = crate::stats::ContainerStats {
            part: None,
            name: "web".into(),
            id: String::new(),
            service: None,
            figures: Default::default(),
            lifecycle: None,
        };
        d.keep("web", 7, record);
        let done = acked + SETTLE + Duration::from_millis(10);
        let (last, rest) = out.split_last().unwrap();
        for c in rest {
            d.delivered(done, c.tag);
        }
        assert_eq!(
            d.next_deadline(),
            None,
            "not before all of it is acknowledged"
        );
        d.delivered(done, last.tag);
        assert_eq!(d.next_deadline(), Some(done + SETTLE));
        assert!(d.poll(done + SETTLE, usize::MAX).is_empty());
        assert_eq!(d.take_resend(done + SETTLE).len(), 1);
    }

    #[test]
    fn per_service_shares_the_state_topic() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerService, None);
        let out = announce(&mut d, t0, "web", &[Entity::Metric(Metric::Pids)]);
        let j = parse(&out[0]);
        assert_eq!(j["stat_t"], "r/web");
        let pids = &j["cmps"]["pids"];
        assert!(pids.get("stat_t").is_none());
        assert_eq!(pids["val_tpl"], "{{ value_json.pids | default(None) }}");
    }

    #[test]
    fn a_birth_or_a_new_entity_sends_the_device_message_again_migrating_only_the_new() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        let first = announce(&mut d, t0, "web", &[Entity::Metric(Metric::Pids)]);
        deliver(&mut d, &first);
        // A birth: the device message alone.
        d.on_message(t0, "homeassistant/status", b"online", 0);
        let again = d.poll(t0 + Duration::from_secs(5), usize::MAX);
        assert_eq!(
            again.iter().map(|c| c.topic.as_str()).collect::<Vec<_>>(),
            ["homeassistant/device/dev_1/web/config"]
        );
        assert_eq!(again[0].payload, first[0].payload);
        deliver(&mut d, &again);
        // A new entity: its own migration, then the device message with both.
        let t1 = t0 + Duration::from_secs(10);
        let both = [
            Entity::Metric(Metric::Pids),
            Entity::Metric(Metric::BlockRead),
        ];
        let more = announce(&mut d, t1, "web", &both);
        assert_eq!(more.len(), 2, "{:?}", topics(&more));
        let j = parse(&more[0]);
        assert_eq!(j["cmps"].as_object().unwrap().len(), 2);
        assert_eq!(
            more[1].topic,
            "homeassistant/sensor/dev_1_web/block_read_in_bytes/config"
        );
        deliver(&mut d, &more);
        // Gone past the expiry: one empty device message removes the device and its entities.
        let removal = d.poll(t1 + Duration::from_secs(60), usize::MAX);
        assert_eq!(
            topics(&removal),
            [("homeassistant/device/dev_1/web/config", "")]
        );
        deliver(&mut d, &removal);
        assert!(d.services.is_empty());
    }

    #[test]
    fn the_devices_parts_each_have_a_message_on_the_devices_ha_device() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerService, None);
        d.device_service("@device");
        let rx = [Entity::Metric(Metric::NetworkReceived)];
        let requests = d.seen_part(
            t0,
            "@device",
            Some("eth0"),
            "r/@device/eth0",
            rx.into_iter(),
        );
        for c in &requests {
            d.delivered(t0, c.tag);
        }
        let out = d.poll(t0 + SETTLE, usize::MAX);
        assert_eq!(
            out[0].topic,
            "homeassistant/device/dev_1/_device_eth0/config"
        );
        let m = parse(&out[0]);
        assert_eq!(m["dev"]["name"], "dev.1");
        assert_eq!(m["dev"]["ids"][0], "balena-multi-container-telemetry_dev_1");
        assert_eq!(m["stat_t"], "r/@device/eth0");
        let rx = &m["cmps"]["network_received_in_bytes_eth0"];
        assert_eq!(rx["uniq_id"], "dev_1_network_received_in_bytes_eth0");
        assert_eq!(
            rx["val_tpl"],
            "{{ value_json.network_received_in_bytes | default(None) }}"
        );
    }

    #[test]
    fn one_device_message_is_smaller_than_the_entity_configs_it_replaces() {
        let t0 = Instant::now();
        // A container's: its nine figures and its life (the other metrics are the device's).
        let all: Vec<Entity> = Entity::ALL
            .into_iter()
            .filter(|e| !matches!(e, Entity::Metric(m) if !CONTAINER_METRICS.contains(m)))
            .collect();
        let mut device = discovery(PayloadMode::PerMetric, None);
        let out = announce(&mut device, t0, "web", &all);
        let mut entity = Discovery::new(Settings {
            form: Form::Entity,
            ..discovery(PayloadMode::PerMetric, None).s
        });
        let configs = entity.seen(t0, "web", "r/web", all.into_iter());
        let bytes = |c: &[Config]| c.iter().map(|c| c.payload.len()).sum::<usize>();
        assert_eq!(configs.len(), 16);
        assert!(
            bytes(&out[..1]) * 2 < bytes(&configs),
            "{} vs {}",
            bytes(&out[..1]),
            bytes(&configs)
        );
    }
}
