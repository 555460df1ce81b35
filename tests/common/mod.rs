//! Test harness: a real mosquitto on a free loopback port, a real subscriber (mosquitto_sub), scratch
//! config directories and the agent binary as cargo built it.
#![allow(dead_code)]

pub mod engine;
pub mod rabbitmq;
mod running;
mod skip;

// Not every test file uses every helper.
#[allow(unused_imports)]
pub use running::Running;
#[allow(unused_imports)]
pub use skip::{have_program, skipped};

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_balena-multi-container-telemetry");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh copy of `tests/data/sample-stats.jsonl`, made once per test process. FILE mode stamps figures
/// with the file's modification time, and a checkout's files can be old.
pub fn sample_stats() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bmct-sample-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sample-stats.jsonl");
        std::fs::copy(repo().join("tests/data/sample-stats.jsonl"), &path).unwrap();
        path
    })
    .clone()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bmct-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real mosquitto, killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
    extra: String,
    /// Extra environment for mosquitto (e.g. OPENSSL_CONF).
    pub env: Vec<(String, String)>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with("")
    }

    /// `extra` is appended to the config (password files, persistence...). `{dir}` in it names the
    /// broker's own scratch directory.
    pub fn start_with(extra: &str) -> Broker {
        // Another test may take the same free port between our probe and mosquitto's bind: then this
        // mosquitto exits at once, and we try another port.
        for _ in 0..10 {
            let mut b = Broker {
                child: None,
                port: free_port(),
                dir: TempDir::new("broker"),
                extra: extra.to_owned(),
                env: Vec::new(),
            };
            if b.try_start() {
                return b;
            }
        }
        panic!("could not start mosquitto on a free port");
    }

    /// Starts (again) on the same port, as a broker restart does.
    pub fn restart(&mut self) {
        for _ in 0..50 {
            if self.try_start() {
                return;
            }
            // Retry pacing, not synchronisation: something else (another test's port probe) may hold
            // the port for a moment.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("mosquitto did not restart on port {}", self.port);
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn try_start(&mut self) -> bool {
        self.stop();
        let extra = self
            .extra
            .replace("{dir}", &self.dir.path().display().to_string());
        let anonymous = if extra.contains("allow_anonymous") {
            ""
        } else {
            "allow_anonymous true\n"
        };
        // `user root`: started as root (CI), mosquitto would otherwise switch to the `mosquitto` user and
        // could not write its persistence file or read a password file in our scratch directory.
        let conf = format!(
            "listener {} 127.0.0.1\nuser root\n{anonymous}{extra}\n",
            self.port
        );
        let conf_path = self.dir.write("mosquitto.conf", &conf);
        let log_path = self.dir.path().join("broker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf_path)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is installed (make test installs it)");
        self.child = Some(child);
        // mosquitto says "running" once every listener is open, and exits when a port is taken (by
        // another test's broker, between our probe and its bind): our own word that the port is ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(&log_path).unwrap_or_default();
            if said.lines().any(|l| l.ends_with(" running")) {
                return !self.exited();
            }
            if Instant::now() >= deadline || self.exited() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited(&mut self) -> bool {
        let gone = self
            .child
            .as_mut()
            .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
        if gone {
            self.child = None;
        }
        gone
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM so a persistent broker saves its state.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    /// SIGKILL, as a node that crashes: no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A real subscriber: `mosquitto_sub -v` on a topic filter, lines collected as they arrive.
pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    port: u16,
    /// `-u`/`-P` and their values, for the probes.
    auth: Vec<String>,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str) -> Subscriber {
        Subscriber::start_args(port, &["-t", filter, "-t", "probe/ready"])
    }

    pub fn start_args(port: u16, args: &[&str]) -> Subscriber {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-q", "1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub is installed");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        // The probes need the same credentials as the subscriber.
        let auth = args
            .windows(2)
            .filter(|w| w[0] == "-u" || w[0] == "-P")
            .flat_map(|w| [w[0].to_owned(), w[1].to_owned()])
            .collect();
        let s = Subscriber {
            child,
            lines,
            port,
            auth,
        };
        s.wait_ready(port);
        s
    }

    /// mosquitto_sub says nothing when subscribed; publish probes until one comes back (the pause
    /// between probes is polling: mosquitto_sub's output is the event).
    fn wait_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let _ = Command::new("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    "probe/ready",
                    "-m",
                    "x",
                ])
                .args(&self.auth)
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(100));
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|x| x.contains("probe/ready"))
            {
                return;
            }
            assert!(Instant::now() < deadline, "subscriber never became ready");
        }
    }

    /// Waits until everything the broker took before now has reached this subscriber: a probe published
    /// now arrives after it (one broker, one subscriber session, in order). For a `--once` run that has
    /// exited, whose messages the broker acknowledged.
    pub fn sync(&self, port: u16) {
        let probes = || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .filter(|x| x.contains("probe/ready"))
                .count()
        };
        let before = probes();
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-q", "1", "-t", "probe/ready", "-m", "sync"])
            .args(&self.auth)
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub runs");
        assert!(status.success(), "sync probe published");
        let deadline = Instant::now() + Duration::from_secs(10);
        while probes() == before {
            assert!(Instant::now() < deadline, "sync probe never came back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines other than the readiness probes.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains("probe/ready"))
            .cloned()
            .collect()
    }

    pub fn wait_for(&self, pred: impl Fn(&[String]) -> bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.lines()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` lines have arrived (up to `timeout`), then for everything else the broker took
    /// until now ([`Subscriber::sync`]): a line that should not be there has arrived by then.
    pub fn collect(&self, n: usize, timeout: Duration) -> Vec<String> {
        self.wait_for(|l| l.len() >= n, timeout);
        self.received()
    }

    /// Everything the broker took before now ([`Subscriber::sync`]): after a `--once` run that exited
    /// 0, every message it published.
    pub fn received(&self) -> Vec<String> {
        self.sync(self.port);
        self.lines()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config directory for the agent.
pub fn config_dir(collector: &str, mqtt: &str) -> TempDir {
    let d = TempDir::new("config");
    d.write("balena_stats_collector.config.json", collector);
    d.write("mqtt.config.json", mqtt);
    d
}

pub fn agent(config: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config-dir")
        .arg(config)
        .env_remove("BALENA_DEVICE_UUID")
        // Either says balenaOS, which filters containers by default (README, Which containers).
        .env_remove("BALENA")
        .env_remove("MQTT_PASSWORD");
    c.env("LOG_LEVEL", "debug");
    // These tests count the containers' messages exactly; the device's own figures (on by default) are
    // tested in tests/device.rs, which sets this variable again.
    c.env("STATS_DEVICE_METRICS", "false");
    c
}

/// Runs to completion with a hard limit, so a hung agent fails the test instead of hanging it.
pub fn run_limited(cmd: &mut Command, limit: Duration) -> (Option<i32>, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    (status, reader.join().unwrap())
}

/// `topic payload` lines -> (topic, value, timestamp) for metric messages.
pub fn parse_metric(line: &str) -> Option<(String, f64, u64)> {
    let (topic, payload) = line.split_once(' ')?;
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    Some((
        topic.to_owned(),
        v.get("value")?.as_f64()?,
        v.get("timestamp")?.as_u64()?,
    ))
}

/// `topic payload` lines -> (topic, value, timestamp) for any message in the usual payload form, whatever
/// the value's JSON type (lifecycle topics carry strings and booleans as well as numbers).
pub fn parse_value(line: &str) -> Option<(String, serde_json::Value, u64)> {
    let (topic, payload) = line.split_once(' ')?;
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    Some((
        topic.to_owned(),
        v.get("value")?.clone(),
        v.get("timestamp")?.as_u64()?,
    ))
}

/// The device pseudo-service's default name.
pub const DEVICE_SERVICE: &str = "@device";

/// What the sample file must produce, worked out by hand from docker's unit rules (not by the agent's
/// code): service/metric and value.
pub const SAMPLE_EXPECTED: &[(&str, f64)] = &[
    ("main/cpu_usage_in_percent", 1.75),
    ("main/memory_usage_in_percent", 4.07),
    ("main/memory_usage_in_bytes", 334076314.0),
    ("main/memory_limit_in_bytes", 8242042241.0),
    ("main/network_received_in_bytes", 999000000.0),
    ("main/network_sent_in_bytes", 512.0),
    ("main/block_read_in_bytes", 1000000.0),
    ("main/block_written_in_bytes", 2460000000.0),
    ("main/pids", 23.0),
    ("data_logger/cpu_usage_in_percent", 0.0),
    ("data_logger/memory_usage_in_percent", 0.56),
    ("data_logger/memory_usage_in_bytes", 46126858.0),
    ("data_logger/memory_limit_in_bytes", 8242042241.0),
    ("data_logger/network_received_in_bytes", 1200.0),
    ("data_logger/network_sent_in_bytes", 648.0),
    ("data_logger/block_read_in_bytes", 12300000.0),
    ("data_logger/block_written_in_bytes", 0.0),
    ("data_logger/pids", 2.0),
    ("cpu-burner/cpu_usage_in_percent", 398.71),
    ("cpu-burner/memory_usage_in_percent", 99.80),
    ("cpu-burner/memory_usage_in_bytes", 66972549.0),
    ("cpu-burner/memory_limit_in_bytes", 67108864.0),
    ("cpu-burner/network_received_in_bytes", 0.0),
    ("cpu-burner/network_sent_in_bytes", 0.0),
    ("cpu-burner/block_read_in_bytes", 0.0),
    ("cpu-burner/block_written_in_bytes", 0.0),
    ("cpu-burner/pids", 5.0),
    ("frontend/cpu_usage_in_percent", 0.12),
    ("frontend/memory_usage_in_percent", 1.23),
    ("frontend/memory_usage_in_bytes", 101187584.0),
    ("frontend/memory_limit_in_bytes", 8242042241.0),
    ("frontend/network_received_in_bytes", 3400000000.0),
    ("frontend/network_sent_in_bytes", 1100000000.0),
    ("frontend/block_read_in_bytes", 5550000.0),
    ("frontend/block_written_in_bytes", 1000000000.0),
    ("frontend/pids", 11.0),
    ("balena_supervisor/cpu_usage_in_percent", 0.35),
    ("balena_supervisor/memory_usage_in_percent", 0.32),
    ("balena_supervisor/memory_usage_in_bytes", 26298286.0),
    ("balena_supervisor/memory_limit_in_bytes", 8242042241.0),
    ("balena_supervisor/network_received_in_bytes", 18200000.0),
    ("balena_supervisor/network_sent_in_bytes", 2050000.0),
    ("balena_supervisor/block_read_in_bytes", 41000.0),
    ("balena_supervisor/block_written_in_bytes", 8190.0),
    ("balena_supervisor/pids", 14.0),
    ("proj_web_1/cpu_usage_in_percent", 0.02),
    ("proj_web_1/memory_usage_in_percent", 0.10),
    ("proj_web_1/memory_usage_in_bytes", 8204059.0),
    ("proj_web_1/memory_limit_in_bytes", 8242042241.0),
    ("proj_web_1/network_received_in_bytes", 726.0),
    ("proj_web_1/network_sent_in_bytes", 0.0),
    ("proj_web_1/block_read_in_bytes", 0.0),
    ("proj_web_1/block_written_in_bytes", 4100.0),
    ("proj_web_1/pids", 1.0),
    ("my-db/cpu_usage_in_percent", 0.01),
    ("my-db/memory_usage_in_percent", 0.05),
    ("my-db/memory_usage_in_bytes", 4099932.0),
    ("my-db/memory_limit_in_bytes", 8242042241.0),
    ("my-db/network_received_in_bytes", 1500000.0),
    ("my-db/network_sent_in_bytes", 2300000.0),
    ("my-db/block_read_in_bytes", 0.0),
    ("my-db/block_written_in_bytes", 0.0),
    ("my-db/pids", 7.0),
];

/// Checks that `lines` hold exactly the sample's figures under `root/<device>/telemetry/system/`, each
/// once, all with one timestamp close to now.
pub fn assert_sample_figures(lines: &[String], device: &str) {
    let prefix = format!("root/{device}/telemetry/system/");
    // The device's own figures (a binary run outside `agent`) are not the sample's.
    let device_figures = format!("{prefix}{DEVICE_SERVICE}/");
    let mut got: Vec<(String, f64, u64)> = lines
        .iter()
        .filter_map(|l| parse_metric(l))
        .filter(|(t, _, _)| t.starts_with(&prefix) && !t.starts_with(&device_figures))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, f64)> = SAMPLE_EXPECTED
        .iter()
        .map(|(t, v)| (format!("{prefix}{t}"), *v))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let got_pairs: Vec<(String, f64)> = got.iter().map(|(t, v, _)| (t.clone(), *v)).collect();
    assert_eq!(
        got_pairs, want,
        "published figures differ from the sample's"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ts = got[0].2;
    assert!(
        got.iter().all(|g| g.2 == ts),
        "one collection, one timestamp"
    );
    assert!(
        now_ms.abs_diff(ts) < 60_000,
        "timestamp {ts} is the collection time (now {now_ms})"
    );
}

/// The agent with `--once`.
pub fn once(config: &Path) -> Command {
    let mut c = agent(config);
    c.arg("--once");
    c
}

/// A FILE-mode collector config reading `file` every `interval` seconds.
pub fn file_collector(file: &Path, interval: u64) -> String {
    format!(
        r#"{{"mode": "FILE", "file_path": "{}", "collection_interval_in_seconds": {interval}}}"#,
        file.display()
    )
}

/// A CLI-mode collector config running tests/data/fake-balena.sh every `interval` seconds; the agent needs
/// `FAKE_STATS` set to the recording to print. Unlike FILE mode, which publishes a file once per version,
/// every tick is a new sample.
pub fn cli_collector(interval: u64) -> String {
    format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": {interval}, "cli_timeout_in_seconds": 5}}"#,
        repo().join("tests/data/fake-balena.sh").display()
    )
}

/// The agent running (not `--once`), its log captured.
pub fn spawn_agent(config: &Path) -> Child {
    agent(config).stderr(Stdio::piped()).spawn().unwrap()
}

/// SIGTERM, then the log; the agent must exit 0 and must never have panicked.
pub fn stop_agent(child: Child) -> String {
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    log
}

/// Certificates made at run time for the TLS tests (no key is ever committed): a CA and what it signs.
pub struct Pki {
    pub ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(common_name: &str) -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// (certificate PEM, PKCS#8 key PEM) for `names` (host names or IP addresses), an EC P-256 key;
    /// valid now, or expired since 2021-06-30 when `expired`.
    pub fn issue(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        (self.issue_for(names, &key, expired), key.serialize_pem())
    }

    /// A certificate for an existing key (e.g. an RSA key that openssl made).
    pub fn issue_for(&self, names: &[&str], key: &rcgen::KeyPair, expired: bool) -> String {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("x"),
        );
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 6, 30);
        }
        p.signed_by(key, &self.ca, &self.ca_key).unwrap().pem()
    }
}

/// A broker config (for `Broker::start_with`) whose own port is a TLS listener with `cert`/`key` and
/// client certificates checked against `client_ca` (when `require_certificate true` is in `options`),
/// plus a plain listener on `plain_port` for the test's subscriber. Files go to `dir`.
pub fn tls_broker_config(
    dir: &TempDir,
    server: &(String, String),
    client_ca: &str,
    options: &str,
    plain_port: u16,
) -> String {
    let ca = dir.write("broker-ca.pem", client_ca);
    let cert = dir.write("broker-cert.pem", &server.0);
    let key = dir.write("broker-key.pem", &server.1);
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n{options}\nlistener {plain_port} 127.0.0.1\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// Reads one whole MQTT packet from a fake broker's connection (its remaining length decoded from the
/// fixed header); None when the peer closed.
pub fn read_packet(s: &mut impl std::io::Read) -> Option<Vec<u8>> {
    let mut head = [0u8; 1];
    s.read_exact(&mut head).ok()?;
    let mut packet = vec![head[0]];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        packet.push(b[0]);
        len |= usize::from(b[0] & 0x7f) << shift;
        shift += 7;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    packet.extend(body);
    Some(packet)
}

/// The port of the broker a `connected to broker 127.0.0.1:PORT` line names.
pub fn connected_port(line: &str) -> Option<u16> {
    let rest = line.split("connected to broker 127.0.0.1:").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Wall-clock milliseconds, the unit of the payloads' timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
