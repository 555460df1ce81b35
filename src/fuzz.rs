//! A deterministic mutation fuzzer for the places outside bytes enter: stats text, `ps` lines, broker
//! bytes, the kernel's cgroup and proc files, the engine's HTTP answers and event stream, and the
//! spool's files.
//!
//! It runs as ordinary tests (a few tens of thousands of cases in `make test`) and, with `FUZZ_CASES=N`,
//! as `make fuzz` for as many cases as asked. Each case mutates a seed from a corpus of real inputs with
//! byte flips, splices of "interesting" tokens, truncations and duplications, then checks that nothing
//! panics and that the invariants hold: every parsed figure is finite and non-negative, the session's
//! buffers stay bounded, a protocol error is always reported as an `Err`, and the engine's answers read
//! the same however the socket splits them. Crashers found are kept as regression cases in
//! `regressions`.

#![cfg(test)]

use crate::mqtt::frame::{self, MAX_INCOMING_PACKET};
use crate::mqtt::session::{Options, Session};
use crate::mqtt::Message;
use crate::source::engine::events::{self, EventStream};
use crate::source::engine::http;
use crate::spool;
use crate::stats::records::Cursor;
use crate::stats::{parse_line, ps, Value};
use mqttrs::QoS;
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64: fast, and every seed gives a different stream.
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn cases(default: u64) -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn mutate(rng: &mut Rng, seed: &[u8], tokens: &[&[u8]]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(data.len() + 1);
        match rng.below(7) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            2 => {
                let t = tokens[rng.below(tokens.len())];
                data.splice(at..at, t.iter().copied());
            }
            3 => data.truncate(at),
            4 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                let from = at.min(end);
                data.drain(from..end);
            }
            5 => {
                // Duplicate a run: grows lengths and nesting.
                let end = (at + rng.below(64)).min(data.len());
                let run: Vec<u8> = data[at.min(end)..end].to_vec();
                data.splice(at..at, run);
            }
            _ => {
                let n = rng.below(8);
                for _ in 0..n {
                    data.insert(at.min(data.len()), rng.next() as u8);
                }
            }
        }
    }
    data
}

const STATS_SEEDS: &[&str] = &[
    include_str!("../tests/data/sample-stats.jsonl"),
    r#"{"BlockIO":"--","CPUPerc":"--","Container":"a","ID":"a","MemPerc":"--","MemUsage":"-- / --","Name":"x","NetIO":"--","PIDs":"--"}"#,
    r#"[{"Name":"a","MemUsage":"1.5GiB"},{"Name":"b","NetIO":"1e+03kB / 9.99MB"}]"#,
    r#""{"Name":"q","CPUPerc":"12.50%","PIDs":"4"}""#,
];

const STATS_TOKENS: &[&[u8]] = &[
    b"--",
    b"-- / --",
    b"1e+308",
    b"1e+999",
    b"NaN",
    b"inf",
    b"-5",
    b"%",
    b"GiB",
    b"kB",
    b"EB",
    b"\\u0000",
    b"\\\"",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"/",
    b"\r\n",
    b"\n",
    b"\xff",
    b"\xc3",
    b"e+",
    b".",
    b"99999999999999999999999",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"null",
    b"\"Name\":",
];

/// One fuzz case for the stats path: split into records, parse each, check every figure.
fn stats_case(input: &[u8]) {
    let mut cursor = Cursor::default();
    let mut warnings = Vec::new();
    let mut records = 0;
    while let Some(record) = cursor.next(input) {
        records += 1;
        assert!(records <= input.len() + 1, "the cursor always advances");
        let Ok(line) = record.text else { continue };
        warnings.clear();
        if let Ok(stats) = parse_line(line, &mut warnings) {
            assert!(!stats.name.is_empty());
            for (_, value) in stats.figures.iter() {
                if let Value::Percent(p) = value {
                    assert!(p.is_finite() && p >= 0.0, "{p}");
                }
            }
        }
    }
}

