//! A baseline Home Assistant hears: a service's values go out again once the broker has acknowledged its
//! discovery configs and the settle time (5 s) has passed, through a real mosquitto.
//!
//! One collection only (FILE mode, an hour's interval): any second copy of a value is the re-send. The
//! broker's own log (`log_type all`) gives the order of events on the agent's connection: every config's
//! PUBACK comes before the re-sent values of its service. A subscriber stamps each arrival, which shows the
//! settle time between a service's last config and its values again.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const CLIENT: &str = "baseline-agent";
/// The agent's settle time (5 s, src/publish/resend.rs), less what the subscriber's own scheduling may add
/// to its stamp of a config.
const SETTLED_AT_LEAST: f64 = 5.0 - 0.5;

/// (arrival in Unix seconds, topic, payload) from a subscriber started with `-F %U|%t|%p`.
fn stamped(lines: &[String]) -> Vec<(f64, String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '|');
            let at = parts.next()?.parse().ok()?;
            Some((at, parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

fn is_value(topic: &str) -> bool {
    topic.starts_with("root/") && !topic.ends_with("/availability")
}

/// The service a value's topic belongs to (`root/dev1/telemetry/system/<service>[/<metric>]`).
fn service_of(topic: &str) -> &str {
    topic.split('/').nth(4).unwrap_or("")
}

/// For each config topic, the line of the broker's log that acknowledged it, and for each value topic
/// the lines that received it, from the agent's connection.
fn broker_events(log: &str) -> (BTreeMap<String, usize>, BTreeMap<String, Vec<usize>>) {
    let (mut acked, mut received) = (BTreeMap::new(), BTreeMap::<String, Vec<usize>>::new());
    let mut by_mid: BTreeMap<String, String> = BTreeMap::new();
    let publish = format!("Received PUBLISH from {CLIENT} (");
    let puback = format!("Sending PUBACK to {CLIENT} (");
    for (i, line) in log.lines().enumerate() {
        if let Some(rest) = line.split_once(&publish).map(|(_, r)| r) {
            // d0, q1, r1, m5, 'topic', ... (N bytes))
            let mid = rest.split(", ").nth(3).unwrap_or("").to_owned();
            let topic = rest.split('\'').nth(1).unwrap_or("").to_owned();
            if topic.starts_with("homeassistant/") {
                by_mid.insert(mid, topic);
            } else {
                received.entry(topic).or_default().push(i);
            }
        } else if let Some(rest) = line.split_once(&puback).map(|(_, r)| r) {
            let mid = rest.split(',').next().unwrap_or("");
            if let Some(topic) = by_mid.remove(mid) {
                acked.insert(topic, i);
            }
        }
    }
    (acked, received)
}

fn values_are_sent_again_after_the_configs_settled(mode: &str, topics: usize) {
    let broker = Broker::start_with("log_type all");
    let sub = Subscriber::start_args(broker.port, &["-F", "%U|%t|%p", "-t", "#"]);
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "client_id": "{CLIENT}", "payload_mode": "{mode}",
            "home_assistant_discovery": true}}"#,
        broker.url()
    );
    let cfg = config_dir(&file_collector(&sample_stats(), 3600), &mqtt);
    let child = spawn_agent(cfg.path());
    let twice = |lines: &[String]| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for (_, t, _) in stamped(lines).into_iter().filter(|m| is_value(&m.1)) {
            *n.entry(t).or_default() += 1;
        }
        n.values().filter(|c| **c >= 2).count() == topics
    };
    let arrived = sub.wait_for(twice, Duration::from_secs(30));
    sub.sync(broker.port);
    let log = stop_agent(child);
    assert!(arrived, "not every value came twice: {log}");
    assert!(log.contains("sent again for Home Assistant"), "{log}");
    let msgs = stamped(&sub.lines());

    let configs: Vec<(&String, Value)> = msgs
        .iter()
        .filter(|m| m.1.starts_with("homeassistant/") && !m.2.is_empty())
        .map(|m| (&m.1, serde_json::from_str(&m.2).unwrap()))
        .collect();
    let announced: BTreeSet<&str> = configs
        .iter()
        .map(|(_, c)| service_of(c["state_topic"].as_str().unwrap()))
        .collect();

    // Each value of an announced service exactly twice, the second a copy of the first (same figures,
    // same timestamp); a service without entities (no figure yet) has nothing to send again.
    let mut copies: BTreeMap<&str, Vec<(f64, &str)>> = BTreeMap::new();
    for (at, t, p) in msgs.iter().filter(|m| is_value(&m.1)) {
        copies.entry(t).or_default().push((*at, p));
    }
    copies.retain(|t, c| announced.contains(service_of(t)) || c.len() != 1);
    assert_eq!(copies.len(), topics);
    for (topic, c) in &copies {
        assert_eq!(c.len(), 2, "{topic}: {c:?}");
        assert_eq!(c[0].1, c[1].1, "{topic}: the re-send is the same record");
    }

    // Every config of a service is acknowledged before its values go out again (broker's log order).
    let broker_log = std::fs::read_to_string(broker.dir().join("broker.log")).unwrap();
    let (acked, received) = broker_events(&broker_log);
    let mut last_config_at: BTreeMap<&str, f64> = BTreeMap::new();
    for (topic, config) in &configs {
        let state = config["state_topic"].as_str().unwrap();
        let service = service_of(state);
        let ack = acked
            .get(*topic)
            .unwrap_or_else(|| panic!("{topic}: no PUBACK in the broker's log"));
        for (value, lines) in received.iter().filter(|(t, _)| service_of(t) == service) {
            assert_eq!(lines.len(), 2, "{value}");
            assert!(
                lines[1] > *ack,
                "{value} was sent again before {topic} was acknowledged"
            );
        }
        let at = msgs.iter().find(|m| &m.1 == *topic).unwrap().0;
        let last = last_config_at.entry(service).or_default();
        *last = last.max(at);
    }
    // ...and the settle time after the last of them.
    for (topic, c) in &copies {
        let config_at = last_config_at[service_of(topic)];
        let gap = c[1].0 - config_at;
        assert!(
            gap >= SETTLED_AT_LEAST,
            "{topic}: sent again {gap:.3} s after its service's last config"
        );
    }
}

