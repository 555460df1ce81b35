//! Report by exception (`"report": "on_change"`) against a real mosquitto, in FILE mode: the test
//! rewrites the stats file between ticks and watches what arrives. Every rewrite also moves a `marker`
//! container's PIDs, which always goes out, after the container under test (it is the file's last line):
//! its arrival proves that tick is over, so "nothing arrived for web" is a positive observation.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

/// The `web` container's docker fields, as docker prints them (exact bytes as `...B`).
#[derive(Clone)]
struct Web {
    cpu: &'static str,
    mem_perc: &'static str,
    mem: &'static str,
    limit: &'static str,
    rx: &'static str,
    tx: &'static str,
    read: &'static str,
    written: &'static str,
    pids: &'static str,
}

const BASE: Web = Web {
    cpu: "5.00%",
    mem_perc: "10.00%",
    mem: "100MiB",
    limit: "1000MiB",
    rx: "10000000B",
    tx: "10000000B",
    read: "10000000B",
    written: "10000000B",
    pids: "3",
};

fn stats_line(name: &str, w: &Web) -> String {
    format!(
        r#"{{"Name":"{name}","CPUPerc":"{}","MemPerc":"{}","MemUsage":"{} / {}","NetIO":"{} / {}","BlockIO":"{} / {}","PIDs":"{}"}}"#,
        w.cpu, w.mem_perc, w.mem, w.limit, w.rx, w.tx, w.read, w.written, w.pids
    )
}

/// The stats file, replaced whole (`mv`, as a host job does) at every write, with the marker last.
struct StatsFile {
    dir: TempDir,
    marker: u64,
}

impl StatsFile {
    fn new() -> StatsFile {
        StatsFile {
            dir: TempDir::new("report"),
            marker: 0,
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("stats.jsonl")
    }

    /// Writes `lines` and the next marker; returns the marker's PIDs.
    fn write(&mut self, lines: &[String]) -> u64 {
        self.marker += 1;
        let marker = Web {
            pids: Box::leak(self.marker.to_string().into_boxed_str()),
            ..BASE
        };
        let mut text = String::new();
        for l in lines.iter().chain([&stats_line("marker", &marker)]) {
            text += l;
            text.push('\n');
        }
        let tmp = self.dir.write("stats.tmp", &text);
        std::fs::rename(tmp, self.path()).unwrap();
        self.marker
    }
}

fn collector(file: &StatsFile, report: &str) -> String {
    format!(
        r#"{{"mode": "FILE", "file_path": "{}", "collection_interval_in_seconds": 1{report}}}"#,
        file.path().display()
    )
}

fn mqtt(broker: &Broker, extra: &str) -> String {
    format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "qos": 1, "reconnect_max_delay_in_seconds": 1{extra}}}"#,
        broker.url()
    )
}

const ROOT: &str = "root/dev1/telemetry/system/";

/// Whether the marker's PIDs `n` arrived (either payload mode).
fn has_marker(lines: &[String], n: u64) -> bool {
    lines.iter().any(|l| {
        l.strip_prefix(ROOT).is_some_and(|rest| {
            rest.starts_with(&format!("marker/pids {{\"value\":{n},"))
                || (rest.starts_with("marker {")
                    && (rest.contains(&format!("\"pids\":{n},"))
                        || rest.contains(&format!("\"pids\":{n}}}"))))
        })
    })
}

/// The messages for `web` among `lines`, as (metric or service level, payload).
fn web(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let (topic, payload) = l.split_once(' ')?;
            let rest = topic.strip_prefix(ROOT)?;
            let level = match rest.strip_prefix("web") {
                Some("") => "web",
                Some(m) => m.strip_prefix('/')?,
                None => return None,
            };
            Some((level.to_owned(), payload.to_owned()))
        })
        .collect()
}

/// Writes `lines` and waits for that tick's marker: the web messages the tick sent.
fn tick(sub: &Subscriber, file: &mut StatsFile, lines: &[String]) -> Vec<(String, String)> {
    let before = sub.lines().len();
    let n = file.write(lines);
    assert!(
        sub.wait_for(|l| has_marker(l, n), WAIT),
        "marker {n} never arrived: {:?}",
        sub.lines()
    );
    web(&sub.lines()[before..])
}

