//! Outages against a real mosquitto: absent at start, restarted mid-run, wrong password. Delivery is
//! counted through a persistent subscriber session on a broker with persistence, so messages published
//! while the subscriber is away are still counted.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const PERSISTENT: &str =
    "persistence true\npersistence_location {dir}/\nmax_queued_messages 100000\n";

/// CLI mode with the recorded-output stand-in, so that each tick's figures carry their own collection
/// time (FILE mode would stamp them all with the file's) and delivery can be counted tick by tick.
fn start_agent(port: u16) -> (Running, TempDir) {
    let collector = format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": 1}}"#,
        repo().join("tests/data/fake-balena.sh").display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "dev1", "qos": 1, "reconnect_max_delay_in_seconds": 1}}"#
    );
    let cfg = config_dir(&collector, &mqtt);
    let agent = Running::spawn(agent(cfg.path()).env("FAKE_STATS", sample_stats()));
    (agent, cfg)
}

/// What the agent logs for each tick it collected.
const TICK: &str = "INFO tick: 8 containers, 63 messages";

/// Waits until the subscriber has a tick the agent collected after the ticks logged so far: ticks are
/// delivered in order, so every earlier one has arrived by then (unless lost, which the caller's check
/// then reports).
fn wait_for_a_later_tick(agent: &Running, sub: &Subscriber) {
    let logged = agent.count(TICK);
    sub.wait_for(|l| by_tick(l).len() > logged, Duration::from_secs(30));
}

/// A subscriber with a persistent session (clean session off, fixed client id).
fn persistent_subscriber(port: u16) -> Subscriber {
    Subscriber::start_args(
        port,
        &[
            "-c",
            "-i",
            "counting-subscriber",
            "-t",
            "root/#",
            "-t",
            "probe/ready",
        ],
    )
}

/// Groups delivered metric messages by collection timestamp: timestamp -> distinct topics.
fn by_tick(lines: &[String]) -> BTreeMap<u64, BTreeSet<String>> {
    let mut ticks: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for (topic, _, ts) in lines.iter().filter_map(|l| parse_metric(l)) {
        ticks.entry(ts).or_default().insert(topic);
    }
    ticks
}

/// Every tick the agent logged arrived whole: (delivered, expected) distinct messages.
fn check_every_tick_delivered(lines: &[String], log: &str) -> (usize, usize) {
    let ticks_logged = log.matches(TICK).count();
    let ticks = by_tick(lines);
    let delivered: usize = ticks.values().map(BTreeSet::len).sum();
    let expected = ticks_logged * 63;
    eprintln!("delivered {delivered} of {expected} distinct messages over {ticks_logged} ticks");
    for (ts, topics) in &ticks {
        assert_eq!(topics.len(), 63, "tick {ts} arrived whole");
    }
    assert_eq!(ticks.len(), ticks_logged, "every tick arrived:\n{log}");
    (delivered, expected)
}

