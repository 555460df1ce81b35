//! A stop (SIGTERM) keeps to its 2 s budget as a whole, plain or TLS, when the broker has stopped reading
//! and a large backlog waits to be written (issue 18): the flush and the goodbye are deadlines, not a
//! timeout per write. A real mosquitto behind a proxy that stops reading the agent's bytes on request.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The agent's stop budget (agent.rs: a 1.5 s flush, then a 0.3 s goodbye), and the margin allowed for a
/// loaded test machine on top of it.
const STOP_BUDGET: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_secs(1);

/// A TCP proxy in front of a broker for one connection at a time. Once `stall` is called it reads
/// nothing more from the agent (the connection stays open, the broker's bytes still reach the agent),
/// as a broker that stopped reading looks. Its receive buffer is small, so the agent's writes back up
/// soon after.
struct Proxy {
    port: u16,
    stalled: Arc<AtomicBool>,
    /// The agent's side of the last connection, to see how much it has sent that nobody read.
    client: Arc<Mutex<Option<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let small: libc::c_int = 16 * 1024;
        // SAFETY: setsockopt on the listener we own, with a live int; accepted sockets inherit it.
        unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let client = Arc::new(Mutex::new(None));
        let (flag, held) = (stalled.clone(), client.clone());
        std::thread::spawn(move || {
            for c in listener.incoming() {
                let Ok(c) = c else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                *held.lock().unwrap() = Some(c.try_clone().unwrap());
                relay(c, up, flag.clone());
            }
        });
        Proxy {
            port,
            stalled,
            client,
        }
    }

    fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Bytes the agent sent that wait unread in the proxy's receive queue.
    fn unread(&self) -> usize {
        let held = self.client.lock().unwrap();
        let Some(c) = held.as_ref() else { return 0 };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD on a socket we hold, into a live int.
        unsafe { libc::ioctl(c.as_raw_fd(), libc::FIONREAD, &mut n) };
        n.max(0) as usize
    }
}

fn relay(client: TcpStream, up: TcpStream, stalled: Arc<AtomicBool>) {
    let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
    let (mut u_in, mut u_out) = (up.try_clone().unwrap(), up);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            if stalled.load(Ordering::SeqCst) {
                // Read nothing more, and keep the connection open: the agent is left to its deadlines.
                std::thread::park();
                continue;
            }
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if u_out.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = u_in.read(&mut buf) {
            if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
}

/// The agent running, its log collected line by line.
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(cfg: &std::path::Path) -> Running {
        let mut child = agent(cfg)
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

    fn wait_until(&self, what: &str, done: impl Fn() -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM; how long the agent took to exit (killed after `limit`), its exit code and log.
    fn stop(mut self, limit: Duration) -> (Duration, Option<i32>, String) {
        let t0 = Instant::now();
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st.code();
            }
            if t0.elapsed() >= limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = t0.elapsed();
        // The log reader sees the pipe's end once the agent is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.log().contains("undelivered") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        (took, code, self.log())
    }
}

/// 20,000 containers at QoS 0: 180,000 messages, far more than the socket buffers hold.
fn write_big_stats(dir: &TempDir) -> std::path::PathBuf {
    let line = r#"{"Name":"svc#_1_2","CPUPerc":"1.00%","MemPerc":"1.00%","MemUsage":"1MiB / 2MiB","NetIO":"1kB / 2kB","BlockIO":"1kB / 2kB","PIDs":"3"}"#;
    let text: String = (0..20_000)
        .map(|i| line.replace('#', &i.to_string()) + "\n")
        .collect();
    // Written aside and renamed: the agent never reads half a file.
    let tmp = dir.write("stats.tmp", &text);
    let path = dir.path().join("stats.jsonl");
    std::fs::rename(tmp, &path).unwrap();
    path
}

/// Connects through the proxy, stalls it, hands the agent a large tick, and once its bytes back up,
/// stops it; returns how long the stop took.
fn stop_with_a_backlog(url: &str, tls_keys: &str, upstream: u16, tag: &str) -> Duration {
    stop_with_a_backlog_and(url, tls_keys, upstream, tag, None)
}

/// The same, with a spool (issue 21): what is undelivered is written to it within the same budget.
fn stop_with_a_backlog_and(
    url: &str,
    tls_keys: &str,
    upstream: u16,
    tag: &str,
    spool: Option<&std::path::Path>,
) -> Duration {
    let proxy = Proxy::start(upstream);
    let dir = TempDir::new("stop");
    let stats = dir.path().join("stats.jsonl");
    let spool_key = spool.map_or(String::new(), |d| {
        format!(r#", "spool_dir": "{}""#, d.display())
    });
    let mqtt = format!(
        r#"{{"broker_url": "{url}:{}", "device_id": "d", "qos": 0{tls_keys}{spool_key}}}"#,
        proxy.port
    );
    let cfg = config_dir(&file_collector(&stats, 1), &mqtt);
    let agent = Running::start(cfg.path());
    agent.wait_until(
        "the connection",
        || agent.log().contains("connected to broker"),
        Duration::from_secs(20),
    );
    proxy.stall();
    write_big_stats(&dir);
    // The agent's writes have filled the proxy's receive queue: it is blocked on the socket now.
    agent.wait_until(
        "the backlog",
        || proxy.unread() >= 16 * 1024,
        Duration::from_secs(20),
    );
    let (took, code, log) = agent.stop(Duration::from_secs(30));
    eprintln!("{tag}: stop with a backlog and a broker not reading took {took:?}");
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let said = match spool {
        Some(_) => "messages undelivered: they are in the spool",
        None => "messages undelivered: they are lost",
    };
    assert!(log.contains(said), "{log}");
    assert!(
        took < STOP_BUDGET + MARGIN,
        "{tag}: the stop took {took:?}, its budget is {STOP_BUDGET:?}:\n{log}"
    );
    took
}

#[test]
fn a_stop_keeps_its_budget_when_the_broker_stops_reading() {
    let broker = Broker::start();
    stop_with_a_backlog("tcp://127.0.0.1", "", broker.port, "plain");
}

#[test]
fn a_stop_over_tls_keeps_its_budget_when_the_broker_stops_reading() {
    let pki = Pki::new("Stop Test CA");
    let server = pki.issue(&["localhost", "127.0.0.1"], false);
    let files = TempDir::new("stop-tls");
    let ca = files.write("ca.pem", &pki.ca_pem);
    let broker = Broker::start_with(&tls_broker_config(
        &files,
        &server,
        &pki.ca_pem,
        "",
        free_port(),
    ));
    let keys = format!(r#", "tls_ca_file": "{}""#, ca.display());
    stop_with_a_backlog("mqtts://127.0.0.1", &keys, broker.port, "TLS");
}

#[test]
fn a_stop_with_a_spool_keeps_its_budget_when_the_broker_stops_reading() {
    let broker = Broker::start();
    let spool = TempDir::new("stop-spool");
    stop_with_a_backlog_and(
        "tcp://127.0.0.1",
        "",
        broker.port,
        "spool",
        Some(spool.path()),
    );
}
