//! The link is judged by progress: a slow but live broker keeps its connection, a silent one is noticed
//! at QoS 0, a peer that is not an MQTT broker is named as such, and Home Assistant discovery configs
//! survive an outage that overflows the message buffer. Real mosquitto behind a fault-injecting proxy.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP proxy in front of a broker. Agent-to-broker bytes may be throttled (read at most `rate` bytes a
/// second, as a slow uplink drains them); `silence` makes the open connections go dark both ways while
/// still reading from the agent, as a broker that hangs (or a NAT that forgot the flow) looks.
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    fn start(upstream: u16, rate: Option<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let shared = conns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let silent = Arc::new(AtomicBool::new(false));
                shared.lock().unwrap().push(silent.clone());
                relay(client, up, rate, silent);
            }
        });
        Proxy { port, conns }
    }

    fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// The connections open now stop forwarding anything; later ones work normally.
    fn silence(&self) {
        for c in self.conns.lock().unwrap().iter() {
            c.store(true, Ordering::SeqCst);
        }
    }
}

fn relay(client: TcpStream, up: TcpStream, rate: Option<usize>, silent: Arc<AtomicBool>) {
    let (mut c_in, mut c_out) = (client.try_clone().unwrap(), client);
    let (mut u_in, mut u_out) = (up.try_clone().unwrap(), up);
    let quiet = silent.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let dark = quiet.load(Ordering::SeqCst);
            // A tenth of the rate every 100 ms.
            let max = match rate {
                Some(r) if !dark => (r / 10).max(1),
                _ => buf.len(),
            };
            let n = match c_in.read(&mut buf[..max]) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !quiet.load(Ordering::SeqCst) && u_out.write_all(&buf[..n]).is_err() {
                break;
            }
            if rate.is_some() && !dark {
                // The throttle itself (the scenario's slow uplink), not a wait for anything.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if !quiet.load(Ordering::SeqCst) {
            let _ = u_out.shutdown(Shutdown::Both);
        }
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match u_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !silent.load(Ordering::SeqCst) && c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // A silenced connection stays open towards the agent: nothing tells it the broker is gone.
        if !silent.load(Ordering::SeqCst) {
            let _ = c_out.shutdown(Shutdown::Both);
        }
    });
}

/// The agent, its log followed; FAKE_STATS feeds the CLI-mode collector (cli_collector): a new sample
/// every tick.
fn start(config: &Path) -> Running {
    Running::spawn(agent(config).env("FAKE_STATS", sample_stats()))
}

/// A stats file of `n` containers `svc0` .. `svc<n-1>`, nine metrics each.
fn many_containers(dir: &TempDir, n: usize) -> std::path::PathBuf {
    let line = r#"{"Name":"svc#_1_2","CPUPerc":"1.00%","MemPerc":"1.00%","MemUsage":"1MiB / 2MiB","NetIO":"1kB / 2kB","BlockIO":"1kB / 2kB","PIDs":"3"}"#;
    let text: String = (0..n)
        .map(|i| line.replace('#', &i.to_string()) + "\n")
        .collect();
    dir.write("stats.jsonl", &text)
}

/// Metric topic -> how many times the subscriber received it.
fn deliveries(lines: &[String]) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for (topic, _, _) in lines.iter().filter_map(|l| parse_metric(l)) {
        *count.entry(topic).or_insert(0) += 1;
    }
    count
}

#[test]
fn a_slow_but_live_link_keeps_its_connection_and_sends_no_duplicates() {
    // 140 containers = 1,260 QoS 1 messages of about 100 bytes: some 40 s at 3,000 B/s, longer than the
    // 30 s PUBACK timeout, and all of it fits the in-flight window at once.
    const CONTAINERS: usize = 140;
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let proxy = Proxy::start(broker.port, Some(3_000));
    let dir = TempDir::new("slow");
    let stats = many_containers(&dir, CONTAINERS);
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{}", "device_id": "d", "qos": 1, "reconnect_max_delay_in_seconds": 1}}"#,
        proxy.port
    );
    let cfg = config_dir(&file_collector(&stats, 3600), &mqtt);
    let started = Instant::now();
    let agent = start(cfg.path());
    let want = CONTAINERS * 9;
    let all = sub.wait_for(|l| deliveries(l).len() >= want, Duration::from_secs(150));
    let took = started.elapsed();
    // Anything re-sent after a reconnect would have come before the agent's `offline` at its stop, the
    // last thing it sends.
    let log = agent.stop();
    let offline = sub.wait_for(
        |l| l.iter().any(|l| l.ends_with("/availability offline")),
        Duration::from_secs(30),
    );
    let count = deliveries(&sub.lines());
    let total: usize = count.values().sum();
    eprintln!(
        "slow link: {} distinct of {want} in {:.1}s, {total} deliveries, {} connections",
        count.len(),
        took.as_secs_f64(),
        proxy.connections()
    );
    assert!(all, "only {} of {want} arrived:\n{log}", count.len());
    assert!(offline, "the stop's offline never arrived:\n{log}");
    assert!(
        !log.contains("connection to broker lost"),
        "a live link was dropped:\n{log}"
    );
    assert_eq!(proxy.connections(), 1, "{log}");
    assert_eq!(total, want, "each message exactly once");
}