fn metrics(msgs: &[(String, String)]) -> Vec<&str> {
    let mut m: Vec<&str> = msgs.iter().map(|(t, _)| t.as_str()).collect();
    m.sort();
    m
}

const ALL: [&str; 9] = [
    "block_read_in_bytes",
    "block_written_in_bytes",
    "cpu_usage_in_percent",
    "memory_limit_in_bytes",
    "memory_usage_in_bytes",
    "memory_usage_in_percent",
    "network_received_in_bytes",
    "network_sent_in_bytes",
    "pids",
];

/// A change to web's figures, the metrics it must send, and the value the changed one must carry.
type Step = (fn(&mut Web), &'static [&'static str], &'static str);

#[test]
fn a_crossing_goes_out_within_its_tick_and_a_move_inside_the_deadband_does_not() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let mut file = StatsFile::new();
    file.write(&[stats_line("web", &BASE)]);
    let report = r#", "report": "on_change", "report_heartbeat_in_seconds": 3600"#;
    let cfg = config_dir(&collector(&file, report), &mqtt(&broker, ""));
    let agent = spawn_agent(cfg.path());

    assert!(
        sub.wait_for(|l| has_marker(l, 1), WAIT),
        "{:?}",
        sub.lines()
    );
    assert_eq!(
        metrics(&web(&sub.lines())),
        ALL,
        "the baseline: every figure"
    );

    // Every figure just inside its deadband at once (CPU 1.00 point, memory 2 % of 100 MiB = 2,097,152
    // bytes, counters 1 MiB, the percentage moved on its own): nothing for web.
    let inside = Web {
        cpu: "6.00%",
        mem_perc: "10.50%",
        mem: "106954752B",
        rx: "11048576B",
        tx: "11048576B",
        read: "11048576B",
        written: "8951424B",
        ..BASE
    };
    assert_eq!(
        tick(&sub, &mut file, &[stats_line("web", &inside)]),
        [],
        "inside every deadband"
    );
    // Then one figure at a time just beyond it: that one goes out in that tick, and nothing else.
    let mut now = inside.clone();
    let steps: [Step; 9] = [
        (|w| w.cpu = "6.01%", &["cpu_usage_in_percent"], "6.01"),
        (
            |w| w.mem = "106954753B",
            &["memory_usage_in_bytes", "memory_usage_in_percent"],
            "106954753",
        ),
        (
            |w| w.rx = "11048577B",
            &["network_received_in_bytes"],
            "11048577",
        ),
        (
            |w| w.tx = "11048577B",
            &["network_sent_in_bytes"],
            "11048577",
        ),
        (
            |w| w.read = "11048577B",
            &["block_read_in_bytes"],
            "11048577",
        ),
        (
            |w| w.written = "8951423B",
            &["block_written_in_bytes"],
            "8951423",
        ),
        (|w| w.pids = "4", &["pids"], "4"),
        (
            |w| w.limit = "1048576001B",
            &["memory_limit_in_bytes", "memory_usage_in_percent"],
            "1048576001",
        ),
        // A slow drift adds up: 0.99 from the 6.01 published, then 1.01, though 0.02 from the last tick.
        (|w| w.cpu = "7.00%", &[], ""),
    ];
    for (change, expected, value) in steps {
        change(&mut now);
        let got = tick(&sub, &mut file, &[stats_line("web", &now)]);
        assert_eq!(metrics(&got), expected, "{:?}", got);
        if !expected.is_empty() {
            let value = format!("{{\"value\":{value},");
            assert!(got.iter().any(|(_, p)| p.starts_with(&value)), "{got:?}");
        }
    }
    now.cpu = "7.02%";
    let got = tick(&sub, &mut file, &[stats_line("web", &now)]);
    assert_eq!(metrics(&got), ["cpu_usage_in_percent"], "the drift adds up");
    let log = stop_agent(agent);
    assert!(log.contains("report on_change (heartbeat 3600s"), "{log}");
    assert!(log.contains("INFO tick: 2 containers, 1 messages"), "{log}");
}

