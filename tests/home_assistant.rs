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

#[test]
fn home_assistant_birth_gets_everything_again() {
    let broker = Broker::start();
    let sub = formatted_subscriber(broker.port, "homeassistant/#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        &mqtt_config(&broker, ""),
    );
    let child = spawn_agent(cfg.path());
    assert!(sub.wait_for(|l| l.len() >= 63, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sub.lines().len(),
        63,
        "configs are sent once, not every tick"
    );
    std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "homeassistant/status",
            "-m",
            "online",
        ])
        .status()
        .unwrap();
    // Re-announced after a random delay of 0.5 to 5 s.
    assert!(
        sub.wait_for(|l| l.len() >= 63 + 1 + 63, Duration::from_secs(8)),
        "{:?}",
        sub.lines().len()
    );
    let log = stop_agent(child);
    let again = configs(&records(&sub.lines()[64..]));
    assert_eq!(again.len(), 63, "{log}");
}

#[test]
fn services_gone_past_the_expiry_lose_their_configs() {
    let broker = Broker::start();
    let sub = formatted_subscriber(broker.port, "homeassistant/#");
    let dir = TempDir::new("expiry");
    let sample = std::fs::read_to_string(sample_stats()).unwrap();
    let file = dir.write("stats.jsonl", &sample);
    let cfg = config_dir(
        &file_collector(&file, 1),
        &mqtt_config(&broker, r#", "home_assistant_remove_after_in_seconds": 2"#),
    );
    let child = spawn_agent(cfg.path());
    assert!(sub.wait_for(|l| l.len() >= 63, Duration::from_secs(10)));
    // my-db goes away.
    let without: String = sample
        .lines()
        .filter(|l| !l.contains("\"my-db\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&file, without).unwrap();
    let removed = |l: &[String]| records(l).iter().filter(|(_, _, p)| p.is_empty()).count();
    assert!(sub.wait_for(|l| removed(l) >= 9, Duration::from_secs(8)));
    std::thread::sleep(Duration::from_millis(1500));
    let log = stop_agent(child);
    let recs = records(&sub.lines());
    let empty: BTreeSet<String> = recs
        .iter()
        .filter(|(_, _, p)| p.is_empty())
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
    let recs = records(&sub.collect(8 + 63 + 2, Duration::from_secs(5)));
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
