//! ENGINE mode's figures from the kernel (cgroup files, `/proc/<pid>/net/dev`) against the engine's own
//! stats for the same containers, on the real Docker Engine, through a real mosquitto.
//!
//! The agent talks to the engine through a counting proxy, so the test sees every request it makes: once
//! in sync, a tick must ask the engine nothing. Without a Docker Engine the tests say SKIPPED and pass
//! (under CI they fail).

mod common;
use common::engine::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answer of the engine, by HTTP/1.0 so it comes whole and unchunked.
fn engine_get(path: &str) -> Value {
    let mut s = UnixStream::connect(SOCKET).expect("engine socket");
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let (_, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// What `docker stats` shows for a container, computed from the engine's stats API as the CLI does.
#[derive(Debug)]
struct EngineView {
    memory: f64,
    limit: f64,
    pids: f64,
    rx: f64,
    tx: f64,
    cpu: f64,
}

/// `one_shot`: the engine's latest sample at once (no CPU %); else it waits for a second one.
fn engine_view(name: &str, one_shot: bool) -> EngineView {
    let s = engine_get(&format!(
        "/containers/{name}/stats?stream=false&one-shot={one_shot}"
    ));
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mem = &s["memory_stats"];
    let inactive = n(&mem["stats"]["total_inactive_file"]);
    let usage = n(&mem["usage"]);
    let (rx, tx) = s["networks"].as_object().map_or((0.0, 0.0), |nets| {
        nets.values().fold((0.0, 0.0), |(r, t), v| {
            (r + n(&v["rx_bytes"]), t + n(&v["tx_bytes"]))
        })
    });
    let (cpu, pre) = (&s["cpu_stats"], &s["precpu_stats"]);
    let system = n(&cpu["system_cpu_usage"]) - n(&pre["system_cpu_usage"]);
    let used = n(&cpu["cpu_usage"]["total_usage"]) - n(&pre["cpu_usage"]["total_usage"]);
    EngineView {
        memory: if inactive < usage {
            usage - inactive
        } else {
            usage
        },
        limit: n(&mem["limit"]),
        pids: n(&s["pids_stats"]["current"]),
        rx,
        tx,
        cpu: used / system * n(&cpu["online_cpus"]) * 100.0,
    }
}

/// A unix socket in front of the engine's that forwards everything and notes each request's first line.
struct Proxy {
    path: std::path::PathBuf,
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: TempDir,
}

impl Proxy {
    fn start() -> Proxy {
        let dir = TempDir::new("proxy");
        let path = dir.path().join("engine.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let log = log.clone();
                std::thread::spawn(move || forward(client, &log));
            }
        });
        Proxy {
            path,
            seen,
            _dir: dir,
        }
    }

    fn requests_since(&self, t: Instant) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// One connection: requests noted as they pass (several may share a connection), bytes copied both ways.
fn forward(mut client: UnixStream, log: &Mutex<Vec<(Instant, String)>>) {
    let Ok(mut upstream) = UnixStream::connect(SOCKET) else {
        return;
    };
    let (Ok(mut down), Ok(mut back)) = (upstream.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut down, &mut back);
        let _ = back.shutdown(std::net::Shutdown::Write);
    });
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        for line in text.lines().filter(|l| l.starts_with("GET ")) {
            log.lock().unwrap().push((Instant::now(), line.to_owned()));
        }
        if upstream.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// A docker network of the test's own, without a way out (`--internal`), removed on drop.
struct Network(String);

impl Network {
    fn new(name: String) -> Network {
        docker(&["network", "create", "--internal", &name]).expect("network create");
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(e) = docker(&["network", "rm", &self.0]) {
            eprintln!("clean-up: {e}");
        }
    }
}

