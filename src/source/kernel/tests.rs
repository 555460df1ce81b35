//! The readers against fixture trees under `tests/data/cgroup/`: `v1-hybrid` copied from this machine's
//! Docker 20.10 (cgroup v1, cgroupfs driver, unified hierarchy mounted without controllers), and
//! `v1-comounted`, `v2-cgroupfs`, `v2-systemd` written in the shape real kernels give (those layouts
//! cannot run here). Plus one ignored test against the real engine that times the reads and compares
//! them with the engine's own stats.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const HYBRID_ID: &str = "4b3ba0896e21bad17b1bdc8e053726c04b7e9d8b57ca8476dcf3ab77d138776d";
const COMOUNTED_ID: &str = "9f1c2a7be0d34c5e8a6b1f0e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6e5f4";
const V2_CGROUPFS_ID: &str = "0b5d7e3c9a1f4e2d8c6b0a9f8e7d6c5b4a3928170f6e5d4c3b2a19080706f5e4";
const V2_SYSTEMD_ID: &str = "5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

fn tree(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cgroup")
        .join(name)
}

fn roots(name: &str) -> Roots {
    Roots {
        cgroup: tree(name).join("cgroup"),
        proc: tree(name).join("proc"),
    }
}

fn count(f: &Figures, m: Metric) -> Option<u64> {
    match f.get(m)? {
        Value::Count(n) => Some(n),
        _ => None,
    }
}

fn percent(f: &Figures, m: Metric) -> Option<f64> {
    match f.get(m)? {
        Value::Percent(p) => Some(p),
        _ => None,
    }
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bmct-kernel-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, rel: &str, text: &[u8]) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn v1_hybrid_as_read_on_this_machine() {
    let roots = roots("v1-hybrid");
    let place = locate(&roots, 9734, HYBRID_ID).unwrap();
    let dir = |c: &str| roots.cgroup.join(c).join("docker").join(HYBRID_ID);
    assert_eq!(
        place,
        Place::V1 {
            cpuacct: dir("cpuacct"),
            memory: dir("memory"),
            blkio: Some(dir("blkio")),
            pids: Some(dir("pids")),
        }
    );
    let r = read(&roots, &place, 9734, &mut Files::default()).unwrap();
    assert_eq!(
        r,
        Reading {
            cpu_ns: 44_466_368,
            memory_usage: 6_438_912,
            inactive_file: 4_509_696,
            limit: Some(67_108_864),
            block_read: 0,
            block_written: 0,
            pids: Some(1),
            rx_bytes: 656,
            tx_bytes: 0,
        }
    );
    let host = host_memory(&roots).unwrap();
    assert_eq!(host, 24_683_656 * 1024);
    let f = figures(&r, host, None);
    assert_eq!(count(&f, Metric::MemoryUsage), Some(6_438_912 - 4_509_696));
    assert_eq!(count(&f, Metric::MemoryLimit), Some(67_108_864));
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(2.87));
    assert_eq!(f.get(Metric::CpuPercent), None);
    assert_eq!(count(&f, Metric::Pids), Some(1));
    assert_eq!(f.iter().count(), 8);
}

#[test]
fn v1_comounted_controllers_are_found_under_the_list_directory() {
    let roots = roots("v1-comounted");
    let place = locate(&roots, 1234, COMOUNTED_ID).unwrap();
    let dir = |c: &str| roots.cgroup.join(c).join("docker").join(COMOUNTED_ID);
    assert_eq!(
        place,
        Place::V1 {
            cpuacct: dir("cpu,cpuacct"),
            memory: dir("memory"),
            blkio: Some(dir("blkio")),
            pids: Some(dir("pids")),
        }
    );
    let r = read(&roots, &place, 1234, &mut Files::default()).unwrap();
    // No memory limit (the kernel's largest value); CFQ's blkio file as the throttle one is missing.
    assert_eq!(
        r,
        Reading {
            cpu_ns: 5_210_987_654,
            memory_usage: 52_342_784,
            inactive_file: 12_288_000,
            limit: None,
            block_read: 3_145_728 + 4096,
            block_written: 1_048_576,
            pids: Some(7),
            rx_bytes: 1_048_576,
            tx_bytes: 65_536,
        }
    );
    let host = host_memory(&roots).unwrap();
    let f = figures(&r, host, Some(12.5));
    assert_eq!(count(&f, Metric::MemoryLimit), Some(3_884_096 * 1024));
    assert_eq!(count(&f, Metric::MemoryUsage), Some(40_054_784));
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(1.01));
    assert_eq!(percent(&f, Metric::CpuPercent), Some(12.5));
    assert_eq!(f.iter().count(), 9);
}

