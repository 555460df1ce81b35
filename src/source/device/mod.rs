//! The device itself as a pseudo-service: the host's CPU use, load, memory and swap, the CPU's
//! temperature, a Raspberry Pi's power and throttling flags, storage, uptime and bytes per network
//! interface. Collected in the loop's own tick and published through the same naming, payload and
//! discovery code as a container's figures (`publish::tick`), under a service name of its own.
//!
//! The host's `/proc` tables (`stat`, `meminfo`, `loadavg`, `uptime`, and pid 1's `net/dev`, which is
//! the host's network namespace when `/proc` is the host's) are read here, kept open between ticks and
//! read with the kernel module's bound; the kernel answers them from its own counters without waiting
//! on any device. Everything that may reach a driver or a remote filesystem (thermal zones, the Pi's
//! firmware flags, `statvfs`) is read by `reader`'s child process with a bound. Which files those are is
//! found once at start; what is not there (no thermal zone, no Pi) is simply not published.

pub mod procfs;
pub mod reader;
pub mod sysfs;

use crate::config::Collector;
use crate::publish::balena::topic_level;
use crate::source::kernel::{open, read_whole};
use crate::stats::{Figures, Metric, Value};
use crate::{debug, info, warn};
use procfs::CpuTimes;
use reader::{Answer, Item, Reader, BOUND};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use sysfs::Flag;

/// What the device collector needs from the settings.
pub struct Settings {
    /// The pseudo-service's name: the `{service_name}` of its topics.
    pub service: String,
    /// Where the host's `/proc` and `/sys` are, as this process sees them.
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Paths whose filesystems' size and use are published.
    pub disk_paths: Vec<String>,
    /// The paths were configured, not the defaults: one that is not there is worth a warning (the
    /// default `/mnt/data` exists only on balenaOS's host).
    pub disks_configured: bool,
}

impl From<&Collector> for Settings {
    fn from(c: &Collector) -> Settings {
        Settings {
            service: c.device_service_name.clone(),
            proc_root: c.proc_root.clone().into(),
            sys_root: c.host_sys_root.clone().into(),
            disk_paths: c.device_disk_paths.clone(),
            disks_configured: c.device_disk_paths_configured,
        }
    }
}

/// One tick's figures of one part of the device: the whole device (`part` none), a network interface
/// or a filesystem (`part` its topic level: `eth0`, `disk_root`).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub part: Option<String>,
    pub figures: Figures,
}

/// The `/proc` files, by slot.
const STAT: usize = 0;
const MEMINFO: usize = 1;
const LOADAVG: usize = 2;
const UPTIME: usize = 3;
const NETDEV: usize = 4;
const FILES: [&str; 5] = ["stat", "meminfo", "loadavg", "uptime", "1/net/dev"];
/// Thermal zones and filesystems read at most.
const MAX_ZONES: usize = 8;
const MAX_DISKS: usize = 16;
/// A CPU figure takes two readings: the first collection takes its second this long after its first.
const FIRST_CPU_WINDOW: Duration = Duration::from_secs(1);

/// What one of the reader's items is read for.
enum Use {
    Temperature,
    /// The `rpi_volt` hwmon's under-voltage alarm.
    UnderVoltage,
    /// The firmware's `get_throttled` node: every flag, now and since boot.
    Throttled,
    Disk {
        label: String,
    },
}

pub struct Device {
    service: String,
    proc: PathBuf,
    files: [Option<OwnedFd>; 5],
    buf: Vec<u8>,
    /// The previous CPU reading.
    cpu: Option<CpuTimes>,
    /// When the collection under way is to be taken.
    due: Option<Instant>,
    /// Gone once it missed its bound.
    reader: Option<Reader>,
    /// Per reader item: what it is for, and its path for the log.
    uses: Vec<(Use, String)>,
    disks_configured: bool,
    /// Problems already logged, one bit each (`/proc` files, then reader items): each is said once.
    warned: u64,
}

