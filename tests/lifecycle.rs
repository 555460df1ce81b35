//! ENGINE mode's lifecycle and its collection on the real Docker Engine (issue 11): an exit code, an OOM
//! kill, restarts and a healthcheck as the engine's event stream hands them over; a stop in the middle of a
//! collection; a hundred containers collected at once.
//!
//! Publishing the lifecycle (`state`, `exit_code` topics) is another part of issue 11: these tests watch
//! what the source hands the loop, the agent's debug line `lifecycle change: NAME Lifecycle { .. }`
//! written the moment a change reaches it, and the collection time it logs.
//!
//! The image is built `FROM scratch` with Debian's static busybox (also as `/bin/sh`, which healthchecks
//! run through). Every container and the image carry this process's id in their names and are removed
//! by a Drop guard, also when an assertion fails; containers run with `--network none`. Without a Docker
//! Engine the tests say SKIPPED loudly and pass.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";
const SOCKET: &str = "/var/run/docker.sock";

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn engine_available() -> bool {
    if docker(&["info", "--format", "{{.ServerVersion}}"]).is_ok() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED: no Docker Engine (docker info failed); real-engine lifecycle tests did not run ***\n"
    );
    false
}

/// The image and containers one test made; all removed on drop.
struct Fixture {
    image: String,
    containers: Vec<String>,
    prefix: String,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        assert!(
            std::path::Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: install Debian's busybox-static"
        );
        let pid = std::process::id();
        let f = Fixture {
            image: format!("bmct-test-life-{tag}:{pid}"),
            containers: Vec::new(),
            prefix: format!("bmct{pid}{tag}-"),
        };
        let ctx = TempDir::new("life-image");
        std::fs::copy(BUSYBOX, ctx.path().join("busybox")).unwrap();
        ctx.write(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENTRYPOINT [\"/bin/busybox\"]\n",
        );
        docker(&[
            "build",
            "-q",
            "-t",
            &f.image,
            &ctx.path().display().to_string(),
        ])
        .expect("test image builds");
        f
    }

    /// `docker run -d` without networking; returns the full name.
    fn run(&mut self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let name = format!("{}{name}", self.prefix);
        self.containers.push(name.clone());
        let mut args = vec!["run", "-d", "--name", &name, "--network", "none"];
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        docker(&args).expect("container starts");
        name
    }

    /// Removes the containers in batches (one `docker rm` for a hundred is slow to start).
    fn remove_all(&mut self) {
        for batch in self.containers.chunks(50) {
            let mut args = vec!["rm", "-f"];
            args.extend(batch.iter().map(String::as_str));
            if let Err(e) = docker(&args) {
                eprintln!("clean-up: {e}");
            }
        }
        self.containers.clear();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.remove_all();
        if let Err(e) = docker(&["rmi", "-f", &self.image]) {
            eprintln!("clean-up: {e}");
        }
    }
}

/// The agent running in ENGINE mode, its log followed line by line with each line's arrival time.
struct Running {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    _cfg: TempDir,
}

