//! The spool (issue 21) against a real mosquitto: an outage across a SIGKILL and a restart loses nothing,
//! a record cut short costs only itself, a small spool drops the oldest and says how many, a SIGTERM
//! keeps what is unacknowledged, a second agent keeps off a spool in use, and normal operation writes
//! nothing to disk. Delivery is counted through a persistent subscriber session, as in reliability.rs.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

const PERSISTENT: &str =
    "persistence true\npersistence_location {dir}/\nmax_queued_messages 100000\n";
/// What the agent logs for each tick it collected: 63 figures of the recorded 8 containers.
const TICK: &str = "INFO tick: 8 containers, 63 messages";
const PER_TICK: usize = 63;
const LONG: Duration = Duration::from_secs(60);

/// CLI mode with the recorded-output stand-in, a tick a second: each tick's figures carry their own
/// collection time, so delivery can be counted tick by tick.
fn configure(port: u16, spool: &Path, extra: &str) -> TempDir {
    configure_every(1, port, spool, extra)
}

fn configure_every(seconds: u64, port: u16, spool: &Path, extra: &str) -> TempDir {
    let collector = format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": {seconds}}}"#,
        repo().join("tests/data/fake-balena.sh").display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "dev1", "qos": 1,
            "reconnect_max_delay_in_seconds": 1, "spool_dir": "{}"{extra}}}"#,
        spool.display()
    );
    config_dir(&collector, &mqtt)
}

fn start(cfg: &TempDir) -> Running {
    Running::spawn(agent(cfg.path()).env("FAKE_STATS", sample_stats()))
}

fn persistent_subscriber(port: u16) -> Subscriber {
    Subscriber::start_args(
        port,
        &[
            "-c",
            "-i",
            "spool-subscriber",
            "-t",
            "root/#",
            "-t",
            "probe/ready",
        ],
    )
}

/// The sum of N over the log's lines `... <marker> N <after>`.
fn sum_of(log: &[String], before: &str, after: &str) -> usize {
    log.iter()
        .filter_map(|l| {
            let rest = &l[l.find(before)? + before.len()..];
            rest[..rest.find(after)?].trim().parse::<usize>().ok()
        })
        .sum()
}

/// Messages the agent wrote to its spool in batches (not counting a stop's).
fn written(a: &Running) -> usize {
    sum_of(&a.lines(), ": ", " messages written")
}

/// Distinct (topic, timestamp) pairs delivered, checking on the way that each topic's figures arrived
/// in order (a repeat of one already seen aside); returns (distinct, duplicates, per-tick counts).
fn check_order(lines: &[String]) -> (usize, usize, BTreeMap<u64, usize>) {
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut dups = 0;
    let mut ticks: BTreeMap<u64, usize> = BTreeMap::new();
    for (topic, _, ts) in lines.iter().filter_map(|l| parse_metric(l)) {
        if !seen.insert((topic.clone(), ts)) {
            dups += 1;
            continue;
        }
        if let Some(&prev) = last.get(&topic) {
            assert!(ts > prev, "{topic}: {ts} arrived after {prev}");
        }
        last.insert(topic, ts);
        *ticks.entry(ts).or_default() += 1;
    }
    (seen.len(), dups, ticks)
}

