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
use crate::{info, warn};
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
/// Thermal zones and filesystems read at most; thermal zone and hwmon numbers looked at.
const MAX_ZONES: usize = 8;
const PROBED: usize = 16;
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
    /// The reader's paths, for the log.
    read_by_reader: String,
    /// Problems already logged, one bit each (`/proc` files, then reader items): each is said once.
    warned: u64,
}

impl Device {
    /// Finds the files to read and forks the reader. Call before any thread is started.
    pub fn new(s: Settings) -> Device {
        let sys = s.sys_root.display();
        let mut uses = Vec::new();
        // Thermal zones and hwmon devices are numbered from 0 as drivers register them: probed rather
        // than listed, which keeps directory listing out of the binary.
        for i in 0..PROBED {
            let zone = format!("{sys}/class/thermal/thermal_zone{i}/");
            let cpu = attribute(&format!("{zone}type")).is_some_and(|t| sysfs::is_cpu_zone(&t));
            if cpu && uses.len() < MAX_ZONES {
                uses.push((Use::Temperature, zone + "temp"));
            }
        }
        // The hwmon alarm is the kernel's current interface; recent kernels log the firmware node as
        // deprecated, and their hwmon driver clears the node's since-boot bits every 2 s anyway.
        let rpi_volt = (0..PROBED)
            .map(|i| format!("{sys}/class/hwmon/hwmon{i}/"))
            .find(|h| {
                attribute(&format!("{h}name")).is_some_and(|n| n.trim_ascii() == b"rpi_volt")
            });
        let node = format!("{sys}/devices/platform/soc/soc:firmware/get_throttled");
        match rpi_volt {
            Some(h) => uses.push((Use::UnderVoltage, h + "in0_lcrit_alarm")),
            // Opened, not read: reading is what runs the driver.
            None if open(Path::new(&node)).is_ok() => uses.push((Use::Throttled, node)),
            None => {}
        }
        for path in s.disk_paths.iter().take(MAX_DISKS) {
            let label = sysfs::disk_label(path);
            uses.push((Use::Disk { label }, path.clone()));
        }
        let items: Vec<Item> = uses
            .iter()
            .map(|(u, path)| match u {
                Use::Disk { .. } => Item::disk(Path::new(path)),
                _ => Item::file(Path::new(path)),
            })
            .collect();
        let paths: Vec<&str> = uses.iter().map(|(_, p)| p.as_str()).collect();
        let read_by_reader = paths.join(", ");
        info!(
            "device figures as service {:?}; read with a bound (no CPU thermal zone, no Raspberry Pi: none of theirs): {read_by_reader}",
            s.service
        );
        let reader = match items.is_empty() {
            true => None,
            false => Reader::start(items)
                .map_err(|e| {
                    warn!(
                        "device: no reader ({e}): temperature, throttling and storage are left out"
                    )
                })
                .ok(),
        };
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
            read_by_reader,
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
        let interfaces = self.parse(NETDEV, interface_records);
        let mut records = vec![Record {
            part: None,
            figures: whole,
        }];
        if let Some(interfaces) = interfaces {
            records.extend(interfaces);
        }
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
            read_by_reader,
            ..
        } = self;
        let Some(r) = reader else { return };
        let Some(answers) = r.answers(BOUND) else {
            warn!(
                "device: reading {read_by_reader} did not finish within {}s (a driver or filesystem that does not answer): those figures are left out from now on",
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
                    // The default /mnt/data exists only on balenaOS's host: not a problem elsewhere.
                    let quiet = errno == libc::ENOENT
                        && matches!(what, Use::Disk { .. })
                        && !*disks_configured;
                    let e = std::io::Error::from_raw_os_error(errno);
                    left_out(warned, bit, path, &e, quiet);
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
            if !ok {
                left_out(warned, bit, path, &GARBLED, false);
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
    fn parse<T>(&mut self, file: usize, parse: fn(&[u8]) -> Option<T>) -> Option<T> {
        let v = match self.load(file) {
            Ok(text) => parse(text).ok_or(None),
            Err(e) => Err(Some(e)),
        };
        v.map_err(|e| self.failed(file, e)).ok()
    }

    fn load(&mut self, file: usize) -> std::io::Result<&[u8]> {
        if self.files[file].is_none() {
            self.files[file] = Some(open(&self.proc.join(FILES[file]))?);
        }
        let read = self.files[file]
            .as_ref()
            .map_or(Ok(()), |fd| read_whole(fd, &mut self.buf));
        if read.is_err() {
            self.files[file] = None;
        }
        read.map(|()| self.buf.as_slice())
    }

    /// Says once that a `/proc` file could not be read (`e`) or is garbled (none).
    fn failed(&mut self, file: usize, e: Option<std::io::Error>) {
        let path = self.proc.join(FILES[file]);
        let why: &dyn std::fmt::Display = match &e {
            Some(e) => e,
            None => &GARBLED,
        };
        left_out(
            &mut self.warned,
            1 << file,
            &path.display().to_string(),
            why,
            false,
        );
    }
}

const GARBLED: &str = "not what the kernel writes";

/// Says once per `bit` of `warned` (not at all when `quiet`) that a file's figures are left out.
fn left_out(warned: &mut u64, bit: u64, path: &str, why: &dyn std::fmt::Display, quiet: bool) {
    if *warned & bit == 0 && !quiet {
        warn!("device: {path}: {why}; its figures are left out");
    }
    *warned |= bit;
}

/// The interfaces' records from `net/dev`.
fn interface_records(text: &[u8]) -> Option<Vec<Record>> {
    let mut records = Vec::new();
    procfs::interfaces(text, &mut |i| {
        let mut f = Figures::default();
        f.set(Metric::NetworkReceived, Value::Count(i.received));
        f.set(Metric::NetworkSent, Value::Count(i.sent));
        records.push(Record {
            part: Some(topic_level(i.name)),
            figures: f,
        });
    })?;
    Some(records)
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

/// A small attribute's text. `type` and `name` are strings the driver registered, not read from its
/// hardware, so reading them here cannot wait on a device.
fn attribute(path: &str) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    read_whole(&open(Path::new(path)).ok()?, &mut buf).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests;
