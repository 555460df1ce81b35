//! One collection on its way to messages: collect -> parse -> publish, a record at a time.
//!
//! The text is held once and turned into encoded messages only as the session has room for them, so a
//! large tick never exists twice in memory. Bad records are logged with their line number and skipped;
//! good ones are published whatever their neighbours hold. ENGINE mode hands over figures it has already
//! computed, with each container's lifecycle; they go out through the same naming and payload code.

use crate::mqtt::session::Tag;
use crate::mqtt::Message;
use crate::publish::balena::{service_name, topic_level};
use crate::publish::discovery::{Discovery, Entity, PayloadMode};
use crate::publish::exception::{Exceptions, Picked};
use crate::publish::handover::{Handover, Verdict};
use crate::publish::lifecycle::{self, Topic};
use crate::publish::payload::{write_field, write_service, write_value, Field};
use crate::publish::topics::{Names, TopicTemplate};
use crate::publish::warnings::{Kind, Warnings};
use crate::source::device::Record as DeviceRecord;
use crate::source::filter::Filter;
use crate::source::StatsText;
use crate::stats::lifecycle::Lifecycle;
use crate::stats::records::{Cursor, RecordError};
use crate::stats::{parse_line, ContainerStats, FieldWarning, LineError};
use mqttrs::QoS;
use std::time::Instant;

/// How messages are named and sent; fixed for the life of the agent.
pub struct Publishing<'a> {
    pub template: &'a TopicTemplate,
    pub qos: QoS,
    pub retain: bool,
    pub mode: PayloadMode,
}

/// What one tick hands to the next: buffers reused from record to record, so naming a message allocates
/// nothing, and the services' releases seen, for hand-over updates.
#[derive(Default)]
pub struct Scratch {
    topic: String,
    payload: Vec<u8>,
    warnings: Vec<FieldWarning>,
    handover: Handover,
    /// Reporting by exception: what was last published, to judge what moved (none: every figure).
    pub exceptions: Option<Exceptions>,
    /// Which containers of stats text (CLI, FILE) go out, by name; ENGINE mode filters its own.
    containers: Filter,
}

impl Scratch {
    /// With the filter that picks what moved, when reporting by exception, and the containers wanted.
    pub fn new(exceptions: Option<Exceptions>, containers: Filter) -> Scratch {
        Scratch {
            exceptions,
            containers,
            ..Scratch::default()
        }
    }
}

/// Where a record came from, for warnings: its line in stats text, or the container (ENGINE mode).
struct Where<'a> {
    line: Option<usize>,
    container: &'a str,
}

/// What a tick holds: stats text read record by record (with the lives `ps` reported by container name,
/// each attached to its record; those left when the text is used up are stopped containers, reported
/// after it by their lives alone), or figures already parsed.
enum Records {
    Text {
        text: Vec<u8>,
        cursor: Cursor,
        lives: Lives,
    },
    Parsed(std::vec::IntoIter<ContainerStats>),
    /// Records published before, sent again for Home Assistant (see `resend`), each with its timestamp.
    Resent(std::vec::IntoIter<(u64, ContainerStats)>),
    /// The device pseudo-service's records (`source::device`): the whole device, then its parts.
    Device(std::vec::IntoIter<ContainerStats>),
}

/// `ps`'s lives by container name, each taken at most once; those left after the text are stopped
/// containers. A sorted vector rather than a map: a map of these cost the device binary 4 KB of code.
struct Lives {
    by_name: Vec<(String, Option<Lifecycle>)>,
    next: usize,
}

impl Lives {
    fn new(mut lives: Vec<(String, Lifecycle)>) -> Lives {
        lives.sort_by(|a, b| a.0.cmp(&b.0));
        lives.dedup_by(|a, b| a.0 == b.0);
        Lives {
            by_name: lives.into_iter().map(|(n, l)| (n, Some(l))).collect(),
            next: 0,
        }
    }

    fn take(&mut self, name: &str) -> Option<Lifecycle> {
        let i = self
            .by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()?;
        self.by_name[i].1.take()
    }

    /// The next life not taken, in name order.
    fn next_left(&mut self) -> Option<(String, Lifecycle)> {
        while let Some((name, life)) = self.by_name.get_mut(self.next) {
            self.next += 1;
            if let Some(life) = life.take() {
                return Some((std::mem::take(name), life));
            }
        }
        None
    }
}

pub struct Tick {
    /// Where the records came from, for warnings (`file /data/x`, `balena stats`, `engine /x.sock`).
    source: String,
    records: Records,
    timestamp_ms: u64,
    pub containers: usize,
    pub messages: usize,
    pub bad_records: usize,
    /// What was wrong with the input, summarised for one report at the tick's end.
    warnings: Warnings,
    /// Some record had figures: the tick counts for hand-overs (an engine event's tick of lifecycle
    /// changes between collections does not).
    figures_judged: bool,
}

impl Tick {
    pub fn new(source: String, text: impl Into<StatsText>, timestamp_ms: u64) -> Tick {
        let StatsText { bytes, lives } = text.into();
        Tick::with(
            source,
            Records::Text {
                text: bytes,
                cursor: Cursor::default(),
                lives: Lives::new(lives),
            },
            timestamp_ms,
        )
    }

    /// How many figure messages the records not yet stepped through would have made (at a stop, so the
    /// log can say what is lost). Consumes them.
    pub fn count_rest(&mut self, p: &Publishing, scratch: &mut Scratch) -> usize {
        let before = self.messages;
        while self.step(p, scratch, None, &mut |_, _| {}) {}
        self.messages - before
    }

    /// The input's problems, one line per kind, for the log at the tick's end.
    pub fn take_warnings(&mut self) -> Vec<String> {
        self.warnings.take_lines(&self.source)
    }

    /// The text buffer, for the next collection to reuse (empty for parsed ticks).
    pub fn into_text(self) -> Vec<u8> {
        match self.records {
            Records::Text { text, .. } => text,
            _ => Vec::new(),
        }
    }

    /// A tick of figures that need no parsing (ENGINE mode).
    pub fn parsed(source: String, stats: Vec<ContainerStats>, timestamp_ms: u64) -> Tick {
        Tick::with(source, Records::Parsed(stats.into_iter()), timestamp_ms)
    }