/// Issue 21's first two cases: broker down, 10 ticks spooled, SIGKILL, a new agent, 5 more ticks,
/// broker up: every figure arrives, in order per topic, duplicates at most a tick's worth. With `cut`,
/// the newest segment is cut in the middle of its last record before the restart: every complete
/// record arrives, and one warning says so.
fn outage_across_a_kill(cut: bool) {
    let mut broker = Broker::start_with(PERSISTENT);
    drop(persistent_subscriber(broker.port));
    broker.stop();
    let spool = TempDir::new("spool");
    let cfg = configure(broker.port, spool.path(), "");

    let mut a = start(&cfg);
    assert!(
        a.wait_for(|_| written(&a) >= 10 * PER_TICK, LONG),
        "{}",
        a.log()
    );
    a.kill();
    let from_a = written(&a);
    let mut lost = 0;
    if cut {
        let mut segs: Vec<_> = std::fs::read_dir(spool.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "spool"))
            .collect();
        segs.sort();
        let newest = segs.last().expect("a segment");
        let len = std::fs::metadata(newest).unwrap().len();
        // A figure's record is about 110 bytes: 30 off the end cuts the last one, and only it.
        std::fs::OpenOptions::new()
            .write(true)
            .open(newest)
            .unwrap()
            .set_len(len - 30)
            .unwrap();
        lost = 1;
    }

    let b = start(&cfg);
    assert!(b.wait_count(TICK, 5, LONG), "{}", b.log());
    broker.restart();
    let sub = persistent_subscriber(broker.port);
    assert!(
        b.wait_log("spool ", LONG) && b.wait_log("caught up", LONG),
        "{}",
        b.log()
    );
    // A tick collected after the spool caught up has arrived: everything before it has.
    let after = b.count(TICK) + 1;
    assert!(b.wait_count(TICK, after, LONG));
    let want = from_a - lost + after * PER_TICK;
    sub.wait_for(|l| check_order(l).0 >= want, LONG);
    let log_b = b.stop();
    let lines = sub.received();
    let (distinct, dups, ticks) = check_order(&lines);
    let ticks_b = log_b.matches(TICK).count();
    let stopped_with = sum_of(
        &log_b.lines().map(str::to_owned).collect::<Vec<_>>(),
        "stopped with ",
        " messages",
    );
    eprintln!(
        "A spooled {from_a}, B collected {ticks_b} ticks, {distinct} distinct delivered, {dups} duplicates, {stopped_with} left at B's stop"
    );
    assert_eq!(
        distinct + stopped_with,
        from_a - lost + ticks_b * PER_TICK,
        "every figure of every tick:\n{log_b}"
    );
    assert!(dups <= PER_TICK, "{dups} duplicates");
    assert!(ticks.len() >= 15, "{} ticks", ticks.len());
    let warnings = log_b.matches("is cut short or damaged").count();
    assert_eq!(warnings, usize::from(cut), "{log_b}");
    assert!(log_b.contains(&format!("spool {}", spool.path().display())));
}

#[test]
fn an_outage_across_a_kill_and_a_restart_loses_nothing() {
    outage_across_a_kill(false);
}

#[test]
fn a_record_cut_short_costs_only_itself() {
    outage_across_a_kill(true);
}