#[test]
fn per_metric_values_are_sent_again_after_the_configs_settled() {
    values_are_sent_again_after_the_configs_settled("per_metric", 63);
}

#[test]
fn per_service_values_are_sent_again_after_the_configs_settled() {
    // Eight services, one of them (`starting`) without a figure yet, so without an entity: nothing to
    // send it again for.
    values_are_sent_again_after_the_configs_settled("per_service", 7);
}

/// After a Home Assistant birth the configs are announced again (0.5 to 5 s later), and once they have
/// settled, the values go out again too.
#[test]
fn a_birth_brings_the_values_again_after_the_configs() {
    let broker = Broker::start();
    let sub = Subscriber::start_args(broker.port, &["-F", "%U|%t|%p", "-t", "#"]);
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "home_assistant_discovery": true}}"#,
        broker.url()
    );
    let cfg = config_dir(&file_collector(&sample_stats(), 3600), &mqtt);
    let child = spawn_agent(cfg.path());
    let pids = "root/dev1/telemetry/system/main/pids";
    let count = |l: &[String], topic: &str| stamped(l).iter().filter(|m| m.1 == topic).count();
    assert!(sub.wait_for(|l| count(l, pids) >= 2, Duration::from_secs(20)));
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", "homeassistant/status", "-m", "online"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(sub.wait_for(|l| count(l, pids) >= 3, Duration::from_secs(20)));
    sub.sync(broker.port);
    let log = stop_agent(child);
    let msgs = stamped(&sub.lines());
    let config = "homeassistant/sensor/dev1_main/pids/config";
    let announced: Vec<f64> = msgs.iter().filter(|m| m.1 == config).map(|m| m.0).collect();
    assert_eq!(
        announced.len(),
        2,
        "announced at start and after the birth: {log}"
    );
    let values: Vec<f64> = msgs.iter().filter(|m| m.1 == pids).map(|m| m.0).collect();
    assert_eq!(values.len(), 3, "{log}");
    let gap = values[2] - announced[1];
    assert!(
        gap >= SETTLED_AT_LEAST,
        "sent again {gap:.3} s after the re-announcement"
    );
}

/// A stats file of resting containers, the same figures for all but their PIDs, replaced whole at each
/// write (a new file: every write is news to the next tick).
struct RestingStats {
    dir: TempDir,
    file: std::path::PathBuf,
}

impl RestingStats {
    fn new(tag: &str) -> RestingStats {
        let dir = TempDir::new(tag);
        let file = dir.path().join("stats.jsonl");
        RestingStats { dir, file }
    }

    fn write(&self, containers: &[(&str, u64)]) {
        let text: String = containers
            .iter()
            .map(|(name, pids)| {
                format!(
                    r#"{{"Name":"{name}","CPUPerc":"5.00%","MemPerc":"10.00%","MemUsage":"100MiB / 1000MiB","NetIO":"1MB / 1MB","BlockIO":"1MB / 1MB","PIDs":"{pids}"}}"#
                ) + "\n"
            })
            .collect();
        let tmp = self.dir.write("stats.tmp", &text);
        std::fs::rename(tmp, &self.file).unwrap();
    }
}

/// The agent reading `stats` every second, reporting by exception with an hour's heartbeat, discovery
/// on; and its config directory, to keep while it runs.
fn on_change_agent(broker: &Broker, stats: &RestingStats) -> (std::process::Child, TempDir) {
    let collector = format!(
        r#"{{"mode": "FILE", "file_path": "{}", "collection_interval_in_seconds": 1,
            "report": "on_change", "report_heartbeat_in_seconds": 3600}}"#,
        stats.file.display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "home_assistant_discovery": true}}"#,
        broker.url()
    );
    let cfg = config_dir(&collector, &mqtt);
    (spawn_agent(cfg.path()), cfg)
}

