//! CLI mode and ENGINE mode against real containers on the real Docker Engine (balena-engine is a fork of
//! it with the same API and the same `stats` output), through a real mosquitto and a real subscriber.
//!
//! There is no image registry: the test image is built `FROM scratch` with Debian's static busybox. Every
//! container and the image carry this process's id in their names and are removed by a Drop guard, also
//! when an assertion fails. Containers run with `--network none`. Without a Docker Engine the tests say
//! SKIPPED loudly and pass (under CI they fail).

mod common;
use common::engine::*;
use common::*;
use std::collections::BTreeMap;

use std::time::Duration;

const LIMIT_64M: f64 = 67_108_864.0;

/// Burner (new-style balena name, labelled), idle (old-style name), plain name with a label that differs
/// from it, and a stopped one.
fn start_containers(f: &mut Fixture) {
    let commit = format!(
        "{:032x}",
        u128::from(std::process::id()) * 0x9e37_79b9_7f4a_7c15
    );
    let burner = f.service("burner");
    f.run(
        &format!("{burner}_5412321_2764432_{commit}"),
        &[
            "--memory",
            "64m",
            "--label",
            &format!("io.balena.service-name={burner}"),
        ],
        &["sh", "-c", "while :; do :; done"],
    );
    f.run(
        &format!("{}_77_88", f.service("idle")),
        &[],
        &["sleep", "3600"],
    );
    let label = format!("io.balena.service-name={}", f.service("from-label"));
    f.run(
        &f.service("plain"),
        &["--label", &label],
        &["sleep", "3600"],
    );
    let stopped = format!("{}_1_2_{commit}", f.service("stopped"));
    f.run(&stopped, &[], &["sleep", "3600"]);
    docker(&["stop", "-t", "0", &stopped]).expect("container stops");
}

/// One of a container's cgroup files, found from its main process's /proc/<pid>/cgroup: under the v1
/// hierarchy of `controller`, or under the v2 unified one (the line with no controllers).
fn cgroup_file(container: &str, controller: &str, v1: &str, v2: &str) -> String {
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", container]).expect("inspect");
    let groups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup file");
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let file = if controllers.split(',').any(|c| c == controller) {
            format!("/sys/fs/cgroup/{controller}{path}/{v1}")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/{v2}")
        } else {
            continue;
        };
        return std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    panic!("no {controller} accounting for {container} in {groups}");
}

