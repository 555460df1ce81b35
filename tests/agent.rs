//! The built agent end to end against a real mosquitto and a real subscriber.

mod common;
use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};

fn mqtt_config(broker: &Broker, extra: &str) -> String {
    format!(
        r#"{{"broker_url": "{}", "device_id": "dev1"{extra}}}"#,
        broker.url()
    )
}

#[test]
fn file_mode_once_publishes_every_figure_of_the_sample() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt_config(&broker, ""),
    );
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    sub.sync(broker.port);
    let lines = sub.lines();
    assert_sample_figures(&lines, "dev1");
    assert_eq!(
        lines.len(),
        SAMPLE_EXPECTED.len(),
        "figures only: {lines:#?}"
    );
    assert!(
        log.contains("INFO tick: 8 containers, 63 messages"),
        "{log}"
    );
}

#[test]
fn qos0_and_a_custom_template_with_every_placeholder() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "t/#");
    let mqtt = mqtt_config(
        &broker,
        r#", "qos": 0, "root_topic_template": "t/{device_id}/{service_name}/{container_name}/{container_id}""#,
    );
    let cfg = config_dir(&file_collector(&sample_stats(), 10), &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    // QoS 0: nothing was acknowledged, so wait for the figures before the probe round trip.
    let lines = sub.collect(63, Duration::from_secs(5));
    let metrics: Vec<_> = lines
        .iter()
        .filter(|l| !l.starts_with("t/dev1/availability "))
        .collect();
    assert_eq!(metrics.len(), 63, "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with(
        "t/dev1/main/main_5412321_2764432_0123456789abcdef0123456789abcdef/3f1c2b9a8d7e/pids {\"value\":23,"
    )));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("t/dev1/balena_supervisor/balena_supervisor/5c4d3e2f1a0b/pids ")));
}

#[test]
fn balena_device_uuid_wins_over_device_id() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt_config(&broker, ""),
    );
    let (code, log) = run_limited(
        once(cfg.path()).env("BALENA_DEVICE_UUID", "0123abcd"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{log}");
    let lines = sub.received();
    assert_sample_figures(&lines, "0123abcd");
}

#[test]
fn bad_lines_are_reported_by_number_and_good_lines_still_published() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let dir = TempDir::new("bad");
    let sample = std::fs::read_to_string(sample_stats()).unwrap();
    let mut lines: Vec<&str> = sample.lines().collect();
    lines.insert(1, "this is not json");
    lines.insert(
        3,
        r#"{"Name":"odd","CPUPerc":"NaN%","PIDs":"-3","MemPerc":"1e+999%"}"#,
    );
    lines.insert(4, "");
    let text = lines.join("\r\n") + "\n\u{1}\u{2}garbage\n";
    let file = dir.write("stats.jsonl", &text);
    let cfg = config_dir(&file_collector(&file, 10), &mqtt_config(&broker, ""));
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    // Two lines of one kind: one summary line naming the first.
    assert!(
        log.contains(&format!(
            "2 records skipped in stats file {}: first at line 2: not a stats object",
            file.display()
        )),
        "{log}"
    );
    assert!(
        log.contains("line 4 (odd): CPUPerc \"NaN%\": not a number"),
        "{log}"
    );
    assert!(
        log.contains("line 4 (odd): PIDs \"-3\": not a number"),
        "{log}"
    );
    assert!(
        log.contains("line 4 (odd): MemPerc \"1e+999%\": out of range"),
        "{log}"
    );
    let got = sub.received();
    assert_sample_figures(&got, "dev1");
    assert!(
        !got.iter().any(|l| l.contains("/odd/")),
        "a container with no readable figure publishes nothing"
    );
}

#[test]
fn quoted_lines_and_whole_file_arrays_are_accepted() {
    let sample = std::fs::read_to_string(sample_stats()).unwrap();
    let quoted: String = sample.lines().map(|l| format!("\"{l}\"\n")).collect();
    let array = format!("[\n{}\n]\n", sample.lines().collect::<Vec<_>>().join(",\n"));
    for text in [quoted, array] {
        let broker = Broker::start();
        let sub = Subscriber::start(broker.port, "root/#");
        let dir = TempDir::new("forms");
        let file = dir.write("stats.json", &text);
        let cfg = config_dir(&file_collector(&file, 10), &mqtt_config(&broker, ""));
        let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
        assert_eq!(code, Some(0), "{log}");
        assert_sample_figures(&sub.received(), "dev1");
    }
}

