//! Home Assistant's device form of discovery (`home_assistant_discovery_form: "device"`) through a real
//! mosquitto: one retained message per service, and the documented migration of entities the entity form
//! announced (request on each old topic, then the device message, then the old topic cleared). Home
//! Assistant's own reading of these messages is `make check-ha-device`.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const MIGRATE: &str = r#"{"migrate_discovery":true}"#;

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

fn mqtt(broker: &Broker, form: &str) -> String {
    format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "home_assistant_discovery": true,
            "home_assistant_discovery_form": "{form}"}}"#,
        broker.url()
    )
}

#[test]
fn entities_of_the_entity_form_are_migrated_to_one_device_message_per_service() {
    let broker = Broker::start();
    // The entity form first: 63 retained per-entity configs.
    let entity = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt(&broker, "entity"),
    );
    let (code, log) = run_limited(&mut once(entity.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let retained = Subscriber::start_args(
        broker.port,
        &[
            "-F",
            "%r|%t|%p",
            "-t",
            "homeassistant/#",
            "-t",
            "probe/ready",
        ],
    );
    let old: BTreeMap<String, Value> = records(&retained.collect(63, Duration::from_secs(5)))
        .into_iter()
        .map(|(_, t, p)| (t, serde_json::from_str(&p).unwrap()))
        .collect();
    assert_eq!(old.len(), 63);
    drop(retained);

    // Then the device form, running.
    let sub = Subscriber::start_args(
        broker.port,
        &[
            "-F",
            "%r|%t|%p",
            "-t",
            "homeassistant/#",
            "-t",
            "root/#",
            "-t",
            "probe/ready",
        ],
    );
    let device = config_dir(
        &file_collector(&sample_stats(), 3600),
        &mqtt(&broker, "device"),
    );
    let child = spawn_agent(device.path());
    let cleared = |l: &[String]| {
        records(l)
            .iter()
            .filter(|(r, t, p)| !r && old.contains_key(t) && p.is_empty())
            .count()
            == old.len()
    };
    assert!(sub.wait_for(cleared, Duration::from_secs(20)));
    // ...and its values again once the device messages settled (one collection: a second copy is that).
    let pids_twice = |l: &[String]| {
        let recs = records(l);
        recs.iter()
            .filter(|(_, t, _)| t == "root/dev1/telemetry/system/main/pids")
            .count()
            == 2
    };
    assert!(sub.wait_for(pids_twice, Duration::from_secs(20)));
    sub.sync(broker.port);
    let log = stop_agent(child);
    let recs: Vec<_> = records(&sub.lines())
        .into_iter()
        .filter(|(retained, _, _)| !retained)
        .collect();

    // Each old topic: the migration request, then (after a device message) an empty payload.
    let device_at: Vec<usize> = recs
        .iter()
        .enumerate()
        .filter(|(_, (_, t, p))| t.starts_with("homeassistant/device/") && !p.is_empty())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(device_at.len(), 7, "one per service with entities: {log}");
    for topic in old.keys() {
        let on: Vec<(usize, &str)> = recs
            .iter()
            .enumerate()
            .filter(|(_, (_, t, _))| t == topic)
            .map(|(i, (_, _, p))| (i, p.as_str()))
            .collect();
        assert_eq!(on.len(), 2, "{topic}: {on:?}");
        assert_eq!(on[0].1, MIGRATE, "{topic}");
        assert_eq!(on[1].1, "", "{topic}");
        assert!(
            device_at.iter().any(|d| on[0].0 < *d && *d < on[1].0),
            "{topic}: a device message between the request and the removal"
        );
    }

    // Each entity kept: the same unique_id on the same HA device, and the same entity options.
    let mut by_unique_id: BTreeMap<String, (Value, Value)> = BTreeMap::new();
    let mut device_topics = BTreeSet::new();
    for (_, t, p) in recs
        .iter()
        .filter(|(_, t, p)| t.starts_with("homeassistant/device/") && !p.is_empty())
    {
        device_topics.insert(t.clone());
        let d: Value = serde_json::from_str(p).unwrap();
        assert_eq!(d["o"]["name"], "balena-multi-container-telemetry");
        assert_eq!(d["avty_t"], "root/dev1/telemetry/system/availability");
        for c in d["cmps"].as_object().unwrap().values() {
            let id = c["uniq_id"].as_str().unwrap().to_owned();
            by_unique_id.insert(id, (c.clone(), d["dev"].clone()));
        }
    }
    assert!(device_topics.contains("homeassistant/device/dev1/main/config"));
    for (topic, config) in &old {
        let (c, dev) = &by_unique_id[config["unique_id"].as_str().unwrap()];
        assert_eq!(dev["ids"], config["device"]["identifiers"], "{topic}");
        assert_eq!(dev["name"], config["device"]["name"], "{topic}");
        assert_eq!(c["stat_t"], config["state_topic"], "{topic}");
        assert_eq!(c["val_tpl"], config["value_template"], "{topic}");
        assert_eq!(c["def_ent_id"], config["default_entity_id"], "{topic}");
        // (expire_after differs: the entity form ran --once, which sets none.)
        assert_eq!(c["exp_aft"], 3 * 3600, "{topic}");
        let platform = topic.split('/').nth(1).unwrap();
        assert_eq!(c["p"], platform, "{topic}");
    }
    assert_eq!(by_unique_id.len(), 63);

    // The broker now holds the device messages only.
    let late = Subscriber::start_args(
        broker.port,
        &[
            "-F",
            "%r|%t|%p",
            "-t",
            "homeassistant/#",
            "-t",
            "probe/ready",
        ],
    );
    let now: BTreeSet<String> = records(&late.collect(7, Duration::from_secs(5)))
        .into_iter()
        .map(|(_, t, _)| t)
        .collect();
    assert_eq!(now, device_topics);
}

#[test]
fn a_bad_discovery_form_exits_2_naming_the_key() {
    let broker = Broker::start();
    let cfg = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt(&broker, "devices"),
    );
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(10));
    assert_eq!(code, Some(2), "{log}");
    assert!(log.contains("home_assistant_discovery_form"), "{log}");
}
