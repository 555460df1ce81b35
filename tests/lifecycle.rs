//! ENGINE mode's lifecycle and its collection on the real Docker Engine (issue 11): an exit code, an OOM
//! kill, restarts and a healthcheck as the engine's event stream hands them over; a forced removal of
//! running containers without a warning (issue 18); a stop in the middle of a collection; a hundred
//! containers collected at once.
//!
//! The lifecycle is checked where users see it, on the published topics (`state`, `exit_code`,
//! `oom_killed`, `restart_count`, `health`) through a real mosquitto and subscriber; the collection time
//! and the hand-over notice are read from the agent's log.
//!
//! The image is built `FROM scratch` with Debian's static busybox (also as `/bin/sh`, which healthchecks
//! run through). Every container and the image carry this process's id in their names and are removed
//! by a Drop guard, also when an assertion fails; containers run with `--network none`. Without a Docker
//! Engine the tests say SKIPPED loudly and pass (under CI they fail).

mod common;
use common::engine::*;
use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent running in ENGINE mode, its log followed line by line; and its config directory.
fn start(broker: &Broker, interval: u64) -> (Running, TempDir) {
    start_with(broker, interval, "")
}

/// [`start`] with more collector keys (`, "key": value`).
fn start_with(broker: &Broker, interval: u64, extra: &str) -> (Running, TempDir) {
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}", "collection_interval_in_seconds": {interval}{extra}}}"#
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "life{}"}}"#,
        broker.url(),
        std::process::id()
    );
    let cfg = config_dir(&collector, &mqtt);
    (Running::start(cfg.path()), cfg)
}

/// The device the agents here publish as; topics are `root/<device>/telemetry/system/<service>/<topic>`.
fn device() -> String {
    format!("life{}", std::process::id())
}

fn topic(service: &str, name: &str) -> String {
    format!("root/{}/telemetry/system/{service}/{name}", device())
}

/// How many messages on `topic` carried `want` as their value so far.
fn count(sub: &Subscriber, topic: &str, want: &serde_json::Value) -> usize {
    sub.lines()
        .iter()
        .filter_map(|l| parse_value(l))
        .filter(|(t, v, _)| t == topic && v == want)
        .count()
}

/// Waits up to `limit` for a message on `topic` with the value `want`; when it was seen.
fn wait_value(
    sub: &Subscriber,
    topic: &str,
    want: impl Into<serde_json::Value>,
    limit: Duration,
) -> Option<Instant> {
    let want = want.into();
    sub.wait_for(
        |lines| {
            lines
                .iter()
                .filter_map(|l| parse_value(l))
                .any(|(t, v, _)| t == topic && v == want)
        },
        limit,
    )
    .then(Instant::now)
}

