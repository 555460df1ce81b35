//! Home Assistant discovery and the per-service payload, through a real mosquitto.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `retain|topic|payload` lines from a subscriber started with `-F %r|%t|%p`.
fn records(lines: &[String]) -> Vec<(bool, String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '|');
            let retained = parts.next()? == "1";
            Some((
                retained,
                parts.next()?.to_owned(),
                parts.next().unwrap_or("").to_owned(),
            ))
        })
        .collect()
}

fn formatted_subscriber(port: u16, filter: &str) -> Subscriber {
    Subscriber::start_args(port, &["-F", "%r|%t|%p", "-t", filter, "-t", "probe/ready"])
}

fn mqtt_config(broker: &Broker, extra: &str) -> String {
    format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "home_assistant_discovery": true{extra}}}"#,
        broker.url()
    )
}

/// Config topic -> parsed config, for the non-empty configs among `recs`.
fn configs(recs: &[(bool, String, String)]) -> BTreeMap<String, Value> {
    recs.iter()
        .filter(|(_, t, p)| {
            t.starts_with("homeassistant/") && t.ends_with("/config") && !p.is_empty()
        })
        .map(|(_, t, p)| (t.clone(), serde_json::from_str(p).expect("config is JSON")))
        .collect()
}

#[test]
fn every_published_metric_has_exactly_one_retained_config() {
    let broker = Broker::start();
    let sub = formatted_subscriber(broker.port, "#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt_config(&broker, ""),
    );
    // Running, not --once: configs then name the availability topic (a --once run has none).
    let child = spawn_agent(cfg.path());
    // 63 figures, 63 configs and `online`.
    assert!(sub.wait_for(|l| l.len() > 63 * 2, Duration::from_secs(10)));
    stop_agent(child);
    let recs = records(&sub.lines());
    let metric_topics: BTreeSet<String> = recs
        .iter()
        .filter(|(_, t, _)| t.starts_with("root/") && !t.ends_with("/availability"))
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(metric_topics.len(), 63);
    let found = configs(&recs);
    assert_eq!(found.len(), 63, "one config per published metric");
    let mut unique_ids = BTreeSet::new();
    for (topic, c) in &found {
        let state = c["state_topic"].as_str().unwrap();
        assert!(
            metric_topics.contains(state),
            "{topic}: state_topic {state} is a published metric"
        );
        assert_eq!(
            found
                .values()
                .filter(|o| o["state_topic"] == c["state_topic"])
                .count(),
            1
        );
        assert!(
            unique_ids.insert(c["unique_id"].as_str().unwrap().to_owned()),
            "unique ids are unique"
        );
        assert_eq!(c["value_template"], "{{ value_json.value }}");
        assert_eq!(
            c["availability_topic"],
            "root/dev1/telemetry/system/availability"
        );
        assert!(c["unique_id"]
            .as_str()
            .unwrap()
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'));
    }
    let cpu = &found["homeassistant/sensor/dev1_main/cpu_usage_in_percent/config"];
    assert_eq!(cpu["unit_of_measurement"], "%");
    assert_eq!(cpu["state_class"], "measurement");
    assert_eq!(cpu["device"]["name"], "main on dev1");
    // An entity id naming the device (object_id is deprecated since Home Assistant 2025.10), and
    // expire_after: three intervals, but in FILE mode at least the ten minutes a file may stand unchanged.
    assert_eq!(
        cpu["default_entity_id"],
        "sensor.dev1_main_cpu_usage_in_percent"
    );
    assert!(cpu.get("object_id").is_none());
    assert!(found.values().all(|c| c["expire_after"] == 600));
    let rx = &found["homeassistant/sensor/dev1_frontend/network_received_in_bytes/config"];
    assert_eq!(
        (rx["device_class"].as_str(), rx["state_class"].as_str()),
        (Some("data_size"), Some("total_increasing"))
    );
    // The configs are retained: a subscriber arriving now still gets every one of them.
    let late = formatted_subscriber(broker.port, "homeassistant/#");
    let late_recs = records(&late.collect(63, Duration::from_secs(5)));
    assert_eq!(configs(&late_recs).len(), 63);
    assert!(late_recs.iter().all(|(retained, _, _)| *retained));
}

/// Like [`formatted_subscriber`] on `homeassistant/#`, and on the availability topic too: the agent's
/// `offline` at its stop is the last thing it publishes, so once that has arrived, so has everything it
/// published before (one connection, in order).
fn discovery_subscriber(port: u16) -> Subscriber {
    Subscriber::start_args(
        port,
        &[
            "-F",
            "%r|%t|%p",
            "-t",
            "homeassistant/#",
            "-t",
            "root/+/telemetry/system/availability",
            "-t",
            "probe/ready",
        ],
    )
}

/// SIGTERM, and every message the agent published before it has arrived.
fn stop_and_drain(agent: Running, sub: &Subscriber) -> String {
    let log = agent.stop();
    assert!(
        sub.wait_for(
            |l| l.iter().any(|l| l.ends_with("/availability|offline")),
            Duration::from_secs(10)
        ),
        "no offline at the stop:\n{log}"
    );
    log
}

fn config_records(recs: &[(bool, String, String)]) -> usize {
    recs.iter()
        .filter(|(_, t, _)| t.starts_with("homeassistant/") && t.ends_with("/config"))
        .count()
}

/// Logged (debug) by each tick that finds the file as it was.
const UNCHANGED: &str = "unchanged since the last tick";

#[test]
fn home_assistant_birth_gets_everything_again() {
    let broker = Broker::start();
    let sub = discovery_subscriber(broker.port);
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        &mqtt_config(&broker, ""),
    );
    let agent = Running::start(cfg.path());
    let announced = |l: &[String]| config_records(&records(l));
    assert!(sub.wait_for(|l| announced(l) >= 63, Duration::from_secs(10)));
    // Ticks go on (the file is unchanged); configs are sent once, not every tick: counted at the end.
    assert!(
        agent.wait_count(UNCHANGED, 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    publish_status(&broker, false);
    // Re-announced after a random delay of 0.5 to 5 s.
    assert!(
        sub.wait_for(|l| announced(l) >= 63 * 2, Duration::from_secs(15)),
        "{:?}",
        sub.lines().len()
    );
    let seen = agent.count(UNCHANGED);
    assert!(
        agent.wait_count(UNCHANGED, seen + 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    let log = stop_and_drain(agent, &sub);
    let recs = records(&sub.lines());
    let birth = recs
        .iter()
        .position(|(_, t, _)| t == "homeassistant/status")
        .expect("the birth went by");
    assert_eq!(
        config_records(&recs[..birth]),
        63,
        "configs are sent once, not every tick:\n{log}"
    );
    assert_eq!(config_records(&recs[birth..]), 63, "once per birth:\n{log}");
    assert_eq!(configs(&recs[birth..]).len(), 63, "{log}");
}

fn publish_status(broker: &Broker, retain: bool) {
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", "homeassistant/status", "-m", "online"]);
    if retain {
        cmd.arg("-r");
    }
    assert!(cmd.status().unwrap().success());
}

#[test]
fn a_retained_birth_is_the_past_not_a_birth() {
    // Some set Home Assistant's birth retained: the broker then hands the agent an `online` at every
    // subscribe. The agent announces at every connect anyway; announcing again for it would double the
    // configs' bytes at every connect.
    let broker = Broker::start();
    publish_status(&broker, true);
    let sub = discovery_subscriber(broker.port);
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        &mqtt_config(&broker, ""),
    );
    let agent = Running::start(cfg.path());
    let announced = |l: &[String]| config_records(&records(l));
    assert!(sub.wait_for(|l| announced(l) >= 63, Duration::from_secs(10)));
    assert!(
        agent
            .wait_line(Duration::from_secs(10), |l| l
                .contains("retained message on homeassistant/status, ignored"))
            .is_some(),
        "{}",
        agent.log()
    );
    // A re-announcement would come 0.5 to 5 s after the message: six 1 s ticks later it would be here.
    assert!(
        agent.wait_count(UNCHANGED, 6, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    // A live birth still counts: the subscription works, so the silence before it meant something.
    publish_status(&broker, false);
    assert!(
        sub.wait_for(|l| announced(l) >= 63 * 2, Duration::from_secs(15)),
        "{}",
        agent.log()
    );
    let log = stop_and_drain(agent, &sub);
    let recs = records(&sub.lines());
    let live_birth = recs
        .iter()
        .position(|(r, t, _)| !r && t == "homeassistant/status")
        .expect("the live birth went by");
    assert_eq!(config_records(&recs[..live_birth]), 63, "{log}");
    assert_eq!(config_records(&recs[live_birth..]), 63, "{log}");
}

#[test]
fn services_gone_past_the_expiry_lose_their_configs() {
    let broker = Broker::start();
    let sub = discovery_subscriber(broker.port);
    let dir = TempDir::new("expiry");
    let sample = std::fs::read_to_string(sample_stats()).unwrap();
    let file = dir.write("stats.jsonl", &sample);
    let cfg = config_dir(
        &file_collector(&file, 1),
        &mqtt_config(&broker, r#", "home_assistant_remove_after_in_seconds": 2"#),
    );
    let agent = Running::start(cfg.path());
    assert!(sub.wait_for(
        |l| config_records(&records(l)) >= 63,
        Duration::from_secs(10)
    ));
    // my-db goes away.
    let without: String = sample
        .lines()
        .filter(|l| !l.contains("\"my-db\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, without).unwrap();
    let removed = |l: &[String]| {
        records(l)
            .iter()
            .filter(|(_, t, p)| t.starts_with("homeassistant/") && p.is_empty())
            .count()
    };
    assert!(sub.wait_for(|l| removed(l) >= 9, Duration::from_secs(8)));
    // Three more ticks, past another expiry period: no other service's configs go.
    let seen = agent.count(UNCHANGED);
    assert!(
        agent.wait_count(UNCHANGED, seen + 3, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    let log = stop_and_drain(agent, &sub);
    let recs = records(&sub.lines());
    let empty: BTreeSet<String> = recs
        .iter()
        .filter(|(_, t, p)| t.starts_with("homeassistant/") && p.is_empty())
        .map(|r| r.1.clone())
        .collect();
    assert_eq!(empty.len(), 9, "{log}");
    assert!(
        empty
            .iter()
            .all(|t| t.starts_with("homeassistant/sensor/dev1_my-db/")),
        "{empty:?}"
    );
    // Removed from the broker's retained store: a late subscriber sees 54 configs.
    let late = formatted_subscriber(broker.port, "homeassistant/#");
    assert_eq!(
        configs(&records(&late.collect(54, Duration::from_secs(5)))).len(),
        54
    );
}

#[test]
fn per_service_payloads_carry_every_available_metric() {
    let broker = Broker::start();
    let sub = formatted_subscriber(broker.port, "#");
    let mqtt = mqtt_config(&broker, r#", "payload_mode": "per_service""#);
    let cfg = config_dir(&file_collector(&sample_stats(), 10), &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let recs = records(&sub.received());
    let services: BTreeMap<String, Value> = recs
        .iter()
        .filter(|(_, t, _)| t.starts_with("root/") && !t.ends_with("/availability"))
        .map(|(_, t, p)| (t.clone(), serde_json::from_str(p).unwrap()))
        .collect();
    assert_eq!(services.len(), 8);
    // Every figure of the sample is in its service's message, and nothing else is.
    let prefix = "root/dev1/telemetry/system/";
    let mut seen = 0;
    for (path, value) in SAMPLE_EXPECTED {
        let (service, metric) = path.split_once('/').unwrap();
        let msg = &services[&format!("{prefix}{service}")];
        assert_eq!(msg[metric].as_f64(), Some(*value), "{path}");
        seen += 1;
    }
    let total: usize = services
        .values()
        .map(|v| v.as_object().unwrap().len() - 1)
        .sum();
    assert_eq!(total, seen, "no metric beyond the sample's");
    let starting = &services[&format!("{prefix}starting")];
    assert_eq!(
        starting.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["timestamp"],
        "absent, not null or 0"
    );
    // Discovery points each sensor at its key in the service message (an absent key reads as unknown).
    let found = configs(&recs);
    let cpu = &found["homeassistant/sensor/dev1_main/cpu_usage_in_percent/config"];
    assert_eq!(cpu["state_topic"], "root/dev1/telemetry/system/main");
    assert_eq!(
        cpu["value_template"],
        "{{ value_json.cpu_usage_in_percent | default(None) }}"
    );
}
