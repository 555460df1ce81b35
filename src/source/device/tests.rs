//! The device collector against the fixture trees in `tests/data/device/`: `x86` copied from this
//! project's CI machine, `rpi4` hand-written in a Raspberry Pi 4 kernel's formats (see its README), and
//! trees derived from them in scratch directories. The reader's child is the real one.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

fn tree(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/device")
        .join(name)
}

fn settings(root: &Path, disks: &[&str]) -> Settings {
    Settings {
        service: "@device".into(),
        proc_root: root.join("proc"),
        sys_root: root.join("sys"),
        disk_paths: disks.iter().map(|d| d.to_string()).collect(),
        disks_configured: true,
    }
}

/// One collection: started, then taken once due (its first CPU reading's second is a second later).
fn collect(d: &mut Device) -> Vec<Record> {
    let t0 = Instant::now();
    d.start(t0);
    assert!(d.busy());
    let due = d.deadline().expect("a deadline");
    if due > t0 {
        assert!(d.collect(t0).is_none(), "not due yet");
    }
    let records = d.collect(due).expect("due");
    assert!(!d.busy());
    records
}

fn whole(records: &[Record]) -> &Figures {
    assert_eq!(records[0].part, None, "the whole device first");
    &records[0].figures
}

fn parts(records: &[Record]) -> Vec<(&str, Vec<(Metric, Value)>)> {
    records[1..]
        .iter()
        .map(|r| (r.part.as_deref().unwrap(), r.figures.iter().collect()))
        .collect()
}

const FLAGS: [Metric; 8] = [
    Metric::UnderVoltage,
    Metric::FrequencyCapped,
    Metric::Throttled,
    Metric::SoftTemperatureLimit,
    Metric::UnderVoltageSinceBoot,
    Metric::FrequencyCappedSinceBoot,
    Metric::ThrottledSinceBoot,
    Metric::SoftTemperatureLimitSinceBoot,
];

fn flags(f: &Figures) -> Vec<Option<Value>> {
    FLAGS.iter().map(|m| f.get(*m)).collect()
}

#[test]
fn an_x86_machine_without_thermal_zones_or_firmware_flags() {
    let mut d = Device::new(settings(&tree("x86"), &[]));
    assert!(d.reader.is_none(), "nothing for the reader to read");
    let r = collect(&mut d);
    let f = whole(&r);
    assert_eq!(
        f.get(Metric::MemoryLimit),
        Some(Value::Count(24683792 * 1024))
    );
    assert_eq!(
        f.get(Metric::MemoryUsage),
        Some(Value::Count((24683792 - 22948124) * 1024))
    );
    assert_eq!(f.get(Metric::MemoryPercent), Some(Value::Percent(7.03)));
    assert_eq!(f.get(Metric::SwapUsage), Some(Value::Count(0)));
    assert_eq!(f.get(Metric::SwapTotal), Some(Value::Count(0)));
    assert_eq!(f.get(Metric::LoadAverage1m), Some(Value::Hundredths(717)));
    assert_eq!(f.get(Metric::LoadAverage5m), Some(Value::Hundredths(761)));
    assert_eq!(f.get(Metric::LoadAverage15m), Some(Value::Hundredths(610)));
    assert_eq!(f.get(Metric::Uptime), Some(Value::Count(5566)));
    // The same stat file twice: no time passed, so no CPU figure rather than a made-up one.
    assert_eq!(f.get(Metric::CpuPercent), None);
    assert_eq!(f.get(Metric::CpuTemperature), None);
    assert!(flags(f).iter().all(Option::is_none));
    assert_eq!(
        parts(&r),
        [(
            "eth0",
            vec![
                (Metric::NetworkReceived, Value::Count(547915384)),
                (Metric::NetworkSent, Value::Count(924981))
            ]
        )],
        "lo, the ifb mirrors and the docker0 bridge left out"
    );
    assert_eq!(d.warned, 0, "nothing missing is a problem");
}

#[test]
fn a_raspberry_pi_4() {
    let mut d = Device::new(settings(&tree("rpi4"), &[]));
    assert_eq!(d.uses.len(), 2, "the CPU's zone and the rpi_volt alarm");
    let r = collect(&mut d);
    let f = whole(&r);
    assert_eq!(f.get(Metric::CpuTemperature), Some(Value::Hundredths(4869)));
    // The hwmon alarm, not the deprecated firmware node: under-voltage now, nothing else.
    assert_eq!(
        flags(f),
        [
            Some(Value::Flag(false)),
            None,
            None,
            None,
            None,
            None,
            None,
            None
        ]
    );
    assert_eq!(
        f.get(Metric::MemoryLimit),
        Some(Value::Count(3882652 * 1024))
    );
    assert_eq!(
        f.get(Metric::MemoryUsage),
        Some(Value::Count((3882652 - 3112908) * 1024))
    );
    assert_eq!(f.get(Metric::MemoryPercent), Some(Value::Percent(19.83)));
    assert_eq!(
        f.get(Metric::SwapUsage),
        Some(Value::Count((1941324 - 1918796) * 1024))
    );
    assert_eq!(f.get(Metric::SwapTotal), Some(Value::Count(1941324 * 1024)));
    assert_eq!(f.get(Metric::LoadAverage15m), Some(Value::Hundredths(38)));
    assert_eq!(f.get(Metric::Uptime), Some(Value::Count(86423)));
    let names: Vec<&str> = parts(&r).into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, ["eth0", "wlan0", "resin-vpn", "wwan0"]);
    assert_eq!(
        parts(&r)[3].1,
        [
            (Metric::NetworkReceived, Value::Count(48213977)),
            (Metric::NetworkSent, Value::Count(9213312))
        ]
    );
    assert_eq!(d.warned, 0);
}