#[test]
fn exits_ooms_restarts_and_health_are_published_as_they_happen() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("l");
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &format!("root/{}/#", device()));
    // A long interval: what arrives within it came by the event stream, not by a collection.
    let (agent, _cfg) = start(&broker, 30);
    agent
        .wait_line(Duration::from_secs(20), |l| {
            l.contains("engine collection took")
        })
        .unwrap_or_else(|| panic!("no first collection:\n{}", agent.log()));
    let fail = |what: &str| -> ! {
        panic!(
            "{what}:\n{}\nmessages:\n{}",
            agent.log(),
            sub.lines().join("\n")
        )
    };

    // Exit code 3, within 2 s of the exit (the test allows 5 on a busy machine). The exit is no earlier
    // than a second after `docker run` was called; the message's timestamp is when the agent took the
    // change, so their difference bounds the delay from above.
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let before_run = unix_ms();
    let exit3 = f.run_prefixed("exit3", &[], &["sh", "-c", "sleep 1; exit 3"]);
    assert_eq!(docker(&["wait", &exit3]).unwrap(), "3");
    let exited = Instant::now();
    let state = topic(&exit3, "state");
    let at = wait_value(&sub, &state, "exited", Duration::from_secs(10))
        .unwrap_or_else(|| fail("no state exited published"));
    let stamped = sub
        .lines()
        .iter()
        .filter_map(|l| parse_value(l))
        .find(|(t, v, _)| *t == state && v == "exited")
        .map(|(_, _, ts)| ts)
        .unwrap();
    let late = stamped.saturating_sub(before_run + 1000);
    eprintln!(
        "state exited taken at most {late} ms after the exit; seen {} ms after docker wait returned",
        at.saturating_duration_since(exited).as_millis()
    );
    assert!(late < 5000, "{late} ms");
    wait_value(&sub, &topic(&exit3, "exit_code"), 3, Duration::from_secs(1))
        .unwrap_or_else(|| fail("no exit_code 3 published with the state"));

    // Past an 8 MiB limit: the kernel's OOM killer, and the engine's OOMKilled. A second's wait first:
    // a process killed the moment it starts can die before the engine watches the cgroup for OOMs, and
    // the engine then reports exit 137 with OOMKilled false and sends no `oom` event (seen on a loaded
    // machine); the agent can only report what the engine knows.
    let oom = f.run_prefixed(
        "oom",
        &["--memory", "8m", "--memory-swap", "8m"],
        &[
            "sh",
            "-c",
            "sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1",
        ],
    );
    wait_value(
        &sub,
        &topic(&oom, "oom_killed"),
        true,
        Duration::from_secs(15),
    )
    .unwrap_or_else(|| fail("no oom_killed true published"));
    wait_value(
        &sub,
        &topic(&oom, "state"),
        "exited",
        Duration::from_secs(1),
    )
    .unwrap_or_else(|| fail("the OOM-killed container is not exited"));

    // on-failure:3 restarts three times, then stays exited.
    let flaky = f.run_prefixed(
        "flaky",
        &["--restart", "on-failure:3"],
        &["sh", "-c", "exit 1"],
    );
    wait_value(
        &sub,
        &topic(&flaky, "restart_count"),
        3,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|| fail("restart_count 3 not published"));
    wait_value(&sub, &topic(&flaky, "exit_code"), 1, Duration::from_secs(5))
        .unwrap_or_else(|| fail("the flaky container's exit code 1 not published"));

    // A healthcheck: starting, then healthy.
    let healthy = f.run_prefixed(
        "healthy",
        &[
            "--health-cmd",
            "true",
            "--health-interval",
            "1s",
            "--health-start-period",
            "0s",
        ],
        &["sleep", "3600"],
    );
    wait_value(
        &sub,
        &topic(&healthy, "health"),
        "healthy",
        Duration::from_secs(15),
    )
    .unwrap_or_else(|| fail("no health healthy published"));

    // Removed: published once as removed.
    docker(&["rm", "-f", &exit3]).unwrap();
    let state = topic(&exit3, "state");
    wait_value(&sub, &state, "removed", Duration::from_secs(10))
        .unwrap_or_else(|| fail("no state removed published"));
    // A repeat would come before the removal of a container removed after it: the engine's events,
    // and the agent's messages, keep their order.
    docker(&["rm", "-f", &oom]).unwrap();
    wait_value(
        &sub,
        &topic(&oom, "state"),
        "removed",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|| fail("no state removed published for the second removal"));
    assert_eq!(count(&sub, &state, &"removed".into()), 1, "removed once");
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Report by exception (issue 19): a lifecycle change is no figure waiting for its deadband or heartbeat,
/// it goes out as the engine tells it, between collections.
#[test]
fn in_on_change_mode_lifecycle_changes_go_out_at_once() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("c");
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &format!("root/{}/#", device()));
    let (agent, _cfg) = start_with(
        &broker,
        30,
        r#", "report": "on_change", "report_heartbeat_in_seconds": 3600"#,
    );
    agent
        .wait_line(Duration::from_secs(20), |l| {
            l.contains("engine collection took")
        })
        .unwrap_or_else(|| panic!("no first collection:\n{}", agent.log()));
    let exit3 = f.run_prefixed("exit3", &[], &["sh", "-c", "sleep 1; exit 3"]);
    assert_eq!(docker(&["wait", &exit3]).unwrap(), "3");
    let wants: [(&str, serde_json::Value); 2] =
        [("state", "exited".into()), ("exit_code", 3.into())];
    for (name, want) in wants {
        let got = wait_value(&sub, &topic(&exit3, name), want, Duration::from_secs(10));
        assert!(
            got.is_some(),
            "no {name} published:\n{}\n{}",
            agent.log(),
            sub.lines().join("\n")
        );
    }
    // Still the first collection: the messages came from the event stream, not from a tick.
    assert_eq!(agent.count("engine collection took"), 1, "{}", agent.log());
}