const PS_SEEDS: &[&str] = &[
    r#"{"Command":"\"/bin/sh\"","ID":"0123","Image":"b","Labels":"a=b,c=d","Names":"main_1_2_abc","State":"exited","Status":"Exited (3) 5 minutes ago"}"#,
    r#"{"Names":"web/db,db_1","State":"running","Status":"Up 2 hours (health: starting)"}"#,
    r#"{"Names":"a","Status":"Restarting (1) 3 seconds ago"}"#,
    r#"{"Names":"p","State":"paused","Status":"Up 4 minutes (Paused)"}"#,
];

const PS_TOKENS: &[&[u8]] = &[
    b"(",
    b")",
    b"(healthy)",
    b"(health: starting)",
    b"Up ",
    b"Exited (",
    b"-1",
    b"99999999999999999999999",
    b",",
    b"/",
    b"\\u00e9",
    b"\xc3\xa9",
    b"\"State\":",
    b"null",
];

/// One fuzz case for `ps` lines: a line parses or is an error, and what parses is consistent.
fn ps_case(input: &[u8]) {
    // The source reads `ps` output as text; invalid bytes reach the parser as U+FFFD.
    let line = String::from_utf8_lossy(input);
    if let Ok((name, life)) = ps::parse_line(&line) {
        assert!(!name.is_empty());
        use crate::stats::lifecycle::State;
        if !matches!(life.state, State::Exited | State::Restarting) {
            assert_eq!(life.exit_code, None);
        }
    }
}

fn connack() -> &'static [u8] {
    &[0x20, 0x02, 0x00, 0x00]
}

const BROKER_SEEDS: &[&[u8]] = &[
    &[0x20, 0x02, 0x00, 0x00, 0x40, 0x02, 0x00, 0x01, 0xd0, 0x00],
    &[0x40, 0x02, 0x00, 0x01, 0x40, 0x02, 0x00, 0x02],
    &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80],
    &[0x31, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'o', b'n'],
    &[0x32, 0x08, 0x00, 0x01, b's', 0x00, 0x07, b'o', b'n', b'!'],
    &[0x30, 0xff, 0xff, 0xff, 0x7f],
    &[0xb0, 0x02, 0x00, 0x01, 0xd0, 0x00],
];

const BROKER_TOKENS: &[&[u8]] = &[
    &[0x40, 0x00],
    &[0x20, 0x00],
    &[0x32, 0x03, 0x00, 0x01, b'a'],
    &[0x30, 0x04, 0x00, 0x09, b'a', b'b'],
    &[0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80],
    &[0x00],
    &[0x40, 0x02, 0x00, 0x00],
    &[0x36],
    &[0x90, 0x02],
    &[0x30, 0x80, 0x80, 0x04],
];

fn session() -> Session {
    Session::new(Options {
        client_id: "fuzz".into(),
        keep_alive: 5,
        username: None,
        password: None,
        will: None,
        birth: None,
        subscriptions: vec!["homeassistant/status".into()],
        max_inflight: 4,
        max_queued: 8,
        max_queued_bytes: crate::mqtt::session::DEFAULT_MAX_QUEUED_BYTES,
        connack_timeout: Duration::from_secs(1),
        ack_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
    })
}