/// Reporting by exception, a resting container's figures go out once and then not before the heartbeat;
/// Home Assistant still gets them once its configs settled. The stats file is rewritten with the same
/// `web` figures and a `marker` whose PIDs move every time (so every rewrite is a tick whose end its
/// marker shows): between the first copy and the re-send, ticks pass that send nothing for `web`.
#[test]
fn reporting_by_exception_the_resting_values_are_sent_again_too() {
    let broker = Broker::start();
    let sub = Subscriber::start_args(broker.port, &["-F", "%U|%t|%p", "-t", "#"]);
    let stats = RestingStats::new("baseline-on-change");
    let write = |marker: u64| stats.write(&[("web", 3), ("marker", marker)]);
    write(1);
    let (child, _cfg) = on_change_agent(&broker, &stats);
    let web_pids = "root/dev1/telemetry/system/web/pids";
    let marker = |l: &[String], n: u64| {
        stamped(l).iter().any(|m| {
            m.1 == "root/dev1/telemetry/system/marker/pids"
                && m.2.starts_with(&format!("{{\"value\":{n},"))
        })
    };
    let count = |l: &[String], topic: &str| stamped(l).iter().filter(|m| m.1 == topic).count();
    // Ticks, one after the other, until web's values have come a second time.
    let mut n = 1;
    while count(&sub.lines(), web_pids) < 2 {
        assert!(
            sub.wait_for(|l| marker(l, n), Duration::from_secs(15)),
            "tick {n}"
        );
        assert!(n < 60, "no re-send after {n} ticks");
        n += 1;
        write(n);
    }
    assert!(sub.wait_for(|l| marker(l, n), Duration::from_secs(15)));
    sub.sync(broker.port);
    let log = stop_agent(child);
    let msgs = stamped(&sub.lines());
    let web: Vec<&(f64, String, String)> = msgs
        .iter()
        .filter(|m| m.1.starts_with("root/dev1/telemetry/system/web/"))
        .collect();
    let topics: BTreeSet<&str> = web.iter().map(|m| m.1.as_str()).collect();
    assert_eq!(topics.len(), 9, "{log}");
    for t in &topics {
        let copies: Vec<&&(f64, String, String)> = web.iter().filter(|m| m.1 == *t).collect();
        assert_eq!(
            copies.len(),
            2,
            "{t}: once at the first tick, once re-sent: {log}"
        );
        let value = |p: &str| serde_json::from_str::<Value>(p).unwrap()["value"].clone();
        assert_eq!(value(&copies[0].2), value(&copies[1].2), "{t}");
    }
    // Ticks went by between them without a word for web: those copies came from the re-send alone.
    let pids: Vec<f64> = msgs
        .iter()
        .filter(|m| m.1 == web_pids)
        .map(|m| m.0)
        .collect();
    let ticks_between = msgs
        .iter()
        .filter(|m| m.1.ends_with("/marker/pids") && m.0 > pids[0] && m.0 < pids[1])
        .count();
    assert!(ticks_between >= 2, "{ticks_between} ticks between: {log}");
    assert!(log.contains("sent again for Home Assistant"), "{log}");
}

/// A container that appears while the agent runs gets its entities announced, and its values sent again
/// once those configs settled, as at the start; the containers already announced get nothing more.
#[test]
fn a_new_container_gets_its_values_again_after_its_configs() {
    let broker = Broker::start();
    let sub = Subscriber::start_args(broker.port, &["-F", "%U|%t|%p", "-t", "#"]);
    let stats = RestingStats::new("baseline-newcomer");
    stats.write(&[("web", 3)]);
    let (child, _cfg) = on_change_agent(&broker, &stats);
    let count = |l: &[String], topic: &str| stamped(l).iter().filter(|m| m.1 == topic).count();
    let web_pids = "root/dev1/telemetry/system/web/pids";
    let new_pids = "root/dev1/telemetry/system/newbie/pids";
    assert!(
        sub.wait_for(|l| count(l, web_pids) >= 2, Duration::from_secs(20)),
        "web's values were not sent again"
    );
    stats.write(&[("web", 3), ("newbie", 3)]);
    assert!(
        sub.wait_for(|l| count(l, new_pids) >= 2, Duration::from_secs(20)),
        "the newcomer's values were not sent again"
    );
    sub.sync(broker.port);
    let log = stop_agent(child);
    let msgs = stamped(&sub.lines());
    let config = "homeassistant/sensor/dev1_newbie/pids/config";
    let announced: Vec<f64> = msgs
        .iter()
        .filter(|m| m.1 == config && !m.2.is_empty())
        .map(|m| m.0)
        .collect();
    assert_eq!(announced.len(), 1, "{log}");
    let values: Vec<f64> = msgs
        .iter()
        .filter(|m| m.1 == new_pids)
        .map(|m| m.0)
        .collect();
    assert_eq!(values.len(), 2, "{log}");
    let gap = values[1] - announced[0];
    assert!(
        gap >= SETTLED_AT_LEAST,
        "sent again {gap:.3} s after its config"
    );
    assert_eq!(
        count(&sub.lines(), web_pids),
        2,
        "web is not sent again: {log}"
    );
}
