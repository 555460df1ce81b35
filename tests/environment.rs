//! Configuration from the environment (issue 14), end to end: the built agent with no config directory
//! at all, configured by STATS_* and MQTT_* variables as a balena fleet would, against a real mosquitto;
//! the original program's config file running unchanged.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The agent with a clean environment: none of the caller's STATS_*/MQTT_*/balena variables, no
/// CONFIG_DIR, and `dir` as the working directory (so its `config/` is whatever `dir` holds).
fn bare_agent(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("CONFIG_DIR")
        .env_remove("BALENA_DEVICE_UUID")
        .env("LOG_LEVEL", "debug");
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        if n.starts_with("STATS_") || n.starts_with("MQTT_") {
            c.env_remove(&name);
        }
    }
    c
}

#[test]
fn runs_on_the_environment_alone_without_any_config_file() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let empty = TempDir::new("no-config");
    let stats = sample_stats();
    let mut agent = bare_agent(empty.path());
    agent
        .arg("--once")
        .env("STATS_MODE", "FILE")
        .env("STATS_FILE_PATH", &stats)
        .env("STATS_COLLECTION_INTERVAL_IN_SECONDS", "3600")
        .env("MQTT_BROKER_URL", broker.url())
        .env("MQTT_DEVICE_ID", "envdev")
        .env("MQTT_QOS", "1")
        .env("MQTT_PASSWORD", "") // blank: unset, as before
        // A fleet-wide variable meant for another service: a warning, never a failure.
        .env("MQTT_HOST", "other-service-broker");
    let (code, log) = run_limited(&mut agent, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    let lines = sub.received();
    assert_sample_figures(&lines, "envdev");

    // One info line with the effective settings; where each came from at debug level.
    let start: Vec<_> = log
        .lines()
        .filter(|l| l.starts_with("INFO balena-multi-container-telemetry "))
        .collect();
    assert_eq!(start.len(), 1, "{log}");
    assert!(
        start[0].contains(&format!("FILE mode, every 3600s, file_path {stats:?}")),
        "{}",
        start[0]
    );
    assert!(
        start[0].contains(&format!("broker 127.0.0.1:{}", broker.port)),
        "{}",
        start[0]
    );
    assert!(
        log.contains("DEBUG config: file_path from environment variable STATS_FILE_PATH"),
        "{log}"
    );
    assert!(log.contains("DEBUG config: cli_path from default"), "{log}");
    assert!(
        log.contains("WARN config: environment variable MQTT_HOST ignored: no such key"),
        "{log}"
    );
    assert!(
        log.contains("config/mqtt.config.json not found: settings from the environment"),
        "{log}"
    );
}

#[test]
fn a_variable_wins_over_the_file_and_a_secret_is_never_logged() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "env/#");
    // The file says FILE mode on a file that does not exist, a broker that is not there and QoS 1;
    // the environment corrects the path, the broker and the template.
    let cfg = config_dir(
        &file_collector(Path::new("/nonexistent/stats.jsonl"), 3600),
        r#"{"broker_url": "tcp://127.0.0.1:1", "device_id": "filedev", "username": "u",
            "password": "file-secret"}"#,
    );
    let mut agent = bare_agent(cfg.path());
    agent
        .args(["--once", "--config-dir"])
        .arg(cfg.path())
        .env("STATS_FILE_PATH", sample_stats())
        .env("MQTT_BROKER_URL", broker.url())
        .env("MQTT_ROOT_TOPIC_TEMPLATE", "env/{device_id}/{service_name}")
        .env("MQTT_PASSWORD", "env-secret");
    let (code, log) = run_limited(&mut agent, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    let lines = sub.received();
    let metrics = lines
        .iter()
        .filter(|l| l.starts_with("env/filedev/main/"))
        .count();
    assert_eq!(metrics, 9, "{lines:?}");
    assert!(log.contains("password ***"), "{log}");
    assert!(
        !log.contains("env-secret") && !log.contains("file-secret"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "DEBUG config: mode from {}",
            cfg.path()
                .join("balena_stats_collector.config.json")
                .display()
        )),
        "{log}"
    );
}

#[test]
fn a_bad_variable_exits_2_naming_the_variable() {
    let empty = TempDir::new("no-config");
    for (name, value, expect) in [
        (
            "MQTT_QOS",
            "2",
            r#"environment variable MQTT_QOS: "qos": must be an integer from 0 to 1, not "2""#,
        ),
        (
            "STATS_MODE",
            "SOCKET",
            r#"environment variable STATS_MODE: "mode": "SOCKET" is not a mode"#,
        ),
        (
            "MQTT_RETAIN",
            "yes",
            r#"environment variable MQTT_RETAIN: "retain": must be true or false"#,
        ),
    ] {
        let mut agent = bare_agent(empty.path());
        agent.arg("--once").env(name, value);
        let (code, log) = run_limited(&mut agent, Duration::from_secs(10));
        assert_eq!(code, Some(2), "{name}={value}: {log}");
        assert!(log.contains(expect), "{name}={value}: {log}");
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[test]
fn the_original_programs_config_runs_unchanged() {
    // The original program's default config/mqtt.config.json, byte for byte: a `unit` key and the
    // `{unit}` placeholder, which this agent refused with exit 2 before. Only the broker comes from the
    // environment (the file's 127.0.0.1:1883 may be anyone's here), and so do the FILE-mode settings:
    // its collector file runs `docker stats` every 15 s.
    let original_mqtt = r#"{
  "broker_url": "tcp://127.0.0.1:1883",
  "device_id": "d35a7ea843c61c723a12f19a41c26ef1",
  "unit": "my-unit",
  "root_topic_template": "isb/{device_id}/telemetry/{unit}/{service_name}"
}"#;
    let original_collector = r#"{
  "mode": "CLI",
  "cli_path": "docker",
  "file_path": "data/test-data/balena_stats_stdout.txt",
  "collection_interval_in_seconds": 15
}"#;
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "isb/#");
    let cfg = config_dir(original_collector, original_mqtt);
    let mut agent = bare_agent(cfg.path());
    agent
        .args(["--once", "--config-dir"])
        .arg(cfg.path())
        .env("STATS_MODE", "FILE")
        .env("STATS_FILE_PATH", sample_stats())
        .env("MQTT_BROKER_URL", broker.url());
    let (code, log) = run_limited(&mut agent, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("WARN config"), "{log}");
    sub.sync(broker.port);
    let lines = sub.lines();
    let device = "d35a7ea843c61c723a12f19a41c26ef1";
    let theirs = format!("isb/{device}/telemetry/my-unit/");
    // Every figure of the sample, under the original's topics.
    let as_ours: Vec<String> = lines
        .iter()
        .filter(|l| !l.contains("/availability "))
        .map(|l| {
            assert!(l.starts_with(&theirs), "{l}");
            l.replacen(&theirs, &format!("root/{device}/telemetry/system/"), 1)
        })
        .collect();
    assert_sample_figures(&as_ours, device);
}