    /// Records published before, again, each with the timestamp it was taken at: every value of each
    /// (whatever the report mode), no configs, and no hand-over judgement (they were judged once).
    pub fn resent(records: Vec<(u64, ContainerStats)>) -> Tick {
        Tick::with("re-send".into(), Records::Resent(records.into_iter()), 0)
    }

    /// A tick of the device pseudo-service's records, named `service`.
    pub fn device(service: String, records: Vec<DeviceRecord>, timestamp_ms: u64) -> Tick {
        let stats = records.into_iter().map(|r| ContainerStats {
            name: service.clone(),
            id: service.clone(),
            service: Some(service.clone()),
            figures: r.figures,
            lifecycle: None,
            part: r.part,
        });
        let records = Records::Device(stats.collect::<Vec<_>>().into_iter());
        Tick::with("device".into(), records, timestamp_ms)
    }

    /// Whether it holds the device's records rather than containers'.
    pub fn is_device(&self) -> bool {
        matches!(self.records, Records::Device(_))
    }

    /// Whether this is a [`Tick::resent`] one.
    pub fn is_resend(&self) -> bool {
        matches!(self.records, Records::Resent(_))
    }

    fn with(source: String, records: Records, timestamp_ms: u64) -> Tick {
        Tick {
            source,
            records,
            timestamp_ms,
            containers: 0,
            messages: 0,
            bad_records: 0,
            warnings: Warnings::default(),
            figures_judged: false,
        }
    }

    fn end_handover_tick(&self, scratch: &mut Scratch) {
        if self.figures_judged {
            scratch.handover.end_tick();
        }
        if let Some(x) = &mut scratch.exceptions {
            x.end();
        }
    }

    /// Turns the next record into messages for `sink`: first any Home Assistant configs `discovery` has
    /// not sent yet for this container (with their tag: they must not be dropped), then its figures and
    /// lifecycle values (without; a stopped container has only the latter). Returns false once the
    /// records are used up.
    pub fn step(
        &mut self,
        p: &Publishing,
        scratch: &mut Scratch,
        discovery: Option<(&mut Discovery, Instant)>,
        sink: &mut dyn FnMut(Message, Option<Tag>),
    ) -> bool {
        let (stats, line) = match &mut self.records {
            Records::Parsed(stats) => match stats.next() {
                Some(s) => (s, None),
                None => {
                    self.end_handover_tick(scratch);
                    return false;
                }
            },
            Records::Resent(records) => {
                let Some((timestamp_ms, stats)) = records.next() else {
                    return false;
                };
                self.timestamp_ms = timestamp_ms;
                (stats, None)
            }
            // The device's tick is no collection of containers: it does not end a hand-over tick.
            Records::Device(stats) => match stats.next() {
                Some(s) => (s, None),
                None => return false,
            },
            Records::Text {
                text,
                cursor,
                lives,
            } => {
                let Some(record) = cursor.next(text) else {
                    // The text is used up: the containers `ps` listed that `stats` did not (stopped).
                    let Some((name, life)) = lives.next_left() else {
                        self.end_handover_tick(scratch);
                        return false;
                    };
                    if !scratch.containers.keeps_name(&name) {
                        return true;
                    }
                    return self.publish_record(
                        life_only(name, life),
                        None,
                        p,
                        scratch,
                        discovery,
                        sink,
                    );
                };
                let line = match record.text {
                    Ok(line) => line,
                    Err(e) => {
                        self.bad_records += 1;
                        let kind = Kind::Record(match e {
                            RecordError::TooLong(_) => "too long",
                            RecordError::NotUtf8 => "not valid UTF-8",
                        });
                        self.warnings
                            .note(kind, format_args!("line {}", record.line), &e);
                        return true;
                    }
                };
                scratch.warnings.clear();
                let stats = match parse_line(line, &mut scratch.warnings) {
                    Ok(s) => s,
                    Err(e) => {
                        self.bad_records += 1;
                        let kind = Kind::Record(match e {
                            LineError::Json(_) => "not a stats object",
                            LineError::NoName => "no container Name",
                        });
                        self.warnings
                            .note(kind, format_args!("line {}", record.line), &e);
                        return true;
                    }
                };
                for w in &scratch.warnings {
                    self.warnings.note(
                        Kind::Field(w.field),
                        format_args!("line {} ({})", record.line, stats.name),
                        w,
                    );
                }
                let mut stats = stats;
                // Taken also when the container is not wanted, so it does not come back as stopped.
                stats.lifecycle = lives.take(&stats.name);
                if !scratch.containers.keeps_name(&stats.name) {
                    return true;
                }
                (stats, Some(record.line))
            }
        };
        self.publish_record(stats, line, p, scratch, discovery, sink)
    }