#[test]
fn a_forced_removal_of_running_containers_is_no_warning() {
    // Between the kill and the destroy of `docker rm -f` the engine answers an inspect with State.Status
    // `removing`: no state of ours, and no reason to warn. The states published on the way are printed,
    // not checked: the agent publishes what the engine answers, and once in eight runs on a loaded
    // machine something besides running and removed came (not caught; an inspect racing the end of a
    // removal can be answered `dead`). The unit tests check the held state.
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("r");
    let names: Vec<String> = (0..3)
        .map(|i| f.run_prefixed(&format!("rm{i}"), &[], &["sleep", "3600"]))
        .collect();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &format!("root/{}/#", device()));
    // A long interval: the removals come by the event stream and their inspects.
    let (agent, _cfg) = start(&broker, 30);
    let fail = |what: &str| -> ! {
        panic!(
            "{what}:\n{}\nmessages:\n{}",
            agent.log(),
            sub.lines().join("\n")
        )
    };
    for n in &names {
        wait_value(&sub, &topic(n, "state"), "running", Duration::from_secs(20))
            .unwrap_or_else(|| fail("not published as running"));
    }
    let ids: Vec<String> = names
        .iter()
        .map(|n| docker(&["inspect", "--format", "{{.Id}}", n]).unwrap()[..12].to_owned())
        .collect();
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    docker(&rm).unwrap();
    // The agent logs each change it hands over after whatever the inspects before it said.
    for n in &names {
        let said = format!("lifecycle change: {n} removed");
        agent
            .wait_line(Duration::from_secs(15), |l| l.contains(&said))
            .unwrap_or_else(|| fail("removal not handed over"));
    }
    let log = agent.log();
    assert!(!log.contains("State.Status"), "{log}");
    // Other tests' containers on the shared engine may rightly be warned of; ours may not.
    let ours = |l: &&str| names.iter().chain(&ids).any(|x| l.contains(x.as_str()));
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("WARN"))
        .filter(ours)
        .collect();
    assert!(warned.is_empty(), "{warned:#?}\n{log}");
    for n in &names {
        let state = topic(n, "state");
        let states: Vec<serde_json::Value> = sub
            .lines()
            .iter()
            .filter_map(|l| parse_value(l))
            .filter(|(t, _, _)| *t == state)
            .map(|(_, v, _)| v)
            .collect();
        eprintln!("{n}: states published {states:?}");
    }
    f.containers.clear();
}

#[test]
fn local_mode_and_hand_over_names_on_the_real_engine() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("n");
    // `balena push <device>` names: published under the service alone.
    let local = f.run_prefixed("local_1_1_localrelease", &[], &["sleep", "3600"]);
    let local_service = local.strip_suffix("_1_1_localrelease").unwrap().to_owned();
    // A hand-over: two releases of one service running at once, told apart by their memory limits.
    let old = f.run_prefixed("ho_10_100_aaaa", &["--memory", "32m"], &["sleep", "3600"]);
    let new = f.run_prefixed("ho_11_101_bbbb", &["--memory", "48m"], &["sleep", "3600"]);
    let ho = old.strip_suffix("_10_100_aaaa").unwrap().to_owned();
    assert_eq!(new.strip_suffix("_11_101_bbbb"), Some(ho.as_str()));
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, &format!("root/{}/#", device()));
    let (agent, _cfg) = start(&broker, 1);
    let said = format!("service {ho}: two containers run at once");
    agent
        .wait_line(Duration::from_secs(20), |l| l.contains(&said))
        .unwrap_or_else(|| panic!("no hand-over line:\n{}", agent.log()));
    // From the tick after the one that saw both, only the newer release's figures.
    let seen = sub.lines().len();
    let limit = topic(&ho, "memory_limit_in_bytes");
    let ticks = "engine collection took";
    let before = agent.count(ticks);
    assert!(
        agent.wait_count(ticks, before + 3, Duration::from_secs(30)),
        "no further ticks:\n{}",
        agent.log()
    );
    sub.sync(broker.port);
    let later = sub.lines();
    let limits: Vec<f64> = later[seen..]
        .iter()
        .filter_map(|l| parse_metric(l))
        .filter(|(t, _, _)| *t == limit)
        .map(|(_, v, _)| v)
        .collect();
    eprintln!("{ho} memory limits published after the hand-over line: {limits:?}");
    assert!(limits.len() >= 2, "{limits:?}:\n{}", agent.log());
    assert!(
        limits.iter().all(|&v| v == 48.0 * 1024.0 * 1024.0),
        "only the newer release (48 MiB): {limits:?}"
    );
    let log = agent.log();
    assert_eq!(log.matches(&said).count(), 1, "said once:\n{log}");
    // The local-mode container: its figures under the service, nothing under its whole name.
    wait_value(
        &sub,
        &topic(&local_service, "pids"),
        1,
        Duration::from_secs(5),
    )
    .unwrap_or_else(|| panic!("local-mode service not published:\n{log}"));
    wait_value(
        &sub,
        &topic(&local_service, "state"),
        "running",
        Duration::from_secs(1),
    )
    .unwrap_or_else(|| panic!("local-mode service has no state:\n{log}"));
    assert!(
        !later.iter().any(|l| l.contains("localrelease")),
        "nothing under the whole local-mode name"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn sigterm_in_the_middle_of_a_collection_ends_the_agent_promptly() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("t");
    for i in 0..3 {
        f.run_prefixed(&format!("idle{i}"), &[], &["sleep", "3600"]);
    }
    let broker = Broker::start();
    let (mut agent, _cfg) = start(&broker, 1);
    // The first collection waits about a second for a second CPU sample: stop inside that wait.
    agent
        .wait_line(Duration::from_secs(10), |l| l.contains("ENGINE mode"))
        .unwrap_or_else(|| panic!("no start line:\n{}", agent.log()));
    // Pacing, not synchronisation: the collection starts with the loop, and this aims the signal
    // inside its second's wait rather than before it starts. Where it landed is checked next.
    std::thread::sleep(Duration::from_millis(300));
    let mid = !agent.log().contains("engine collection took");
    let (took, code) = agent.terminate(Duration::from_secs(20));
    let log = agent.log();
    eprintln!("stopped in {} ms (mid-collection: {mid})", took.as_millis());
    assert!(mid, "the collection had already finished:\n{log}");
    assert_eq!(code, Some(0), "{log}");
    // The target is 2 s; a busy machine gets a margin.
    assert!(took < Duration::from_secs(4), "stop took {took:?}:\n{log}");
}

