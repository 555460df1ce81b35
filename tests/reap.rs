//! CLI mode reaps its children without waiting on them (issue 18): a CLI that closes its output and
//! lives on is killed at the tick's deadline while the loop goes on, and one that exits a moment after
//! closing its output is reaped and its figures published. A stand-in CLI (a shell script) through a
//! real mosquitto.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The stand-in CLI: prints the sample for `stats` (nothing for `ps`), closes its output, notes its pid
/// in `$PIDS`, then runs `after` (the shell's own pid stays the child's: `exec`).
fn cli(dir: &TempDir, after: &str) -> PathBuf {
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = stats ] && cat \"$FAKE_STATS\"\nexec >&- 2>&-\necho $$ >> \"$PIDS\"\n{after}\n"
    );
    let path = dir.write("balena", &script);
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

fn config(broker: &Broker, cli: &Path, timeout: u64) -> TempDir {
    let collector = format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": 1, "cli_timeout_in_seconds": {timeout}}}"#,
        cli.display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1"}}"#,
        broker.url()
    );
    config_dir(&collector, &mqtt)
}

/// The agent running, its log collected line by line as it comes.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(cfg: &Path, pids: &Path) -> Running {
        let mut child = agent(cfg)
            .env("FAKE_STATS", sample_stats())
            .env("PIDS", pids)
            .env("LOG_LEVEL", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Running { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `what` is in the log `n` times.
    fn wait_log(&self, what: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.log().matches(what).count() < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Whether `pid` is a process at all, a zombie included (one killed but never reaped).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_cli_that_closes_its_output_and_lives_on_is_killed_at_the_deadline_while_the_loop_goes_on() {
    let dir = TempDir::new("reap");
    // A minute: far longer than the test waits, so only a kill ends it in time.
    let cli = cli(&dir, "exec sleep 60");
    let pids = dir.path().join("pids");
    let broker = Broker::start();
    let cfg = config(&broker, &cli, 2);
    let agent = Running::start(cfg.path(), &pids);
    // Two ticks' children killed at their deadlines: the loop was not held by the first one. (A blocking
    // reap waited out the first child's minute.)
    let killed = "stats did not finish within 2s and was killed";
    let ok = agent.wait_log(killed, 2, Duration::from_secs(30));
    // Both ticks' children (`stats` and `ps` each, the first four pids noted) are gone, not zombies.
    let noted: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let log = stop_agent(agent.child);
    assert!(ok, "{log}");
    assert!(noted.len() >= 4, "pids noted: {noted:?}\n{log}");
    let alive: Vec<u32> = noted[..4].iter().copied().filter(|&p| exists(p)).collect();
    assert!(
        alive.is_empty(),
        "children killed at their deadline still there: {alive:?}\n{log}"
    );
    assert!(!log.contains("connection to broker lost"), "{log}");
}

#[test]
fn a_cli_that_exits_a_moment_after_closing_its_output_is_reaped_and_published() {
    let dir = TempDir::new("reap");
    // Exits a second after its output is closed: the loop looks again until it can reap it.
    let cli = cli(&dir, "sleep 1");
    let pids = dir.path().join("pids");
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config(&broker, &cli, 10);
    let mut cmd = once(cfg.path());
    cmd.env("FAKE_STATS", sample_stats()).env("PIDS", &pids);
    let (code, log) = run_limited(&mut cmd, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("INFO tick: 8 containers"), "{log}");
    assert!(!log.contains("did not finish"), "{log}");
    sub.sync(broker.port);
    assert_sample_figures(&sub.lines(), "dev1");
}