#[test]
fn v1_single_controller_mounts_are_the_fallback() {
    // Mounts named for one controller each, pointing at the co-mounted tree's directories.
    let s = Scratch::new();
    let from = tree("v1-comounted").join("cgroup");
    for (link, target) in [
        ("cpuacct", "cpu,cpuacct"),
        ("memory", "memory"),
        ("blkio", "blkio"),
    ] {
        std::os::unix::fs::symlink(from.join(target), s.0.join(link)).unwrap();
    }
    let roots = Roots {
        cgroup: s.0.clone(),
        proc: tree("v1-comounted").join("proc"),
    };
    let place = locate(&roots, 1234, COMOUNTED_ID).unwrap();
    let dir = |c: &str| s.0.join(c).join("docker").join(COMOUNTED_ID);
    // No pids mount: no pids figure, the rest still read.
    assert_eq!(
        place,
        Place::V1 {
            cpuacct: dir("cpuacct"),
            memory: dir("memory"),
            blkio: Some(dir("blkio")),
            pids: None,
        }
    );
    let r = read(&roots, &place, 1234, &mut Files::default()).unwrap();
    assert_eq!((r.cpu_ns, r.pids), (5_210_987_654, None));
    assert_eq!(figures(&r, 1 << 30, None).get(Metric::Pids), None);
}

#[test]
fn v2_cgroupfs_driver() {
    let roots = roots("v2-cgroupfs");
    let place = locate(&roots, 2345, V2_CGROUPFS_ID).unwrap();
    assert_eq!(
        place,
        Place::V2(roots.cgroup.join("docker").join(V2_CGROUPFS_ID))
    );
    let r = read(&roots, &place, 2345, &mut Files::default()).unwrap();
    assert_eq!(
        r,
        Reading {
            cpu_ns: 2_186_532_000,
            memory_usage: 9_977_856,
            inactive_file: 6_070_272,
            limit: Some(268_435_456),
            block_read: 1_459_200 + 4096,
            block_written: 314_773_504 + 8192,
            pids: Some(4),
            rx_bytes: 90_210,
            tx_bytes: 4242,
        }
    );
    let f = figures(&r, host_memory(&roots).unwrap(), None);
    assert_eq!(count(&f, Metric::MemoryUsage), Some(3_907_584));
    assert_eq!(count(&f, Metric::MemoryLimit), Some(268_435_456));
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(1.46));
}

#[test]
fn v2_systemd_driver_without_io_controller_or_limit() {
    let roots = roots("v2-systemd");
    let place = locate(&roots, 3456, V2_SYSTEMD_ID).unwrap();
    let scope = format!("docker-{V2_SYSTEMD_ID}.scope");
    assert_eq!(
        place,
        Place::V2(roots.cgroup.join("system.slice").join(scope))
    );
    let r = read(&roots, &place, 3456, &mut Files::default()).unwrap();
    assert_eq!(
        r,
        Reading {
            cpu_ns: 73_015_000,
            memory_usage: 1_433_600,
            inactive_file: 0,
            limit: None,
            block_read: 0,
            block_written: 0,
            pids: Some(3),
            rx_bytes: 0,
            tx_bytes: 0,
        }
    );
    let f = figures(&r, host_memory(&roots).unwrap(), None);
    assert_eq!(count(&f, Metric::MemoryLimit), Some(3_884_096 * 1024));
    assert_eq!(count(&f, Metric::MemoryUsage), Some(1_433_600));
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(0.04));
}

#[test]
fn locate_refuses_another_containers_pid_and_missing_things() {
    let hybrid = roots("v1-hybrid");
    let other = V2_SYSTEMD_ID;
    let e = locate(&hybrid, 9734, other).unwrap_err();
    assert!(e.contains("is not the container's"), "{e}");
    let e = locate(&hybrid, 999_999, HYBRID_ID).unwrap_err();
    assert!(e.contains("proc/999999/cgroup"), "{e}");
    // Nothing mounted where we look.
    let bare = Roots {
        cgroup: tree("v1-hybrid").join("nowhere"),
        proc: hybrid.proc.clone(),
    };
    let e = locate(&bare, 9734, HYBRID_ID).unwrap_err();
    assert!(e.contains("no cpuacct cgroup directory"), "{e}");
    let bare = Roots {
        cgroup: tree("v2-systemd").join("nowhere"),
        proc: roots("v2-systemd").proc,
    };
    let e = locate(&bare, 3456, V2_SYSTEMD_ID).unwrap_err();
    assert!(e.contains("no cgroup directory"), "{e}");
}