impl Device {
    /// Finds the files to read and forks the reader. Call before any thread is started.
    pub fn new(s: Settings) -> Device {
        let mut uses = Vec::new();
        let mut found = Vec::new();
        let zones = cpu_zones(&s.sys_root);
        for (zone, zone_type) in &zones {
            uses.push((Use::Temperature, zone.join("temp").display().to_string()));
            found.push(format!(
                "CPU temperature from {} ({zone_type})",
                zone.display()
            ));
        }
        if zones.is_empty() {
            found.push(format!(
                "no CPU thermal zone under {}: no temperature",
                s.sys_root.join("class/thermal").display()
            ));
        }
        // The hwmon alarm is the kernel's current interface; recent kernels log the firmware node as
        // deprecated, and their hwmon driver clears the node's since-boot bits every 2 s anyway.
        if let Some(alarm) = rpi_volt_alarm(&s.sys_root) {
            found.push(format!("under-voltage from {}", alarm.display()));
            uses.push((Use::UnderVoltage, alarm.display().to_string()));
        } else if let Some(node) = throttled_node(&s.sys_root) {
            found.push(format!("throttling flags from {}", node.display()));
            uses.push((Use::Throttled, node.display().to_string()));
        }
        for path in s.disk_paths.iter().take(MAX_DISKS) {
            let label = sysfs::disk_label(path);
            uses.push((Use::Disk { label }, path.clone()));
        }
        let items = uses
            .iter()
            .map(|(u, path)| match u {
                Use::Disk { .. } => Item::disk(Path::new(path)),
                _ => Item::file(Path::new(path)),
            })
            .collect::<Vec<_>>();
        let reader = match items.is_empty() {
            true => None,
            false => Reader::start(items)
                .map_err(|e| warn!("device: cannot start the reader for temperature, throttling and storage ({e}): those figures are left out"))
                .ok(),
        };
        info!(
            "device figures as service {:?}: {}; storage of {:?}",
            s.service,
            found.join("; "),
            s.disk_paths
        );
        Device {
            service: s.service,
            proc: s.proc_root,
            files: Default::default(),
            buf: Vec::new(),
            cpu: None,
            due: None,
            reader,
            uses,
            disks_configured: s.disks_configured,
            warned: 0,
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// A tick is due. The first takes a CPU reading now and its figures a little later, so that it has
    /// a CPU figure too (a `--once` run's only tick included).
    pub fn start(&mut self, now: Instant) {
        if self.cpu.is_none() {
            self.cpu = self.parse(STAT, procfs::cpu_times);
            if self.cpu.is_some() {
                self.due = Some(now + FIRST_CPU_WINDOW);
                return;
            }
        }
        self.due = Some(now);
    }

    /// A collection is waiting for its time.
    pub fn busy(&self) -> bool {
        self.due.is_some()
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// The tick's records once it is due: the whole device, then each interface, then each filesystem.
    pub fn collect(&mut self, now: Instant) -> Option<Vec<Record>> {
        if self.due.is_none_or(|d| now < d) {
            return None;
        }
        self.due = None;
        if let Some(r) = &mut self.reader {
            r.ask();
        }
        let mut whole = Figures::default();
        if let Some(t) = self.parse(STAT, procfs::cpu_times) {
            if let Some(p) = self.cpu.and_then(|before| procfs::cpu_percent(before, t)) {
                whole.set(Metric::CpuPercent, Value::Percent(p));
            }
            self.cpu = Some(t);
        }
        if let Some(m) = self.parse(MEMINFO, procfs::memory) {
            let used = m.total.saturating_sub(m.available);
            whole.set(Metric::MemoryUsage, Value::Count(used));
            whole.set(Metric::MemoryLimit, Value::Count(m.total));
            if m.total > 0 {
                let p = (used as f64 * 10_000.0 / m.total as f64).round() / 100.0;
                whole.set(Metric::MemoryPercent, Value::Percent(p));
            }
            let swap = m.swap_total.saturating_sub(m.swap_free);
            whole.set(Metric::SwapUsage, Value::Count(swap));
            whole.set(Metric::SwapTotal, Value::Count(m.swap_total));
        }
        if let Some(loads) = self.parse(LOADAVG, procfs::load_averages) {
            let metrics = [
                Metric::LoadAverage1m,
                Metric::LoadAverage5m,
                Metric::LoadAverage15m,
            ];
            for (m, l) in metrics.into_iter().zip(loads) {
                whole.set(m, Value::Hundredths(l));
            }
        }
        if let Some(s) = self.parse(UPTIME, procfs::uptime_seconds) {
            whole.set(Metric::Uptime, Value::Count(s));
        }
        let interfaces = self.parse(NETDEV, |t| {
            let list = procfs::interfaces(t)?;
            let records = list.into_iter().map(|i| {
                let mut f = Figures::default();
                f.set(Metric::NetworkReceived, Value::Count(i.received));
                f.set(Metric::NetworkSent, Value::Count(i.sent));
                Record {
                    part: Some(topic_level(i.name)),
                    figures: f,
                }
            });
            Some(records.collect::<Vec<_>>())
        });
        let mut records = vec![Record {
            part: None,
            figures: whole,
        }];
        records.extend(interfaces.into_iter().flatten());
        self.take_answers(&mut records);
        Some(records)
    }

    /// The reader's answers into the whole device's figures (`records[0]`) and a record per filesystem.
    fn take_answers(&mut self, records: &mut Vec<Record>) {
        let Device {
            reader,
            uses,
            warned,
            disks_configured,
            ..
        } = self;
        let Some(r) = reader else { return };
        let Some(answers) = r.answers(BOUND) else {
            warn!(
                "device: reading {} did not finish within {}s (a driver or filesystem that does not answer): temperature, throttling and storage figures are left out from now on",
                uses.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(", "),
                BOUND.as_secs()
            );
            *reader = None;
            return;
        };
        let mut hottest = None;
        for (i, ((what, path), answer)) in uses.iter().zip(answers).enumerate() {
            let bit = 1u64 << (FILES.len() + i).min(63);
            let text = match answer {
                Answer::Failed(errno) => {
                    if *warned & bit == 0 {
                        *warned |= bit;
                        let missing = errno == libc::ENOENT;
                        let e = std::io::Error::from_raw_os_error(errno);
                        match what {
                            Use::Disk { .. } if missing && !*disks_configured => debug!(
                                "device: {path} is not there: no storage figures for it (device_disk_paths)"
                            ),
                            Use::Disk { .. } if missing => warn!(
                                "device: {path} (device_disk_paths) does not exist: no storage figures for it"
                            ),
                            _ => warn!("device: {path}: {e}; its figures are left out"),
                        }
                    }
                    continue;
                }
                Answer::Space { total, used } => {
                    if let Use::Disk { label } = what {
                        let mut f = Figures::default();
                        f.set(Metric::StorageUsed, Value::Count(used));
                        f.set(Metric::StorageTotal, Value::Count(total));
                        records.push(Record {
                            part: Some(label.clone()),
                            figures: f,
                        });
                    }
                    continue;
                }
                Answer::Text(t) => t,
            };
            let whole = &mut records[0].figures;
            let ok = match what {
                Use::Temperature => sysfs::millidegrees(text)
                    .map(|m| hottest = hottest.max(Some(m)))
                    .is_some(),
                Use::UnderVoltage => sysfs::alarm(text)
                    .map(|on| whole.set(Metric::UnderVoltage, Value::Flag(on)))
                    .is_some(),
                Use::Throttled => sysfs::throttled(text)
                    .map(|flags| set_flags(whole, flags))
                    .is_some(),
                Use::Disk { .. } => false,
            };
            if !ok && *warned & bit == 0 {
                *warned |= bit;
                warn!(
                    "device: {path} holds {:?}, not what the kernel writes; its figures are left out",
                    String::from_utf8_lossy(text).trim()
                );
            }
        }
        if let Some(m) = hottest {
            let c = sysfs::hundredths_of_degree(m);
            records[0]
                .figures
                .set(Metric::CpuTemperature, Value::Hundredths(c));
        }
    }

    /// Reads a `/proc` file (kept open) and parses it; a file that cannot be read or parsed is said
    /// once, and its figures are left out.
    fn parse<T>(&mut self, file: usize, f: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let path = self.proc.join(FILES[file]);
        let read = match &self.files[file] {
            Some(fd) => read_whole(fd, &mut self.buf),
            None => open(&path).and_then(|fd| {
                read_whole(&fd, &mut self.buf)?;
                self.files[file] = Some(fd);
                Ok(())
            }),
        };
        let why = match read {
            Ok(()) => match f(&self.buf) {
                Some(v) => return Some(v),
                None => "not what the kernel writes".to_owned(),
            },
            Err(e) => {
                self.files[file] = None;
                e.to_string()
            }
        };
        let bit = 1u64 << file;
        if self.warned & bit == 0 {
            self.warned |= bit;
            warn!(
                "device: {}: {why}; its figures are left out",
                path.display()
            );
        }
        None
    }
}

/// The eight flags of the firmware's throttled word.
fn set_flags(f: &mut Figures, flags: u32) {
    const NOW: [Metric; 4] = [
        Metric::UnderVoltage,
        Metric::FrequencyCapped,
        Metric::Throttled,
        Metric::SoftTemperatureLimit,
    ];
    const SINCE_BOOT: [Metric; 4] = [
        Metric::UnderVoltageSinceBoot,
        Metric::FrequencyCappedSinceBoot,
        Metric::ThrottledSinceBoot,
        Metric::SoftTemperatureLimitSinceBoot,
    ];
    for (i, flag) in Flag::ALL.into_iter().enumerate() {
        let (now, since_boot) = flag.read(flags);
        f.set(NOW[i], Value::Flag(now));
        f.set(SINCE_BOOT[i], Value::Flag(since_boot));
    }
}

/// The entries of a directory, in name order; none when it cannot be read.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// A small attribute's text. `type` and `name` are strings the driver registered, not read from its
/// hardware, so reading them here cannot wait on a device.
fn attribute(path: &Path) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    read_whole(&open(path).ok()?, &mut buf).ok()?;
    Some(buf)
}

/// The thermal zones of the CPU (see [`sysfs::is_cpu_zone`]), with their types.
fn cpu_zones(sys: &Path) -> Vec<(PathBuf, String)> {
    let mut zones = Vec::new();
    for zone in entries(&sys.join("class/thermal")) {
        let is_zone = zone
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"thermal_zone"));
        let Some(t) = attribute(&zone.join("type")).filter(|_| is_zone) else {
            continue;
        };
        if sysfs::is_cpu_zone(&t) && zones.len() < MAX_ZONES {
            zones.push((zone, String::from_utf8_lossy(t.trim_ascii()).into_owned()));
        }
    }
    zones
}

/// A Raspberry Pi's under-voltage alarm: `in0_lcrit_alarm` of the hwmon named `rpi_volt`.
fn rpi_volt_alarm(sys: &Path) -> Option<PathBuf> {
    entries(&sys.join("class/hwmon")).into_iter().find_map(|h| {
        let name = attribute(&h.join("name"))?;
        let alarm = h.join("in0_lcrit_alarm");
        (name.trim_ascii() == b"rpi_volt" && alarm.exists()).then_some(alarm)
    })
}

/// The Raspberry Pi firmware driver's `get_throttled` node, found through the driver's own directory
/// (`soc:firmware` on a Pi 4's device tree; the name differs between boards and kernels).
fn throttled_node(sys: &Path) -> Option<PathBuf> {
    let driver = sys.join("bus/platform/drivers/raspberrypi-firmware");
    entries(&driver)
        .into_iter()
        .map(|d| d.join("get_throttled"))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests;
