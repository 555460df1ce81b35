//! FILE mode against hostile and awkward files, with a real mosquitto: a FIFO, a file of garbage, a line
//! longer than the input cap, and a file nobody rewrites.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn mqtt_config(broker: &Broker) -> String {
    format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "once_timeout_in_seconds": 60}}"#,
        broker.url()
    )
}

/// Opening a FIFO for reading waits for a writer; the agent used to hang there for good, with no ticks,
/// no keep-alive and no way to stop it. Now each tick is refused with one warning and the loop lives on.
#[test]
fn a_fifo_is_refused_each_tick_without_blocking() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let dir = TempDir::new("fifo");
    let fifo = dir.path().join("stats.jsonl");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let cfg = config_dir(&file_collector(&fifo, 1), &mqtt_config(&broker));

    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(1), "--once fails promptly: {log}");
    let refusal = format!(
        "stats file {} is a FIFO, not a regular file",
        fifo.display()
    );
    assert!(log.contains(&refusal), "{log}");

    // Running: the broker still hears from the agent (its `online`), ticks go on, each warns once.
    let agent = Running::start(cfg.path());
    assert!(
        sub.wait_for(
            |l| l.iter().any(|l| l.ends_with(" online")),
            Duration::from_secs(10)
        ),
        "the agent connected despite the FIFO: {:?}",
        sub.lines()
    );
    assert!(
        agent.wait_count(&refusal, 3, Duration::from_secs(30)),
        "ticks went on: {}",
        agent.log()
    );
    let t = Instant::now();
    let log = agent.stop();
    assert!(t.elapsed() < Duration::from_secs(5), "stopped promptly");
    let refusals = log.lines().filter(|l| l.contains(&refusal)).count();
    assert!(refusals >= 3, "one warning per tick: {log}");
    let ticks = log.lines().filter(|l| l.contains("tick skipped")).count();
    assert_eq!(refusals, ticks, "exactly one line per tick: {log}");
}

/// 16 MiB of garbage used to write 65,000 WARN lines a tick. Now a tick summarises each kind of problem
/// in one line, and the good lines around the garbage are still published.
#[test]
fn a_garbage_file_is_summarised_in_a_few_lines_per_tick() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let dir = TempDir::new("garbage");
    let sample = std::fs::read_to_string(sample_stats()).unwrap();
    let mut bytes = sample.clone().into_bytes();
    for i in 0..40_000 {
        bytes.extend_from_slice(match i % 4 {
            0 => b"\x01garbage that is no JSON\n".as_slice(),
            1 => b"{\"Name\":\"x\",\"PIDs\":\"-7\"}\n",
            2 => b"{\"PIDs\":\"3\"}\n",
            _ => b"bad \xff utf8\n",
        });
    }
    let file = dir.path().join("stats.jsonl");
    std::fs::write(&file, &bytes).unwrap();
    let cfg = config_dir(&file_collector(&file, 10), &mqtt_config(&broker));
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.received(), "dev1");
    let warnings: Vec<&str> = log.lines().filter(|l| l.starts_with("WARN")).collect();
    assert!(
        warnings.len() <= 12,
        "a few lines, not one per line: {warnings:#?}"
    );
    let source = format!("stats file {}", file.display());
    let first_garbage = sample.lines().count() + 1;
    for expected in [
        format!(
            "10,000 records skipped in {source}: first at line {first_garbage}: not a stats object"
        ),
        format!(
            "10,000 figures left out in {source}: first at line {} (x): PIDs \"-7\": not a number",
            first_garbage + 1
        ),
        format!(
            "10,000 records skipped in {source}: first at line {}: no container Name",
            first_garbage + 2
        ),
        format!(
            "10,000 records skipped in {source}: first at line {}: not valid UTF-8",
            first_garbage + 3
        ),
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(&expected)),
            "{expected}\n{warnings:#?}"
        );
    }
}

/// A single line longer than the 16 MiB cap leaves no whole line to read: the log must say that all of
/// the input was ignored, not that "the rest" was.
#[test]
fn one_line_over_the_cap_is_reported_as_ignored_whole() {
    let broker = Broker::start();
    let dir = TempDir::new("hugeline");
    let mut line = String::from("{\"Name\":\"big\",\"ID\":\"");
    line.push_str(&"a".repeat(17 * 1024 * 1024));
    line.push_str("\"}\n");
    let file = dir.write("stats.jsonl", &line);
    let cfg = config_dir(&file_collector(&file, 10), &mqtt_config(&broker));
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(60));
    assert_eq!(code, Some(0), "nothing to deliver is not a failure: {log}");
    assert!(
        log.contains(&format!(
            "stats file {}: no line ends within the first 16777216 bytes (the input cap): all of it was ignored",
            file.display()
        )),
        "{log}"
    );
    assert!(!log.contains("the rest"), "{log}");
}

/// Figures are published once per version of the file: a file nobody rewrote is not published again as
/// if it were a new sample, and a writer that replaces the file with `mv` is seen at the next tick.
#[test]
fn an_unchanged_file_is_not_republished_and_a_replaced_one_is() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/+/telemetry/system/main/pids");
    let dir = TempDir::new("unchanged");
    let file = dir.write(
        "stats.jsonl",
        &std::fs::read_to_string(sample_stats()).unwrap(),
    );
    let cfg = config_dir(&file_collector(&file, 1), &mqtt_config(&broker));
    let agent = Running::start(cfg.path());
    assert!(sub.wait_for(|l| !l.is_empty(), Duration::from_secs(10)));
    // Three more ticks on the same file: nothing new. Each says so (debug), and whatever one had
    // published instead would have reached the subscriber before the probe that `received` sends.
    let unchanged = "unchanged since the last tick";
    assert!(
        agent.wait_count(unchanged, 3, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    assert_eq!(sub.received().len(), 1, "{:?}", sub.lines());
    assert_eq!(agent.count("INFO tick:"), 1, "{}", agent.log());

    // The writer's way: a new file moved over the old one (a new inode, same size and maybe same second).
    let text = std::fs::read_to_string(sample_stats())
        .unwrap()
        .replace(r#""PIDs":"23""#, r#""PIDs":"24""#);
    let staged = dir.write("stats.jsonl.tmp", &text);
    std::fs::rename(&staged, &file).unwrap();
    assert!(
        sub.wait_for(|l| l.len() >= 2, Duration::from_secs(5)),
        "{:?}",
        sub.lines()
    );
    // And two unchanged ticks after the new version.
    let seen = agent.count(unchanged);
    assert!(
        agent.wait_count(unchanged, seen + 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    let log = agent.stop();
    let lines = sub.received();
    assert_eq!(lines.len(), 2, "one message per version: {lines:?}\n{log}");
    assert!(lines[1].contains(r#""value":24"#), "{lines:?}");
    assert_eq!(log.matches("INFO tick:").count(), 2, "{log}");
}