#[test]
fn a_broker_gone_silent_is_noticed_at_qos0() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let proxy = Proxy::start(broker.port, None);
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{}", "device_id": "d", "qos": 0, "keep_alive_in_seconds": 2, "reconnect_max_delay_in_seconds": 1}}"#,
        proxy.port
    );
    let cfg = config_dir(&cli_collector(1), &mqtt);
    let agent = start(cfg.path());
    assert!(
        sub.wait_for(|l| !deliveries(l).is_empty(), Duration::from_secs(10)),
        "{}",
        agent.log()
    );
    // Four more ticks of normal running first, longer than mosquitto's patience (1.5 x 2 s): the agent
    // pings often enough.
    let figures = |l: &[String]| l.iter().filter(|l| parse_metric(l).is_some()).count();
    let before = figures(&sub.lines());
    assert!(
        sub.wait_for(|l| figures(l) >= before + 4 * 63, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    assert_eq!(proxy.connections(), 1, "{}", agent.log());
    assert!(
        !agent.log().contains("connection to broker lost"),
        "{}",
        agent.log()
    );
    let silenced = Instant::now();
    proxy.silence();
    let noticed = agent.wait_log("timed out waiting for PINGRESP", Duration::from_secs(20));
    let after = silenced.elapsed();
    let reconnected = noticed
        && (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            proxy.connections() >= 2
        });
    let before = sub.lines().len();
    let flowing = sub.wait_for(|l| l.len() > before + 63, Duration::from_secs(10));
    let log = agent.stop();
    eprintln!("silent broker noticed after {:.1}s", after.as_secs_f64());
    assert!(noticed, "a silent broker went unnoticed for 20 s:\n{log}");
    assert!(reconnected, "{log}");
    assert!(flowing, "messages flow again after reconnecting:\n{log}");
    assert!(
        log.contains("connection to broker lost: timed out waiting for PINGRESP"),
        "{log}"
    );
}

#[test]
fn an_http_server_is_named_not_an_mqtt_broker() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let _ = s.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nBad Request",
            );
            let _ = s.shutdown(Shutdown::Both);
        }
    });
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "d", "reconnect_max_delay_in_seconds": 1}}"#
    );
    let cfg = config_dir(&file_collector(&sample_stats(), 1), &mqtt);
    let agent = start(cfg.path());
    let said = agent.wait_log("not an MQTT broker", Duration::from_secs(10));
    let log = agent.stop();
    assert!(said, "{log}");
    assert!(
        log.contains("not an MQTT broker (it sent 'HTTP/1.1 400 Bad Request')"),
        "{log}"
    );
    assert!(!log.contains("PUBACK"), "{log}");
}

#[test]
fn discovery_configs_survive_an_outage_that_overflows_the_buffer() {
    let mut broker = Broker::start();
    broker.stop();
    // 63 configs and 63 figures a tick against a buffer of 50: every tick overflows it.
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "dev1", "home_assistant_discovery": true, "max_buffered_messages": 50, "reconnect_max_delay_in_seconds": 1}}"#,
        broker.url()
    );
    let cfg = config_dir(&cli_collector(1), &mqtt);
    let agent = start(cfg.path());
    assert!(
        agent.wait_log("oldest messages dropped", Duration::from_secs(10)),
        "{}",
        agent.log()
    );
    // An outage of a few ticks, each one overflowing the buffer.
    assert!(
        agent.wait_count("oldest messages dropped", 3, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    broker.restart();
    assert!(
        agent.wait_log("connected to broker", Duration::from_secs(10)),
        "{}",
        agent.log()
    );
    // Retained: a subscriber arriving now gets every config the agent delivered.
    let sub = Subscriber::start_args(
        broker.port,
        &[
            "-F",
            "%r|%t|%p",
            "-t",
            "homeassistant/#",
            "-t",
            "probe/ready",
        ],
    );
    let configs = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("1|homeassistant/") && !l.ends_with('|'))
            .map(|l| l.split('|').nth(1).unwrap_or("").to_owned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let complete = sub.wait_for(|l| configs(l).len() >= 63, Duration::from_secs(10));
    let got = configs(&sub.lines()).len();
    let largest = sub.lines().iter().map(|l| l.len()).max().unwrap_or(0);
    eprintln!("discovery: {got} configs retained, the largest line {largest} bytes");
    let log = agent.stop();
    assert!(complete, "{got} of 63 discovery configs retained:\n{log}");
    assert_eq!(got, 63);
}
