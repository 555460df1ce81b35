//! The device itself as a pseudo-service (issue 22), end to end: the built agent on this machine,
//! against a real mosquitto, its figures compared with this machine's own `/proc` and `statvfs` taken
//! by the test; next to the containers' figures and in Home Assistant's discovery; and a thermal zone
//! that never answers, bounded.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn mqtt_config(broker: &Broker, extra: &str) -> String {
    format!(
        r#"{{"broker_url": "{}", "device_id": "dev1"{extra}}}"#,
        broker.url()
    )
}

/// The agent, with the device's figures on (the harness turns them off for the other tests).
fn device_agent(config: &Path) -> std::process::Child {
    agent(config)
        .env("STATS_DEVICE_METRICS", "true")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn proc_file(name: &str) -> String {
    std::fs::read_to_string(Path::new("/proc").join(name)).unwrap()
}

/// When (Unix ms), and the CPUs' (busy, total) clock ticks then.
type CpuSample = (u64, (u64, u64));

/// (busy, total) clock ticks of all CPUs, by the rule the README states: all but idle and iowait.
fn cpu_times() -> (u64, u64) {
    let stat = proc_file("stat");
    let line = stat.lines().next().unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap())
        .collect();
    let total: u64 = n.iter().sum();
    (total - n[3] - n[4], total)
}

fn meminfo_kib(key: &str) -> u64 {
    let text = proc_file("meminfo");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn uptime_seconds() -> u64 {
    let text = proc_file("uptime");
    let first = text.split_whitespace().next().unwrap();
    first.split('.').next().unwrap().parse().unwrap()
}

/// (received, sent) of `name` in pid 1's network namespace, where the agent reads the host's.
fn interface(name: &str) -> Option<(u64, u64)> {
    let text = proc_file("1/net/dev");
    text.lines().find_map(|l| {
        let (n, rest) = l.split_once(':')?;
        (n.trim() == name).then(|| {
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            (f[0], f[8])
        })
    })
}

/// (total, used) bytes of the filesystem holding `path`, as the README says the agent counts them.
fn statvfs(path: &str) -> (u64, u64) {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed struct for statvfs to fill.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "{path}");
        st
    };
    let (frsize, blocks) = (st.f_frsize as u64, st.f_blocks as u64);
    (blocks * frsize, (blocks - st.f_bfree as u64) * frsize)
}

/// (topic after the device's root, value, timestamp) of the device's messages.
fn device_values(lines: &[String], root: &str) -> Vec<(String, Value, u64)> {
    lines
        .iter()
        .filter_map(|l| parse_value(l))
        .filter_map(|(t, v, ts)| Some((t.strip_prefix(root)?.to_owned(), v, ts)))
        .collect()
}