#[test]
fn per_service_sends_the_whole_payload_on_a_crossing_and_at_the_heartbeat() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let mut file = StatsFile::new();
    let lines = [stats_line("web", &BASE)];
    file.write(&lines);
    let report = r#", "report": "on_change", "report_heartbeat_in_seconds": 4"#;
    let cfg = config_dir(
        &collector(&file, report),
        &mqtt(&broker, r#", "payload_mode": "per_service""#),
    );
    let agent = spawn_agent(cfg.path());
    assert!(
        sub.wait_for(|l| has_marker(l, 1), WAIT),
        "{:?}",
        sub.lines()
    );
    let baseline = web(&sub.lines());
    assert_eq!(metrics(&baseline), ["web"]);
    let keys = |payload: &str| {
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let mut all: Vec<String> = ALL.iter().map(|s| s.to_string()).collect();
    all.push("timestamp".into());
    all.sort();
    assert_eq!(keys(&baseline[0].1), all);

    // The same figures tick after tick: silence for web, then the heartbeat with every figure.
    let mut silent = 0;
    let heartbeat = loop {
        let got = tick(&sub, &mut file, &lines);
        if !got.is_empty() {
            break got;
        }
        silent += 1;
        assert!(silent < 30, "no heartbeat");
    };
    assert!(silent >= 1, "nothing before the heartbeat was due");
    assert_eq!(keys(&heartbeat[0].1), all, "{heartbeat:?}");

    // One figure beyond its deadband: the whole payload, in that tick.
    let busy = Web { pids: "4", ..BASE };
    let got = tick(&sub, &mut file, &[stats_line("web", &busy)]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(keys(&got[0].1), all);
    assert!(got[0].1.contains("\"pids\":4"), "{got:?}");
    stop_agent(agent);
}

#[test]
fn a_home_assistant_birth_brings_a_fresh_baseline() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let mut file = StatsFile::new();
    let lines = [stats_line("web", &BASE)];
    file.write(&lines);
    let report = r#", "report": "on_change", "report_heartbeat_in_seconds": 3600"#;
    let cfg = config_dir(
        &collector(&file, report),
        &mqtt(&broker, r#", "home_assistant_discovery": true"#),
    );
    let agent = spawn_agent(cfg.path());
    assert!(
        sub.wait_for(|l| has_marker(l, 1), WAIT),
        "{:?}",
        sub.lines()
    );
    assert_eq!(metrics(&web(&sub.lines())), ALL);
    assert_eq!(tick(&sub, &mut file, &lines), [], "at rest");
    // Home Assistant (re)starts: it has no values. Its birth is not retained, as Home Assistant sends it
    // by default.
    let born = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", "homeassistant/status", "-m", "online"])
        .status()
        .unwrap();
    assert!(born.success());
    // The birth reaches the agent before any tick that follows the next config it sends (the configs are
    // re-announced 0.5 to 5 s after it): wait for one, then the next tick is the baseline.
    let configs = Subscriber::start(broker.port, "homeassistant/+/+/+/config");
    let before = configs.lines().len();
    assert!(
        configs.wait_for(|l| l.len() > before, WAIT),
        "configs re-announced after the birth"
    );
    // Entities expire after three intervals plus the heartbeat: a resting figure never shows unavailable.
    assert!(
        configs
            .lines()
            .iter()
            .all(|l| l.contains(r#""expire_after":3603"#)),
        "{:?}",
        configs.lines()
    );
    assert_eq!(
        metrics(&tick(&sub, &mut file, &lines)),
        ALL,
        "a fresh baseline"
    );
    assert_eq!(tick(&sub, &mut file, &lines), [], "then exceptions again");
    stop_agent(agent);
}

const PERSISTENT: &str =
    "persistence true\npersistence_location {dir}/\nmax_queued_messages 100000\n";

/// A subscriber with a persistent session, so what is published while it is away is kept for it.
fn persistent_subscriber(port: u16) -> Subscriber {
    Subscriber::start_args(
        port,
        &[
            "-c",
            "-i",
            "report-subscriber",
            "-t",
            "root/#",
            "-t",
            "probe/ready",
        ],
    )
}

/// The agent's log as it is written.
fn spawn_with_log(cfg: &std::path::Path) -> (Child, Arc<Mutex<String>>) {
    let mut child = agent(cfg).stderr(Stdio::piped()).spawn().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    (child, log)
}

fn wait_log(log: &Arc<Mutex<String>>, pred: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !pred(&log.lock().unwrap()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn exceptions_during_an_outage_are_delivered_and_a_baseline_follows() {
    let mut broker = Broker::start_with(PERSISTENT);
    let sub = persistent_subscriber(broker.port);
    let mut file = StatsFile::new();
    file.write(&[stats_line("web", &BASE)]);
    let report = r#", "report": "on_change", "report_heartbeat_in_seconds": 3600"#;
    let cfg = config_dir(&collector(&file, report), &mqtt(&broker, ""));
    let (agent, log) = spawn_with_log(cfg.path());
    assert!(
        sub.wait_for(|l| has_marker(l, 1), WAIT),
        "{:?}",
        sub.lines()
    );
    let mut lines = sub.lines();
    drop(sub);
    broker.stop();
    wait_log(&log, |l| l.contains("connection to broker lost"));

    // During the outage: a CPU crossing (an exception), read by a tick (the next one finds the file
    // unchanged)...
    let busy = Web {
        cpu: "50.00%",
        ..BASE
    };
    let unchanged = |l: &str| l.matches("unchanged since the last tick").count();
    // (Two more: one may be a tick that read the old file just before the write.)
    let seen = unchanged(&log.lock().unwrap());
    file.write(&[stats_line("web", &busy)]);
    wait_log(&log, |l| unchanged(l) >= seen + 2);
    // ...then PIDs move. A tick waits for the broker until the next one starts: this one queues the
    // crossing (two messages: web's CPU and the marker), and waits itself.
    let moved = Web { pids: "7", ..busy };
    file.write(&[stats_line("web", &moved)]);
    wait_log(&log, |l| l.contains("INFO tick: 2 containers, 2 messages"));

    broker.restart();
    let sub = persistent_subscriber(broker.port);
    assert!(
        sub.wait_for(|l| has_marker(l, 3), WAIT),
        "{:?}",
        sub.lines()
    );
    // What arrived after the outage; a message re-sent (DUP) that had arrived before it is left out.
    let after: Vec<String> = sub
        .lines()
        .into_iter()
        .filter(|l| !lines.contains(l))
        .collect();
    lines.extend(after.iter().cloned());
    let got = web(&after);
    // The exception first, then the baseline: every figure, PIDs 7 among them.
    assert_eq!(got[0].0, "cpu_usage_in_percent", "{got:?}");
    assert!(got[0].1.starts_with("{\"value\":50,"), "{got:?}");
    assert_eq!(metrics(&got[1..]), ALL, "{got:?}");
    assert!(
        got.iter()
            .any(|(t, p)| t == "pids" && p.starts_with("{\"value\":7,")),
        "{got:?}"
    );
    // Then exceptions again: the same figures send nothing for web.
    assert_eq!(tick(&sub, &mut file, &[stats_line("web", &moved)]), []);
    let mut agent = agent;
    let _ = std::process::Command::new("kill")
        .arg(agent.id().to_string())
        .status();
    let status = agent.wait().unwrap();
    let log = log.lock().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("connected to broker"), "{log}");
}

#[test]
fn bad_report_values_exit_2_naming_the_key() {
    let broker = Broker::start();
    let file = StatsFile::new();
    for (report, expect) in [
        (
            r#", "report": "sometimes""#,
            r#"balena_stats_collector.config.json: "report": "sometimes" is not a choice"#,
        ),
        (
            r#", "report_heartbeat_in_seconds": 0"#,
            r#""report_heartbeat_in_seconds": must be an integer from 1 to 86400, not 0"#,
        ),
        (
            r#", "report_cpu_deadband_in_percentage_points": "1""#,
            r#""report_cpu_deadband_in_percentage_points": must be a number from 0 to 10000, not "1""#,
        ),
        (
            r#", "report_memory_deadband_in_percent": -1"#,
            r#""report_memory_deadband_in_percent": must be a number from 0 to 100, not -1"#,
        ),
        (
            r#", "report_network_deadband_in_bytes": 0.5"#,
            r#""report_network_deadband_in_bytes": must be an integer"#,
        ),
        (
            r#", "report_block_io_deadband_in_bytes": true"#,
            r#""report_block_io_deadband_in_bytes": must be an integer"#,
        ),
    ] {
        let cfg = config_dir(&collector(&file, report), &mqtt(&broker, ""));
        let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(10));
        assert_eq!(code, Some(2), "{report}: {log}");
        assert!(log.contains(expect), "{report}: {log}");
    }
    let cfg = config_dir(&collector(&file, ""), &mqtt(&broker, ""));
    let (code, log) = run_limited(
        once(cfg.path()).env("STATS_REPORT_CPU_DEADBAND_IN_PERCENTAGE_POINTS", "1,5"),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(r#"environment variable STATS_REPORT_CPU_DEADBAND_IN_PERCENTAGE_POINTS: "report_cpu_deadband_in_percentage_points": must be a number from 0 to 10000, not "1,5""#),
        "{log}"
    );
}

/// Eight containers at rest (figures moving a little, inside their deadbands), ticks driven by rewriting
/// the file: messages and MQTT bytes per tick after the first, `every_tick` against `on_change`, in both
/// payload modes. Printed for the record; asserted only as far as is exact: at rest `on_change` sends
/// nothing but the marker.
#[test]
fn bytes_per_tick_at_rest() {
    const CONTAINERS: usize = 8;
    const TICKS: u64 = 4;
    let resting = |i: u64| -> Vec<String> {
        (0..CONTAINERS)
            .map(|c| {
                // CPU wobbles by half a point, memory by 0.5 %, counters grow 10 kB a tick.
                let cpu = if i % 2 == 0 { "1.25%" } else { "1.75%" };
                let mem = if i % 2 == 0 { "100MiB" } else { "100.5MiB" };
                let counter = Box::leak(format!("{}kB", 5_000 + 10 * i).into_boxed_str());
                let w = Web {
                    cpu,
                    mem_perc: "1.30%",
                    mem,
                    limit: "7.676GiB",
                    rx: counter,
                    tx: counter,
                    read: counter,
                    written: counter,
                    pids: "12",
                };
                stats_line(&format!("service{c}"), &w)
            })
            .collect()
    };
    let broker = Broker::start();
    let mut results = Vec::new();
    for (report, mode) in [
        ("every_tick", "per_metric"),
        ("on_change", "per_metric"),
        ("every_tick", "per_service"),
        ("on_change", "per_service"),
    ] {
        let sub = Subscriber::start(broker.port, "root/#");
        let mut file = StatsFile::new();
        file.write(&resting(0));
        let cfg = config_dir(
            &collector(&file, &format!(r#", "report": "{report}""#)),
            &mqtt(&broker, &format!(r#", "payload_mode": "{mode}""#)),
        );
        let agent = spawn_agent(cfg.path());
        assert!(
            sub.wait_for(|l| has_marker(l, 1), WAIT),
            "{:?}",
            sub.lines()
        );
        let start = sub.lines().len();
        for i in 1..=TICKS {
            let n = file.write(&resting(i));
            assert!(sub.wait_for(|l| has_marker(l, n), WAIT));
        }
        stop_agent(agent);
        let lines = sub.lines();
        let figures: Vec<&String> = lines[start..]
            .iter()
            .filter(|l| l.starts_with(ROOT) && l.contains("/service"))
            .collect();
        // PUBLISH at QoS 1: fixed header (2 bytes below 128 bytes of body, else 3), topic length (2),
        // topic, packet id (2), payload; and the 4-byte PUBACK back.
        let mqtt_bytes: usize = figures
            .iter()
            .map(|l| {
                let (topic, payload) = l.split_once(' ').unwrap();
                let body = 2 + topic.len() + 2 + payload.len();
                body + if body < 128 { 2 } else { 3 } + 4
            })
            .sum();
        let per_tick = |n: usize| n as f64 / TICKS as f64;
        eprintln!(
            "{report:>10} {mode:>11}: {:6.1} messages, {:8.1} MQTT bytes per tick at rest ({CONTAINERS} containers)",
            per_tick(figures.len()),
            per_tick(mqtt_bytes)
        );
        results.push((report, mode, figures.len(), mqtt_bytes));
    }
    for (report, mode, messages, _) in &results {
        match (*report, *mode) {
            ("every_tick", "per_metric") => assert_eq!(*messages, CONTAINERS * 9 * TICKS as usize),
            ("every_tick", "per_service") => assert_eq!(*messages, CONTAINERS * TICKS as usize),
            _ => assert_eq!(*messages, 0, "{report} {mode}"),
        }
    }
}