/// The first number after `key ` in a flat-keyed cgroup file (cpu.stat, memory.stat).
fn stat_field(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

/// CPU time a container has used so far, in nanoseconds, from its own cgroup accounting: the truth the
/// published CPU share is checked against, measured in the same run whatever else loads the machine.
fn cpu_used_ns(container: &str) -> u64 {
    let text = cgroup_file(container, "cpuacct", "cpuacct.usage", "cpu.stat");
    match text.trim().parse() {
        Ok(ns) => ns,
        Err(_) => stat_field(&text, "usage_usec") * 1000,
    }
}

/// A container's memory use as `docker stats` counts it (usage less inactive file pages), read from its
/// own cgroup: the truth of how far its memory moved while the two modes' runs took their samples.
fn memory_used(container: &str) -> f64 {
    let stat = cgroup_file(container, "memory", "memory.stat", "memory.stat");
    let (usage, inactive) = if stat.contains("total_inactive_file ") {
        let usage = cgroup_file(container, "memory", "memory.usage_in_bytes", "");
        let usage: u64 = usage.trim().parse().expect("memory.usage_in_bytes");
        (usage, stat_field(&stat, "total_inactive_file"))
    } else {
        let usage = cgroup_file(container, "memory", "", "memory.current");
        let usage: u64 = usage.trim().parse().expect("memory.current");
        (usage, stat_field(&stat, "inactive_file"))
    };
    usage.saturating_sub(inactive) as f64
}

/// The lowest and highest memory use seen per container, sampled around every run.
#[derive(Default)]
struct MemorySpread(BTreeMap<String, (f64, f64)>);

impl MemorySpread {
    fn sample(&mut self, containers: &[(String, String)]) {
        for (service, container) in containers {
            let now = memory_used(container);
            let seen = self.0.entry(service.clone()).or_insert((now, now));
            *seen = (seen.0.min(now), seen.1.max(now));
        }
    }

    fn of(&self, service: &str) -> f64 {
        self.0.get(service).map_or(0.0, |(lo, hi)| hi - lo)
    }
}

/// The agent's run and the container's mean CPU share over it (percent of one CPU).
fn with_cpu_truth<T>(container: &str, run: impl FnOnce() -> T) -> (T, f64) {
    let (used0, t0) = (cpu_used_ns(container), std::time::Instant::now());
    let out = run();
    let (used1, t1) = (cpu_used_ns(container), std::time::Instant::now());
    let share = (used1 - used0) as f64 / (t1 - t0).as_nanos() as f64 * 100.0;
    (out, share)
}

/// The lifecycle topics' names (last topic level); every other metric is one of the nine figures.
const LIFECYCLE: [&str; 6] = [
    "state",
    "health",
    "restart_count",
    "exit_code",
    "oom_killed",
    "uptime_in_seconds",
];

type Figures = BTreeMap<String, BTreeMap<String, f64>>;
type Lives = BTreeMap<String, BTreeMap<String, serde_json::Value>>;

/// Runs the agent once with this collector config; returns, for our containers, service -> metric ->
/// value for the figures and service -> topic -> value for the lifecycle topics, and the agent's log.
fn publish_once(f: &Fixture, broker: &Broker, collector: &str) -> (Figures, Lives, String) {
    let device = format!("enginetest{}", std::process::id());
    let root = format!("root/{device}/telemetry/system/");
    let sub = Subscriber::start(broker.port, &format!("root/{device}/#"));
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "{device}"}}"#,
        broker.url()
    );
    let cfg = config_dir(collector, &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(60));
    assert_eq!(code, Some(0), "agent --once failed:\n{log}");
    // Everything the agent published was acknowledged before it exited 0.
    sub.sync(broker.port);
    let lines = sub.lines();
    let (mut figures, mut lives) = (Figures::new(), Lives::new());
    for (topic, value, _) in lines.iter().filter_map(|l| parse_value(l)) {
        let rest = topic.strip_prefix(&root).expect("topic under our root");
        let (service, metric) = rest.split_once('/').expect("service/metric");
        if !service.starts_with(&f.prefix) {
            continue;
        }
        let twice = if LIFECYCLE.contains(&metric) {
            lives
                .entry(service.to_owned())
                .or_default()
                .insert(metric.to_owned(), value)
                .is_some()
        } else {
            let number = value
                .as_f64()
                .unwrap_or_else(|| panic!("{topic}: a figure that is not a number: {value}"));
            figures
                .entry(service.to_owned())
                .or_default()
                .insert(metric.to_owned(), number)
                .is_some()
        };
        assert!(!twice, "{topic} published twice");
    }
    (figures, lives, log)
}

/// What each mode knows of the containers' lives: the stopped one is reported (state and exit code, no
/// figures) and the running ones say so. ENGINE mode also knows restarts, OOM and uptime; CLI mode's
/// `ps` does not, and says nothing more.
fn check_lifecycle(mode: &str, f: &Fixture, figures: &Figures, lives: &Lives, plain: &str) {
    let stopped = f.service("stopped");
    assert!(
        !figures.contains_key(&stopped),
        "{mode}: the stopped container has no figures: {figures:?}"
    );
    let life = lives
        .get(&stopped)
        .unwrap_or_else(|| panic!("{mode}: the stopped container is not reported: {lives:?}"));
    assert_eq!(life["state"], "exited", "{mode}: {life:?}");
    // `docker stop -t 0` kills `sleep` (PID 1 ignores SIGTERM without a handler): 137 = 128 + SIGKILL.
    assert_eq!(life["exit_code"], 137, "{mode}: {life:?}");
    assert!(!life.contains_key("uptime_in_seconds"), "{mode}: {life:?}");
    let mut services: Vec<&String> = lives.keys().collect();
    services.sort();
    let mut want = [
        f.service("burner"),
        f.service("idle"),
        plain.to_owned(),
        stopped.clone(),
    ];
    want.sort();
    assert_eq!(services, want.iter().collect::<Vec<_>>(), "{mode}: lives");
    for s in [f.service("burner"), f.service("idle"), plain.to_owned()] {
        let life = &lives[&s];
        assert_eq!(life["state"], "running", "{mode}: {s}: {life:?}");
        assert!(!life.contains_key("exit_code"), "{mode}: {s}: {life:?}");
        assert!(
            !life.contains_key("health"),
            "{mode}: no healthcheck: {life:?}"
        );
        if mode == "ENGINE" {
            assert_eq!(life["restart_count"], 0, "{mode}: {s}: {life:?}");
            assert_eq!(life["oom_killed"], false, "{mode}: {s}: {life:?}");
            let up = life["uptime_in_seconds"].as_u64();
            assert!(up.is_some_and(|u| u < 600), "{mode}: {s}: uptime: {life:?}");
        }
        if mode == "CLI" {
            assert_eq!(life.len(), 1, "{mode}: {s}: only the state: {life:?}");
        }
    }
}

