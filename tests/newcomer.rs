//! What a newcomer sees: the help, and the messages that tell them what to set. Each message is checked
//! by its text, as the user reads it.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn help_names_the_variable_families_the_default_mode_and_where_to_read_more() {
    let out = Command::new(BIN)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for wanted in [
        "STATS_<KEY>",
        "MQTT_<KEY>",
        "MQTT_BROKER_URL",
        "STATS_MODE",
        "Unset: CLI when cli_path is found, else ENGINE",
        "BALENA_DEVICE_UUID",
        "LOG_LEVEL",
        "README.md",
    ] {
        assert!(help.contains(wanted), "--help lacks {wanted:?}:\n{help}");
    }
}

/// An agent with no config files and only these variables (besides LOG_LEVEL), as a container gets it.
fn bare_agent(vars: &[(&str, &str)]) -> (Command, TempDir) {
    let empty = TempDir::new("newcomer");
    let mut c = Command::new(BIN);
    c.arg("--config-dir")
        .arg(empty.path())
        .env("LOG_LEVEL", "info");
    for (k, _) in std::env::vars() {
        if k.starts_with("STATS_") || k.starts_with("MQTT_") || k == "BALENA_DEVICE_UUID" {
            c.env_remove(k);
        }
    }
    c.env_remove("DOCKER_HOST");
    for (k, v) in vars {
        c.env(k, v);
    }
    (c, empty)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn outside_balena_the_device_id_is_the_host_name_and_the_start_line_says_so() {
    let broker = Broker::start();
    let host = host_name();
    let sub = Subscriber::start(broker.port, "root/#");
    let stats = sample_stats().display().to_string();
    let url = broker.url();
    let (mut cmd, _dir) = bare_agent(&[
        ("STATS_MODE", "FILE"),
        ("STATS_FILE_PATH", &stats),
        ("MQTT_BROKER_URL", &url),
    ]);
    let (code, log) = run_limited(cmd.arg("--once"), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!("device_id {host:?} (the host name")),
        "the start line names the host name as the device id: {log}"
    );
    assert!(
        sub.wait_for(
            |l| l
                .iter()
                .any(|l| l.starts_with(&format!("root/{host}/telemetry/system/"))),
            Duration::from_secs(10)
        ),
        "{:?}",
        sub.lines()
    );
}

#[test]
fn an_unset_broker_url_is_a_warning_naming_the_variable() {
    let stats = sample_stats().display().to_string();
    // Nothing listens on the default broker here: the run gives up quickly, after the warning.
    let (mut cmd, _dir) = bare_agent(&[
        ("STATS_MODE", "FILE"),
        ("STATS_FILE_PATH", &stats),
        ("MQTT_ONCE_TIMEOUT_IN_SECONDS", "1"),
    ]);
    let (_, log) = run_limited(cmd.arg("--once"), Duration::from_secs(30));
    assert!(
        log.contains(
            "WARN config: broker_url is not set (MQTT_BROKER_URL, or \
             ",
        ) && log.contains(
            "using the default broker tcp://localhost:1883, which in a container is the container itself"
        ),
        "{log}"
    );
}

#[test]
fn without_the_cli_but_with_an_engine_socket_the_agent_chooses_engine_mode_and_says_so() {
    let dir = TempDir::new("sock");
    let socket = dir.path().join("engine.sock");
    // A socket that accepts and answers nothing: enough for the choice, which is made at start.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let socket = socket.display().to_string();
    let broker = Broker::start();
    let url = broker.url();
    let (mut cmd, _cfg) = bare_agent(&[
        ("PATH", "/nonexistent"),
        ("STATS_ENGINE_SOCKET", &socket),
        ("MQTT_BROKER_URL", &url),
        ("MQTT_ONCE_TIMEOUT_IN_SECONDS", "1"),
        ("STATS_CLI_TIMEOUT_IN_SECONDS", "1"),
    ]);
    let (_, log) = run_limited(cmd.arg("--once"), Duration::from_secs(30));
    assert!(
        log.contains(&format!(
            "INFO mode not set and \"balena\" is not on the PATH: ENGINE mode, with the engine socket \
             {socket} (STATS_MODE chooses)"
        )),
        "{log}"
    );
    assert!(log.contains("ENGINE mode, every"), "{log}");
}

#[test]
fn a_missing_cli_says_what_to_set() {
    let broker = Broker::start();
    let url = broker.url();
    let (mut cmd, _cfg) = bare_agent(&[
        ("PATH", "/nonexistent"),
        // No socket either: CLI mode stays, and fails saying what to set.
        ("STATS_ENGINE_SOCKET", "/nonexistent/engine.sock"),
        ("MQTT_BROKER_URL", &url),
        ("MQTT_ONCE_TIMEOUT_IN_SECONDS", "1"),
    ]);
    let (code, log) = run_limited(cmd.arg("--once"), Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(
            "cannot run \"balena\": not found (set cli_path; or, with the engine's socket here, \
             STATS_MODE=ENGINE asks the engine without a CLI)"
        ),
        "{log}"
    );
}