#[test]
fn locate_refuses_a_process_outside_our_cgroup_namespace() {
    let s = Scratch::new();
    let line = format!("0::/../../system.slice/docker-{V2_SYSTEMD_ID}.scope\n");
    s.write("proc/77/cgroup", line.as_bytes());
    let roots = Roots {
        cgroup: tree("v2-systemd").join("cgroup"),
        proc: s.0.join("proc"),
    };
    let e = locate(&roots, 77, V2_SYSTEMD_ID).unwrap_err();
    assert!(e.contains("outside our cgroup namespace"), "{e}");
    s.write("proc/78/cgroup", b"garbage\n\xff\xfe\n");
    let e = locate(&roots, 78, V2_SYSTEMD_ID).unwrap_err();
    assert!(e.contains("names neither"), "{e}");
}

#[test]
fn a_vanished_container_is_an_error_naming_the_file() {
    let roots = roots("v2-cgroupfs");
    let place = locate(&roots, 2345, V2_CGROUPFS_ID).unwrap();
    // The process is gone: its net/dev is the last file read.
    let e = read(&roots, &place, 999_999, &mut Files::default()).unwrap_err();
    assert!(
        e.contains("999999/net/dev") && e.contains("No such file"),
        "{e}"
    );
    // The cgroup is gone.
    let gone = Place::V2(roots.cgroup.join("docker").join("gone"));
    let e = read(&roots, &gone, 2345, &mut Files::default()).unwrap_err();
    assert!(e.contains("gone/cpu.stat"), "{e}");
    let gone = Place::V1 {
        cpuacct: roots.cgroup.join("gone"),
        memory: roots.cgroup.join("gone"),
        blkio: None,
        pids: None,
    };
    let e = read(&roots, &gone, 2345, &mut Files::default()).unwrap_err();
    assert!(e.contains("gone/cpuacct.usage"), "{e}");
}

#[test]
fn garbled_or_oversized_files_are_errors() {
    let s = Scratch::new();
    s.write("cg/cpu.stat", b"usage_usec 12\n");
    s.write("cg/memory.current", b"lots\n");
    let roots = Roots {
        cgroup: s.0.clone(),
        proc: s.0.join("proc"),
    };
    let place = Place::V2(s.0.join("cg"));
    let e = read(&roots, &place, 1, &mut Files::default()).unwrap_err();
    assert!(
        e.contains("memory.current: not what the kernel writes"),
        "{e}"
    );
    s.write("cg/memory.current", b"100\n");
    s.write("cg/memory.max", b"max\n");
    let mut big = b"inactive_file 1\n".to_vec();
    big.resize(MAX_FILE + 1, b'x');
    s.write("cg/memory.stat", &big);
    let e = read(&roots, &place, 1, &mut Files::default()).unwrap_err();
    assert!(e.contains("memory.stat: file too large"), "{e}");
    // Exactly at the bound is fine.
    big.truncate(MAX_FILE);
    s.write("cg/memory.stat", &big);
    s.write("proc/1/net/dev", b"");
    let r = read(&roots, &place, 1, &mut Files::default()).unwrap();
    assert_eq!((r.inactive_file, r.pids, r.block_read), (1, None, 0));
    s.write("meminfo", b"MemFree: 1 kB\n");
    let e = host_memory(&Roots {
        cgroup: s.0.clone(),
        proc: s.0.clone(),
    })
    .unwrap_err();
    assert!(e.contains("meminfo: not what the kernel writes"), "{e}");
}

fn reading(usage: u64, inactive: u64, limit: Option<u64>) -> Reading {
    Reading {
        cpu_ns: 0,
        memory_usage: usage,
        inactive_file: inactive,
        limit,
        block_read: 1,
        block_written: 2,
        pids: None,
        rx_bytes: 3,
        tx_bytes: 4,
    }
}

#[test]
fn figures_follow_the_engine_and_the_cli() {
    // The page cache is subtracted only when smaller than the usage.
    let f = figures(&reading(1000, 1000, Some(4000)), 8000, None);
    assert_eq!(count(&f, Metric::MemoryUsage), Some(1000));
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(25.0));
    // A limit above the host's memory is the host's memory, as the daemon reports it.
    let f = figures(&reading(1000, 0, Some(1 << 40)), 8000, None);
    assert_eq!(count(&f, Metric::MemoryLimit), Some(8000));
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(12.5));
    // Host memory unknown and no limit: no limit, no percentage; the rest stays.
    let f = figures(&reading(1000, 0, None), 0, None);
    assert_eq!(f.get(Metric::MemoryLimit), None);
    assert_eq!(f.get(Metric::MemoryPercent), None);
    assert_eq!(count(&f, Metric::MemoryUsage), Some(1000));
    let io: Vec<_> = [
        Metric::NetworkReceived,
        Metric::NetworkSent,
        Metric::BlockRead,
        Metric::BlockWritten,
    ]
    .iter()
    .map(|&m| count(&f, m))
    .collect();
    assert_eq!(io, [Some(3), Some(4), Some(1), Some(2)]);
    // A limit of 0 is no limit to divide by.
    let f = figures(&reading(1000, 0, Some(0)), 0, None);
    assert_eq!(f.get(Metric::MemoryPercent), None);
    // Two places, rounded.
    let f = figures(&reading(1, 0, Some(3)), 0, None);
    assert_eq!(percent(&f, Metric::MemoryPercent), Some(33.33));
}