/// service -> metric -> values in the order published.
fn figures_by_service(
    lines: &[String],
    root: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<f64>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for (topic, value, _) in lines.iter().filter_map(|l| parse_value(l)) {
        let Some((service, metric)) = topic.strip_prefix(root).and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        if let Some(v) = value.as_f64() {
            out.entry(service.into())
                .or_default()
                .entry(metric.into())
                .or_default()
                .push(v);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
fn kernel_figures_agree_with_the_engine_and_a_tick_asks_the_engine_nothing() {
    if !engine_available() {
        return;
    }
    // The network first: dropped last, after the containers on it.
    let net = Network::new(format!("bmct{}knet", std::process::id()));
    let mut f = Fixture::new("k");
    // A burner held to a quarter of a CPU by the kernel's CFS quota: steady whatever else runs.
    let burner = f.run_prefixed(
        "burner",
        &["--cpus", "0.25"],
        &["sh", "-c", "while :; do :; done"],
    );
    let limited = f.run_prefixed("limited", &["--memory", "48m"], &["sleep", "3600"]);
    // Eight megabytes in /dev/shm (tmpfs, charged to the container as memory the CLI does not subtract): a
    // figure whose 1 % is far above a page's noise.
    let holder = f.run_prefixed(
        "holder",
        &[],
        &[
            "sh",
            "-c",
            "head -c 8000000 /dev/zero > /dev/shm/hold; sleep 3600",
        ],
    );
    let pids = f.run_prefixed(
        "pids",
        &[],
        &["sh", "-c", "sleep 3600 & sleep 3600 & sleep 3600 & wait"],
    );
    let listener = f.service("listener");
    f.run_on(&net.0, &listener, &[], &["sleep", "3600"]);
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &listener,
    ])
    .expect("inspect");
    assert!(!ip.is_empty(), "listener has an address on {}", net.0);
    // On the host's network: its /proc/<pid>/net/dev is the host's, the engine counts nothing.
    let hostnet = f.service("hostnet");
    f.run_on("host", &hostnet, &[], &["sleep", "3600"]);
    let talker = f.service("talker");
    // Traffic first, then rest: both ends have counted bytes that no longer change.
    let talk = format!("ping -c 4 -i 0.2 {ip}; sleep 3600");
    f.run_on(&net.0, &talker, &[], &["sh", "-c", &talk]);

    let broker = Broker::start();
    let proxy = Proxy::start();
    let proxy_from = Instant::now();
    let device = format!("kernel{}", std::process::id());
    let root = format!("root/{device}/telemetry/system/");
    let sub = Subscriber::start(broker.port, &format!("root/{device}/#"));
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{}", "engine_figures": "cgroup", "collection_interval_in_seconds": 2}}"#,
        proxy.path.display()
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "{device}"}}"#,
        broker.url()
    );
    let cfg = config_dir(&collector, &mqtt);
    let agent = spawn_agent(cfg.path());
    let cpu_topic = format!("{root}{burner}/cpu_usage_in_percent");
    let ticks = |n: usize| {
        sub.wait_for(
            |l| l.iter().filter(|x| x.starts_with(&cpu_topic)).count() >= n,
            Duration::from_secs(60),
        )
    };
    // Tick 1 lists, tick 2 lists again under the subscribed event stream; from tick 3 the events keep us
    // in sync.
    assert!(ticks(4), "four ticks published");
    let quiet_from = Instant::now();
    assert!(ticks(7), "seven ticks published");
    let asked = proxy.requests_since(quiet_from);
    let ours: Vec<&String> = asked
        .iter()
        .filter(|r| {
            r.contains("/containers/json?")
                || r.contains("/stats")
                || f.containers.iter().any(|c| r.contains(c))
        })
        .collect();
    assert!(
        ours.is_empty(),
        "three ticks in sync asked the engine for lists, stats or our containers: {ours:?} (all: {asked:?})"
    );
    assert!(
        proxy
            .requests_since(proxy_from)
            .iter()
            .any(|r| r.contains("/events")),
        "the agent follows the event stream"
    );

    // The engine's view of the same containers just before and just after one tick of the agent's. At
    // rest (but the burner) the two agree; a stray packet (a new interface's IPv6 chatter on the bridge)
    // or page between them means another try.
    let names = [
        &burner, &limited, &holder, &pids, &listener, &talker, &hostnet,
    ];
    // All at once, so that the view is one moment.
    let views = |c: &[&String]| -> BTreeMap<String, EngineView> {
        std::thread::scope(|scope| {
            let asks: Vec<_> = c
                .iter()
                .map(|c| (c.to_string(), scope.spawn(move || engine_view(c, true))))
                .collect();
            asks.into_iter()
                .map(|(c, t)| (c, t.join().unwrap()))
                .collect()
        })
    };
    let count = || {
        sub.lines()
            .iter()
            .filter(|x| x.starts_with(&cpu_topic))
            .count()
    };
    let mut bracket = None;
    for _ in 0..5 {
        let before = views(&names);
        assert!(ticks(count() + 1), "a tick published");
        let after = views(&names);
        let rest = names[1..].iter().all(|n| {
            let (b, a) = (&before[n.as_str()], &after[n.as_str()]);
            (b.rx, b.tx, b.pids) == (a.rx, a.tx, a.pids)
        });
        if rest {
            bracket = Some((before, after, sub.lines()));
            break;
        }
    }
    let (before, after, lines) = bracket.expect("the containers came to rest around a tick");
    let burner_engine_cpu = median((0..3).map(|_| engine_view(&burner, false).cpu).collect());
    let log = stop_agent(agent);
    let got = figures_by_service(&lines, &root);
    for (name, view) in &after {
        let name = name.as_str();
        let m = got
            .get(name)
            .unwrap_or_else(|| panic!("{name} published nothing: {got:?}"));
        let last = |metric: &str| *m[metric].last().unwrap();
        let memory = last("memory_usage_in_bytes");
        // cgroup v1's usage_in_bytes is, in the kernel's words, not exact: it counts pages charged ahead
        // per CPU, so two reads of an idle container can differ by a few pages. That is over 1 % of a
        // container of a few hundred KiB; the 8 MB holder gets no such slack.
        let slack = if view.memory < 4e6 { 16_384.0 } else { 0.0 };
        let near = |v: &EngineView| (memory - v.memory).abs() <= v.memory * 0.01 + slack;
        assert!(
            near(view) || near(&before[name]),
            "{name}: memory {memory} against the engine's {} and {}",
            before[name].memory,
            view.memory
        );
        assert_eq!(last("memory_limit_in_bytes"), view.limit, "{name}: limit");
        assert_eq!(last("pids"), view.pids, "{name}: PIDs");
        if name != burner.as_str() {
            assert_eq!(
                last("network_received_in_bytes"),
                view.rx,
                "{name}: received"
            );
            assert_eq!(last("network_sent_in_bytes"), view.tx, "{name}: sent");
        }
        let nine = [
            "cpu_usage_in_percent",
            "memory_usage_in_percent",
            "memory_usage_in_bytes",
            "memory_limit_in_bytes",
            "network_received_in_bytes",
            "network_sent_in_bytes",
            "block_read_in_bytes",
            "block_written_in_bytes",
            "pids",
        ];
        assert!(
            nine.iter().all(|k| m.contains_key(*k)),
            "{name}: all nine figures: {m:?}"
        );
    }
    let views = after;
    assert_eq!(views[limited.as_str()].limit, 50_331_648.0);
    assert_eq!(
        (views[hostnet.as_str()].rx, views[hostnet.as_str()].tx),
        (0.0, 0.0)
    );
    assert!(
        views[holder.as_str()].memory > 8e6,
        "{:?}",
        views[holder.as_str()]
    );
    assert_eq!(views[pids.as_str()].pids, 4.0, "sh and three sleeps");
    for end in [&listener, &talker] {
        assert!(
            views[end.as_str()].rx > 0.0 && views[end.as_str()].tx > 0.0,
            "{end}: the pings were counted"
        );
    }
    // CPU: the agent's shares over its ticks against the engine's over its own seconds; the quota holds
    // both near 25 % on a busy machine too.
    let ours = median(got[burner.as_str()]["cpu_usage_in_percent"][1..].to_vec());
    eprintln!("burner CPU: agent {ours} %, engine {burner_engine_cpu:.2} %");
    assert!(
        (ours - burner_engine_cpu).abs() <= 2.0,
        "burner CPU: agent {ours} % against the engine's {burner_engine_cpu:.2} %"
    );
    // Other tests' containers come and go on the same engine (one vanishing mid-read is warned of, as
    // it should be); ours are all read from the kernel.
    let ours_unread = log
        .lines()
        .filter(|l| l.contains("kernel figures unreadable") && l.contains(&f.prefix))
        .count();
    assert_eq!(ours_unread, 0, "{log}");
}