    /// One container's messages (see [`Tick::step`]), or one part of the device's; true.
    fn publish_record(
        &mut self,
        stats: ContainerStats,
        line: Option<usize>,
        p: &Publishing,
        scratch: &mut Scratch,
        discovery: Option<(&mut Discovery, Instant)>,
        sink: &mut dyn FnMut(Message, Option<Tag>),
    ) -> bool {
        // `docker stats` lists a container that started while it ran with the Name `--` and zero figures:
        // there is nothing to publish about it yet (it was publishing nine zeros under a service "--").
        if stats.name == "--" {
            return true;
        }
        // The device is no container: it is not counted as one, and takes no part in hand-overs.
        let device = self.is_device();
        self.containers += usize::from(!device);

        let service = match &stats.service {
            Some(s) => topic_level(s),
            None => service_name(&stats.name),
        };
        let resent = self.is_resend();
        if let Verdict::Older {
            newer_release,
            first,
        } = if resent || device || stats.part.is_some() {
            Verdict::Publish
        } else if stats.figures.iter().next().is_some() {
            self.figures_judged = true;
            scratch.handover.judge(&service, &stats.name)
        } else {
            scratch.handover.peek(&service, &stats.name)
        } {
            if first {
                crate::info!(
                    "service {service}: two containers run at once (a hand-over update); publishing release {newer_release}'s figures, not {}'s",
                    stats.name
                );
            }
            return true;
        }
        let names = Names {
            service_name: &service,
            container_name: &stats.name,
            container_id: &stats.id,
        };
        scratch.topic.clear();
        p.template.render_root(&names, &mut scratch.topic);
        // A part of the device (an interface, a filesystem): one level further down.
        if let Some(part) = &stats.part {
            scratch.topic.push('/');
            scratch.topic.push_str(part);
        }
        let life = stats
            .lifecycle
            .as_ref()
            .map(|l| lifecycle::values(l, self.timestamp_ms));
        let life = life.as_ref().map_or(&[][..], |v| &v[..]);
        let mut discovery = discovery.filter(|_| !resent);
        if let Some((d, now)) = discovery.as_mut() {
            let now = *now;
            let metrics = stats.figures.iter().map(|(m, _)| Entity::Metric(m));
            let lives = life.iter().flatten().map(|(t, _)| Entity::Life(*t));
            let part = stats.part.as_deref();
            for c in d.seen_part(now, &service, part, &scratch.topic, metrics.chain(lives)) {
                // Configs are retained and must arrive: QoS 1 whatever the metrics use.
                if let Ok(m) = Message::publish(&c.topic, &c.payload, QoS::AtLeastOnce, true) {
                    sink(m, Some(c.tag));
                }
            }
        }
        let at = Where {
            line,
            container: &stats.name,
        };
        self.publish_values(&stats, life, &at, p, scratch, sink);
        if let Some((d, _)) = discovery {
            // The latest record, whatever of it went out: a re-send is a fresh baseline.
            d.keep(&service, self.timestamp_ms, stats);
        }
        true
    }