#[test]
fn missing_stats_file_is_a_warning_and_once_exits_1() {
    let broker = Broker::start();
    let cfg = config_dir(
        &file_collector(std::path::Path::new("/nonexistent/stats.jsonl"), 10),
        &mqtt_config(&broker, ""),
    );
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot open stats file /nonexistent/stats.jsonl"),
        "{log}"
    );
}

fn cli_config(fake_stats: &std::path::Path) -> (String, std::path::PathBuf) {
    let script = repo().join("tests/data/fake-balena.sh");
    let cfg = format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": 1, "cli_timeout_in_seconds": 2}}"#,
        script.display()
    );
    (cfg, fake_stats.to_path_buf())
}

#[test]
fn cli_mode_runs_the_cli_and_publishes_its_output() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let (collector, stats) = cli_config(&sample_stats());
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let (code, log) = run_limited(
        once(cfg.path()).env("FAKE_STATS", &stats),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.received(), "dev1");
}

#[test]
fn cli_failure_logs_its_stderr_and_the_agent_keeps_running() {
    let broker = Broker::start();
    let (collector, stats) = cli_config(&sample_stats());
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let agent = Running::spawn(
        agent(cfg.path())
            .env("FAKE_STATS", &stats)
            .env("FAKE_MODE", "fail"),
    );
    let failure = "stats exited with exit status: 1: Cannot connect to the balenaEngine daemon";
    assert!(
        agent.wait_count(failure, 2, Duration::from_secs(30)),
        "one error per tick: {}",
        agent.log()
    );
    // Still running after failed ticks (stop checks), and exits 0.
    agent.stop();
}

