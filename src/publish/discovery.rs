//! Home Assistant MQTT discovery: which retained config messages to send, and when.
//!
//! Pure: containers seen, Home Assistant's birth messages and instants go in; config messages come out.
//! By default we use the per-entity form `<prefix>/<component>/<node_id>/<object_id>/config` (one retained
//! message per entity): every Home Assistant release and other consumers of the discovery format (openHAB,
//! ioBroker) read it. The device form (`device_form`, Home Assistant 2024.11 or later) says the same in one
//! message per service, in about a third of the bytes. The entities of one service share one HA device, so
//! they appear grouped: a sensor per
//! metric, and where the source reports the container's life, `running` and `oom_killed` binary sensors
//! and `state`, `health`, `restart_count`, `exit_code` and `uptime_in_seconds` sensors.
//!
//! Entity ids are suggested with `default_entity_id` (Home Assistant 2025.10 deprecated `object_id`),
//! and name the device too, so two devices' services do not collide. Older releases ignore the key and
//! derive the id from the names. Every entity has `expire_after`, so a service that stops being reported
//! shows unavailable instead of its last value.
//!
//! Configs go out when a service (or a metric of it) is first seen, all again a little after Home
//! Assistant announces `online` on `<prefix>/status`, and as empty retained payloads (which remove the
//! entities) when a service has been gone for the configured `remove_after`. At most [`MAX_SERVICES`]
//! services are remembered: at that bound the one seen longest ago is forgotten (see there).
//!
//! Configs must not be lost: a sensor whose config is dropped never appears in Home Assistant. So each
//! config carries a tag; the caller hands it to a queue that never drops it and reports its PUBACK back
//! with [`Discovery::delivered`]. A sensor counts as announced only then. At most one message per sensor
//! waits for its PUBACK at a time (a newer one waits here until then), and while the session has no room
//! (during an outage, say) configs are not handed out at all but remembered as a bit per entity, then
//! handed out as room opens: what waits in the session stays within its in-flight window.

use crate::mqtt::session::Tag;
use crate::publish::lifecycle::Topic;
use crate::publish::payload::push_string;
use crate::publish::resend::Resend;
use crate::stats::lifecycle::{Health, State};
use crate::stats::{ContainerStats, Metric};
use device_form::Migration;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

mod device_form;

/// The most services remembered at once. Without `remove_after` nothing else forgets a service, so
/// a device whose service names keep changing would grow the map for ever. At the bound, a service seen
/// for the first time makes room by forgetting the one seen longest ago: the new one is announced, as a
/// user would expect of a service that is running now. The forgotten one's entities stay in Home
/// Assistant as they were (retained at the broker; unavailable once `expire_after` passes, and not
/// removed even with `remove_after`), and should it be seen again it is announced afresh. The engine
/// source reports at most 4,096 containers at once, so in ENGINE mode the services being reported never
/// reach the bound by themselves.
pub const MAX_SERVICES: usize = 4096;

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
    /// Home Assistant's `expire_after`: how long an entity keeps its value without news (none: forever).
    pub expire_after: Option<Duration>,
    /// How long a service may go unreported before its entities are removed (none: never).
    pub remove_after: Option<Duration>,
    /// Send a service's values again once its configs have settled (see `resend`): not when they are
    /// retained (Home Assistant gets them when it subscribes), nor for `--once`.
    pub resend_values: bool,
    pub form: Form,
}

/// `home_assistant_discovery_form`: a retained message per entity, or one per service (`device_form`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Entity,
    Device,
}

/// One Home Assistant entity of a service: a metric's sensor, or one of its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Metric(Metric),
    /// A lifecycle topic's entity. `Topic::State` brings the `running` binary sensor with it.
    Life(Topic),
    /// The binary sensor read from the `state` topic.
    Running,
}

impl From<Metric> for Entity {
    fn from(m: Metric) -> Entity {
        Entity::Metric(m)
    }
}

impl Entity {
    /// Every entity, in the order of their bits: the metrics, the lifecycle topics, `Running`.
    const ALL: [Entity; Metric::ALL.len() + Topic::ALL.len() + 1] = {
        let mut all = [Entity::Running; Metric::ALL.len() + Topic::ALL.len() + 1];
        let mut i = 0;
        while i < Metric::ALL.len() {
            all[i] = Entity::Metric(Metric::ALL[i]);
            i += 1;
        }
        while i < Metric::ALL.len() + Topic::ALL.len() {
            all[i] = Entity::Life(Topic::ALL[i - Metric::ALL.len()]);
            i += 1;
        }
        all
    };

    /// Its bit in a service's masks and the low bits of its tags.
    fn index(self) -> u32 {
        match self {
            Entity::Metric(m) => m as u32,
            Entity::Life(t) => Metric::ALL.len() as u32 + t as u32,
            Entity::Running => (Metric::ALL.len() + Topic::ALL.len()) as u32,
        }
    }

    fn component(self) -> &'static str {
        match self {
            Entity::Running | Entity::Life(Topic::OomKilled) => "binary_sensor",
            Entity::Metric(m) if is_flag(m) => "binary_sensor",
            _ => "sensor",
        }
    }

    /// The last level of its config topic, and of its `default_entity_id`.
    fn object(self) -> &'static str {
        match self {
            Entity::Metric(m) => m.name(),
            Entity::Life(t) => t.name(),
            Entity::Running => "running",
        }
    }

    /// The topic level (per-metric payloads) or key (per-service payloads) holding its value.
    fn key(self) -> &'static str {
        match self {
            Entity::Metric(m) => m.name(),
            Entity::Life(t) => t.name(),
            Entity::Running => Topic::State.name(),
        }
    }
}

