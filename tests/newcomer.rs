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
            "WARN DOCKER_HOST \"tcp://127.0.0.1:2375\" is not supported: the agent talks to the engine \
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