/// One fuzz case for the broker path: frame-by-frame checks, then a session fed in random chunks.
fn broker_case(rng: &mut Rng, input: &[u8]) {
    // Framing and decoding alone, as the session does it.
    let mut at = 0;
    while at < input.len() {
        match frame::frame_len(&input[at..]) {
            Ok(Some(n)) => {
                assert!(n <= MAX_INCOMING_PACKET);
                let _ = frame::decode(&input[at..at + n]);
                at += n;
            }
            _ => break,
        }
    }
    // A connected session with messages in flight, fed the bytes in random pieces.
    let t0 = Instant::now();
    let mut s = session();
    for i in 0..6 {
        let m =
            crate::mqtt::Message::publish(&format!("t/{i}"), b"v", mqttrs::QoS::AtLeastOnce, false)
                .unwrap();
        s.enqueue(m);
    }
    // One kept message (a Home Assistant config): never dropped, so the queue may hold one more.
    let kept = crate::mqtt::Message::publish("c", b"{}", mqttrs::QoS::AtLeastOnce, true).unwrap();
    s.enqueue_kept(kept, 7);
    s.connected(t0);
    let _ = s.receive(t0, connack());
    let _ = s.poll(t0);
    let mut rest = input;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let n_out = s.outbound().len();
        s.consumed(t0, n_out);
        if s.receive(t0, chunk).is_err() {
            // The caller drops the connection; the session must accept that and stay consistent.
            s.disconnected();
            assert!(s.inflight() == 0 && s.queued() <= 9);
            return;
        }
        let _ = s.poll(t0 + Duration::from_millis(rng.below(3000) as u64));
    }
    assert!(s.inflight() <= 4 && s.queued() <= 9);
}

const KERNEL_SEEDS: &[&str] = &[
    include_str!("../tests/data/cgroup/v1-hybrid/proc/9734/cgroup"),
    include_str!("../tests/data/cgroup/v1-hybrid/proc/9734/net/dev"),
    include_str!("../tests/data/cgroup/v1-comounted/proc/meminfo"),
    "0::/system.slice/docker-0123.scope\n",
    "8:0 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0\n",
    "8:0 Read 4096\n8:0 Write 5\n8:0 Sync 4101\n8:0 Total 4101\nTotal 4101\n",
    "usage_usec 2186532\nuser_usec 1096443\ninactive_file 6070272\ntotal_inactive_file 1\n",
    "9223372036854771712\n",
    "max\n",
];

const KERNEL_TOKENS: &[&[u8]] = &[
    b":",
    b"::",
    b",",
    b"/",
    b"/..",
    b"\n",
    b" ",
    b"=",
    b"rbytes=",
    b"wbytes=",
    b"Read ",
    b"Write ",
    b"lo:",
    b"memory",
    b"cpuacct",
    b"MemTotal:",
    b" kB",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"-1",
    b"\xff",
];

/// One fuzz case for the kernel files: every parser answers, and what it finds lies inside the input.
fn kernel_case(input: &[u8]) {
    use crate::source::kernel::{cgroup, counters, netdev};
    let m = cgroup::parse(input);
    let inside = |s: &[u8]| {
        let (a, b) = (input.as_ptr() as usize, s.as_ptr() as usize);
        assert!(b >= a && b + s.len() <= a + input.len());
    };
    for line in [m.cpuacct, m.memory, m.blkio, m.pids].into_iter().flatten() {
        inside(line.controllers);
        inside(line.path);
        let _ = cgroup::check(line.path, b"0123");
    }
    if let Some(p) = m.unified {
        inside(p);
    }
    let _ = counters::single(input);
    let _ = counters::v1_limit(input);
    let _ = counters::v2_limit(input);
    let _ = counters::keyed(input, b"inactive_file");
    let _ = counters::v1_blkio(input);
    let _ = counters::v2_io(input);
    let _ = counters::mem_total(input);
    let _ = netdev::totals(input);
}

/// The engine's head as Docker Engine 20.10 sends it, before its framing header.
const ENGINE_HEAD: &str =
    "HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n\
    Docker-Experimental: false\r\nOstype: linux\r\nServer: Docker/20.10.24+dfsg1 (linux)\r\n\
    Date: Fri, 04 Dec 2026 15:53:13 GMT\r\n";