/// A retained message to publish; an empty payload removes the entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Names the sensor: hand it to [`Discovery::delivered`] once the broker acknowledged this message.
    pub tag: Tag,
}

/// One HA device, or one part of the device pseudo-service's. Bits are per `Entity` (its `index`).
struct Service {
    /// The service, or `service/part` (a part of the device: see [`Discovery::seen_part`]).
    name: String,
    root_topic: String,
    /// The entities it publishes: these should have a config, the others none.
    metrics: u64,
    /// Entities whose current config (or removal) has not been handed out yet.
    todo: u64,
    /// Entities with a config (or removal) handed out and not acknowledged yet.
    pending: u64,
    /// Expired: its configs are being removed; the entry goes once that is acknowledged.
    gone: bool,
    last_seen: Instant,
    /// Configs were handed out since its values last went out again (see `resend`).
    announced: bool,
    /// The device form's migration from per-entity topics.
    migration: Migration,
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
    /// Each service's latest values, for Home Assistant to hear once its configs settled.
    resend: Resend,
    /// The device pseudo-service's name, when the device's figures are published.
    device: Option<String>,
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
            resend: Resend::default(),
            device: None,
        }
    }

    /// The device pseudo-service's name: its entities belong to an HA device that stands for the device
    /// itself (named by the device id), on which every service's HA device then runs (`via_device`).
    pub fn device_service(&mut self, service: &str) {
        self.device = Some(service.to_owned());
    }

    /// The topic Home Assistant announces itself on.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.s.prefix)
    }

    /// Whether the session has no room for configs now: then [`Discovery::seen`] hands out nothing, and
    /// [`Discovery::poll`] hands the sensors out later. Four bytes per service wait here instead of an
    /// encoded message per sensor in the session.
    pub fn hold(&mut self, holding: bool) {
        self.holding = holding;
    }

    /// A container was collected with these metrics and lifecycle topics: returns configs for whatever
    /// of it was not handed out yet (nothing while holding).
    #[cfg(test)]
    pub fn seen<E: Into<Entity>>(
        &mut self,
        now: Instant,
        service: &str,
        root_topic: &str,
        entities: impl Iterator<Item = E>,
    ) -> Vec<Config> {
        self.seen_part(now, service, None, root_topic, entities)
    }

    /// As [`Discovery::seen`], for one part of a service: a network interface or a filesystem of the
    /// device, published under `root_topic` = the device's root and the part. Its entities join the
    /// service's HA device, named after the part (`Network received eth0`), and are removed on their
    /// own when the part stops being reported (an interface gone down).
    pub fn seen_part<E: Into<Entity>>(
        &mut self,
        now: Instant,
        service: &str,
        part: Option<&str>,
        root_topic: &str,
        entities: impl Iterator<Item = E>,
    ) -> Vec<Config> {
        // Topic levels hold no `/`, so the key is never another service's.
        let key: Cow<str> = match part {
            Some(p) => format!("{service}/{p}").into(),
            None => service.into(),
        };
        let id = match self.ids.get(&*key) {
            Some(id) => *id,
            None => {
                if self.services.len() >= MAX_SERVICES {
                    self.forget_stalest();
                }
                let id = self.next_id;
                self.next_id += 1;
                self.ids.insert(key.to_string(), id);
                self.services.insert(
                    id,
                    Service {
                        name: key.into_owned(),
                        root_topic: root_topic.to_owned(),
                        metrics: 0,
                        todo: 0,
                        pending: 0,
                        gone: false,
                        last_seen: now,
                        announced: false,
                        migration: Migration::default(),
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
        let mut seen = entities.fold(0, |bits, e| bits | bit(e.into()));
        if seen & bit(Entity::Life(Topic::State)) != 0 {
            seen |= bit(Entity::Running);
        }
        svc.todo |= seen & !svc.metrics;
        svc.migration.todo |= seen & !svc.metrics;
        svc.metrics |= seen;
        let mut out = Vec::new();
        if self.holding {
            if svc.todo != 0 {
                self.dirty.insert(id);
            }
        } else {
            self.hand_out(now, id, &mut out);
        }
        out
    }

    /// The broker acknowledged the config (or removal) of this tag at `now`.
    pub fn delivered(&mut self, now: Instant, tag: Tag) {
        let id = tag >> TAG_BITS;
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        svc.pending &= !(1 << (tag & TAG_MASK));
        if svc.announced && svc.pending == 0 && svc.todo == 0 && !svc.gone {
            svc.announced = false;
            self.resend.announced(now, &svc.name);
        }
        if svc.todo != 0 {
            // A newer config of the same sensor waited for this one.
            self.dirty.insert(id);
        } else if svc.gone && svc.pending == 0 {
            return self.forget(id);
        }
        self.requests_acknowledged(now, id);
    }

    /// Moves the service's due sensors (in `todo`, none pending) to `out`, marking them pending.
    fn hand_out(&mut self, now: Instant, id: u64, out: &mut Vec<Config>) {
        if self.s.form == Form::Device {
            return self.hand_out_device(now, id, out);
        }
        let Some(svc) = self.services.get_mut(&id) else {
            return;
        };
        let due = svc.todo & !svc.pending;
        if due == 0 {
            return;
        }
        svc.todo &= !due;
        svc.pending |= due;
        svc.announced |= (due & svc.metrics) != 0;
        let (name, root, metrics) = (svc.name.clone(), svc.root_topic.clone(), svc.metrics);
        for e in Entity::ALL.into_iter().filter(|e| due & bit(*e) != 0) {
            let mut c = if metrics & bit(e) != 0 {
                self.config(&name, &root, e)
            } else {
                Config {
                    topic: self.config_topic(&name, e),
                    payload: Vec::new(),
                    tag: 0,
                }
            };
            c.tag = id << TAG_BITS | Tag::from(e.index());
            out.push(c);
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(svc) = self.services.remove(&id) {
            self.ids.remove(&svc.name);
        }
        self.dirty.remove(&id);
    }

    /// Makes room for a new service (see [`MAX_SERVICES`]). A scan, but only when a service is first
    /// seen at the bound.
    fn forget_stalest(&mut self) {
        let stalest = self.services.iter().min_by_key(|(_, s)| s.last_seen);
        if let Some((&id, _)) = stalest {
            self.forget(id);
        }
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
        if self.is_birth(topic, payload) {
            // A re-announcement already pending stays: births repeated faster than the delay (another
            // client flooding the status topic) must not postpone it for ever.
            let delay = Duration::from_millis(500 + rand % 4_500);
            self.republish_at.get_or_insert(now + delay);
        }
    }

    /// Every config again, at the next poll: the broker is another node, which holds none of them.
    pub fn announce_again(&mut self, now: Instant) {
        self.republish_at = Some(now);
    }

    /// Home Assistant announcing it is (back) online.
    pub fn is_birth(&self, topic: &str, payload: &[u8]) -> bool {
        topic == self.status_topic() && payload.eq_ignore_ascii_case(b"online")
    }

    /// When [`Discovery::poll`] next has something to do on its own (it also hands out, at every call,
    /// what [`Discovery::delivered`] made ready).
    pub fn next_deadline(&self) -> Option<Instant> {
        let expiry = self.s.remove_after.and_then(|e| {
            self.services
                .values()
                .filter(|s| !s.gone)
                .map(|s| s.last_seen + e)
                .min()
        });
        [
            self.republish_at,
            expiry,
            self.resend.next_deadline(),
            self.next_settled(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// `record`, published for `service` (taken at `timestamp_ms`), is its latest: kept for a re-send.
    pub fn keep(&mut self, service: &str, timestamp_ms: u64, record: ContainerStats) {
        if self.s.resend_values {
            // A part of the device is kept under its own key, as its configs are.
            let key: Cow<str> = match &record.part {
                Some(p) => format!("{service}/{p}").into(),
                None => service.into(),
            };
            self.resend.keep(&key, timestamp_ms, record);
        }
    }

    /// A collection has been published: forget the values of the services it did not list.
    pub fn end_collection(&mut self) {
        self.resend.end_collection();
    }

    /// The records of the services whose configs have settled, to publish again (with their timestamps).
    pub fn take_resend(&mut self, now: Instant) -> Vec<(u64, ContainerStats)> {
        self.resend.take_due(now)
    }

    /// Re-announcements after an HA birth, removals of expired services, and configs that waited for an
    /// earlier one of the same sensor to be acknowledged, or for room: about `room` of them at most (whole
    /// services), the rest at later calls.
    pub fn poll(&mut self, now: Instant, room: usize) -> Vec<Config> {
        if let Some(expire) = self.s.remove_after {
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
        self.settled(now);
        let mut out = Vec::new();
        while out.len() < room {
            let Some(id) = self.dirty.pop_first() else {
                break;
            };
            self.hand_out(now, id, &mut out);
            if let Some(svc) = self.services.get(&id) {
                if svc.gone && svc.todo == 0 && svc.pending == 0 {
                    self.forget(id);
                }
            }
        }
        out
    }

    fn is_device(&self, service: &str) -> bool {
        self.device.as_deref() == Some(service)
    }

    /// The HA device's node id: the device id alone for the device pseudo-service (no service name can
    /// make it, as every other one has a `_service` after it), `{device_id}_{service}` otherwise.
    fn node_id(&self, service: &str) -> String {
        if self.is_device(service) {
            return id_safe(&self.s.device_id);
        }
        id_safe(&format!("{}_{}", self.s.device_id, service))
    }

    fn config_topic(&self, key: &str, e: Entity) -> String {
        let (service, part) = split(key);
        format!(
            "{}/{}/{}/{}/config",
            self.s.prefix,
            e.component(),
            self.node_id(service),
            id_safe(&object(e, part))
        )
    }

    /// The entity's own options into `o`: the entity form sends them with the device, origin and
    /// availability, the device form under `cmps` (abbreviated, and without the state topic when the
    /// service shares one).
    fn entity_options(&self, key: &str, root_topic: &str, e: Entity, o: &mut Obj) {
        let (service, part) = split(key);
        let object = object(e, part);
        // The device's ids leave its service name out, as its node id does. A part's object ends with
        // the part, so no container's `{service}_{metric}` can spell it.
        let id_parts = if self.is_device(service) {
            vec![self.s.device_id.as_str(), &object]
        } else {
            vec![self.s.device_id.as_str(), service, &object]
        };
        match part {
            Some(p) => o.str("name", &format!("{} {p}", label(e))),
            None => o.str("name", label(e)),
        }
        o.str("unique_id", &id_safe(&id_parts.join("_")));
        let entity_id = format!("{}.{}", e.component(), entity_slug(&id_parts));
        o.str("default_entity_id", &entity_id);
        let value_key = match self.s.mode {
            PayloadMode::PerMetric => {
                o.str("state_topic", &format!("{root_topic}/{}", e.key()));
                "value"
            }
            PayloadMode::PerService => {
                if !o.short {
                    o.str("state_topic", root_topic);
                }
                e.key()
            }
        };
        o.str("value_template", &value_template(e, value_key, self.s.mode));
        if let Some(after) = self.s.expire_after {
            o.number("expire_after", after.as_secs().max(1));
        }
        classes(e, o);
    }

    /// The HA device of a service (`service`, or `service/part`) into `o`, the same in both forms
    /// (entities keep their device when migrated).
    fn device(&self, key: &str, o: &mut Obj) {
        let service = split(key).0;
        o.open("device");
        o.open_list("identifiers");
        o.item(&format!("{PRODUCT}_{}", self.node_id(service)));
        o.close(b']');
        if self.is_device(service) {
            o.str("name", &self.s.device_id);
            o.str("model", "balena device telemetry");
        } else {
            o.str("name", &format!("{service} on {}", self.s.device_id));
            o.str("model", "balena container telemetry");
            if self.device.is_some() {
                let device = id_safe(&self.s.device_id);
                o.str("via_device", &format!("{PRODUCT}_{device}"));
            }
        }
        o.str("manufacturer", PRODUCT);
        o.str("sw_version", VERSION);
        o.close(b'}');
    }

    /// Who sent the configs, into `o`.
    fn origin(&self, o: &mut Obj) {
        o.open("origin");
        o.str("name", PRODUCT);
        o.str("sw_version", VERSION);
        o.close(b'}');
    }

    fn config(&self, service: &str, root_topic: &str, e: Entity) -> Config {
        let mut o = Obj::new(false);
        self.entity_options(service, root_topic, e, &mut o);
        self.device(service, &mut o);
        self.origin(&mut o);
        if let Some(topic) = &self.s.availability_topic {
            o.str("availability_topic", topic);
            o.str("payload_available", "online");
            o.str("payload_not_available", "offline");
        }
        Config {
            topic: self.config_topic(service, e),
            payload: o.end(),
            tag: 0,
        }
    }
}

/// A config's JSON, written as text: the keys are ours, every text value is escaped, and in the device
/// form (`short`) the keys Home Assistant abbreviates are abbreviated (its `abbreviations.py`;
/// `def_ent_id` is 2025.10's, which older releases ignore as they ignore `default_entity_id`). Built as
/// `serde_json` values, the same shapes cost the device binary kilobytes more.
pub(super) struct Obj {
    out: Vec<u8>,
    short: bool,
}

const ABBREVIATIONS: [(&str, &str); 18] = [
    ("unique_id", "uniq_id"),
    ("default_entity_id", "def_ent_id"),
    ("state_topic", "stat_t"),
    ("value_template", "val_tpl"),
    ("expire_after", "exp_aft"),
    ("unit_of_measurement", "unit_of_meas"),
    ("state_class", "stat_cla"),
    ("device_class", "dev_cla"),
    ("entity_category", "ent_cat"),
    ("suggested_display_precision", "sug_dsp_prc"),
    ("options", "ops"),
    ("identifiers", "ids"),
    ("manufacturer", "mf"),
    ("model", "mdl"),
    ("sw_version", "sw"),
    ("device", "dev"),
    ("origin", "o"),
    ("availability_topic", "avty_t"),
];

impl Obj {
    pub(super) fn new(short: bool) -> Obj {
        Obj {
            out: vec![b'{'],
            short,
        }
    }

    fn key(&mut self, k: &str) {
        if !matches!(self.out.last(), Some(b'{' | b'[')) {
            self.out.push(b',');
        }
        let k = match ABBREVIATIONS.iter().find(|(long, _)| *long == k) {
            Some((_, short)) if self.short => short,
            _ => k,
        };
        push_string(&mut self.out, k);
        self.out.push(b':');
    }

    pub(super) fn str(&mut self, k: &str, v: &str) {
        self.key(k);
        push_string(&mut self.out, v);
    }

    fn number(&mut self, k: &str, n: u64) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    pub(super) fn open(&mut self, k: &str) {
        self.key(k);
        self.out.push(b'{');
    }

    fn open_list(&mut self, k: &str) {
        self.key(k);
        self.out.push(b'[');
    }

    /// One text in a list.
    fn item(&mut self, v: &str) {
        if self.out.last() != Some(&b'[') {
            self.out.push(b',');
        }
        push_string(&mut self.out, v);
    }

    pub(super) fn close(&mut self, bracket: u8) {
        self.out.push(bracket);
    }

    pub(super) fn end(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// Tags are `service id << TAG_BITS | entity index`.
const TAG_BITS: u32 = 6;
const TAG_MASK: Tag = (1 << TAG_BITS) - 1;
const _: () = assert!(Entity::ALL.len() <= 1 << TAG_BITS);

fn bit(e: Entity) -> u64 {
    1 << e.index()
}

/// `service` or `service/part` -> (service, part).
fn split(key: &str) -> (&str, Option<&str>) {
    match key.split_once('/') {
        Some((s, p)) => (s, Some(p)),
        None => (key, None),
    }
}

/// The entity's object id: its own, with the part after it (`network_received_in_bytes_eth0`).
fn object(e: Entity, part: Option<&str>) -> Cow<'static, str> {
    match part {
        Some(p) => format!("{}_{p}", e.object()).into(),
        None => e.object().into(),
    }
}

/// The device's throttling flags: binary sensors.
fn is_flag(m: Metric) -> bool {
    (Metric::UnderVoltage as usize..=Metric::SoftTemperatureLimitSinceBoot as usize)
        .contains(&(m as usize))
}

/// How Home Assistant reads the entity's value from its payload. Binary sensors turn the value into
/// `ON`/`OFF`. In per-service payloads a figure or lifecycle value may be absent (a stopped container has
/// no CPU figure, a running one no exit code): numeric sensors then read `None`, which Home Assistant
/// shows as unknown rather than logging a template error.
fn value_template(e: Entity, key: &str, mode: PayloadMode) -> String {
    let v = format!("value_json.{key}");
    match e {
        Entity::Running => format!("{{{{ 'ON' if {v} == 'running' else 'OFF' }}}}"),
        Entity::Life(Topic::OomKilled) => format!("{{{{ 'ON' if {v} else 'OFF' }}}}"),
        Entity::Metric(m) if is_flag(m) => format!("{{{{ 'ON' if {v} else 'OFF' }}}}"),
        Entity::Life(Topic::State | Topic::Health) => format!("{{{{ {v} }}}}"),
        _ if mode == PayloadMode::PerService => format!("{{{{ {v} | default(None) }}}}"),
        _ => format!("{{{{ {v} }}}}"),
    }
}

fn label(e: Entity) -> &'static str {
    let m = match e {
        Entity::Running => return "Running",
        Entity::Life(t) => {
            return match t {
                Topic::State => "State",
                Topic::Health => "Health",
                Topic::RestartCount => "Restarts",
                Topic::ExitCode => "Exit code",
                Topic::OomKilled => "Out of memory",
                Topic::Uptime => "Uptime",
            }
        }
        Entity::Metric(m) => m,
    };
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
        Metric::LoadAverage1m => "Load average (1 min)",
        Metric::LoadAverage5m => "Load average (5 min)",
        Metric::LoadAverage15m => "Load average (15 min)",
        Metric::SwapUsage => "Swap usage",
        Metric::SwapTotal => "Swap total",
        Metric::CpuTemperature => "CPU temperature",
        Metric::Uptime => "Uptime",
        Metric::UnderVoltage => "Under-voltage",
        Metric::FrequencyCapped => "Frequency capped",
        Metric::Throttled => "Throttled",
        Metric::SoftTemperatureLimit => "Soft temperature limit",
        Metric::UnderVoltageSinceBoot => "Under-voltage since boot",
        Metric::FrequencyCappedSinceBoot => "Frequency capped since boot",
        Metric::ThrottledSinceBoot => "Throttled since boot",
        Metric::SoftTemperatureLimitSinceBoot => "Soft temperature limit since boot",
        Metric::StorageUsed => "Storage used",
        Metric::StorageTotal => "Storage total",
    }
}

/// Units and classes: counters that reset when a container restarts are `total_increasing`, which Home
/// Assistant's statistics tolerate; levels are `measurement`. State and health are enums with every
/// word the agent can publish; the exit code is a number (display precision 0) without statistics.
fn classes(e: Entity, o: &mut Obj) {
    const LEVEL: &str = "measurement";
    let m = match e {
        Entity::Metric(m) => m,
        Entity::Running => return o.str("device_class", "running"),
        Entity::Life(Topic::OomKilled) => return o.str("device_class", "problem"),
        Entity::Life(t @ (Topic::State | Topic::Health)) => {
            o.str("device_class", "enum");
            o.open_list("options");
            if t == Topic::State {
                State::ALL.iter().for_each(|s| o.item(s.name()));
            } else {
                Health::ALL.iter().for_each(|h| o.item(h.name()));
            }
            return o.close(b']');
        }
        Entity::Life(Topic::RestartCount) => return o.str("state_class", "total_increasing"),
        Entity::Life(Topic::ExitCode) => {
            o.number("suggested_display_precision", 0);
            return o.str("entity_category", "diagnostic");
        }
        Entity::Life(Topic::Uptime) => {
            o.str("device_class", "duration");
            o.str("unit_of_measurement", "s");
            return o.str("state_class", LEVEL);
        }
    };
    // Unit, device class, state class ("" for none) and whether the entity is a diagnostic one: the
    // device's load, swap, total storage, uptime and throttling flags are, its CPU, memory, temperature,
    // storage use and traffic are not.
    let (unit, device_class, state_class, diagnostic) = match m {
        Metric::CpuPercent | Metric::MemoryPercent => ("%", "", LEVEL, false),
        Metric::MemoryUsage | Metric::MemoryLimit | Metric::StorageUsed => {
            ("B", "data_size", LEVEL, false)
        }
        Metric::NetworkReceived
        | Metric::NetworkSent
        | Metric::BlockRead
        | Metric::BlockWritten => ("B", "data_size", "total_increasing", false),
        Metric::Pids => ("", "", LEVEL, false),
        Metric::LoadAverage1m | Metric::LoadAverage5m | Metric::LoadAverage15m => {
            ("", "", LEVEL, true)
        }
        Metric::SwapUsage | Metric::SwapTotal | Metric::StorageTotal => {
            ("B", "data_size", LEVEL, true)
        }
        Metric::CpuTemperature => ("°C", "temperature", LEVEL, false),
        Metric::Uptime => ("s", "duration", LEVEL, true),
        _ => ("", "problem", "", true),
    };
    let keys = [
        ("unit_of_measurement", unit),
        ("device_class", device_class),
        ("state_class", state_class),
        (
            "entity_category",
            if diagnostic { "diagnostic" } else { "" },
        ),
    ];
    for (k, v) in keys.into_iter().filter(|(_, v)| !v.is_empty()) {
        o.str(k, v);
    }
}

/// An entity id's object part as Home Assistant accepts it: lowercase `[a-z0-9_]`, no leading, trailing
/// or doubled `_` (Home Assistant's `valid_entity_id`).
fn entity_slug(parts: &[&str]) -> String {
    let mut out = String::new();
    for c in parts.join("_").chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("container");
    }
    out
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
pub(super) mod tests {
    use super::*;
    use serde_json::{json, Value as Json};

    /// The nine figures a container has (the rest of `Metric::ALL` are the device's).
    pub(super) const CONTAINER_METRICS: &[Metric] = Metric::ALL.split_at(9).0;

    fn discovery(mode: PayloadMode, expire: Option<u64>) -> Discovery {
        Discovery::new(Settings {
            prefix: "homeassistant".into(),
            device_id: "dev.1".into(),
            availability_topic: Some("root/dev.1/telemetry/system/availability".into()),
            mode,
            expire_after: Some(Duration::from_secs(30)),
            remove_after: expire.map(Duration::from_secs),
            resend_values: true,
            form: Form::Entity,
        })
    }

    /// The broker acknowledged these.
    pub(super) fn deliver(d: &mut Discovery, configs: &[Config]) {
        for c in configs {
            d.delivered(Instant::now(), c.tag);
        }
    }

    pub(super) fn parse(c: &Config) -> Json {
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
        assert_eq!(
            j["value_template"],
            "{{ value_json.block_read_in_bytes | default(None) }}"
        );
    }

    #[test]
    fn home_assistant_birth_republishes_everything_after_a_delay() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        let mut first = d.seen(t0, "a", "r/a", CONTAINER_METRICS.iter().copied());
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
    fn retained_values_are_not_kept_for_a_re_send() {
        // Home Assistant gets retained values when it subscribes: nothing to send again, nothing kept.
        let t0 = Instant::now();
        let mut d = Discovery::new(Settings {
            resend_values: false,
            ..discovery(PayloadMode::PerMetric, None).s
        });
        let c = d.seen(t0, "web", "r/web", [Metric::Pids].into_iter());
        let mut record = ContainerStats {
            part: None,
            name: "web".into(),
            id: String::new(),
            service: None,
            figures: Default::default(),
            lifecycle: None,
        };
        record
            .figures
            .set(Metric::Pids, crate::stats::Value::Count(3));
        d.keep("web", 1, record);
        deliver(&mut d, &c);
        assert_eq!(d.next_deadline(), None);
        assert!(d.take_resend(t0 + Duration::from_secs(60)).is_empty());
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
                .seen(t0, &name, &name, CONTAINER_METRICS.iter().copied())
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
    fn at_the_bound_the_service_seen_longest_ago_is_forgotten() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, None);
        let at = |i: usize| t0 + Duration::from_millis(i as u64);
        let see = |d: &mut Discovery, i: usize, name: &str| {
            let c = d.seen(at(i), name, name, [Metric::Pids].into_iter());
            deliver(d, &c);
            c.len()
        };
        for i in 0..MAX_SERVICES {
            assert_eq!(see(&mut d, i, &format!("svc{i}")), 1);
        }
        // svc0 is seen again, so svc1 is now the one seen longest ago.
        assert_eq!(see(&mut d, MAX_SERVICES, "svc0"), 0);
        assert_eq!(
            see(&mut d, MAX_SERVICES + 1, "new"),
            1,
            "a new one is announced"
        );
        assert_eq!(d.services.len(), MAX_SERVICES);
        assert_eq!(d.ids.len(), MAX_SERVICES);
        assert!(d.ids.contains_key("svc0") && d.ids.contains_key("new"));
        assert!(
            !d.ids.contains_key("svc1"),
            "the one seen longest ago is forgotten"
        );
        // Should it come back, it is announced afresh, and the next oldest makes room.
        assert_eq!(see(&mut d, MAX_SERVICES + 2, "svc1"), 1);
        assert!(!d.ids.contains_key("svc2"));
        assert_eq!(d.services.len(), MAX_SERVICES);
    }

    fn life(d: &mut Discovery, topics: &[Topic]) -> Vec<Config> {
        d.seen(
            Instant::now(),
            "web",
            "r/web",
            topics.iter().map(|t| Entity::Life(*t)),
        )
    }

    #[test]
    fn lifecycle_entities_per_metric() {
        let mut d = discovery(PayloadMode::PerMetric, None);
        let c = life(&mut d, &Topic::ALL);
        let by_topic = |t: &str| parse(c.iter().find(|c| c.topic == t).expect(t));
        assert_eq!(c.len(), 7, "six topics, and running from state");
        let running = by_topic("homeassistant/binary_sensor/dev_1_web/running/config");
        assert_eq!(running["device_class"], "running");
        assert_eq!(running["state_topic"], "r/web/state");
        assert_eq!(
            running["value_template"],
            "{{ 'ON' if value_json.value == 'running' else 'OFF' }}"
        );
        assert_eq!(
            running["default_entity_id"],
            "binary_sensor.dev_1_web_running"
        );
        let state = by_topic("homeassistant/sensor/dev_1_web/state/config");
        assert_eq!(state["device_class"], "enum");
        assert_eq!(
            state["options"],
            json!([
                "created",
                "running",
                "paused",
                "restarting",
                "exited",
                "dead",
                "removed"
            ])
        );
        assert!(state.get("state_class").is_none(), "an enum has none");
        let health = by_topic("homeassistant/sensor/dev_1_web/health/config");
        assert_eq!(
            health["options"],
            json!(["starting", "healthy", "unhealthy"])
        );
        let restarts = by_topic("homeassistant/sensor/dev_1_web/restart_count/config");
        assert_eq!(restarts["state_class"], "total_increasing");
        assert_eq!(restarts["state_topic"], "r/web/restart_count");
        let oom = by_topic("homeassistant/binary_sensor/dev_1_web/oom_killed/config");
        assert_eq!(oom["device_class"], "problem");
        assert_eq!(
            oom["value_template"],
            "{{ 'ON' if value_json.value else 'OFF' }}"
        );
        let uptime = by_topic("homeassistant/sensor/dev_1_web/uptime_in_seconds/config");
        assert_eq!(
            (&uptime["device_class"], &uptime["unit_of_measurement"]),
            (&json!("duration"), &json!("s"))
        );
        let exit = by_topic("homeassistant/sensor/dev_1_web/exit_code/config");
        assert_eq!(exit["value_template"], "{{ value_json.value }}");
        for c in &c {
            let j = parse(c);
            assert_eq!(j["expire_after"], 30, "{}", c.topic);
            assert!(j.get("object_id").is_none());
        }
    }

    #[test]
    fn lifecycle_entities_per_service() {
        let mut d = discovery(PayloadMode::PerService, None);
        let c = life(&mut d, &[Topic::State, Topic::ExitCode, Topic::OomKilled]);
        let templates: Vec<(String, String)> = c
            .iter()
            .map(|c| {
                let j = parse(c);
                assert_eq!(j["state_topic"], "r/web");
                (
                    c.topic.clone(),
                    j["value_template"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let of = |object: &str| {
            templates
                .iter()
                .find(|(t, _)| t.ends_with(&format!("/{object}/config")))
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(of("state"), "{{ value_json.state }}");
        assert_eq!(
            of("running"),
            "{{ 'ON' if value_json.state == 'running' else 'OFF' }}"
        );
        assert_eq!(
            of("exit_code"),
            "{{ value_json.exit_code | default(None) }}"
        );
        assert_eq!(
            of("oom_killed"),
            "{{ 'ON' if value_json.oom_killed else 'OFF' }}"
        );
    }

    #[test]
    fn lifecycle_entities_share_the_acknowledgement_and_removal_bookkeeping() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        let mut first = d.seen(
            t0,
            "web",
            "r/web",
            [Entity::Metric(Metric::Pids)].into_iter(),
        );
        first.extend(life(&mut d, &[Topic::State]));
        assert_eq!(first.len(), 3);
        let mut tags: Vec<Tag> = first.iter().map(|c| c.tag).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 3, "a tag per entity");
        // Seen again: nothing new until the exit code appears.
        assert!(life(&mut d, &[Topic::State]).is_empty());
        let exit = life(&mut d, &[Topic::State, Topic::ExitCode]);
        assert_eq!(exit.len(), 1);
        deliver(&mut d, &first);
        deliver(&mut d, &exit);
        // A birth re-announces all four; the expiry removes all four.
        d.on_message(t0, "homeassistant/status", b"online", 0);
        let again = d.poll(t0 + Duration::from_secs(5), usize::MAX);
        assert_eq!(again.len(), 4);
        deliver(&mut d, &again);
        let removed = d.poll(t0 + Duration::from_secs(61), usize::MAX);
        let mut topics: Vec<&str> = removed
            .iter()
            .inspect(|c| assert!(c.payload.is_empty()))
            .map(|c| c.topic.as_str())
            .collect();
        topics.sort();
        assert_eq!(
            topics,
            [
                "homeassistant/binary_sensor/dev_1_web/running/config",
                "homeassistant/sensor/dev_1_web/exit_code/config",
                "homeassistant/sensor/dev_1_web/pids/config",
                "homeassistant/sensor/dev_1_web/state/config",
            ]
        );
        deliver(&mut d, &removed);
        assert!(d.services.is_empty());
    }

    #[test]
    fn default_entity_ids_name_the_device_and_are_valid() {
        let mut d = discovery(PayloadMode::PerMetric, None);
        let c = d.seen(
            Instant::now(),
            "My-Service__x",
            "r/x",
            [Metric::CpuPercent].into_iter(),
        );
        assert_eq!(
            parse(&c[0])["default_entity_id"],
            "sensor.dev_1_my_service_x_cpu_usage_in_percent"
        );
        assert_eq!(entity_slug(&["_a..b_", "", "C"]), "a_b_c");
        assert_eq!(entity_slug(&["é", "/"]), "container");
        // Two devices, one service name: two entity ids.
        let mut other = Discovery::new(Settings {
            device_id: "dev2".into(),
            ..discovery(PayloadMode::PerMetric, None).s
        });
        let c2 = other.seen(
            Instant::now(),
            "My-Service__x",
            "r/x",
            [Metric::CpuPercent].into_iter(),
        );
        assert_ne!(
            parse(&c[0])["default_entity_id"],
            parse(&c2[0])["default_entity_id"]
        );
    }

    #[test]
    fn the_device_is_an_ha_device_of_its_own_that_every_service_runs_on() {
        let t0 = Instant::now();
        let mut d = discovery(PayloadMode::PerMetric, Some(60));
        d.device_service("@device");
        let root = "root/dev.1/telemetry/system/@device";
        let mut whole = d.seen(
            t0,
            "@device",
            root,
            [Metric::CpuTemperature, Metric::Uptime, Metric::UnderVoltage].into_iter(),
        );
        let eth0 = d.seen_part(
            t0,
            "@device",
            Some("eth0"),
            &format!("{root}/eth0"),
            [Metric::NetworkReceived].into_iter(),
        );
        let web = d.seen(t0, "web", "r/web", [Metric::Pids].into_iter());
        let topics: Vec<&str> = whole
            .iter()
            .chain(&eth0)
            .map(|c| c.topic.as_str())
            .collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/dev_1/cpu_temperature_in_celsius/config",
                "homeassistant/sensor/dev_1/uptime_in_seconds/config",
                "homeassistant/binary_sensor/dev_1/under_voltage/config",
                "homeassistant/sensor/dev_1/network_received_in_bytes_eth0/config",
            ]
        );
        let temp = parse(&whole[0]);
        assert_eq!(temp["device"]["name"], "dev.1");
        assert_eq!(
            temp["device"]["identifiers"],
            json!(["balena-multi-container-telemetry_dev_1"])
        );
        assert!(temp["device"].get("via_device").is_none());
        assert_eq!(
            (&temp["device_class"], &temp["unit_of_measurement"]),
            (&json!("temperature"), &json!("°C"))
        );
        assert!(temp.get("entity_category").is_none(), "a primary figure");
        assert_eq!(temp["unique_id"], "dev_1_cpu_temperature_in_celsius");
        assert_eq!(
            temp["default_entity_id"],
            "sensor.dev_1_cpu_temperature_in_celsius"
        );
        let uptime = parse(&whole[1]);
        assert_eq!(uptime["entity_category"], "diagnostic");
        assert_eq!(uptime["device_class"], "duration");
        let uv = parse(&whole[2]);
        assert_eq!(
            (&uv["device_class"], &uv["entity_category"]),
            (&json!("problem"), &json!("diagnostic"))
        );
        assert_eq!(
            uv["value_template"],
            "{{ 'ON' if value_json.value else 'OFF' }}"
        );
        let rx = parse(&eth0[0]);
        assert_eq!(rx["name"], "Network received eth0");
        assert_eq!(rx["unique_id"], "dev_1_network_received_in_bytes_eth0");
        assert_eq!(
            rx["state_topic"],
            format!("{root}/eth0/network_received_in_bytes")
        );
        assert_eq!(
            rx["device"], temp["device"],
            "one HA device for the whole device"
        );
        // Containers' HA devices run on it.
        assert_eq!(
            parse(&web[0])["device"]["via_device"],
            "balena-multi-container-telemetry_dev_1"
        );
        // A part that stops being reported (an interface gone down) is removed on its own.
        whole.extend(eth0);
        deliver(&mut d, &whole);
        deliver(&mut d, &web);
        let later = t0 + Duration::from_secs(61);
        d.seen(later, "@device", root, [Metric::CpuTemperature].into_iter());
        d.seen(later, "web", "r/web", [Metric::Pids].into_iter());
        let removed: Vec<String> = d
            .poll(later, usize::MAX)
            .into_iter()
            .map(|c| c.topic)
            .collect();
        assert_eq!(
            removed,
            ["homeassistant/sensor/dev_1/network_received_in_bytes_eth0/config"]
        );
    }

    #[test]
    fn per_service_parts_read_their_own_payload() {
        let mut d = discovery(PayloadMode::PerService, None);
        d.device_service("@device");
        let c = d.seen_part(
            Instant::now(),
            "@device",
            Some("disk_root"),
            "r/@device/disk_root",
            [Metric::StorageUsed, Metric::StorageTotal].into_iter(),
        );
        let used = parse(&c[0]);
        assert_eq!(used["state_topic"], "r/@device/disk_root");
        assert_eq!(
            used["value_template"],
            "{{ value_json.storage_used_in_bytes | default(None) }}"
        );
        assert_eq!(parse(&c[1])["entity_category"], "diagnostic");
        assert!(used.get("entity_category").is_none());
    }

    #[test]
    fn configs_are_json_whatever_the_names_hold() {
        let mut d = Discovery::new(Settings {
            device_id: "dev\"1\\x".into(),
            ..discovery(PayloadMode::PerService, None).s
        });
        d.device_service("@device");
        let name = "we\"ird\\svc\u{1}é";
        let mut c = d.seen(Instant::now(), name, "r/x", [Metric::Pids].into_iter());
        c.extend(d.seen(
            Instant::now(),
            "@device",
            "r/d",
            [Metric::CpuTemperature].into_iter(),
        ));
        let svc = parse(&c[0]);
        assert_eq!(svc["device"]["name"], format!("{name} on dev\"1\\x"));
        assert_eq!(
            svc["device"]["via_device"],
            "balena-multi-container-telemetry_dev_1_x"
        );
        assert_eq!(svc["expire_after"], 30);
        assert_eq!(parse(&c[1])["device"]["name"], "dev\"1\\x");
    }

    #[test]
    fn entity_bits_are_their_places() {
        for (i, e) in Entity::ALL.into_iter().enumerate() {
            assert_eq!(e.index() as usize, i, "{e:?}");
        }
    }

    #[test]
    fn ids_are_reduced_to_what_home_assistant_allows() {
        assert_eq!(id_safe("a b/c+d#e.f-g_h9"), "a_b_c_d_e_f-g_h9");
    }
}