#[test]
fn cli_that_hangs_is_killed_at_its_timeout() {
    let broker = Broker::start();
    let (collector, stats) = cli_config(&sample_stats());
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let started = Instant::now();
    let (code, log) = run_limited(
        once(cfg.path())
            .env("FAKE_STATS", &stats)
            .env("FAKE_MODE", "hang"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("did not finish within 2s and was killed"),
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn missing_cli_binary_is_an_error_per_tick_not_a_crash() {
    let broker = Broker::start();
    let cfg = config_dir(
        r#"{"mode": "CLI", "cli_path": "/nonexistent/balena", "collection_interval_in_seconds": 1}"#,
        &mqtt_config(&broker, ""),
    );
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("cannot run \"/nonexistent/balena\": not found"),
        "{log}"
    );
}

fn unsafe_kill(pid: u32, sig: &str) {
    std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

#[test]
fn sigterm_publishes_offline_and_exits_0_within_2_seconds() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        &mqtt_config(&broker, ""),
    );
    let child = agent(cfg.path()).stderr(Stdio::piped()).spawn().unwrap();
    assert!(
        sub.wait_for(|l| l.len() >= 64, Duration::from_secs(10)),
        "first tick arrived"
    );
    let t = Instant::now();
    unsafe_kill(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(sub.wait_for(
        |l| l
            .last()
            .is_some_and(|x| x == "root/dev1/telemetry/system/availability offline"),
        Duration::from_secs(2)
    ));
    // Retained: a late subscriber still sees it.
    let late = Subscriber::start(broker.port, "root/dev1/telemetry/system/availability");
    assert!(late.wait_for(
        |l| l == ["root/dev1/telemetry/system/availability offline"],
        Duration::from_secs(2)
    ));
}

/// A --once run from cron publishes figures and Home Assistant configs but no availability: an `offline`
/// at its end (or a will) made every entity unavailable between runs.
#[test]
fn once_says_nothing_about_availability_and_sets_no_will() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "#");
    let mqtt = mqtt_config(&broker, r#", "home_assistant_discovery": true"#);
    let cfg = config_dir(&file_collector(&sample_stats(), 10), &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let got = sub.collect(63 * 2, Duration::from_secs(5));
    assert_eq!(got.len(), 126, "63 figures and 63 configs: {got:#?}");
    assert!(!got.iter().any(|l| l.contains("availability")), "{got:#?}");

    // No will: an agent killed while connected leaves no `offline` behind.
    let (collector, stats) = cli_config(&sample_stats());
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let watcher = Subscriber::start(broker.port, "root/dev1/telemetry/system/availability");
    let mut agent = Running::spawn(
        once(cfg.path())
            .env("FAKE_STATS", &stats)
            .env("FAKE_MODE", "hang"),
    );
    assert!(
        agent.wait_log("connected to broker", Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    agent.kill();
    // A will would be published when the broker sees the connection drop, which it has by the time
    // it takes the probe's later connection and PUBLISH.
    let seen = watcher.received();
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn sigint_also_stops_cleanly() {
    let broker = Broker::start();
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        &mqtt_config(&broker, ""),
    );
    let mut agent = Running::start(cfg.path());
    // Connected: the signal handlers were set long before.
    assert!(
        agent.wait_log("connected to broker", Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    let (took, code) = agent.signal(libc::SIGINT, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
}

#[test]
fn ticks_repeat_at_the_interval() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/+/telemetry/system/main/pids");
    // CLI mode: each tick's figures carry the time the CLI answered (FILE mode uses the file's time).
    let (collector, stats) = cli_config(&sample_stats());
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let mut child = agent(cfg.path())
        .env("FAKE_STATS", &stats)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(sub.wait_for(|l| l.len() >= 3, Duration::from_secs(6)));
    unsafe_kill(child.id(), "TERM");
    child.wait().unwrap();
    let stamps: Vec<u64> = sub
        .lines()
        .iter()
        .filter_map(|l| parse_metric(l))
        .map(|m| m.2)
        .collect();
    // Ticks keep a 1 s cadence: a late one (a busy machine delays the CLI's answer) does not move
    // the next, so no two come close together and the span grows by the interval per tick. The
    // margins are generous: this is a guard, not a timing measurement.
    assert!(stamps.len() >= 3, "{stamps:?}");
    for w in stamps.windows(2) {
        assert!(w[1] - w[0] >= 300, "two ticks close together: {stamps:?}");
    }
    let span = stamps[stamps.len() - 1] - stamps[0];
    let ticks = stamps.len() as u64 - 1;
    assert!(
        span + 700 >= ticks * 1000 && span <= ticks * 1000 + 3000,
        "{ticks} intervals of 1 s in {span} ms: {stamps:?}"
    );
}

#[test]
fn config_errors_name_file_and_key_and_exit_2() {
    let cases = [
        (
            r#"{"mode": "SOCKETS"}"#,
            r#"{}"#,
            "balena_stats_collector.config.json: \"mode\"",
        ),
        (
            r#"{"collection_interval_in_seconds": 0}"#,
            r#"{}"#,
            "\"collection_interval_in_seconds\": must be an integer",
        ),
        (r#"{}"#, r#"{"qos": 2}"#, "mqtt.config.json: \"qos\""),
        (
            r#"{}"#,
            r#"{"root_topic_template": "a/{oops}"}"#,
            "\"root_topic_template\": has an unknown placeholder {oops}",
        ),
        (
            r#"{}"#,
            r#"{"root_topic_template": "a/#"}"#,
            "\"root_topic_template\": must not contain '#'",
        ),
        (r#"{}"#, r#"{"broker_url": "http://x"}"#, "\"broker_url\""),
        (
            r#"{}"#,
            r#"{"broker_url": []}"#,
            "mqtt.config.json: \"broker_url\": is an empty list",
        ),
        (
            r#"{}"#,
            r#"{"broker_url": ["tcp://a:1883", "b:1883"]}"#,
            "\"broker_url\": entry 2 of 2: \"b:1883\" must start with tcp://",
        ),
        (
            r#"{}"#,
            r#"{"broker_url": ["tcp://a:1883", "tcp://b:70000"]}"#,
            "\"broker_url\": entry 2 of 2: \"tcp://b:70000\" has an invalid port",
        ),
        (
            r#"{}"#,
            r#"{"password": "secret"}"#,
            "mqtt.config.json: \"password\": is set but \"username\" is not",
        ),
        (
            r#"{"#,
            r#"{}"#,
            "balena_stats_collector.config.json: is not valid JSON",
        ),
    ];
    for (collector, mqtt, expect) in cases {
        let cfg = config_dir(collector, mqtt);
        let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(5));
        assert_eq!(code, Some(2), "{collector} {mqtt}: {log}");
        assert!(
            log.contains(expect),
            "{collector} {mqtt}: expected {expect:?} in {log}"
        );
        assert!(!log.contains("panicked"));
    }
}

/// `MQTT_BROKER_URL` lists nodes with commas; a bad entry there names the variable and the entry.
#[test]
fn a_bad_entry_in_the_broker_list_variable_is_a_config_error() {
    let cfg = config_dir(r#"{}"#, r#"{}"#);
    let (code, log) = run_limited(
        once(cfg.path()).env("MQTT_BROKER_URL", "tcp://a:1883,node2:1883"),
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(
            "environment variable MQTT_BROKER_URL: \"broker_url\": entry 2 of 2: \"node2:1883\""
        ),
        "{log}"
    );
}

/// A password without a user name breaks MQTT-3.1.2-22 and every broker refuses it: the agent used to
/// retry forever. From `MQTT_PASSWORD` too, it is a config error naming the variable.
#[test]
fn mqtt_password_without_a_user_name_is_a_config_error() {
    let cfg = config_dir(r#"{}"#, r#"{}"#);
    let (code, log) = run_limited(
        once(cfg.path()).env("MQTT_PASSWORD", "hunter2"),
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(
            "environment variable MQTT_PASSWORD: \"password\": is set but \"username\" is not"
        ),
        "{log}"
    );
    assert!(
        !log.contains("hunter2"),
        "the password is never logged: {log}"
    );
}

#[test]
fn missing_config_files_fall_back_to_defaults_with_an_info_line() {
    // Running on the environment alone is normal in a container (issue 14): an info line, no warning.
    let cfg = TempDir::new("empty");
    // Defaults are CLI mode with `balena`, which is not here: the tick fails, the agent does not. (No
    // engine socket either, or the agent would choose ENGINE mode; and a broker named, or the default
    // broker would be warned of.)
    let broker = Broker::start();
    let (code, log) = run_limited(
        once(cfg.path())
            .env("LOG_LEVEL", "info")
            .env("STATS_ENGINE_SOCKET", "/nonexistent/engine.sock")
            .env("MQTT_BROKER_URL", broker.url()),
        Duration::from_secs(60),
    );
    assert!(
        log.contains(&format!(
            "INFO config: {}/balena_stats_collector.config.json not found: settings from the \
             environment and built-in defaults",
            cfg.path().display()
        )),
        "{log}"
    );
    assert!(
        log.contains("mqtt.config.json not found: settings from the environment"),
        "{log}"
    );
    assert!(!log.contains("WARN config"), "{log}");
    assert_eq!(code, Some(1), "{log}");
}

#[test]
fn unknown_keys_are_warned_about() {
    let broker = Broker::start();
    let collector =
        file_collector(&sample_stats(), 10).replace('}', r#", "colection_interval": 3}"#);
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("WARN config:") && log.contains("unknown key \"colection_interval\""),
        "{log}"
    );
}

#[test]
fn command_line() {
    let (code, log) = run_limited(
        std::process::Command::new(BIN).arg("--bogus"),
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(2));
    assert!(
        log.contains("unknown argument \"--bogus\"") && log.contains("usage:"),
        "{log}"
    );
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("balena-multi-container-telemetry 0."));
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--config-dir DIR"));
}

#[test]
fn config_dir_env_and_flag_precedence() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let good = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt_config(&broker, ""),
    );
    let bad = config_dir(r#"{"mode": "NOPE"}"#, "{}");
    // CONFIG_DIR alone is used...
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--once").env("CONFIG_DIR", bad.path());
    assert_eq!(run_limited(&mut cmd, Duration::from_secs(5)).0, Some(2));
    // ...and --config-dir overrides it.
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--once")
        .arg("--config-dir")
        .arg(good.path())
        .env("CONFIG_DIR", bad.path());
    let (code, log) = run_limited(&mut cmd, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.received(), "dev1");
}

#[test]
fn file_figures_carry_the_time_the_file_was_written() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/+/telemetry/system/main/pids");
    let dir = TempDir::new("mtime");
    let file = dir.write(
        "stats.jsonl",
        &std::fs::read_to_string(sample_stats()).unwrap(),
    );
    // Written by the host's job an hour ago, and not since.
    let ok = std::process::Command::new("touch")
        .arg("-d")
        .arg("@1795590000")
        .arg(&file)
        .status()
        .unwrap();
    assert!(ok.success());
    let cfg = config_dir(&file_collector(&file, 10), &mqtt_config(&broker, ""));
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    let got = sub.collect(1, Duration::from_secs(5));
    let (_, _, ts) = parse_metric(&got[0]).unwrap();
    assert_eq!(ts, 1_795_590_000_000, "{got:?}");
    assert!(
        log.contains(&format!("stats file {} was last written", file.display())),
        "{log}"
    );
}