#[test]
fn a_small_spool_drops_the_oldest_and_counts_them() {
    let mut broker = Broker::start_with(PERSISTENT);
    drop(persistent_subscriber(broker.port));
    broker.stop();
    let spool = TempDir::new("spool");
    // 64 KiB: about nine ticks of 63 figures.
    let cfg = configure(broker.port, spool.path(), r#", "spool_max_bytes": 65536"#);
    let a = start(&cfg);
    assert!(
        a.wait_log("oldest messages dropped", LONG) && a.wait_count(TICK, 15, LONG),
        "{}",
        a.log()
    );
    broker.restart();
    let sub = persistent_subscriber(broker.port);
    assert!(a.wait_log("caught up", LONG), "{}", a.log());
    let after = a.count(TICK) + 1;
    assert!(a.wait_count(TICK, after, LONG));
    let log = a.stop();
    let lines: Vec<String> = log.lines().map(str::to_owned).collect();
    let dropped = sum_of(&lines, "): ", " oldest messages dropped");
    let stopped_with = sum_of(&lines, "stopped with ", " messages");
    let (distinct, _, ticks) = check_order(&sub.received());
    let made = log.matches(TICK).count() * PER_TICK;
    eprintln!(
        "{made} made, {distinct} delivered, {dropped} dropped, {stopped_with} left at the stop"
    );
    assert!(dropped > 0);
    assert_eq!(distinct + dropped + stopped_with, made, "{log}");
    // The oldest went: what arrived is every tick from some point on, the newest whole.
    let newest = ticks.values().last().copied();
    assert_eq!(newest, Some(PER_TICK));
    assert!(std::fs::metadata(spool.path()).is_ok());
}

#[test]
fn sigterm_in_an_outage_keeps_what_is_unacknowledged() {
    let mut broker = Broker::start_with(PERSISTENT);
    drop(persistent_subscriber(broker.port));
    broker.stop();
    let spool = TempDir::new("spool");
    let cfg = configure(broker.port, spool.path(), "");
    let mut a = start(&cfg);
    assert!(a.wait_count(TICK, 3, LONG), "{}", a.log());
    let (_, code) = a.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    let log_a = a.log();
    let made = log_a.matches(TICK).count() * PER_TICK;
    assert!(
        log_a.contains(&format!(
            "stopped with {made} messages undelivered: they are in the spool"
        )),
        "{log_a}"
    );
    broker.restart();
    let sub = persistent_subscriber(broker.port);
    let b = start(&cfg);
    assert!(
        b.wait_log(
            &format!("{made} messages from an earlier run go out first"),
            LONG
        ),
        "{}",
        b.log()
    );
    sub.wait_for(|l| check_order(l).0 >= made, LONG);
    b.stop();
    assert!(check_order(&sub.received()).0 >= made);
}

#[test]
fn a_second_agent_keeps_off_a_spool_in_use() {
    let broker = Broker::start();
    let spool = TempDir::new("spool");
    let cfg = configure(broker.port, spool.path(), "");
    let a = start(&cfg);
    assert!(a.wait_log(TICK, LONG));
    let b = start(&cfg);
    let lock = format!("its lock {}/lock is held", spool.path().display());
    assert!(b.wait_log(&lock, LONG), "{}", b.log());
    assert!(b.wait_log(TICK, LONG), "runs on, in memory");
    b.stop();
    a.stop();
    // A directory that is not there: one warning naming it, and the agent runs.
    let missing = spool.path().join("none");
    let cfg = configure(broker.port, &missing, "");
    let c = start(&cfg);
    assert!(c.wait_log(TICK, LONG));
    let log = c.stop();
    assert_eq!(
        log.matches(&format!("spool {}: ", missing.display()))
            .count(),
        1,
        "{log}"
    );
}

/// Bytes the process has caused to be written to storage (`/proc/<pid>/io`).
fn write_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))?
        .trim()
        .parse()
        .ok()
}

#[test]
fn normal_operation_writes_nothing_to_disk() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let spool = TempDir::new("spool");
    // Normal operation is a broker that acknowledges within a tick: 2 s ticks leave it time to
    // answer however busy the machine is.
    let cfg = configure_every(2, broker.port, spool.path(), "");
    let a = start(&cfg);
    // Counted from the first tick on: creating the lock file at start may dirty a page of the
    // filesystem's metadata (counted or not, depending on whether that page was dirty already).
    assert!(a.wait_count(TICK, 1, LONG), "{}", a.log());
    let Some(at_start) = write_bytes(a.pid()) else {
        skipped("no /proc/<pid>/io (a kernel without task I/O accounting)");
        return;
    };
    // Five ticks delivered whole: the positive marker after which nothing written means nothing.
    assert!(a.wait_count(TICK, 6, LONG), "{}", a.log());
    sub.wait_for(
        |l| {
            check_order(l)
                .2
                .values()
                .filter(|&&n| n == PER_TICK)
                .count()
                >= 5
        },
        LONG,
    );
    let Some(bytes) = write_bytes(a.pid()) else {
        skipped("no /proc/<pid>/io (a kernel without task I/O accounting)");
        return;
    };
    let log = a.stop();
    assert_eq!(bytes - at_start, 0, "{log}");
    let files: Vec<(String, u64)> = std::fs::read_dir(spool.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(files, [("lock".to_owned(), 0)], "{log}");
    assert!(!log.contains("messages written"), "{log}");
}
