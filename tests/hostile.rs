//! A fault-injecting broker: the first connection gets hostile bytes (or silence, or a reset), later ones a
//! well-behaved minimal broker. The agent must survive, drop the bad connection, back off, reconnect and
//! deliver; nothing may panic.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
enum Fault {
    /// Answer the CONNECT with these bytes, then keep the connection open.
    Reply(Vec<u8>),
    /// Read the CONNECT and never answer.
    Silence,
    /// CONNACK, read a little of what follows, then close the socket under the agent's writes.
    CloseMidStream,
    /// CONNACK, then never read again (the agent's writes back up).
    StopReading,
}

/// What the well-behaved connections received.
#[derive(Default)]
struct Seen {
    connections: usize,
    topics: Vec<String>,
}

struct FaultBroker {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl FaultBroker {
    fn start(fault: Fault) -> FaultBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                shared.lock().unwrap().connections += 1;
                let shared = shared.clone();
                let fault = fault.clone();
                std::thread::spawn(move || {
                    if i == 0 {
                        misbehave(stream, fault);
                    } else {
                        behave(stream, &shared);
                    }
                });
            }
        });
        FaultBroker { port, seen }
    }
}

fn misbehave(mut s: TcpStream, fault: Fault) {
    let _ = read_packet(&mut s); // CONNECT
    match fault {
        Fault::Reply(bytes) => {
            let _ = s.write_all(&bytes);
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
        Fault::Silence => {
            let mut sink = [0u8; 4096];
            while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
        }
        Fault::StopReading => {
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
            // The scenario itself, not a wait for anything: the connection stays open and unread far
            // longer than the agent's 10 s write timeout.
            std::thread::sleep(Duration::from_secs(60));
        }
        Fault::CloseMidStream => {
            let _ = s.write_all(&[0x20, 0x02, 0x00, 0x00]);
            let mut some = [0u8; 10];
            let _ = s.read(&mut some);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Just enough broker: CONNACK, PUBACK for QoS 1, PINGRESP.
fn behave(mut s: TcpStream, seen: &Mutex<Seen>) {
    while let Some(p) = read_packet(&mut s) {
        let reply: Vec<u8> = match mqttrs::decode_slice(&p) {
            Ok(Some(mqttrs::Packet::Connect(_))) => vec![0x20, 0x02, 0x00, 0x00],
            Ok(Some(mqttrs::Packet::Publish(publish))) => {
                seen.lock()
                    .unwrap()
                    .topics
                    .push(publish.topic_name.to_owned());
                match publish.qospid {
                    mqttrs::QosPid::AtLeastOnce(pid) => {
                        let id = pid.get();
                        vec![0x40, 0x02, (id >> 8) as u8, id as u8]
                    }
                    _ => vec![],
                }
            }
            Ok(Some(mqttrs::Packet::Pingreq)) => vec![0xd0, 0x00],
            _ => vec![],
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

fn start_agent(port: u16) -> (Child, TempDir) {
    let collector = file_collector(&sample_stats(), 1);
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "dev1", "reconnect_max_delay_in_seconds": 1}}"#
    );
    let cfg = config_dir(&collector, &mqtt);
    let child = spawn_agent(cfg.path());
    (child, cfg)
}

fn stop(mut child: Child) -> String {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent is still running"
    );
    stop_agent(child)
}

/// Runs the agent against `fault` and checks it recovers and delivers every metric of a tick.
fn survives(fault: Fault, expect_in_log: &str, within: Duration) -> String {
    let broker = FaultBroker::start(fault);
    let (child, _cfg) = start_agent(broker.port);
    let deadline = Instant::now() + within;
    loop {
        {
            let seen = broker.seen.lock().unwrap();
            let metrics = seen
                .topics
                .iter()
                .filter(|t| !t.ends_with("/availability"))
                .count();
            if seen.connections >= 2 && metrics >= 63 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not recover and deliver in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = stop(child);
    assert!(
        log.contains(expect_in_log),
        "expected {expect_in_log:?} in:\n{log}"
    );
    let topics = broker.seen.lock().unwrap().topics.clone();
    for (metric, _) in SAMPLE_EXPECTED {
        let topic = format!("root/dev1/telemetry/system/{metric}");
        assert!(
            topics.contains(&topic),
            "{topic} delivered after recovering"
        );
    }
    log
}

const QUICK: Duration = Duration::from_secs(15);

#[test]
fn puback_without_packet_id() {
    survives(
        Fault::Reply(vec![0x20, 0x02, 0x00, 0x00, 0x40, 0x00]),
        "malformed PUBACK packet",
        QUICK,
    );
}

#[test]
fn connack_without_body() {
    survives(
        Fault::Reply(vec![0x20, 0x00]),
        "malformed CONNACK packet",
        QUICK,
    );
}

#[test]
fn publish_whose_topic_runs_past_the_packet() {
    let bytes = vec![0x20, 0x02, 0x00, 0x00, 0x30, 0x04, 0x00, 0x09, b'a', b'b'];
    survives(
        Fault::Reply(bytes),
        "malformed PUBLISH (topic or packet id past the end) packet",
        QUICK,
    );
}

#[test]
fn largest_remaining_length() {
    let bytes = vec![0x20, 0x02, 0x00, 0x00, 0x30, 0xff, 0xff, 0xff, 0x7f];
    survives(
        Fault::Reply(bytes),
        "packet of 268435460 bytes exceeds the 65536 byte limit",
        QUICK,
    );
}

#[test]
fn five_byte_remaining_length() {
    let bytes = vec![0x20, 0x02, 0x00, 0x00, 0x30, 0xff, 0xff, 0xff, 0xff, 0x01];
    survives(Fault::Reply(bytes), "malformed remaining length", QUICK);
}

#[test]
fn unexpected_packet_types() {
    survives(
        Fault::Reply(vec![0x20, 0x02, 0x00, 0x00, 0xc0, 0x00]),
        "unexpected PINGREQ packet",
        QUICK,
    );
    survives(
        Fault::Reply(vec![0x50, 0x02, 0x00, 0x01]),
        "unexpected QoS 2 packet",
        QUICK,
    );
}

#[test]
fn unsolicited_puback() {
    let bytes = vec![0x20, 0x02, 0x00, 0x00, 0x40, 0x02, 0x12, 0x34];
    survives(
        Fault::Reply(bytes),
        "PUBACK for a packet id not in flight",
        QUICK,
    );
}

#[test]
fn connack_refusal_in_words() {
    survives(
        Fault::Reply(vec![0x20, 0x02, 0x00, 0x05]),
        "connection refused: not authorised",
        QUICK,
    );
}

#[test]
fn connack_never_sent() {
    survives(
        Fault::Silence,
        "timed out waiting for CONNACK",
        Duration::from_secs(25),
    );
}

#[test]
fn connection_closed_mid_stream() {
    survives(Fault::CloseMidStream, "connection to broker lost", QUICK);
}

#[test]
fn broker_that_stops_reading_does_not_stall_the_schedule() {
    // 20,000 containers at QoS 0: far more than the socket buffers hold once the broker stops reading.
    let dir = TempDir::new("flood");
    let line = r#"{"Name":"svc#_1_2","CPUPerc":"1.00%","MemPerc":"1.00%","MemUsage":"1MiB / 2MiB","NetIO":"1kB / 2kB","BlockIO":"1kB / 2kB","PIDs":"3"}"#;
    let text: String = (0..20_000)
        .map(|i| line.replace('#', &i.to_string()) + "\n")
        .collect();
    let file = dir.write("stats.jsonl", &text);
    let broker = FaultBroker::start(Fault::StopReading);
    let collector = cli_collector(1);
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{}", "device_id": "d", "qos": 0, "reconnect_max_delay_in_seconds": 1}}"#,
        broker.port
    );
    let cfg = config_dir(&collector, &mqtt);
    let child = agent(cfg.path())
        .env("LOG_LEVEL", "info")
        .env("FAKE_STATS", &file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.seen.lock().unwrap().topics.len() < 1000 {
        assert!(
            Instant::now() < deadline,
            "the agent never came back after the write timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop(child);
    assert!(
        log.contains("connection to broker lost: the broker took no data for 10s"),
        "{log}"
    );
    // Ticks went on while the broker was stuck: one a second for the ten seconds before the timeout.
    let before_timeout = log.split("took no data").next().unwrap();
    assert!(
        before_timeout
            .matches("INFO tick: 20000 containers")
            .count()
            >= 8,
        "{log}"
    );
}

/// A loopback port whose accept queue is full: the kernel drops further SYNs without an answer, as a
/// broker host that is down (not refusing) does. The returned streams keep the queue full.
fn silent_port() -> (std::net::TcpListener, u16, Vec<TcpStream>) {
    use std::os::fd::FromRawFd;
    // SAFETY: socket/bind/listen on a descriptor handed to a TcpListener, which owns and closes it.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr = libc::in_addr {
            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
        };
        let len = std::mem::size_of_val(&sin) as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => return (listener, addr.port(), held),
        }
    }
    panic!("the accept queue never filled");
}

#[test]
fn a_broker_host_that_never_answers_does_not_stop_collection() {
    let (_listener, port, _held) = silent_port();
    let mqtt = format!(
        r#"{{"broker_url": "tcp://127.0.0.1:{port}", "device_id": "d", "reconnect_max_delay_in_seconds": 1}}"#
    );
    let cfg = config_dir(&cli_collector(1), &mqtt);
    let agent = Running::spawn(
        agent(cfg.path())
            .env("LOG_LEVEL", "info")
            .env("FAKE_STATS", sample_stats()),
    );
    let gave_up = "unreachable: no answer within 5s";
    assert!(
        agent.wait_log(gave_up, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    let log = agent.stop();
    // A tick a second all along, the connect attempt notwithstanding: a loop blocked in the connect
    // would have ticked once at most before giving up on it.
    let before = log.split(gave_up).next().unwrap();
    let ticks = before.matches("INFO tick: 8 containers").count();
    assert!(ticks >= 3, "{ticks} ticks during the 5 s attempt:\n{log}");
    assert!(!log.contains("skipped"), "{log}");
}