#[test]
fn a_missing_engine_socket_is_named_once_with_both_hints_then_ticks_pass_quietly() {
    let broker = Broker::start();
    let url = broker.url();
    let (mut cmd, _cfg) = bare_agent(&[
        ("STATS_MODE", "ENGINE"),
        ("STATS_ENGINE_SOCKET", "/nonexistent/engine.sock"),
        ("STATS_COLLECTION_INTERVAL_IN_SECONDS", "1"),
        ("MQTT_BROKER_URL", &url),
        ("LOG_LEVEL", "debug"),
    ]);
    let agent = Running::spawn(&mut cmd);
    // Three ticks after the first: each skipped without repeating the reason (the reminder comes a
    // minute later).
    assert!(
        agent.wait_count(
            "tick skipped (the reason was said before)",
            3,
            Duration::from_secs(30)
        ),
        "{}",
        agent.log()
    );
    let log = agent.stop();
    let full = "engine: engine_socket /nonexistent/engine.sock is not there (on balena, give this service \
                the label io.balena.features.balena-socket: '1'; under Docker, mount the socket (-v \
                /var/run/docker.sock:/var/run/docker.sock); or set STATS_ENGINE_SOCKET)";
    assert_eq!(log.matches(full).count(), 1, "{log}");
}

#[test]
fn engine_mode_says_which_socket_and_where_figures_come_from() {
    if !common::engine::engine_available() {
        skipped("engine socket line: no Docker Engine answers");
        return;
    }
    let broker = Broker::start();
    let url = broker.url();
    let (mut cmd, _cfg) = bare_agent(&[
        ("STATS_MODE", "ENGINE"),
        ("DOCKER_HOST", "tcp://127.0.0.1:2375"),
        ("MQTT_BROKER_URL", &url),
    ]);
    let (code, log) = run_limited(cmd.arg("--once"), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(
            "WARN DOCKER_HOST tcp:// is not supported: the agent talks to the engine \
             over a unix socket only, so it uses /var/run/docker.sock"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "INFO engine: socket /var/run/docker.sock (found); figures from the kernel (cgroup_root \
             /sys/fs/cgroup, proc_root /proc), or from the engine's stats API if the first tick can \
             read no container's files"
        ),
        "{log}"
    );
}

#[test]
fn two_agents_with_one_client_id_are_told_so() {
    // Two hosts left at one device id: the broker drops the older connection whenever the other connects
    // (MQTT-3.1.4-2), and they take turns. Each must say what is going on.
    let broker = Broker::start();
    let stats = sample_stats().display().to_string();
    let url = broker.url();
    let vars = [
        ("STATS_MODE", "FILE"),
        ("STATS_FILE_PATH", stats.as_str()),
        ("MQTT_BROKER_URL", url.as_str()),
        ("MQTT_DEVICE_ID", "same-device"),
        ("MQTT_RECONNECT_MAX_DELAY_IN_SECONDS", "1"),
    ];
    let (mut a, _ca) = bare_agent(&vars);
    let (mut b, _cb) = bare_agent(&vars);
    let a = Running::spawn(&mut a);
    let b = Running::spawn(&mut b);
    let said = "another client may be using the same client id \"balena-telemetry-same-device\"";
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while a.count(said) + b.count(said) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never said:\n{}\n---\n{}",
            a.log(),
            b.log()
        );
        a.wait_log(said, Duration::from_millis(200));
    }
    drop((a, b));
}

#[test]
fn without_the_kernel_files_the_fallback_names_docker_mounts_and_balena_labels() {
    if !common::engine::engine_available() {
        skipped("kernel fallback line: no Docker Engine answers");
        return;
    }
    let broker = Broker::start();
    let url = broker.url();
    let (mut cmd, _cfg) = bare_agent(&[
        ("STATS_MODE", "ENGINE"),
        ("STATS_CGROUP_ROOT", "/nonexistent/cgroup"),
        ("MQTT_BROKER_URL", &url),
    ]);
    let (code, log) = run_limited(cmd.arg("--once"), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(
            "figures come from the engine's stats API instead (on balena, give this service the labels \
             io.balena.features.sysfs and io.balena.features.procfs; under Docker, mount the host's /proc \
             and cgroup tree, -v /proc:/host/proc:ro -v /sys/fs/cgroup:/host/cgroup:ro, and set \
             STATS_PROC_ROOT=/host/proc and STATS_CGROUP_ROOT=/host/cgroup)"
        ),
        "{log}"
    );
    assert!(
        log.contains(
            "INFO engine: socket /var/run/docker.sock (found); figures from the engine's stats API"
        ),
        "{log}"
    );
}

#[test]
fn once_in_engine_mode_says_that_its_timeout_adds_the_collections_bound() {
    if !common::engine::engine_available() {
        skipped("--once timeout line: no Docker Engine answers");
        return;
    }
    // The engine answers, the broker is absent: the figures are never delivered.
    let port = free_port().to_string();
    let url = format!("tcp://127.0.0.1:{port}");
    let (mut cmd, _cfg) = bare_agent(&[
        ("STATS_MODE", "ENGINE"),
        ("STATS_CLI_TIMEOUT_IN_SECONDS", "3"),
        ("MQTT_BROKER_URL", &url),
        ("MQTT_ONCE_TIMEOUT_IN_SECONDS", "1"),
    ]);
    let (code, log) = run_limited(cmd.arg("--once"), Duration::from_secs(60));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(
            "with messages undelivered (once_timeout_in_seconds 1 + cli_timeout_in_seconds 3, the \
             collection's own bound)"
        ),
        "{log}"
    );
}