fn http_seeds() -> Vec<Vec<u8>> {
    let list = r#"[{"Id":"b547e6569090","Names":["/web"],"Labels":{},"State":"running","Status":"Up 1 second"}]"#;
    let stats = r#"{"read":"2026-12-04T15:53:13.722101378Z","pids_stats":{"current":1},"cpu_stats":{"cpu_usage":{"total_usage":26031727},"system_cpu_usage":13858390000000,"online_cpus":2}}"#;
    let (a, b) = stats.split_at(40);
    vec![
        format!("{ENGINE_HEAD}Content-Length: {}\r\nConnection: close\r\n\r\n{list}\n", list.len() + 1),
        format!(
            "{ENGINE_HEAD}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};x=y\r\n{b}\r\n0\r\nX-T: 1\r\n\r\n",
            a.len(),
            b.len()
        ),
        "HTTP/1.1 404 Not Found\r\nContent-Length: 38\r\n\r\n{\"message\":\"No such container: ffff\"}\n".into(),
        "HTTP/1.0 200 OK\r\n\r\n[]".into(),
        "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const HTTP_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b":",
    b";",
    b" ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked",
    b"0\r\n\r\n",
    b"ffffffffffffffff",
    b"fffffffffffffff",
    b"18446744073709551616",
    b"-1",
    b"HTTP/1.1 ",
    b"HTTP/1.0 100 ",
    b"304",
    b"\xff",
    b"\xc3",
];

/// One fuzz case for the engine's HTTP answers, read as a connection reads them: piece by piece, each
/// time asking whether the answer is whole, end of file only after the last. A whole answer is within its
/// bounds, and the same once more bytes came.
fn http_case(rng: &mut Rng, input: &[u8]) {
    let max = [16, 4096, 1 << 20, 1 << 20][rng.below(4)];
    let check = |r: &http::Response| {
        assert!(r.status <= 999, "three digits: {}", r.status);
        assert!(r.body.len() <= max && r.body.len() <= input.len());
    };
    let mut at = 0;
    let got = loop {
        let eof = at == input.len();
        match http::parse(&input[..at], eof, max) {
            Ok(None) if !eof => at = (at + 1 + rng.below(96)).min(input.len()),
            r => break r,
        }
    };
    let whole = http::parse(input, true, max);
    match &got {
        Ok(Some(r)) => {
            check(r);
            assert_eq!(
                whole.as_ref(),
                Ok(&Some(r.clone())),
                "more bytes changed it"
            );
        }
        Ok(None) => panic!("end of file, and still not whole"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if let Ok(Some(r)) = &whole {
        check(r);
    }
}

fn events_seeds() -> Vec<Vec<u8>> {
    let event = |action: &str, id: &str| {
        format!(
            r#"{{"status":"{action}","id":"{id}","from":"img:1","Type":"container","Action":"{action}","Actor":{{"ID":"{id}","Attributes":{{"image":"img:1","name":"web","signal":"9"}}}},"scope":"local","time":1796399593,"timeNano":1796399593776200105}}"#
        ) + "\n"
    };
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
    let (kill, die) = (event("kill", "b547e6569090"), event("die", "b547e6569090"));
    let health = event("health_status: healthy", "abc");
    let (a, b) = die.split_at(50);
    vec![
        format!(
            "{ENGINE_HEAD}Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n{}{}{}{}",
            chunk(&kill),
            chunk(a),
            chunk(b),
            chunk(&health)
        ),
        format!("{ENGINE_HEAD}\r\n{kill}{}", event("destroy", "ff")),
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            chunk(r#"{"status":"start","id":"0a1b"}"#)
        ),
        "HTTP/1.1 500 Internal Server Error\r\n\r\n".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

const EVENTS_TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b"7fffffffffffffff\r\n",
    b"1\r\n{\r\n",
    b";ext",
    b"Transfer-Encoding: chunked\r\n",
    b"\"Type\":\"network\",",
    b"\"Actor\":{\"ID\":\"../x\"}",
    b"\"ID\":\"\"",
    b"{",
    b"}",
    b"\"",
    b"\\u0000",
    b"\xff",
];

/// Feeds `input` to a fresh event stream in the pieces `split` cuts: the events, and whether it ended in
/// an error. What the stream holds between feeds stays bounded.
fn feed_events(input: &[u8], mut split: impl FnMut(usize) -> usize) -> (Vec<events::Event>, bool) {
    let mut s = EventStream::default();
    let mut got = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(split(rest.len()).clamp(1, rest.len()));
        rest = tail;
        if s.feed(piece, &mut got).is_err() {
            return (got, true);
        }
        let bound = http::MAX_HEAD.max(events::MAX_EVENT_LINE) + 64;
        assert!(s.buffered() <= bound, "{} bytes held", s.buffered());
        let _ = (s.subscribed(), s.take_lost());
    }
    (got, false)
}

/// One fuzz case for the event stream: whatever the split, the same events (up to where either read
/// ended in an error: a bounded line refuses sooner when it comes in pieces), each with an id we can put in
/// a request path.
fn events_case(rng: &mut Rng, input: &[u8]) {
    let (whole, whole_failed) = feed_events(input, |n| n);
    let (split, split_failed) = feed_events(input, |n| 1 + rng.below(n.min(64)));
    let n = whole.len().min(split.len());
    assert_eq!(whole[..n], split[..n], "the split changed the events");
    if !whole_failed && !split_failed {
        assert_eq!(whole.len(), split.len(), "the split lost events");
    }
    for e in whole.iter().chain(&split) {
        assert!(!e.id.is_empty() && e.id.len() <= 128);
        assert!(e.id.bytes().all(|b| b.is_ascii_hexdigit()), "{:?}", e.id);
        let _ = e.matters();
    }
}

const SPOOL_TOKENS: &[&[u8]] = &[
    &spool::format::HEADER,
    &[0xff, 0xff, 0xff, 0xff],
    &[0, 0, 0, 0],
    &[0x32, 0x7f],
    &[0x30, 0x80, 0x80, 0x80, 0x01],
    b"\x00\x00",
];

/// A spool segment of real records, some QoS 0, some QoS 1, one retained.
fn spool_seed() -> Vec<u8> {
    let mut seg = spool::format::HEADER.to_vec();
    for (i, qos) in [QoS::AtLeastOnce, QoS::AtMostOnce, QoS::AtLeastOnce]
        .into_iter()
        .enumerate()
    {
        let m = Message::publish(&format!("root/d/s/m{i}"), b"{\"value\":1}", qos, i == 2);
        spool::format::record(m.unwrap().bytes(), &mut seg);
    }
    seg
}

/// Any bytes as a segment: the pure reader, then as a file the agent finds at start and replays.
fn spool_case(input: &[u8], dir: Option<&str>) {
    let _ = spool::format::head(input);
    // As a record body too, so mutations reach the PUBLISH checks past the checksum.
    if let Some(m) = Message::from_bytes(input) {
        assert_eq!(frame::frame_len(m.bytes()), Ok(Some(m.bytes().len())));
    }
    let mut buf = input.get(8..).unwrap_or_default();
    while let spool::format::Step::Record(end) = spool::format::step(buf) {
        assert!(end > spool::format::RECORD_HEAD && end <= buf.len());
        let _ = Message::from_bytes(&buf[spool::format::RECORD_HEAD..end]);
        buf = &buf[end..];
    }
    let Some(dir) = dir else { return };
    std::fs::write(format!("{dir}/{}", spool::format::name(1)), input).unwrap();
    if let Ok(mut sp) = spool::open(dir, 1 << 16) {
        let mut n = 0;
        while let Some((m, tag)) = sp.next() {
            assert_eq!(frame::frame_len(m.bytes()), Ok(Some(m.bytes().len())));
            sp.acked(tag);
            n += 1;
        }
        assert!(
            n <= input.len() / 10,
            "{n} records from {} bytes",
            input.len()
        );
    }
    let _ = std::fs::remove_file(format!("{dir}/{}", spool::format::name(1)));
}

fn run_spool(n: u64, seed: u64, files: u64) {
    let mut rng = Rng(seed);
    let base = spool_seed();
    let dir = std::env::temp_dir().join(format!("bmct-fuzz-spool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    for i in 0..n {
        let input = mutate(&mut rng, &base, SPOOL_TOKENS);
        // Through the file side for a few cases: each costs a file and a lock.
        spool_case(&input, (i < files).then_some(d));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_http(n: u64, seed: u64) {
    let mut rng = Rng(seed);
    let seeds = http_seeds();
    for _ in 0..n {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base, HTTP_TOKENS);
        http_case(&mut rng, &input);
    }
}

fn run_events(n: u64, seed: u64) {
    let mut rng = Rng(seed);
    let seeds = events_seeds();
    for _ in 0..n {
        let base = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, base, EVENTS_TOKENS);
        events_case(&mut rng, &input);
    }
}

fn run_kernel(n: u64, seed: u64) {
    let mut rng = Rng(seed);
    for _ in 0..n {
        let base = KERNEL_SEEDS[rng.below(KERNEL_SEEDS.len())].as_bytes();
        kernel_case(&mutate(&mut rng, base, KERNEL_TOKENS));
    }
}

fn run_stats(n: u64, seed: u64) {
    let mut rng = Rng(seed);
    for _ in 0..n {
        let base = STATS_SEEDS[rng.below(STATS_SEEDS.len())].as_bytes();
        stats_case(&mutate(&mut rng, base, STATS_TOKENS));
    }
}

fn run_ps(n: u64, seed: u64) {
    let mut rng = Rng(seed);
    for _ in 0..n {
        let base = PS_SEEDS[rng.below(PS_SEEDS.len())].as_bytes();
        ps_case(&mutate(&mut rng, base, PS_TOKENS));
    }
}

fn run_broker(n: u64, seed: u64) {
    let mut rng = Rng(seed);
    for _ in 0..n {
        let base = BROKER_SEEDS[rng.below(BROKER_SEEDS.len())];
        let input = mutate(&mut rng, base, BROKER_TOKENS);
        broker_case(&mut rng, &input);
    }
}

fn timed(name: &str, n: u64, run: impl FnOnce()) {
    let started = Instant::now();
    run();
    eprintln!(
        "{name}: {n} cases, no failure, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn fuzz_stats_parser() {
    let n = cases(20_000);
    timed("fuzz_stats_parser", n, || run_stats(n, 0x5eed_0001));
}

#[test]
fn fuzz_ps_parser() {
    let n = cases(20_000);
    timed("fuzz_ps_parser", n, || run_ps(n, 0x5eed_0003));
}

#[test]
fn fuzz_kernel_files() {
    let n = cases(20_000);
    timed("fuzz_kernel_files", n, || run_kernel(n, 0x5eed_0004));
}

#[test]
fn fuzz_engine_http() {
    let n = cases(20_000);
    timed("fuzz_engine_http", n, || run_http(n, 0x5eed_0005));
}

#[test]
fn fuzz_engine_events() {
    let n = cases(20_000);
    timed("fuzz_engine_events", n, || run_events(n, 0x5eed_0006));
}

#[test]
fn fuzz_broker_bytes() {
    let n = cases(50_000);
    timed("fuzz_broker_bytes", n, || run_broker(n, 0x5eed_0002));
}

#[test]
fn fuzz_spool_reader() {
    let n = cases(50_000);
    timed("fuzz_spool_reader", n, || run_spool(n, 0x5eed_0007, 2_000));
}

/// Inputs that once broke an assumption, kept so they never do again.
#[test]
fn regressions() {
    // mqttrs 0.4.1 panics on these without our framing checks (see frame.rs).
    for bytes in [
        &[0x40, 0x00][..],
        &[0x20, 0x00],
        &[0x32, 0x03, 0x00, 0x01, b'a'],
        &[0x30, 0x02, 0x00, 0x09],
    ] {
        broker_case(&mut Rng(1), bytes);
    }
    // Deep nesting and a 1 MB line.
    stats_case("[".repeat(100_000).as_bytes());
    stats_case(format!("{{\"Name\":\"{}\"}}", "x".repeat(1 << 20)).as_bytes());
    stats_case(b"{\"Name\":\"a\",\"MemUsage\":\"1e+308GB / -5MB\",\"CPUPerc\":\"NaN%\"}");
}
