//! CLI mode's lifecycle: `ps --all` beside `stats` each tick, through a real mosquitto and subscriber, with
//! tests/data/fake-balena.sh printing recordings (tests/data/sample-ps.jsonl: a healthy running `main`, a
//! `cpu-burner` that exited with 3 between `stats` and `ps`, a `worker` stopped hours ago that `stats` does
//! not list).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

const LIFECYCLE: [&str; 6] = [
    "state",
    "health",
    "restart_count",
    "exit_code",
    "oom_killed",
    "uptime_in_seconds",
];

fn sample_ps() -> std::path::PathBuf {
    repo().join("tests/data/sample-ps.jsonl")
}

fn config(broker: &Broker) -> TempDir {
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1"}}"#,
        broker.url()
    );
    config_dir(&cli_collector(1), &mqtt)
}

/// One `--once` run with these environment variables for the fake CLI: the figure lines, the lifecycle
/// topics as `service/topic` -> value, and the log.
fn run_once(
    env: &[(&str, &std::path::Path)],
) -> (Vec<String>, BTreeMap<String, serde_json::Value>, String) {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config(&broker);
    let mut cmd = once(cfg.path());
    cmd.env("FAKE_STATS", sample_stats());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (code, log) = run_limited(&mut cmd, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    sub.sync(broker.port);
    let prefix = "root/dev1/telemetry/system/";
    let (mut figures, mut lives) = (Vec::new(), BTreeMap::new());
    for line in sub.lines() {
        let Some((topic, value, _)) = parse_value(&line) else {
            continue;
        };
        let rest = topic.strip_prefix(prefix).expect("under the root");
        let metric = rest.rsplit('/').next().unwrap();
        if LIFECYCLE.contains(&metric) {
            let old = lives.insert(rest.to_owned(), value);
            assert_eq!(old, None, "{topic} twice");
        } else {
            figures.push(line);
        }
    }
    (figures, lives, log)
}

#[test]
fn ps_gives_states_exit_codes_and_health_and_stopped_containers_are_reported() {
    let (figures, lives, log) = run_once(&[("FAKE_PS", &sample_ps())]);
    // The figures are exactly the sample's, lifecycle or not.
    assert_sample_figures(&figures, "dev1");
    let want: BTreeMap<String, serde_json::Value> = [
        ("main/state", "running".into()),
        ("main/health", "healthy".into()),
        ("cpu-burner/state", "exited".into()),
        ("cpu-burner/exit_code", 3.into()),
        ("worker/state", "exited".into()),
        ("worker/exit_code", 137.into()),
    ]
    .into_iter()
    .map(|(k, v): (&str, serde_json::Value)| (k.to_owned(), v))
    .collect();
    // Nothing else: `ps` knows no restarts, OOM or start time, and the services it does not list (they
    // were removed between `stats` and `ps`) get no state.
    assert_eq!(lives, want, "{log}");
    assert!(
        !figures.iter().any(|l| l.contains("/worker/")),
        "worker has no figures"
    );
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn a_failing_ps_costs_the_states_not_the_figures() {
    let ps = sample_ps();
    let fail = std::path::Path::new("fail");
    let (figures, lives, log) = run_once(&[("FAKE_PS", &ps), ("FAKE_PS_MODE", fail)]);
    assert_sample_figures(&figures, "dev1");
    assert!(lives.is_empty(), "{lives:?}");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("publishing the figures without the containers' states"))
        .collect();
    assert_eq!(warned.len(), 1, "one warning for the tick:\n{log}");
    assert!(
        warned[0].contains("ps exited with") && warned[0].contains("Cannot connect"),
        "the warning says why: {log}"
    );
}

#[test]
fn unreadable_ps_lines_are_skipped_with_one_warning() {
    let dir = TempDir::new("ps");
    let good = std::fs::read_to_string(sample_ps()).unwrap();
    let ps = dir.write(
        "ps.jsonl",
        &format!("not json\n{good}{{\"Names\":\"x\",\"State\":\"sleepy\"}}\n"),
    );
    let (figures, lives, log) = run_once(&[("FAKE_PS", &ps)]);
    assert_sample_figures(&figures, "dev1");
    assert_eq!(lives["worker/exit_code"], 137, "{lives:?}");
    assert_eq!(lives.len(), 6, "{lives:?}");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("unreadable line"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("2 unreadable line(s)"), "{log}");
}

#[test]
fn a_hanging_ps_is_killed_at_the_deadline_and_the_figures_go_out() {
    let ps = sample_ps();
    let hang = std::path::Path::new("hang");
    let t0 = std::time::Instant::now();
    let (figures, lives, log) = run_once(&[("FAKE_PS", &ps), ("FAKE_PS_MODE", hang)]);
    let took = t0.elapsed();
    eprintln!("--once with a hanging ps took {took:?} (cli_timeout_in_seconds 5)");
    assert_sample_figures(&figures, "dev1");
    assert!(lives.is_empty(), "{lives:?}");
    assert!(
        log.contains("ps did not finish within 5s and was killed"),
        "{log}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}