#[test]
fn broker_absent_at_start_then_appears() {
    let mut broker = Broker::start_with(PERSISTENT);
    // Register the persistent session, then take the broker away before the agent starts.
    drop(persistent_subscriber(broker.port));
    broker.stop();

    let (agent, _cfg) = start_agent(broker.port);
    // Three ticks while the broker is away.
    assert!(
        agent.wait_count(TICK, 3, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    broker.restart();
    let sub = persistent_subscriber(broker.port);
    assert!(
        agent.wait_log("connected to broker", Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    wait_for_a_later_tick(&agent, &sub);
    let log = agent.stop();
    let lines = sub.received();
    assert!(
        log.contains("could not connect to broker") || log.contains("unreachable"),
        "{log}"
    );
    let (delivered, expected) = check_every_tick_delivered(&lines, &log);
    assert!(
        expected >= 4 * 63,
        "ticks ran while the broker was away: {expected}"
    );
    assert_eq!(delivered, expected);
}

#[test]
fn broker_restarted_mid_run_loses_nothing_at_qos1() {
    let mut broker = Broker::start_with(PERSISTENT);
    // The subscriber stays throughout: mosquitto_sub reconnects to the restarted broker, and its
    // persistent session keeps what was published while it was away.
    let sub = persistent_subscriber(broker.port);
    let (agent, _cfg) = start_agent(broker.port);
    assert!(sub.wait_for(|l| by_tick(l).len() >= 2, Duration::from_secs(10)));
    broker.stop();
    assert!(
        agent.wait_log("connection to broker lost", Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    // Two ticks during the outage.
    let before = agent.count(TICK);
    assert!(
        agent.wait_count(TICK, before + 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    broker.restart();
    assert!(
        agent.wait_count("connected to broker", 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    wait_for_a_later_tick(&agent, &sub);
    let log = agent.stop();
    let lines = sub.received();
    let (delivered, expected) = check_every_tick_delivered(&lines, &log);
    assert_eq!(delivered, expected);
}

#[test]
fn wrong_password_is_logged_in_words_and_retried_without_crashing() {
    // mosquitto reads the password file at start, so it is written first.
    let secrets = TempDir::new("secrets");
    let passwd = secrets.path().join("passwd");
    let ok = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["agent", "right-secret"])
        .status()
        .unwrap();
    assert!(ok.success());
    let broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));

    let collector = file_collector(&sample_stats(), 1);
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "username": "agent", "password": "wrong-secret", "reconnect_max_delay_in_seconds": 2}}"#,
        broker.url()
    );
    let cfg = config_dir(&collector, &mqtt);
    let agent = Running::start(cfg.path());
    let refusals = |log: &[String]| {
        log.iter()
            .filter(|l| {
                l.contains("connection refused: not authorised")
                    || l.contains("connection refused: bad user name or password")
            })
            .count()
    };
    assert!(
        agent.wait_for(|l| refusals(l) >= 3, Duration::from_secs(30)),
        "refused, backed off and retried:\n{}",
        agent.log()
    );
    let log = agent.stop();
    let lines: Vec<String> = log.lines().map(str::to_owned).collect();
    let refused = refusals(&lines);
    // Backoff spaces the attempts (0.5-1 s, then 1-2 s): not more than one per tick of a second, where
    // retrying at once would be hundreds.
    let ticks =
        log.matches("INFO tick:").count() + log.matches("unchanged since the last tick").count();
    assert!(
        refused <= ticks + 2,
        "{refused} attempts in {ticks} ticks:\n{log}"
    );
    assert!(
        !log.contains("wrong-secret"),
        "the password is never logged"
    );

    // The right password from the environment wins over the file and gets through.
    let sub = Subscriber::start_args(
        broker.port,
        &[
            "-u",
            "agent",
            "-P",
            "right-secret",
            "-t",
            "root/#",
            "-t",
            "probe/ready",
        ],
    );
    let (code, log) = run_limited(
        once(cfg.path()).env("MQTT_PASSWORD", "right-secret"),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.received(), "dev1");
}

#[test]
fn full_buffer_drops_oldest_and_says_so_once_per_tick() {
    // Nothing listens on this port: every tick's messages go to a buffer of 100. CLI mode, so every tick
    // is a new sample (FILE mode publishes a file only once per version).
    let port = free_port();
    let collector = format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": 1, "cli_timeout_in_seconds": 2}}"#,
        repo().join("tests/data/fake-balena.sh").display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "d", "max_buffered_messages": 100}}"#
    );
    let cfg = config_dir(&collector, &mqtt);
    let agent = Running::spawn(agent(cfg.path()).env("FAKE_STATS", sample_stats()));
    // The third tick is the first to overflow the buffer, the fourth the second.
    assert!(
        agent.wait_count("message buffer full (100)", 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    let log = agent.stop();
    let drops: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("message buffer full (100 messages"))
        .collect();
    let ticks = log.matches("INFO tick:").count();
    assert!(!drops.is_empty(), "{log}");
    assert!(
        drops.len() <= ticks,
        "at most one drop line per tick:\n{log}"
    );
    // 63 messages a tick into a buffer of 100: the third tick pushes out 26, later ones 63 each.
    assert!(drops[0].contains(": 26 oldest messages dropped"), "{log}");
}

#[test]
fn once_gives_up_on_an_absent_broker_with_exit_1() {
    let port = free_port();
    let collector = format!(
        r#"{{"mode": "FILE", "file_path": "{}"}}"#,
        sample_stats().display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "d", "once_timeout_in_seconds": 2}}"#
    );
    let cfg = config_dir(&collector, &mqtt);
    let started = std::time::Instant::now();
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("--once: gave up after 2s with messages undelivered"),
        "{log}"
    );
    // The tick never reached the broker: all 63 of its figures are counted as lost.
    assert!(
        log.contains("stopped with 63 messages undelivered: they are lost"),
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn oversized_stats_input_is_cut_with_a_warning() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let dir = TempDir::new("huge");
    let sample = std::fs::read_to_string(sample_stats()).unwrap();
    // The sample first, then filler lines past 16 MiB (with no figure, so they publish nothing): the
    // sample is published, the part past the cap ignored.
    let sample_len = sample.len();
    let filler =
        format!("{}\n", r#"{"Name":"filler","PIDs":"--"}"#).repeat(17 * 1024 * 1024 / 30 + 1);
    let file = dir.write("stats.jsonl", &(sample + &filler));
    let collector = format!(r#"{{"mode": "FILE", "file_path": "{}"}}"#, file.display());
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "once_timeout_in_seconds": 60}}"#,
        broker.url()
    );
    let cfg = config_dir(&collector, &mqtt);
    let (code, log) = run_limited(
        once(cfg.path()).env("LOG_LEVEL", "info"),
        Duration::from_secs(90),
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!(
            "stats file {} is over the input cap of 16777216 bytes: its first {} bytes (whole lines) were read, the rest ignored",
            file.display(),
            sample_len + (16 * 1024 * 1024 - sample_len) / 30 * 30
        )),
        "{log}"
    );
    assert_sample_figures(&sub.received(), "dev1");
    // Whole lines up to 16 MiB were read, and not one more.
    let containers: usize = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("INFO tick: ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap();
    assert_eq!(
        containers,
        8 + (16 * 1024 * 1024 - sample_len) / 30,
        "{log}"
    );
}