#[test]
fn figures_agree_with_this_machines_own_proc_and_statvfs() {
    let broker = Broker::start();
    let root = format!("root/dev1/telemetry/system/{DEVICE_SERVICE}/");
    let sub = Subscriber::start(broker.port, &format!("{root}#"));
    // The CPU's counters sampled every 10 ms with the wall clock, to find the agent's interval in.
    let samples: Arc<Mutex<Vec<CpuSample>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, done) = (samples.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let before = unix_ms();
                let t = cpu_times();
                let after = unix_ms();
                samples.lock().unwrap().push(((before + after) / 2, t));
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let here = env!("CARGO_MANIFEST_DIR");
    let missing = format!("{here}/no-such-directory");
    let net_before = interface("eth0");
    let uptime_before = uptime_seconds();
    let collector = format!(
        r#"{{"mode": "FILE", "file_path": "/nonexistent/stats.jsonl", "collection_interval_in_seconds": 3,
            "device_disk_paths": ["/", "{here}", "{missing}"]}}"#
    );
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let child = device_agent(cfg.path());
    // Three ticks: the second and third have CPU figures over an interval whose both ends are known.
    let cpu_topic = "cpu_usage_in_percent";
    let arrived = sub.wait_for(
        |l| {
            device_values(l, &root)
                .iter()
                .filter(|(t, _, _)| t == cpu_topic)
                .count()
                >= 3
        },
        Duration::from_secs(30),
    );
    let uptime_after = uptime_seconds();
    let net_after = interface("eth0");
    let mem_after = meminfo_kib("MemTotal") - meminfo_kib("MemAvailable");
    let disks_after = [statvfs("/"), statvfs(here)];
    let load_after: Vec<f64> = proc_file("loadavg")
        .split_whitespace()
        .take(3)
        .map(|f| f.parse().unwrap())
        .collect();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let log = stop_agent(child);
    assert!(arrived, "{:?}\n{log}", sub.lines());
    let got = device_values(&sub.lines(), &root);
    let first_ts = got[0].2;
    let of = |topic: &str| -> Value {
        got.iter()
            .find(|(t, _, ts)| t == topic && *ts == first_ts)
            .unwrap_or_else(|| panic!("{topic} in {got:#?}"))
            .1
            .clone()
    };
    let n = |topic: &str| of(topic).as_f64().unwrap();

    // CPU: each tick's figure against the same counters over the same interval, within a point.
    let cpu: Vec<(f64, u64)> = got
        .iter()
        .filter(|(t, _, _)| t == cpu_topic)
        .map(|(_, v, ts)| (v.as_f64().unwrap(), *ts))
        .collect();
    let samples = samples.lock().unwrap();
    let nearest = |ms: u64| {
        samples
            .iter()
            .min_by_key(|(t, _)| t.abs_diff(ms))
            .unwrap()
            .1
    };
    for w in cpu.windows(2) {
        let ((_, from), (agent, to)) = (w[0], w[1]);
        let (a, b) = (nearest(from), nearest(to));
        let ours = (b.0 - a.0) as f64 * 100.0 / (b.1 - a.1) as f64;
        eprintln!("CPU over {from}..{to} ms: agent {agent} %, /proc/stat {ours:.2} %");
        assert!(
            (agent - ours).abs() <= 1.0,
            "CPU {agent} % from the agent, {ours:.2} % from /proc/stat over the same interval"
        );
    }

    // Memory: the totals exactly, the use as /proc/meminfo had it a moment later (other work runs).
    let total = meminfo_kib("MemTotal") * 1024;
    assert_eq!(n("memory_limit_in_bytes"), total as f64);
    assert_eq!(
        n("swap_total_in_bytes"),
        (meminfo_kib("SwapTotal") * 1024) as f64
    );
    let used = n("memory_usage_in_bytes");
    assert!(
        (used - (mem_after * 1024) as f64).abs() < total as f64 * 0.03,
        "memory used {used} against {} a moment later",
        mem_after * 1024
    );
    let percent = n("memory_usage_in_percent");
    assert!(
        (percent - used * 100.0 / total as f64).abs() <= 0.01,
        "{percent}"
    );
    assert!(n("swap_usage_in_bytes") <= n("swap_total_in_bytes"));

    // Uptime and the interface's counters between the test's readings before and after.
    let up = n("uptime_in_seconds") as u64;
    assert!((uptime_before..=uptime_after).contains(&up), "{up}");
    if let (Some(before), Some(after)) = (net_before, net_after) {
        let rx = n("eth0/network_received_in_bytes") as u64;
        let tx = n("eth0/network_sent_in_bytes") as u64;
        assert!(
            (before.0..=after.0).contains(&rx),
            "{before:?} {rx} {after:?}"
        );
        assert!(
            (before.1..=after.1).contains(&tx),
            "{before:?} {tx} {after:?}"
        );
    }
    // No bridge, veth, ifb or loopback, whatever this machine has.
    for (t, _, _) in &got {
        let first = t.split('/').next().unwrap();
        for left_out in ["lo", "docker0", "ifb0", "ifb1"] {
            assert_ne!(first, left_out, "{t}");
        }
        assert!(
            !first.starts_with("veth") && !first.starts_with("br-"),
            "{t}"
        );
    }
    let load_15 = n("load_average_15m");
    assert!(
        (load_15 - load_after[2]).abs() < 0.5,
        "{load_15} {load_after:?}"
    );

    // Disks: sizes exactly; use as statvfs had it a moment later.
    let label = format!("disk_{}", here.trim_matches('/').replace('/', "_"));
    for (part, (size, used_after)) in ["disk_root".to_owned(), label].iter().zip(disks_after) {
        assert_eq!(
            n(&format!("{part}/storage_total_in_bytes")),
            size as f64,
            "{part}"
        );
        let used = n(&format!("{part}/storage_used_in_bytes"));
        assert!(
            (used - used_after as f64).abs() < size as f64 * 0.02,
            "{part}: {used} against {used_after}"
        );
    }

    // What this machine does not have is absent: no CPU thermal zone, no Raspberry Pi, the missing path.
    let has_cpu_zone = std::fs::read_dir("/sys/class/thermal")
        .map(|d| {
            d.flatten().any(|z| {
                let t = std::fs::read_to_string(z.path().join("type")).unwrap_or_default();
                let t = t.trim();
                t.to_ascii_lowercase().contains("cpu")
                    || t == "x86_pkg_temp"
                    || t.starts_with("soc")
            })
        })
        .unwrap_or(false);
    let topics: Vec<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        topics.contains(&"cpu_temperature_in_celsius"),
        has_cpu_zone,
        "{topics:?}"
    );
    assert!(
        !Path::new("/sys/class/hwmon").exists() || !topics.contains(&"under_voltage"),
        "{topics:?}"
    );
    assert!(!topics
        .iter()
        .any(|t| t.contains("since_boot") || *t == "throttled"));
    assert!(!topics
        .iter()
        .any(|t| t.starts_with("disk_") && t.contains("no-such-directory")));
    // One warning for the missing path over three ticks; no error at all.
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("WARN device:"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains(&missing), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn the_devices_figures_arrive_next_to_the_containers() {
    for mode in ["per_metric", "per_service"] {
        let broker = Broker::start();
        let sub = Subscriber::start(broker.port, "root/#");
        let cfg = config_dir(
            &file_collector(&sample_stats(), 10),
            &mqtt_config(&broker, &format!(r#", "payload_mode": "{mode}""#)),
        );
        let child = device_agent(cfg.path());
        let system = "root/dev1/telemetry/system/";
        let device = format!("{system}{DEVICE_SERVICE}");
        let both = |l: &[String]| {
            l.iter().any(|x| x.starts_with(&format!("{system}main")))
                && l.iter().any(|x| x.starts_with(&format!("{device}/eth0")))
                && l.iter()
                    .any(|x| x.starts_with(&format!("{device}/disk_root")))
        };
        let arrived = sub.wait_for(both, Duration::from_secs(20));
        let log = stop_agent(child);
        assert!(arrived, "{mode}: {:?}\n{log}", sub.lines());
        let lines = sub.lines();
        if mode == "per_metric" {
            assert_sample_figures(&lines, "dev1");
            assert!(lines
                .iter()
                .any(|l| l.starts_with(&format!("{device}/cpu_usage_in_percent "))));
        } else {
            let whole = lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{device} ")))
                .expect("the device's payload");
            let v: Value = serde_json::from_str(whole).unwrap();
            for key in [
                "timestamp",
                "memory_usage_in_bytes",
                "uptime_in_seconds",
                "load_average_1m",
            ] {
                assert!(v.get(key).is_some(), "{key} in {whole}");
            }
            let disk = lines
                .iter()
                .find_map(|l| l.strip_prefix(&format!("{device}/disk_root ")))
                .unwrap();
            let v: Value = serde_json::from_str(disk).unwrap();
            assert!(
                v["storage_total_in_bytes"].as_u64().unwrap()
                    >= v["storage_used_in_bytes"].as_u64().unwrap()
            );
        }
    }
}

#[test]
fn without_device_metrics_only_the_containers_go_out() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt_config(&broker, ""),
    );
    // The harness's agent has them off; --once, so the run's end is the positive marker.
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{log}");
    sub.sync(broker.port);
    let lines = sub.lines();
    assert_sample_figures(&lines, "dev1");
    assert!(
        !lines.iter().any(|l| l.contains(DEVICE_SERVICE)),
        "{lines:?}"
    );
    assert!(log.contains("device figures off"), "{log}");
}

#[test]
fn home_assistant_shows_the_device_with_its_services_on_it() {
    let broker = Broker::start();
    let sub = Subscriber::start_args(
        broker.port,
        &["-F", "%t|%p", "-t", "homeassistant/#", "-t", "probe/ready"],
    );
    let cfg = config_dir(
        &file_collector(&sample_stats(), 10),
        &mqtt_config(&broker, r#", "home_assistant_discovery": true"#),
    );
    let child = device_agent(cfg.path());
    let device_config = "homeassistant/sensor/dev1/cpu_usage_in_percent/config|";
    let main_config = "homeassistant/sensor/dev1_main/pids/config|";
    let arrived = sub.wait_for(
        |l| {
            l.iter().any(|x| x.starts_with(device_config))
                && l.iter().any(|x| x.starts_with(main_config))
                && l.iter()
                    .any(|x| x.contains("/network_received_in_bytes_eth0/config|"))
        },
        Duration::from_secs(20),
    );
    let log = stop_agent(child);
    assert!(arrived, "{:?}\n{log}", sub.lines());
    let config = |prefix: &str| -> Value {
        let lines = sub.lines();
        let line = lines.iter().find(|l| l.starts_with(prefix)).unwrap();
        serde_json::from_str(&line[prefix.len()..]).unwrap()
    };
    let device = config(device_config);
    let main = config(main_config);
    assert_eq!(device["device"]["name"], "dev1");
    assert_eq!(
        device["state_topic"],
        format!("root/dev1/telemetry/system/{DEVICE_SERVICE}/cpu_usage_in_percent")
    );
    assert_eq!(
        main["device"]["via_device"],
        device["device"]["identifiers"][0]
    );
    assert_eq!(main["device"]["name"], "main on dev1");
}

#[test]
fn a_thermal_zone_that_never_answers_costs_the_bound_once() {
    // A host /sys whose CPU zone's `temp` is a FIFO nobody writes: opening it waits for ever, as a read
    // waits in a hung driver.
    let sys = TempDir::new("hung-sys");
    let zone = sys.path().join("class/thermal/thermal_zone0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("type"), "cpu-thermal\n").unwrap();
    let fifo = std::ffi::CString::new(zone.join("temp").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let broker = Broker::start();
    let root = format!("root/dev1/telemetry/system/{DEVICE_SERVICE}/");
    let sub = Subscriber::start(broker.port, &format!("{root}uptime_in_seconds"));
    let collector = format!(
        r#"{{"mode": "FILE", "file_path": "/nonexistent/stats.jsonl", "collection_interval_in_seconds": 1,
            "host_sys_root": "{}", "device_disk_paths": []}}"#,
        sys.path().display()
    );
    let cfg = config_dir(&collector, &mqtt_config(&broker, ""));
    let child = device_agent(cfg.path());
    // The device's other figures go on, tick after tick.
    let arrived = sub.wait_for(|l| l.len() >= 4, Duration::from_secs(30));
    let log = stop_agent(child);
    assert!(arrived, "{:?}\n{log}", sub.lines());
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("did not finish within 1s"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("thermal_zone0/temp"), "{log}");
    // Four ticks after the first: no tick after the first waited for the reader again.
    let ts: Vec<u64> = sub
        .lines()
        .iter()
        .filter_map(|l| parse_value(l))
        .map(|v| v.2)
        .collect();
    for w in ts.windows(2).skip(1) {
        assert!(
            w[1] - w[0] < 1_500,
            "ticks one interval apart after the first: {ts:?}"
        );
    }
}

#[test]
fn by_exception_the_devices_resting_figures_go_out_once_until_the_heartbeat() {
    let broker = Broker::start();
    let root = format!("root/dev1/telemetry/system/{DEVICE_SERVICE}/");
    let sub = Subscriber::start(broker.port, &format!("{root}#"));
    let collector = r#"{"mode": "FILE", "file_path": "/nonexistent/stats.jsonl", "collection_interval_in_seconds": 1,
        "report": "on_change", "report_heartbeat_in_seconds": 3600, "device_disk_paths": ["/"]}"#;
    let cfg = config_dir(collector, &mqtt_config(&broker, ""));
    let child = device_agent(cfg.path());
    // Five device ticks, counted by the debug line each one logs; then what went out.
    let mut log = String::new();
    let ticks = |l: &[String]| {
        device_values(l, &root)
            .iter()
            .filter(|(t, _, _)| t == "memory_usage_in_bytes")
            .count()
    };
    // The baseline arrives first.
    assert!(sub.wait_for(|l| ticks(l) >= 1, Duration::from_secs(20)));
    // Then wait five intervals' worth of ticks, proven by the log, not by the clock.
    let mut child = {
        let mut child = child;
        let err = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut device_ticks = 0;
        while device_ticks < 6 {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("the agent logs its ticks");
            device_ticks += usize::from(line.starts_with("DEBUG device: "));
            log.push_str(&line);
            log.push('\n');
        }
        child
    };
    sub.sync(broker.port);
    let _ = child.kill();
    let _ = child.wait();
    let got = device_values(&sub.lines(), &root);
    for resting in [
        "uptime_in_seconds",
        "memory_limit_in_bytes",
        "swap_total_in_bytes",
        "disk_root/storage_total_in_bytes",
    ] {
        let n = got.iter().filter(|(t, _, _)| t == resting).count();
        assert_eq!(n, 1, "{resting}: the baseline only, in six ticks\n{log}");
    }
}