/// Checks that hold for both modes; `plain` is the service the plain-named container publishes under,
/// `burner_truth` the burner's mean CPU share over the agent's run by its own cgroup accounting.
fn check_mode(mode: &str, f: &Fixture, got: &Figures, plain: &str, burner_truth: f64) {
    let services: Vec<&String> = got.keys().collect();
    let mut want = [f.service("burner"), f.service("idle"), plain.to_owned()];
    want.sort();
    assert_eq!(
        services,
        want.iter().collect::<Vec<_>>(),
        "{mode}: services"
    );
    let burner = &got[&f.service("burner")];
    let cpu = *burner
        .get("cpu_usage_in_percent")
        .unwrap_or_else(|| panic!("{mode}: burner published no CPU figure: {burner:?}"));
    // A busy 2-core machine gives the burner anything from 20 % to 100 %: compare with what its cgroup
    // says it got over the same run (the agent's sample covers about a second of it), and with the idle
    // container, never with a fixed share.
    assert!(
        (cpu - burner_truth).abs() <= 20.0 + burner_truth * 0.5,
        "{mode}: burner CPU {cpu} % against {burner_truth:.1} % by its cgroup over the run"
    );
    let idle_cpu = got[&f.service("idle")]["cpu_usage_in_percent"];
    assert!(
        cpu >= idle_cpu + 5.0,
        "{mode}: burner {cpu} % is not well above idle {idle_cpu} %"
    );
    eprintln!("{mode}: burner CPU {cpu} %, {burner_truth:.1} % by its cgroup over the run");
    assert_eq!(burner["memory_limit_in_bytes"], LIMIT_64M, "{mode}");
    let mem = burner["memory_usage_in_bytes"];
    assert!(mem > 0.0 && mem < LIMIT_64M, "{mode}: burner memory {mem}");
    let pct = burner["memory_usage_in_percent"];
    assert!(
        (pct - mem / LIMIT_64M * 100.0).abs() <= 0.01,
        "{mode}: memory % {pct} vs {mem} of the limit"
    );
    let idle = &got[&f.service("idle")];
    assert_eq!(idle["pids"], 1.0, "{mode}: idle PIDs");
    assert!(idle["cpu_usage_in_percent"] < 5.0, "{mode}: idle CPU");
    // --network none: docker shows "0B / 0B", and so do we.
    assert_eq!(idle["network_received_in_bytes"], 0.0, "{mode}");
    for (s, metrics) in got {
        assert_eq!(
            metrics.len(),
            9,
            "{mode}: {s} has all nine metrics: {metrics:?}"
        );
    }
}

#[test]
fn cli_and_engine_modes_against_real_containers_agree() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("x");
    start_containers(&mut f);
    // The burner in its loop: its cgroup has counted a fifth of a second of CPU.
    let burner = f.containers[0].clone();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while cpu_used_ns(&burner) < 200_000_000 {
        assert!(std::time::Instant::now() < until, "the burner never burned");
        std::thread::sleep(Duration::from_millis(50));
    }
    let broker = Broker::start();
    // The running ones, in start_containers' order, by the service name each mode publishes.
    let running: Vec<(String, String)> = ["burner", "idle", "plain"]
        .iter()
        .zip(&f.containers)
        .map(|(s, c)| (f.service(s), c.clone()))
        .collect();
    let mut spread = MemorySpread::default();
    spread.sample(&running);

    let cli = r#"{"mode": "CLI", "cli_path": "docker", "cli_timeout_in_seconds": 30}"#;
    let ((by_cli, cli_lives, cli_log), cli_truth) =
        with_cpu_truth(&burner, || publish_once(&f, &broker, cli));
    spread.sample(&running);
    check_mode("CLI", &f, &by_cli, &f.service("plain"), cli_truth);
    check_lifecycle("CLI", &f, &by_cli, &cli_lives, &f.service("plain"));
    assert!(cli_log.contains("CLI mode"), "{cli_log}");

    // The default (`auto`: the kernel's files here) and the engine's stats API.
    for figures in ["auto", "api"] {
        let engine = format!(
            r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}", "engine_figures": "{figures}"}}"#
        );
        let ((by_engine, engine_lives, engine_log), engine_truth) =
            with_cpu_truth(&burner, || publish_once(&f, &broker, &engine));
        spread.sample(&running);
        let mode = format!("ENGINE ({figures})");
        check_mode(
            &mode,
            &f,
            &by_engine,
            &f.service("from-label"),
            engine_truth,
        );
        check_lifecycle(
            "ENGINE",
            &f,
            &by_engine,
            &engine_lives,
            &f.service("from-label"),
        );
        assert!(
            engine_log.contains("ENGINE mode")
                && engine_log.contains(&format!("engine_figures {figures}")),
            "the agent said which mode it ran: {engine_log}"
        );
        // Other tests' containers may vanish mid-read on the same engine (and are warned of); none of ours.
        let ours_unread = engine_log
            .lines()
            .any(|l| l.contains("kernel figures unreadable") && l.contains(&f.prefix));
        assert!(
            !engine_log.contains("stats API instead") && !ours_unread,
            "{engine_log}"
        );
        cross_check(&f, &by_cli, &by_engine, &spread);
    }
}