/// A scratch copy of a fixture tree (symlinks kept), without the entries `skip` names.
struct Copy(PathBuf);

impl Copy {
    fn of(name: &str, skip: &[&str]) -> Copy {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bmct-device-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy(&tree(name), &dir, &tree(name), skip);
        Copy(dir)
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.0.join(rel), text).unwrap();
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy(from: &Path, to: &Path, top: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let rel = e.path().strip_prefix(top).unwrap().display().to_string();
        if skip.contains(&rel.as_str()) {
            continue;
        }
        let dest = to.join(e.file_name());
        let kind = e.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), dest).unwrap();
        } else if kind.is_dir() {
            copy(&e.path(), &dest, top, skip);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_pi_kernel_without_the_hwmon_has_every_flag_from_the_firmware_node() {
    let pi = Copy::of("rpi4", &["sys/class/hwmon"]);
    let mut d = Device::new(settings(&pi.0, &[]));
    let f = collect(&mut d).remove(0).figures;
    // 0x50000: under-voltage and throttling have occurred since boot; nothing now.
    let (no, yes) = (Some(Value::Flag(false)), Some(Value::Flag(true)));
    assert_eq!(flags(&f), [no, no, no, no, yes, no, yes, no]);
    pi.write(
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        "e0008\n",
    );
    d.start(Instant::now());
    let f = d.collect(Instant::now()).unwrap().remove(0).figures;
    assert_eq!(flags(&f), [no, no, no, yes, no, yes, yes, yes]);
}

#[test]
fn garbled_and_missing_files_leave_their_figures_out_once_said() {
    let pi = Copy::of("rpi4", &["sys/class/hwmon", "proc/loadavg"]);
    pi.write(
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        "soon\n",
    );
    let missing = pi.0.join("not-there");
    let missing = missing.to_str().unwrap();
    let mut d = Device::new(settings(&pi.0, &[missing]));
    for _ in 0..3 {
        let r = collect(&mut d);
        let f = whole(&r);
        assert!(flags(f).iter().all(Option::is_none));
        assert_eq!(f.get(Metric::LoadAverage1m), None);
        assert_eq!(f.get(Metric::CpuTemperature), Some(Value::Hundredths(4869)));
        assert!(
            f.get(Metric::MemoryUsage).is_some(),
            "the rest still goes out"
        );
        assert_eq!(r.len(), 5, "four interfaces, no filesystem");
    }
    // Said once each: the load file, the node, the missing path.
    assert_eq!(d.warned.count_ones(), 3, "{:b}", d.warned);
}

#[test]
fn storage_of_each_path_as_statvfs_counts_it() {
    let here = env!("CARGO_MANIFEST_DIR");
    let mut d = Device::new(settings(&tree("x86"), &["/", here]));
    let r = collect(&mut d);
    let disks: Vec<_> = r
        .iter()
        .filter(|r| r.part.as_deref().is_some_and(|p| p.starts_with("disk_")))
        .collect();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].part.as_deref(), Some("disk_root"));
    assert_eq!(disks[1].part, Some(sysfs::disk_label(here)));
    for disk in disks {
        let (Some(Value::Count(used)), Some(Value::Count(total))) = (
            disk.figures.get(Metric::StorageUsed),
            disk.figures.get(Metric::StorageTotal),
        ) else {
            panic!("{disk:?}")
        };
        assert!(total > 0 && used <= total, "{used} of {total}");
    }
}

#[test]
fn cpu_use_over_the_time_between_two_readings() {
    let x86 = Copy::of("x86", &[]);
    x86.write("proc/stat", "cpu  1000 0 500 8000 500 0 0 0 0 0\n");
    let mut d = Device::new(settings(&x86.0, &[]));
    let t0 = Instant::now();
    d.start(t0);
    // 400 ticks busy, 600 idle or waiting on I/O since the first reading.
    x86.write("proc/stat", "cpu  1300 0 600 8500 600 0 0 0 0 0\n");
    let f = d.collect(d.deadline().unwrap()).unwrap().remove(0).figures;
    assert_eq!(f.get(Metric::CpuPercent), Some(Value::Percent(40.0)));
    // The next tick's figure is from that reading on, and is taken when the tick is due.
    x86.write("proc/stat", "cpu  1300 0 700 8800 600 0 0 0 0 0\n");
    d.start(t0);
    assert_eq!(d.deadline(), Some(t0));
    let f = d.collect(t0).unwrap().remove(0).figures;
    assert_eq!(f.get(Metric::CpuPercent), Some(Value::Percent(25.0)));
}