#[test]
fn a_hundred_containers_are_collected_at_once() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("h");
    for i in 0..100 {
        f.run_prefixed(&format!("c{i}"), &[], &["sleep", "3600"]);
    }
    let broker = Broker::start();
    let (agent, _cfg) = start(&broker, 3);
    let took = |l: &str| -> Option<u64> {
        l.split("engine collection took ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    };
    // The first collection waits for a second sample; the next ones are steady state.
    agent.wait_count("engine collection took", 3, Duration::from_secs(60));
    let times: Vec<u64> = agent.lines().iter().filter_map(|l| took(l)).collect();
    let log = agent.log();
    assert!(times.len() >= 3, "fewer than three collections:\n{log}");
    eprintln!("collection times at 100 containers: {times:?} ms");
    // Asked one after another, 100 containers took over 4 s; at once, about one engine sampling round.
    // The target (1.5 s) is for make bench; the test allows a busy machine twice that.
    assert!(
        times[1..].iter().all(|&t| t < 3_000),
        "collections {times:?} ms"
    );
    f.remove_all();
}

#[test]
fn the_broker_link_is_served_while_the_engine_is_slow_to_answer() {
    // An engine that accepts and never answers: every collection waits out its 5 s request timeout.
    // Meanwhile keep-alive must go on (mosquitto drops a client silent for 1.5 keep-alives), and a stop
    // must not wait for the collection.
    let dir = TempDir::new("silent-engine");
    let path = dir.path().join("engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for s in listener.incoming().map_while(Result::ok) {
            keep.lock().unwrap().push(s);
        }
    });
    let broker = Broker::start();
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{}", "collection_interval_in_seconds": 1, "cli_timeout_in_seconds": 30}}"#,
        path.display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "slow", "keep_alive_in_seconds": 1}}"#,
        broker.url()
    );
    let cfg = config_dir(&collector, &mqtt);
    let mut agent = Running::start(cfg.path());
    agent
        .wait_line(Duration::from_secs(10), |l| {
            l.contains("connected to broker")
        })
        .unwrap_or_else(|| panic!("never connected:\n{}", agent.log()));
    // The first collection waits out the engine's 5 s request timeout: five keep-alive periods. The
    // next one starts at once, saying which ticks the first overran; a stop must not wait for it.
    agent
        .wait_line(Duration::from_secs(30), |l| {
            l.contains("collection overran its interval")
        })
        .unwrap_or_else(|| panic!("the first collection never ended:\n{}", agent.log()));
    let (took, code) = agent.terminate(Duration::from_secs(20));
    let log = agent.log();
    assert!(
        !log.contains("engine collection took"),
        "the engine was expected to stay silent:\n{log}"
    );
    assert!(!log.contains("connection to broker lost"), "{log}");
    assert_eq!(log.matches("connected to broker").count(), 1, "{log}");
    assert_eq!(code, Some(0), "{log}");
    assert!(took < Duration::from_secs(4), "stop took {took:?}:\n{log}");
    drop(held);
}