/// Container by container, CLI against ENGINE (the plain one under its two names).
fn cross_check(f: &Fixture, by_cli: &Figures, by_engine: &Figures, spread: &MemorySpread) {
    let pairs = [
        (f.service("burner"), f.service("burner")),
        (f.service("idle"), f.service("idle")),
        (f.service("plain"), f.service("from-label")),
    ];
    for (service, e) in &pairs {
        let (c, e) = (&by_cli[service], &by_engine[e]);
        // Without --memory the limit is the host's memory, which the CLI rounds like usage.
        let (cl, el) = (c["memory_limit_in_bytes"], e["memory_limit_in_bytes"]);
        assert!(
            (cl - el).abs() <= cl * 0.0005,
            "limit: CLI {cl} vs ENGINE {el}"
        );
        assert_eq!(c["pids"], e["pids"], "PIDs: {c:?} vs {e:?}");
        // The CLI prints memory with 4 significant digits: off by at most half of the 4th digit's unit,
        // which is under 0.05 % of the value. The runs are seconds apart: add how far the container's
        // own cgroup saw its memory move over them, and one page for a move between our samples.
        let (cm, em) = (c["memory_usage_in_bytes"], e["memory_usage_in_bytes"]);
        let moved = spread.of(service);
        assert!(
            (cm - em).abs() <= cm * 0.0005 + 4096.0 + moved,
            "{service} memory: CLI {cm} vs ENGINE {em}; its cgroup moved {moved} bytes over the runs"
        );
        for m in ["network_received_in_bytes", "network_sent_in_bytes"] {
            assert_eq!(c[m], e[m], "{m}");
        }
    }
    // CPU: each mode was checked against the cgroup's truth over its own run (check_mode); the two runs
    // are seconds apart, and a busy machine's share moves in between.
    assert_eq!(
        by_engine[&f.service("burner")]["memory_limit_in_bytes"],
        by_cli[&f.service("burner")]["memory_limit_in_bytes"]
    );
}

#[test]
fn engine_mode_without_a_socket_fails_the_tick_and_says_why() {
    let broker = Broker::start();
    let dir = TempDir::new("nosock");
    let socket = dir.path().join("missing.sock");
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{}"}}"#,
        socket.display()
    );
    let mqtt = format!(r#"{{"broker_url": "{}"}}"#, broker.url());
    let cfg = config_dir(&collector, &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(
        code,
        Some(1),
        "a failed collection makes --once fail:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "engine: engine_socket {} is not there",
            socket.display()
        )) && log.contains("tick skipped"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn engine_mode_with_a_socket_that_is_not_an_engine() {
    // A unix socket that accepts and answers nonsense: a warning-level error for the tick, no crash.
    let broker = Broker::start();
    let dir = TempDir::new("fakesock");
    let path = dir.path().join("fake.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n");
        }
    });
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "unix://{}"}}"#,
        path.display()
    );
    let mqtt = format!(r#"{{"broker_url": "{}"}}"#, broker.url());
    let cfg = config_dir(&collector, &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    server.join().unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("container list is not the expected JSON"),
        "{log}"
    );
}