#[test]
fn unreadable_kernel_files_fall_back_to_the_engine_with_one_warning() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("kf");
    let idle = f.run_prefixed("idle", &["--memory", "32m"], &["sleep", "3600"]);
    let broker = Broker::start();
    let device = format!("kfall{}", std::process::id());
    let root = format!("root/{device}/telemetry/system/");
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "{device}"}}"#,
        broker.url()
    );
    // `cgroup`, but a /proc without the container's process: each tick asks the API for it, and says so
    // once.
    let empty = TempDir::new("noproc");
    std::fs::write(empty.path().join("meminfo"), "MemTotal:        1024 kB\n").unwrap();
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}", "engine_figures": "cgroup", "proc_root": "{}", "collection_interval_in_seconds": 1}}"#,
        empty.path().display()
    );
    let sub = Subscriber::start(broker.port, &format!("root/{device}/#"));
    let cfg = config_dir(&collector, &mqtt);
    let agent = spawn_agent(cfg.path());
    let limit_topic = format!("{root}{idle}/memory_limit_in_bytes");
    let got = sub.wait_for(
        |l| l.iter().filter(|x| x.starts_with(&limit_topic)).count() >= 3,
        Duration::from_secs(60),
    );
    let log = stop_agent(agent);
    assert!(got, "three ticks of figures from the API: {log}");
    let limits: Vec<f64> = sub
        .lines()
        .iter()
        .filter_map(|l| parse_metric(l))
        .filter(|(t, _, _)| *t == limit_topic)
        .map(|(_, v, _)| v)
        .collect();
    assert!(limits.iter().all(|&v| v == 33_554_432.0), "{limits:?}");
    let warned = log
        .lines()
        .filter(|l| l.contains(&idle) && l.contains("kernel figures unreadable"))
        .count();
    assert_eq!(
        warned, 1,
        "one warning for the container, not one per tick:\n{log}"
    );

    // `auto` where there are no cgroup files at all: the API, said once at start.
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}", "cgroup_root": "{}/none"}}"#,
        empty.path().display()
    );
    let cfg = config_dir(&collector, &mqtt);
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(60));
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        log.matches("figures come from the engine's stats API instead")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("kernel figures unreadable"), "{log}");
}