    /// One container's figures and lifecycle values, under the root topic in `scratch.topic`: those that
    /// moved when reporting by exception, every one in a re-send.
    fn publish_values(
        &mut self,
        stats: &ContainerStats,
        life: &[Option<(Topic, Field<'static>)>],
        at: &Where,
        p: &Publishing,
        scratch: &mut Scratch,
        sink: &mut dyn FnMut(Message, Option<Tag>),
    ) {
        let picked = match &mut scratch.exceptions {
            Some(x) if !self.is_resend() => x.judge(&scratch.topic, &stats.figures, life),
            _ => Picked::ALL,
        };
        if p.mode == PayloadMode::PerService {
            if !picked.any() {
                return;
            }
            let mut keys = [("", Field::Flag(false)); Topic::ALL.len()];
            let mut n = 0;
            for (topic, field) in life.iter().flatten() {
                keys[n] = (topic.name(), *field);
                n += 1;
            }
            scratch.payload.clear();
            write_service(
                &mut scratch.payload,
                &stats.figures,
                &keys[..n],
                self.timestamp_ms,
            );
            let repeat = picked.all_repeat();
            self.publish(p, &scratch.topic, &scratch.payload, repeat, at, sink);
            return;
        }
        scratch.topic.push('/');
        let root_len = scratch.topic.len();
        for (metric, value) in stats.figures.iter().filter(|(m, _)| picked.metric(*m)) {
            scratch.topic.truncate(root_len);
            scratch.topic.push_str(metric.name());
            scratch.payload.clear();
            write_value(&mut scratch.payload, value, self.timestamp_ms);
            let repeat = picked.repeat_metric(metric);
            self.publish(p, &scratch.topic, &scratch.payload, repeat, at, sink);
        }
        for (topic, field) in life.iter().flatten().filter(|(t, _)| picked.life(*t)) {
            scratch.topic.truncate(root_len);
            scratch.topic.push_str(topic.name());
            scratch.payload.clear();
            write_field(&mut scratch.payload, *field, self.timestamp_ms);
            let repeat = picked.repeat_life(*topic);
            self.publish(p, &scratch.topic, &scratch.payload, repeat, at, sink);
        }
    }

    /// A `repeat` (the heartbeat's copy of a value already published) goes at QoS 0: losing it loses
    /// nothing, as the value went out at the configured QoS when it was news, a lost connection is
    /// followed by a fresh baseline at that QoS, and at rest the broker's PUBACKs for repeats would be
    /// most of what a device receives (over TLS mosquitto sends each in a record of its own, 26 bytes).
    fn publish(
        &mut self,
        p: &Publishing,
        topic: &str,
        payload: &[u8],
        repeat: bool,
        at: &Where,
        sink: &mut dyn FnMut(Message, Option<Tag>),
    ) {
        let qos = if repeat { QoS::AtMostOnce } else { p.qos };
        match Message::publish(topic, payload, qos, p.retain) {
            Ok(m) => {
                self.messages += 1;
                sink(m, None);
            }
            Err(e) => {
                let detail = format!("{topic}: {e}");
                match at.line {
                    Some(n) => self
                        .warnings
                        .note(Kind::Message, format_args!("line {n}"), &detail),
                    None => self.warnings.note(
                        Kind::Message,
                        format_args!("({})", at.container),
                        &detail,
                    ),
                }
            }
        }
    }
}

/// A container `ps` lists and `stats` does not: its life, no figures.
fn life_only(name: String, life: Lifecycle) -> ContainerStats {
    ContainerStats {
        part: None,
        name,
        id: String::new(),
        service: None,
        figures: Default::default(),
        lifecycle: Some(life),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::frame::{decode, Incoming};
    use crate::stats::lifecycle::{Lifecycle, State};
    use std::time::Duration;

    fn run(text: &str) -> (Tick, Vec<(String, String)>) {
        drain(Tick::new("test".into(), text.as_bytes().to_vec(), 1234))
    }

    fn drain(tick: Tick) -> (Tick, Vec<(String, String)>) {
        drain_filtered(tick, Filter::default())
    }

    fn drain_filtered(mut tick: Tick, containers: Filter) -> (Tick, Vec<(String, String)>) {
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let p = Publishing {
            template: &template,
            qos: QoS::AtMostOnce,
            retain: false,
            mode: PayloadMode::PerMetric,
        };
        let mut scratch = Scratch::new(None, containers);
        let mut out = Vec::new();
        while tick.step(&p, &mut scratch, None, &mut |m, _| {
            if let Ok(Incoming::Publish { topic, payload, .. }) = decode(m.bytes()) {
                out.push((
                    topic.to_owned(),
                    String::from_utf8(payload.to_vec()).unwrap(),
                ));
            }
        }) {}
        (tick, out)
    }

    #[test]
    fn good_lines_are_published_around_bad_ones() {
        let text = concat!(
            r#"{"Name":"web_1_2","CPUPerc":"1.50%","PIDs":"3"}"#,
            "\nnot json\n",
            r#"{"Name":"db","MemUsage":"-- / --","NetIO":"1kB / 2kB"}"#,
            "\n"
        );
        let (tick, out) = run(text);
        assert_eq!(
            (tick.containers, tick.messages, tick.bad_records),
            (2, 4, 1)
        );
        assert_eq!(
            out,
            vec![
                (
                    "root/dev/telemetry/system/web/cpu_usage_in_percent".into(),
                    r#"{"value":1.5,"timestamp":1234}"#.into()
                ),
                (
                    "root/dev/telemetry/system/web/pids".into(),
                    r#"{"value":3,"timestamp":1234}"#.into()
                ),
                (
                    "root/dev/telemetry/system/db/network_received_in_bytes".into(),
                    r#"{"value":1000,"timestamp":1234}"#.into()
                ),
                (
                    "root/dev/telemetry/system/db/network_sent_in_bytes".into(),
                    r#"{"value":2000,"timestamp":1234}"#.into()
                ),
            ]
        );
    }

    #[test]
    fn ps_lives_join_their_stats_records_and_stopped_containers_follow_the_text() {
        let text = concat!(r#"{"Name":"web_1_2","PIDs":"3"}"#, "\n");
        let life = |state, exit_code| Lifecycle {
            state,
            health: None,
            restart_count: None,
            exit_code,
            oom_killed: None,
            started_at_ms: None,
        };
        let lives = vec![
            ("old_3_4".to_owned(), life(State::Exited, Some(3))),
            ("web_1_2".to_owned(), life(State::Running, None)),
        ];
        let text = StatsText {
            bytes: text.as_bytes().to_vec(),
            lives,
        };
        let (tick, out) = drain(Tick::new("test".into(), text, 1234));
        let topics: Vec<(&str, &str)> = out
            .iter()
            .map(|(t, p)| {
                let t = t.strip_prefix("root/dev/telemetry/system/").unwrap();
                (t, p.as_str())
            })
            .collect();
        assert_eq!(
            topics,
            vec![
                ("web/pids", r#"{"value":3,"timestamp":1234}"#),
                ("web/state", r#"{"value":"running","timestamp":1234}"#),
                ("old/state", r#"{"value":"exited","timestamp":1234}"#),
                ("old/exit_code", r#"{"value":3,"timestamp":1234}"#),
            ]
        );
        assert_eq!((tick.containers, tick.bad_records), (2, 0));
    }

    #[test]
    fn stats_text_goes_out_for_the_wanted_containers_only() {
        use crate::source::filter::Rule;
        let text = concat!(
            r#"{"Name":"main_1_2_abc","PIDs":"3"}"#,
            "\n",
            r#"{"Name":"builder-77","PIDs":"4"}"#,
            "\n",
            r#"{"Name":"main-tmp_1_2","PIDs":"5"}"#,
            "\n"
        );
        let exited = Lifecycle {
            state: State::Exited,
            health: None,
            restart_count: None,
            exit_code: Some(1),
            oom_killed: None,
            started_at_ms: None,
        };
        // `ps` lists the unwanted one stopped too: it must not come back as a stopped container.
        let lives = vec![
            ("builder-77".to_owned(), exited.clone()),
            ("old_3_4".to_owned(), exited.clone()),
            ("tool-9".to_owned(), exited),
        ];
        let text = StatsText {
            bytes: text.as_bytes().to_vec(),
            lives,
        };
        // The balenaOS default less a name: what the supervisor named, without labels to go by.
        let mut f = Filter::balena();
        f.exclude.push(Rule::Name("*-tmp".into()));
        let (tick, out) = drain_filtered(Tick::new("test".into(), text, 1234), f);
        let topics: Vec<&str> = out
            .iter()
            .map(|(t, _)| t.strip_prefix("root/dev/telemetry/system/").unwrap())
            .collect();
        assert_eq!(topics, ["main/pids", "old/state", "old/exit_code"]);
        assert_eq!((tick.containers, tick.messages), (2, 3));
    }

    #[test]
    fn parsed_figures_use_the_label_service_and_the_same_payloads() {
        use crate::stats::{Figures, Metric, Value};
        let mut f = Figures::default();
        f.set(Metric::CpuPercent, Value::Percent(62.5));
        f.set(Metric::MemoryLimit, Value::Count(67_108_864));
        let labelled = ContainerStats {
            part: None,
            name: "whatever_1_2".into(),
            id: "abc".into(),
            service: Some("api/v2".into()),
            figures: f.clone(),
            lifecycle: None,
        };
        let named = ContainerStats {
            part: None,
            name: "db_12_34".into(),
            id: "def".into(),
            service: None,
            figures: f,
            lifecycle: None,
        };
        let (tick, out) = drain(Tick::parsed("engine".into(), vec![labelled, named], 99));
        assert_eq!((tick.containers, tick.messages), (2, 4));
        let got: Vec<_> = out.iter().map(|(t, p)| format!("{t} {p}")).collect();
        assert_eq!(
            got,
            vec![
                r#"root/dev/telemetry/system/api_v2/cpu_usage_in_percent {"value":62.5,"timestamp":99}"#,
                r#"root/dev/telemetry/system/api_v2/memory_limit_in_bytes {"value":67108864,"timestamp":99}"#,
                r#"root/dev/telemetry/system/db/cpu_usage_in_percent {"value":62.5,"timestamp":99}"#,
                r#"root/dev/telemetry/system/db/memory_limit_in_bytes {"value":67108864,"timestamp":99}"#,
            ]
        );
    }

    #[test]
    fn rows_of_starting_containers_are_skipped() {
        let text = concat!(
            r#"{"Name":"--","ID":"--","CPUPerc":"0.00%","MemUsage":"0B / 0B","NetIO":"0B / 0B","PIDs":"0"}"#,
            "\n",
            r#"{"Name":"web_1_2","PIDs":"3"}"#,
            "\n"
        );
        let (tick, out) = run(text);
        assert_eq!((tick.containers, tick.bad_records), (1, 0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "root/dev/telemetry/system/web/pids");
    }

    #[test]
    fn a_hand_over_publishes_the_newer_release_from_the_second_tick() {
        let text = concat!(
            r#"{"Name":"main_11_101_bbbb","PIDs":"2"}"#,
            "\n",
            r#"{"Name":"main_10_100_localrelease","PIDs":"1"}"#,
            "\n"
        );
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let p = Publishing {
            template: &template,
            qos: QoS::AtMostOnce,
            retain: false,
            mode: PayloadMode::PerMetric,
        };
        let mut scratch = Scratch::default();
        for _ in 0..2 {
            let mut tick = Tick::new("t".into(), text.as_bytes().to_vec(), 1);
            let mut payloads = Vec::new();
            while tick.step(&p, &mut scratch, None, &mut |m, _| {
                if let Ok(Incoming::Publish { payload, .. }) = decode(m.bytes()) {
                    payloads.push(String::from_utf8(payload.to_vec()).unwrap());
                }
            }) {}
            assert_eq!(payloads, [r#"{"value":2,"timestamp":1}"#]);
        }
    }

    fn with_life(name: &str, pids: Option<u64>, state: State) -> ContainerStats {
        use crate::stats::{Figures, Metric, Value};
        let mut figures = Figures::default();
        if let Some(n) = pids {
            figures.set(Metric::Pids, Value::Count(n));
        }
        ContainerStats {
            part: None,
            name: name.into(),
            id: "abc".into(),
            service: None,
            figures,
            lifecycle: Some(Lifecycle {
                state,
                health: None,
                restart_count: Some(4),
                exit_code: Some(3),
                oom_killed: Some(false),
                started_at_ms: Some(1_000),
            }),
        }
    }

    /// Every message of a parsed tick in `mode`, configs (with their tags) too when `discovery` is given.
    fn drain_mode(
        stats: Vec<ContainerStats>,
        mode: PayloadMode,
        mut discovery: Option<&mut Discovery>,
    ) -> Vec<(String, String, bool)> {
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let p = Publishing {
            template: &template,
            qos: QoS::AtMostOnce,
            retain: false,
            mode,
        };
        let mut scratch = Scratch::default();
        let mut tick = Tick::parsed("t".into(), stats, 62_500);
        let mut out = Vec::new();
        let now = Instant::now();
        while tick.step(
            &p,
            &mut scratch,
            discovery.as_deref_mut().map(|d| (d, now)),
            &mut |m, tag| {
                if let Ok(Incoming::Publish { topic, payload, .. }) = decode(m.bytes()) {
                    out.push((
                        topic.to_owned(),
                        String::from_utf8(payload.to_vec()).unwrap(),
                        tag.is_some(),
                    ));
                }
            },
        ) {}
        out
    }

    fn messages(out: &[(String, String, bool)]) -> Vec<(&str, &str)> {
        out.iter()
            .filter(|(_, _, config)| !config)
            .map(|(t, p, _)| (t.as_str(), p.as_str()))
            .collect()
    }

    #[test]
    fn lifecycle_topics_follow_the_figures() {
        let out = drain_mode(
            vec![
                with_life("web_1_2", Some(3), State::Running),
                with_life("worker_1_2", None, State::Exited),
            ],
            PayloadMode::PerMetric,
            None,
        );
        assert_eq!(
            messages(&out),
            [
                (
                    "root/dev/telemetry/system/web/pids",
                    r#"{"value":3,"timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/web/state",
                    r#"{"value":"running","timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/web/restart_count",
                    r#"{"value":4,"timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/web/oom_killed",
                    r#"{"value":false,"timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/web/uptime_in_seconds",
                    r#"{"value":61,"timestamp":62500}"#
                ),
                // A stopped container: its life only, no figures.
                (
                    "root/dev/telemetry/system/worker/state",
                    r#"{"value":"exited","timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/worker/restart_count",
                    r#"{"value":4,"timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/worker/exit_code",
                    r#"{"value":3,"timestamp":62500}"#
                ),
                (
                    "root/dev/telemetry/system/worker/oom_killed",
                    r#"{"value":false,"timestamp":62500}"#
                ),
            ]
        );
    }

    #[test]
    fn per_service_payloads_carry_the_lifecycle() {
        let out = drain_mode(
            vec![
                with_life("web_1_2", Some(3), State::Running),
                with_life("gone", None, State::Removed),
            ],
            PayloadMode::PerService,
            None,
        );
        assert_eq!(
            messages(&out),
            [
                (
                    "root/dev/telemetry/system/web",
                    r#"{"timestamp":62500,"pids":3,"state":"running","restart_count":4,"oom_killed":false,"uptime_in_seconds":61}"#
                ),
                (
                    "root/dev/telemetry/system/gone",
                    r#"{"timestamp":62500,"state":"removed","restart_count":4,"exit_code":3,"oom_killed":false}"#
                ),
            ]
        );
    }

    /// Every message of `tick` (configs marked), its records handed to `discovery` as the agent does.
    fn drain_tick(
        mut tick: Tick,
        mode: PayloadMode,
        d: &mut Discovery,
        now: Instant,
    ) -> Vec<(String, String, Option<Tag>)> {
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let p = Publishing {
            template: &template,
            qos: QoS::AtMostOnce,
            retain: false,
            mode,
        };
        let mut scratch = Scratch::default();
        let mut out = Vec::new();
        while tick.step(&p, &mut scratch, Some((&mut *d, now)), &mut |m, tag| {
            if let Ok(Incoming::Publish { topic, payload, .. }) = decode(m.bytes()) {
                let payload = String::from_utf8(payload.to_vec()).unwrap();
                out.push((topic.to_owned(), payload, tag));
            }
        }) {}
        out
    }

    #[test]
    fn values_go_out_again_once_their_configs_settled() {
        use crate::publish::discovery::Settings;
        use crate::publish::resend::SETTLE;
        for mode in [PayloadMode::PerMetric, PayloadMode::PerService] {
            let mut d = Discovery::new(Settings {
                prefix: "ha".into(),
                device_id: "dev".into(),
                availability_topic: None,
                mode,
                expire_after: None,
                remove_after: None,
                resend_values: true,
                form: crate::publish::discovery::Form::Entity,
            });
            let t0 = Instant::now();
            let first = Tick::parsed(
                "t".into(),
                vec![with_life("web", Some(3), State::Running)],
                62_500,
            );
            let out = drain_tick(first, mode, &mut d, t0);
            let (configs, values): (Vec<_>, Vec<_>) = out.into_iter().partition(|m| m.2.is_some());
            assert!(!configs.is_empty() && !values.is_empty());
            // Nothing is due before every config is acknowledged, and then not before the settle time.
            let (last, rest) = configs.split_last().unwrap();
            for c in rest {
                d.delivered(t0, c.2.unwrap());
            }
            assert!(d.take_resend(t0 + SETTLE * 10).is_empty(), "{mode:?}");
            let acked = t0 + Duration::from_millis(100);
            d.delivered(acked, last.2.unwrap());
            assert_eq!(d.next_deadline(), Some(acked + SETTLE));
            assert!(d
                .take_resend(acked + SETTLE - Duration::from_millis(1))
                .is_empty());
            let again = d.take_resend(acked + SETTLE);
            // The same values with the same timestamp, and no config.
            let out = drain_tick(Tick::resent(again), mode, &mut d, acked + SETTLE);
            assert!(out.iter().all(|m| m.2.is_none()), "{out:?}");
            assert_eq!(out, values, "{mode:?}");
            assert_eq!(d.next_deadline(), None, "once");
        }
    }

    #[test]
    fn discovery_announces_the_lifecycle_entities_published() {
        use crate::publish::discovery::Settings;
        let mut d = Discovery::new(Settings {
            prefix: "ha".into(),
            device_id: "dev".into(),
            availability_topic: None,
            mode: PayloadMode::PerMetric,
            expire_after: None,
            remove_after: None,
            resend_values: true,
            form: crate::publish::discovery::Form::Entity,
        });
        let out = drain_mode(
            vec![with_life("worker", None, State::Exited)],
            PayloadMode::PerMetric,
            Some(&mut d),
        );
        let configs: Vec<&str> = out
            .iter()
            .filter(|(_, _, config)| *config)
            .map(|(t, _, _)| t.as_str())
            .collect();
        assert_eq!(
            configs,
            [
                "ha/sensor/dev_worker/state/config",
                "ha/sensor/dev_worker/restart_count/config",
                "ha/sensor/dev_worker/exit_code/config",
                "ha/binary_sensor/dev_worker/oom_killed/config",
                "ha/binary_sensor/dev_worker/running/config",
            ]
        );
        // The configs go out before the values they describe.
        assert!(out[..5].iter().all(|(_, _, config)| *config));
        assert_eq!(messages(&out).len(), 4);
    }

    /// For tests/scripts/check-ha-schemas.py, which checks configs with Home Assistant's own schemas and
    /// renders their templates against the messages they describe: a tick in each payload mode through
    /// discovery, with a running container (every figure, every lifecycle value but the exit code) and an
    /// exited one (no figures, an exit code), and the device's every figure, so every entity is announced.
    /// One line per message,
    /// `topic<TAB>payload`, configs first, written to the file `HA_CONFIG_DUMP` names. No source in this
    /// branch reports lifecycle yet, so the agent's own runs in that script cannot show these entities.
    /// tests/scripts/check-ha-device.py asks for the device form's messages instead (`HA_DUMP_FORM`).
    #[test]
    #[ignore]
    fn dump_configs_and_messages() {
        use crate::publish::discovery::{Form, Settings};
        use crate::stats::lifecycle::Health;
        let path = std::env::var("HA_CONFIG_DUMP").expect("HA_CONFIG_DUMP names the output file");
        let line = r#"{"BlockIO":"1kB / 2GB","CPUPerc":"1.75%","MemPerc":"4.07%","MemUsage":"318.6MiB / 7.676GiB","Name":"web_1_2","NetIO":"999MB / 512B","PIDs":"23"}"#;
        let mut running = crate::stats::parse_line(line, &mut Vec::new()).unwrap();
        running.lifecycle = Some(Lifecycle {
            state: State::Running,
            health: Some(Health::Healthy),
            restart_count: Some(2),
            exit_code: Some(0),
            oom_killed: Some(false),
            started_at_ms: Some(1_000),
        });
        let exited = ContainerStats {
            lifecycle: Some(Lifecycle {
                oom_killed: Some(true),
                health: Some(Health::Unhealthy),
                ..with_life("worker_1_2", None, State::Exited)
                    .lifecycle
                    .unwrap()
            }),
            ..with_life("worker_1_2", None, State::Exited)
        };
        // HA_DUMP_FORM=device: the device form's messages (once its migration requests settled).
        let form = match std::env::var("HA_DUMP_FORM").as_deref() {
            Ok("device") => Form::Device,
            _ => Form::Entity,
        };
        let mut lines = String::new();
        let mut configs = 0;
        for (mode, device) in [
            (PayloadMode::PerMetric, "dump-metric"),
            (PayloadMode::PerService, "dump-service"),
        ] {
            let mut d = Discovery::new(Settings {
                prefix: "homeassistant".into(),
                device_id: device.into(),
                availability_topic: Some(format!("root/{device}/availability")),
                mode,
                expire_after: Some(std::time::Duration::from_secs(30)),
                remove_after: None,
                resend_values: false,
                form,
            });
            d.device_service("@device");
            let now = Instant::now();
            let tick = Tick::parsed("t".into(), vec![running.clone(), exited.clone()], 62_500);
            let mut out = drain_tick(tick, mode, &mut d, now);
            let device = Tick::device("@device".into(), device_records(), 62_500);
            out.extend(drain_tick(device, mode, &mut d, now));
            if form == Form::Device {
                for (_, _, tag) in &out {
                    if let Some(tag) = tag {
                        d.delivered(now, *tag);
                    }
                }
                out.retain(|m| m.2.is_none());
                let settled = now + crate::publish::resend::SETTLE;
                for c in d.poll(settled, usize::MAX) {
                    if !c.payload.is_empty() {
                        let payload = String::from_utf8(c.payload).unwrap();
                        out.push((c.topic, payload, Some(c.tag)));
                    }
                }
            }
            for (topic, payload, config) in &out {
                configs += usize::from(config.is_some());
                lines += &format!("{topic}\t{payload}\n");
            }
        }
        let want = match form {
            // web: nine metrics, five lifecycle topics and running; worker: its life without uptime;
            // the device: 19 figures of its own, two of an interface, two of a filesystem.
            Form::Entity => 2 * (15 + 6 + 23),
            // One per service, and one per part of the device.
            Form::Device => 2 * 5,
        };
        assert_eq!(configs, want, "every entity in both modes");
        std::fs::write(path, lines).unwrap();
    }

    /// `on_change` at the defaults, a 900 s heartbeat.
    fn on_change() -> crate::publish::exception::Report {
        crate::publish::exception::Report {
            on_change: true,
            heartbeat: std::time::Duration::from_secs(900),
            deadbands: crate::publish::exception::DEFAULT_DEADBANDS,
        }
    }

    /// One container, `web`, with a CPU and a PIDs figure.
    fn web_figures(cpu: f64, pids: u64) -> Vec<ContainerStats> {
        use crate::stats::{Figures, Metric, Value};
        let mut f = Figures::default();
        f.set(Metric::CpuPercent, Value::Percent(cpu));
        f.set(Metric::Pids, Value::Count(pids));
        vec![ContainerStats {
            lifecycle: None,
            figures: f,
            ..with_life("web_1_2", None, State::Running)
        }]
    }

    #[test]
    fn by_exception_only_what_moved_goes_out() {
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let report = on_change();
        let stats = web_figures;
        for mode in [PayloadMode::PerMetric, PayloadMode::PerService] {
            let p = Publishing {
                template: &template,
                qos: QoS::AtMostOnce,
                retain: false,
                mode,
            };
            let mut scratch = Scratch::new(Some(Exceptions::new(&report, mode)), Filter::default());
            let now = Instant::now();
            let mut tick = |stats| {
                scratch.exceptions.as_mut().unwrap().begin(now, true);
                let mut t = Tick::parsed("t".into(), stats, 5);
                let mut out = Vec::new();
                while t.step(&p, &mut scratch, None, &mut |m, _| {
                    if let Ok(Incoming::Publish { topic, .. }) = decode(m.bytes()) {
                        out.push(topic.rsplit('/').next().unwrap().to_owned());
                    }
                }) {}
                (out, t.messages)
            };
            let (first, n) = tick(stats(5.0, 3));
            assert_eq!(n, first.len());
            let second = tick(stats(5.5, 4)).0;
            let third = tick(stats(5.5, 4)).0;
            match mode {
                PayloadMode::PerMetric => {
                    assert_eq!(first, ["cpu_usage_in_percent", "pids"]);
                    assert_eq!(second, ["pids"]);
                }
                PayloadMode::PerService => {
                    assert_eq!(first, ["web"]);
                    assert_eq!(second, ["web"]);
                }
            }
            assert!(third.is_empty(), "{mode:?}: {third:?}");
        }
    }

    #[test]
    fn heartbeat_repeats_go_at_qos_0_and_news_at_the_configured_qos() {
        use std::time::Duration;
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let report = on_change();
        let stats = |cpu| web_figures(cpu, 3);
        for mode in [PayloadMode::PerMetric, PayloadMode::PerService] {
            let p = Publishing {
                template: &template,
                qos: QoS::AtLeastOnce,
                retain: false,
                mode,
            };
            let mut scratch = Scratch::new(Some(Exceptions::new(&report, mode)), Filter::default());
            let t0 = Instant::now();
            // (last topic level, QoS 1) of each message of a tick at `secs`.
            let mut tick = |secs, stats| {
                let at = t0 + Duration::from_secs(secs);
                scratch.exceptions.as_mut().unwrap().begin(at, true);
                let mut t = Tick::parsed("t".into(), stats, 5);
                let mut out = Vec::new();
                while t.step(&p, &mut scratch, None, &mut |m, _| {
                    if let Ok(Incoming::Publish { topic, pid, .. }) = decode(m.bytes()) {
                        let level = topic.rsplit('/').next().unwrap().to_owned();
                        out.push((level, pid.is_some()));
                    }
                }) {}
                scratch.exceptions.as_mut().unwrap().end();
                out
            };
            let at_qos1 = |v: &[(String, bool)]| v.iter().all(|(_, q1)| *q1);
            let baseline = tick(0, stats(5.0));
            assert!(!baseline.is_empty() && at_qos1(&baseline), "{baseline:?}");
            assert!(at_qos1(&tick(10, stats(7.0))), "a crossing is news");
            let heartbeat = tick(900, stats(7.2));
            let rest = tick(1800, stats(9.0));
            match mode {
                PayloadMode::PerMetric => {
                    let q = |l: &str| heartbeat.iter().find(|(t, _)| t == l).map(|(_, q1)| *q1);
                    assert_eq!(q("cpu_usage_in_percent"), Some(false), "{heartbeat:?}");
                    assert_eq!(q("pids"), Some(false), "{heartbeat:?}");
                    let q = |l: &str| rest.iter().find(|(t, _)| t == l).map(|(_, q1)| *q1);
                    assert_eq!(
                        q("cpu_usage_in_percent"),
                        Some(true),
                        "crossing at a heartbeat"
                    );
                    assert_eq!(q("pids"), Some(false), "{rest:?}");
                }
                PayloadMode::PerService => {
                    assert_eq!(heartbeat, [("web".to_owned(), false)]);
                    assert_eq!(rest, [("web".to_owned(), true)], "news in it: all at QoS 1");
                }
            }
        }
    }

    /// The device's records as `source::device` hands them over: every figure of the whole device (a
    /// Pi without the rpi_volt hwmon, so every throttling flag; a cold morning outdoors), an interface
    /// and a filesystem.
    fn device_records() -> Vec<DeviceRecord> {
        use crate::stats::{Figures, Metric, Value};
        let mut whole = Figures::default();
        for (i, m) in Metric::ALL.into_iter().enumerate() {
            let v = match m {
                Metric::CpuPercent | Metric::MemoryPercent => Value::Percent(12.5),
                Metric::LoadAverage1m | Metric::LoadAverage5m | Metric::LoadAverage15m => {
                    Value::Hundredths(52)
                }
                Metric::CpuTemperature => Value::Hundredths(-512),
                Metric::UnderVoltage
                | Metric::FrequencyCapped
                | Metric::Throttled
                | Metric::SoftTemperatureLimit
                | Metric::UnderVoltageSinceBoot
                | Metric::FrequencyCappedSinceBoot
                | Metric::ThrottledSinceBoot
                | Metric::SoftTemperatureLimitSinceBoot => Value::Flag(i % 2 == 0),
                Metric::MemoryUsage
                | Metric::MemoryLimit
                | Metric::SwapUsage
                | Metric::SwapTotal
                | Metric::Uptime => Value::Count(1000 + i as u64),
                _ => continue,
            };
            whole.set(m, v);
        }
        let mut eth0 = Figures::default();
        eth0.set(Metric::NetworkReceived, Value::Count(7));
        eth0.set(Metric::NetworkSent, Value::Count(8));
        let mut disk = Figures::default();
        disk.set(Metric::StorageUsed, Value::Count(9));
        disk.set(Metric::StorageTotal, Value::Count(10));
        vec![
            DeviceRecord {
                part: None,
                figures: whole,
            },
            DeviceRecord {
                part: Some("eth0".into()),
                figures: eth0,
            },
            DeviceRecord {
                part: Some("disk_root".into()),
                figures: disk,
            },
        ]
    }

    #[test]
    fn the_device_goes_out_under_its_service_with_its_parts_one_level_down() {
        let (tick, out) = drain(Tick::device("@device".into(), device_records(), 5));
        assert!(tick.is_device());
        assert_eq!((tick.containers, tick.messages), (0, 23), "no container");
        let got: Vec<String> = out
            .iter()
            .map(|(t, p)| {
                format!(
                    "{} {p}",
                    t.strip_prefix("root/dev/telemetry/system/").unwrap()
                )
            })
            .collect();
        assert_eq!(
            got[0],
            r#"@device/cpu_usage_in_percent {"value":12.5,"timestamp":5}"#
        );
        assert!(got.contains(
            &r#"@device/cpu_temperature_in_celsius {"value":-5.12,"timestamp":5}"#.to_owned()
        ));
        assert!(got.contains(&r#"@device/load_average_1m {"value":0.52,"timestamp":5}"#.to_owned()));
        assert!(got.contains(&r#"@device/throttled {"value":true,"timestamp":5}"#.to_owned()));
        assert_eq!(
            got[19..],
            [
                r#"@device/eth0/network_received_in_bytes {"value":7,"timestamp":5}"#,
                r#"@device/eth0/network_sent_in_bytes {"value":8,"timestamp":5}"#,
                r#"@device/disk_root/storage_used_in_bytes {"value":9,"timestamp":5}"#,
                r#"@device/disk_root/storage_total_in_bytes {"value":10,"timestamp":5}"#,
            ]
        );
        let out = drain_device(PayloadMode::PerService, None);
        let got: Vec<(&str, &str)> = messages(&out);
        assert_eq!(got.len(), 3, "one payload per part");
        assert_eq!(
            got[1],
            (
                "root/dev/telemetry/system/@device/eth0",
                r#"{"timestamp":62500,"network_received_in_bytes":7,"network_sent_in_bytes":8}"#
            )
        );
        assert!(
            got[0]
                .1
                .contains(r#""under_voltage":true,"frequency_capped":false"#),
            "{}",
            got[0].1
        );
    }

    #[test]
    fn a_device_tick_leaves_hand_overs_alone() {
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let p = Publishing {
            template: &template,
            qos: QoS::AtMostOnce,
            retain: false,
            mode: PayloadMode::PerMetric,
        };
        let mut scratch = Scratch::default();
        // The older release first: only what the previous tick saw holds it back.
        let text = concat!(
            r#"{"Name":"main_10_100_localrelease","PIDs":"1"}"#,
            "\n",
            r#"{"Name":"main_11_101_bbbb","PIDs":"2"}"#,
            "\n"
        );
        // A container tick, then the device's between it and the next: the older release is still
        // held back in the next, as without the device.
        for tick in 0..2 {
            let mut t = Tick::new("t".into(), text.as_bytes().to_vec(), 1);
            let mut n = 0;
            while t.step(&p, &mut scratch, None, &mut |_, _| n += 1) {}
            if tick == 1 {
                assert_eq!(n, 1);
            }
            let mut d = Tick::device("@device".into(), device_records(), 1);
            while d.step(&p, &mut scratch, None, &mut |_, _| {}) {}
        }
    }

    fn drain_device(
        mode: PayloadMode,
        discovery: Option<&mut Discovery>,
    ) -> Vec<(String, String, bool)> {
        let template =
            TopicTemplate::parse(crate::publish::topics::DEFAULT_TEMPLATE, "dev").unwrap();
        let p = Publishing {
            template: &template,
            qos: QoS::AtMostOnce,
            retain: false,
            mode,
        };
        let mut scratch = Scratch::default();
        let mut tick = Tick::device("@device".into(), device_records(), 62_500);
        let mut out = Vec::new();
        let now = Instant::now();
        let mut discovery = discovery;
        while tick.step(
            &p,
            &mut scratch,
            discovery.as_deref_mut().map(|d| (d, now)),
            &mut |m, tag| {
                if let Ok(Incoming::Publish { topic, payload, .. }) = decode(m.bytes()) {
                    out.push((
                        topic.to_owned(),
                        String::from_utf8(payload.to_vec()).unwrap(),
                        tag.is_some(),
                    ));
                }
            },
        ) {}
        out
    }

    #[test]
    fn hostile_names_stay_in_one_level() {
        let (_, out) = run(r#"{"Name":"a/b#c","PIDs":"1"}"#);
        assert_eq!(out[0].0, "root/dev/telemetry/system/a_b_c/pids");
    }
}