#[test]
fn cpu_percent_is_usage_over_elapsed_time() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_secs(2);
    assert_eq!(cpu_percent((0, t0), (1_000_000_000, t1)), Some(50.0));
    // Two cores busy.
    assert_eq!(cpu_percent((0, t0), (4_000_000_000, t1)), Some(200.0));
    assert_eq!(cpu_percent((5, t0), (5 + 1_234_567, t1)), Some(0.06));
    // Restarted (counter went back), no time passed, or the instants swapped.
    assert_eq!(cpu_percent((10, t0), (5, t1)), None);
    assert_eq!(cpu_percent((0, t0), (10, t0)), None);
    assert_eq!(cpu_percent((0, t1), (10, t0)), None);
}

/// Times `locate` and `read` for ten busybox containers on the real engine and compares one with the
/// engine's own stats. Run: `cargo test kernel::tests::live -- --ignored --nocapture`.
#[test]
#[ignore]
fn live_engine_cost_and_agreement() {
    live::run();
}

mod live {
    use super::*;
    use std::process::{Command, Stdio};

    fn docker(args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The image and containers made here, removed on drop, also when an assertion fails.
    struct Made {
        image: String,
        names: Vec<String>,
    }

    impl Drop for Made {
        fn drop(&mut self) {
            let mut args = vec!["rm", "-f"];
            args.extend(self.names.iter().map(String::as_str));
            let _ = Command::new("docker").args(&args).output();
            let _ = Command::new("docker")
                .args(["rmi", "-f", &self.image])
                .output();
        }
    }

    /// The engine's own one-shot stats for a container.
    fn engine_stats(id: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket", "/var/run/docker.sock"])
            .arg(format!("http://x/containers/{id}/stats?stream=false"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn median(mut v: Vec<u128>) -> u128 {
        v.sort_unstable();
        v[v.len() / 2]
    }

    pub fn run() {
        let pid = std::process::id();
        let ctx = Scratch::new();
        std::fs::copy("/bin/busybox", ctx.0.join("busybox")).unwrap();
        ctx.write(
            "Dockerfile",
            b"FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENTRYPOINT [\"/bin/busybox\"]\n",
        );
        let mut made = Made {
            image: format!("bmct-test-busybox-kernel:{pid}"),
            names: Vec::new(),
        };
        docker(&[
            "build",
            "-q",
            "-t",
            &made.image,
            &ctx.0.display().to_string(),
        ]);
        for i in 0..10 {
            let name = format!("bmct{pid}kernel-{i}");
            made.names.push(name.clone());
            // The first has a memory limit and the default bridge network; the rest neither.
            let mut args = vec!["run", "-d", "--name", &name];
            if i == 0 {
                args.extend(["-m", "64m"]);
            } else {
                args.extend(["--network", "none"]);
            }
            args.extend([made.image.as_str(), "sleep", "3600"]);
            docker(&args);
        }
        let roots = Roots {
            cgroup: "/sys/fs/cgroup".into(),
            proc: "/proc".into(),
        };
        let mut containers = Vec::new();
        for name in &made.names {
            let out = docker(&["inspect", "-f", "{{.Id}} {{.State.Pid}}", name]);
            let (id, pid) = out.split_once(' ').unwrap();
            containers.push((id.to_owned(), pid.parse::<u32>().unwrap()));
        }
        // Warm up, then time each call on its own: median over 200 rounds of 10 containers.
        let mut places = Vec::new();
        for (id, pid) in &containers {
            let place = locate(&roots, *pid, id).unwrap();
            read(&roots, &place, *pid, &mut Files::default()).unwrap();
            places.push(place);
        }
        let (mut t_locate, mut t_read) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            for ((id, pid), place) in containers.iter().zip(&places) {
                let t = Instant::now();
                std::hint::black_box(locate(&roots, *pid, id).unwrap());
                t_locate.push(t.elapsed().as_nanos());
                let t = Instant::now();
                std::hint::black_box(read(&roots, place, *pid, &mut Files::default()).unwrap());
                t_read.push(t.elapsed().as_nanos());
            }
        }
        eprintln!(
            "per container, median of {}: locate {} us, read {} us",
            t_read.len(),
            median(t_locate) / 1000,
            median(t_read) / 1000
        );

        // Agreement with the engine for the first container: ours read just before and just after the
        // engine's sample, which the engine takes in between (a fresh container on a bridge still gets
        // the odd packet).
        let (id, pid) = &containers[0];
        let host = host_memory(&roots).unwrap();
        let before = read(&roots, &places[0], *pid, &mut Files::default()).unwrap();
        let theirs = engine_stats(id);
        let after = read(&roots, &places[0], *pid, &mut Files::default()).unwrap();
        let mem = &theirs["memory_stats"];
        let usage = mem["usage"].as_u64().unwrap();
        let cache = mem["stats"]["total_inactive_file"].as_u64().unwrap();
        let net = &theirs["networks"]["eth0"];
        let (rx, tx) = (net["rx_bytes"].as_u64(), net["tx_bytes"].as_u64());
        let f = figures(&before, host, None);
        eprintln!(
            "engine: usage {usage} - inactive {cache} = {}, limit {}, pids {}, rx {rx:?} tx {tx:?}",
            usage - cache,
            mem["limit"],
            theirs["pids_stats"]["current"],
        );
        eprintln!(
            "ours:   usage {} - inactive {} = {:?}, limit {:?}, pids {:?}, rx {}..{} tx {}..{}",
            before.memory_usage,
            before.inactive_file,
            count(&f, Metric::MemoryUsage),
            count(&f, Metric::MemoryLimit),
            before.pids,
            before.rx_bytes,
            after.rx_bytes,
            before.tx_bytes,
            after.tx_bytes
        );
        let used = count(&f, Metric::MemoryUsage).unwrap() as f64;
        assert!((used - (usage - cache) as f64).abs() <= 0.01 * used);
        assert_eq!(count(&f, Metric::MemoryLimit), mem["limit"].as_u64());
        assert_eq!(before.pids, theirs["pids_stats"]["current"].as_u64());
        let between = |n: Option<u64>, a: u64, b: u64| n.is_some_and(|n| a <= n && n <= b);
        assert!(between(rx, before.rx_bytes, after.rx_bytes));
        assert!(between(tx, before.tx_bytes, after.tx_bytes));
        // An unlimited one: the engine reports the host's memory.
        let (id, pid) = &containers[1];
        let f = figures(
            &read(&roots, &places[1], *pid, &mut Files::default()).unwrap(),
            host,
            None,
        );
        let theirs = engine_stats(id);
        eprintln!(
            "unlimited: engine limit {}, ours {:?}",
            theirs["memory_stats"]["limit"],
            count(&f, Metric::MemoryLimit)
        );
        assert_eq!(
            count(&f, Metric::MemoryLimit),
            theirs["memory_stats"]["limit"].as_u64()
        );
    }
}

#[test]
fn kept_files_are_read_again_from_their_start_and_given_back_with_the_container() {
    let s = Scratch::new();
    s.write("cg/cpu.stat", b"usage_usec 12\n");
    s.write("cg/memory.current", b"100\n");
    s.write("cg/memory.max", b"max\n");
    s.write("cg/memory.stat", b"inactive_file 1\n");
    s.write("proc/1/net/dev", b"");
    let roots = Roots {
        cgroup: s.0.clone(),
        proc: s.0.join("proc"),
    };
    let place = Place::V2(s.0.join("cg"));
    keep_files_open();
    let mut files = Files::default();
    let r = read(&roots, &place, 1, &mut files).unwrap();
    assert_eq!(r.cpu_ns, 12_000);
    let kept = files.kept.iter().flatten().count();
    assert!(kept >= 5, "cpu, memory x3 and net/dev kept: {kept}");
    // The same files, written anew in place (as the kernel's change under an open descriptor).
    s.write("cg/cpu.stat", b"usage_usec 4000\n");
    s.write("cg/memory.current", b"2048\n");
    let r = read(&roots, &place, 1, &mut files).unwrap();
    assert_eq!((r.cpu_ns, r.memory_usage), (4_000_000, 2048));
    // Descriptors go back to the budget with the container.
    let before = KEEP_BUDGET.load(Ordering::Relaxed);
    drop(files);
    assert!(KEEP_BUDGET.load(Ordering::Relaxed) >= before + kept);
}