impl Running {
    fn start(broker: &Broker, interval: u64) -> Running {
        let collector = format!(
            r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}", "collection_interval_in_seconds": {interval}}}"#
        );
        let mqtt = format!(
            r#"{{"broker_url": "{}", "device_id": "life{}"}}"#,
            broker.url(),
            std::process::id()
        );
        let cfg = config_dir(&collector, &mqtt);
        let mut child = agent(cfg.path()).stderr(Stdio::piped()).spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Running {
            child: Some(child),
            lines,
            _cfg: cfg,
        }
    }

    /// The first line (and its arrival) that `pred` accepts, waiting up to `limit`.
    fn wait_line(&self, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<(Instant, String)> {
        let until = Instant::now() + limit;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|(_, l)| pred(l)) {
                return Some(l.clone());
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGTERM; how long the agent took to exit, and its exit code.
    fn stop(&mut self) -> (Duration, Option<i32>) {
        let mut child = self.child.take().expect("running");
        let t = Instant::now();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        (t.elapsed(), code)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn change_of(name: &str, want: &str) -> impl Fn(&str) -> bool {
    let head = format!("lifecycle change: {name} ");
    let want = want.to_owned();
    move |l: &str| l.contains(&head) && l.contains(&want)
}

#[test]
fn exits_ooms_restarts_and_health_are_handed_over_as_they_happen() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("l");
    let broker = Broker::start();
    // A long interval: what arrives within it came by the event stream, not by a collection.
    let agent = Running::start(&broker, 30);
    agent
        .wait_line(Duration::from_secs(20), |l| {
            l.contains("engine collection took")
        })
        .unwrap_or_else(|| panic!("no first collection:\n{}", agent.log()));

    // Exit code 3, within 2 s of the exit (the test allows 5 on a busy machine).
    let exit3 = f.run("exit3", &[], &["sh", "-c", "sleep 1; exit 3"]);
    assert_eq!(docker(&["wait", &exit3]).unwrap(), "3");
    let exited = Instant::now();
    let (at, line) = agent
        .wait_line(Duration::from_secs(10), change_of(&exit3, "state: Exited"))
        .unwrap_or_else(|| panic!("no exit handed over:\n{}", agent.log()));
    let late = at.saturating_duration_since(exited);
    eprintln!(
        "exit handed over {} ms after docker wait returned",
        late.as_millis()
    );
    assert!(line.contains("exit_code: Some(3)"), "{line}");
    assert!(late < Duration::from_secs(5), "{late:?}: {line}");

    // Past an 8 MiB limit: the kernel's OOM killer, and the engine's OOMKilled.
    let oom = f.run(
        "oom",
        &["--memory", "8m", "--memory-swap", "8m"],
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    let (_, line) = agent
        .wait_line(Duration::from_secs(15), change_of(&oom, "state: Exited"))
        .unwrap_or_else(|| panic!("no OOM exit handed over:\n{}", agent.log()));
    assert!(line.contains("oom_killed: Some(true)"), "{line}");

    // on-failure:3 restarts three times, then stays exited.
    let flaky = f.run(
        "flaky",
        &["--restart", "on-failure:3"],
        &["sh", "-c", "exit 1"],
    );
    let (_, line) = agent
        .wait_line(
            Duration::from_secs(20),
            change_of(&flaky, "restart_count: Some(3)"),
        )
        .unwrap_or_else(|| panic!("restarts not counted:\n{}", agent.log()));
    assert!(line.contains("exit_code: Some(1)"), "{line}");

    // A healthcheck: starting, then healthy.
    let healthy = f.run(
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
    agent
        .wait_line(
            Duration::from_secs(15),
            change_of(&healthy, "health: Some(Healthy)"),
        )
        .unwrap_or_else(|| panic!("no health handed over:\n{}", agent.log()));

    // Removed: reported once as removed.
    docker(&["rm", "-f", &exit3]).unwrap();
    agent
        .wait_line(Duration::from_secs(10), change_of(&exit3, "state: Removed"))
        .unwrap_or_else(|| panic!("no removal handed over:\n{}", agent.log()));
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn sigterm_in_the_middle_of_a_collection_ends_the_agent_promptly() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("t");
    for i in 0..3 {
        f.run(&format!("idle{i}"), &[], &["sleep", "3600"]);
    }
    let broker = Broker::start();
    let mut agent = Running::start(&broker, 1);
    // The first collection waits about a second for a second CPU sample: stop inside that wait.
    agent
        .wait_line(Duration::from_secs(10), |l| l.contains("ENGINE mode"))
        .unwrap_or_else(|| panic!("no start line:\n{}", agent.log()));
    std::thread::sleep(Duration::from_millis(300));
    let mid = !agent.log().contains("engine collection took");
    let (took, code) = agent.stop();
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
        f.run(&format!("c{i}"), &[], &["sleep", "3600"]);
    }
    let broker = Broker::start();
    let agent = Running::start(&broker, 3);
    let took = |l: &str| -> Option<u64> {
        l.split("engine collection took ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    };
    // The first collection waits for a second sample; the next ones are steady state.
    let mut times = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while times.len() < 3 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
        let lines = agent.lines.lock().unwrap();
        times = lines.iter().filter_map(|(_, l)| took(l)).collect();
    }
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
    let mut agent = Running {
        child: Some(agent(cfg.path()).stderr(Stdio::piped()).spawn().unwrap()),
        lines: Arc::new(Mutex::new(Vec::new())),
        _cfg: cfg,
    };
    let err = agent.child.as_mut().unwrap().stderr.take().unwrap();
    let sink = Arc::clone(&agent.lines);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push((Instant::now(), line));
        }
    });
    agent
        .wait_line(Duration::from_secs(10), |l| {
            l.contains("connected to broker")
        })
        .unwrap_or_else(|| panic!("never connected:\n{}", agent.log()));
    // Four keep-alive periods inside the first, unanswered collection.
    std::thread::sleep(Duration::from_secs(4));
    let (took, code) = agent.stop();
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
