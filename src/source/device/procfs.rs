//! The host's `/proc` files the device's figures come from, read into numbers: `stat` (CPU time),
//! `meminfo`, `loadavg`, `uptime` and `net/dev` (bytes per interface).
//!
//! Pure: each parser takes the file's bytes and answers `None` where they are not what the kernel
//! writes, so a garbled file leaves its figures out rather than publishing a 0.

use crate::source::kernel::counters::{fields, integer, lines};

/// Clock ticks the CPUs spent, summed over all of them since boot (`/proc/stat`'s `cpu` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Everything but idle and iowait (a CPU waiting for I/O is idle and could run something else).
    pub busy: u64,
    pub total: u64,
}

/// The `cpu` line: user nice system idle iowait irq softirq steal guest guest_nice. Guest time is
/// already counted in user and nice, so it is not added again. Kernels before 2.6.11 wrote fewer
/// fields; at least the first four must be there.
pub fn cpu_times(text: &[u8]) -> Option<CpuTimes> {
    let line = lines(text).next()?;
    let mut f = fields(line);
    if f.next()? != b"cpu" {
        return None;
    }
    let (mut total, mut idle) = (0u64, 0u64);
    for i in 0..8 {
        let n = match f.next() {
            Some(t) => integer(t)?,
            None if i >= 4 => 0,
            None => return None,
        };
        total = total.checked_add(n)?;
        if i == 3 || i == 4 {
            idle += n;
        }
    }
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// All CPUs' use between two readings, in percent of all of them (0 to 100), to two places; `None`
/// when no tick passed or a counter went backwards.
pub fn cpu_percent(before: CpuTimes, now: CpuTimes) -> Option<f64> {
    let total = now.total.checked_sub(before.total).filter(|&t| t > 0)?;
    let busy = now.busy.checked_sub(before.busy)?.min(total);
    Some((busy as f64 * 10_000.0 / total as f64).round() / 100.0)
}

/// `/proc/meminfo`'s figures in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    /// The kernel's estimate of what can be had without swapping (3.14 and later).
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

pub fn memory(text: &[u8]) -> Option<Memory> {
    let mut v = [None; 4];
    let keys: [&[u8]; 4] = [b"MemTotal:", b"MemAvailable:", b"SwapTotal:", b"SwapFree:"];
    for line in lines(text) {
        for (slot, key) in v.iter_mut().zip(keys) {
            if let Some(rest) = line.strip_prefix(key) {
                let kib = rest.trim_ascii().strip_suffix(b"kB")?.trim_ascii_end();
                *slot = Some(integer(kib)?.checked_mul(1024)?);
            }
        }
    }
    Some(Memory {
        total: v[0]?,
        available: v[1]?,
        swap_total: v[2]?,
        swap_free: v[3]?,
    })
}

/// `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`): the 1, 5 and 15 minute averages in hundredths, as
/// the kernel prints them (two decimals).
pub fn load_averages(text: &[u8]) -> Option<[i64; 3]> {
    let mut f = fields(lines(text).next()?);
    let mut out = [0; 3];
    for slot in &mut out {
        *slot = hundredths(f.next()?)?;
    }
    Some(out)
}

/// `12.34` (or `12.3`, `12`) as 1234.
fn hundredths(text: &[u8]) -> Option<i64> {
    let (whole, frac) = match text.iter().position(|&b| b == b'.') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, &b""[..]),
    };
    let cents = match frac.len() {
        0 => 0,
        1 => integer(frac)? * 10,
        2 => integer(frac)?,
        _ => return None,
    };
    i64::try_from(integer(whole)?.checked_mul(100)?.checked_add(cents)?).ok()
}

/// `/proc/uptime` (`5106.76 7719.85`): whole seconds since boot.
pub fn uptime_seconds(text: &[u8]) -> Option<u64> {
    let first = fields(lines(text).next()?).next()?;
    let whole = first.split(|&b| b == b'.').next()?;
    integer(whole)
}

/// Interfaces published at most; a host with more (containers' veths are left out anyway) has its
/// first ones, in the kernel's order, published.
pub const MAX_INTERFACES: usize = 16;

/// One interface's counters since it came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface<'a> {
    pub name: &'a str,
    pub received: u64,
    pub sent: u64,
}

/// `/proc/<pid>/net/dev`: bytes received and sent per interface, handed to `each`, leaving out those
/// [`counted`] leaves out, [`MAX_INTERFACES`] at most. `None` when a line is garbled (`each` may have
/// had some: the caller drops them).
pub fn interfaces<'a>(text: &'a [u8], each: &mut dyn FnMut(Interface<'a>)) -> Option<()> {
    let mut n = 0;
    for line in lines(text) {
        // Header lines have no colon; old kernels wrote `eth0:123` without a space, hence split on it.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = std::str::from_utf8(line[..colon].trim_ascii()).ok()?;
        if !counted(name) || n == MAX_INTERFACES {
            continue;
        }
        let mut f = fields(&line[colon + 1..]);
        let received = integer(f.next()?)?;
        let sent = integer(f.nth(7)?)?;
        each(Interface {
            name,
            received,
            sent,
        });
        n += 1;
    }
    Some(())
}

/// Whether an interface carries the device's own traffic. Left out: loopback; containers' veths; the
/// virtual bridges of Docker and balenaOS (`docker*`, `br-*`, `balena0`, `supervisor0`, libvirt's
/// `virbr*`), whose traffic also crosses a real interface; balenaOS's `resin-dns` (a dummy for the
/// DNS address); and `ifb*`, which mirror another interface's traffic for shaping.
pub fn counted(name: &str) -> bool {
    const PREFIXES: [&str; 5] = ["veth", "br-", "docker", "virbr", "ifb"];
    const NAMES: [&str; 4] = ["lo", "balena0", "supervisor0", "resin-dns"];
    !name.is_empty() && !NAMES.contains(&name) && !PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_line_into_busy_and_total() {
        let t =
            cpu_times(b"cpu  220984 0 22914 771985 596 0 1142 1024 0 0\ncpu0 1 2 3 4\n").unwrap();
        assert_eq!(t.total, 220984 + 22914 + 771985 + 596 + 1142 + 1024);
        assert_eq!(t.busy, 220984 + 22914 + 1142 + 1024);
        // 2.6.0's four fields; guest columns beyond steal are not added.
        assert_eq!(
            cpu_times(b"cpu 1 2 3 4\n"),
            Some(CpuTimes { busy: 6, total: 10 })
        );
        assert_eq!(
            cpu_times(b"cpu 1 0 0 1 0 0 0 0 500 500\n"),
            Some(CpuTimes { busy: 1, total: 2 })
        );
        for bad in [
            &b"cpu 1 2 3\n"[..],
            b"cpu0 1 2 3 4\n",
            b"cpu 1 x 3 4\n",
            b"",
        ] {
            assert_eq!(cpu_times(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn cpu_percent_of_all_cpus() {
        let a = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let b = CpuTimes {
            busy: 250,
            total: 1400,
        };
        assert_eq!(cpu_percent(a, b), Some(37.5));
        assert_eq!(cpu_percent(a, a), None, "no tick passed");
        assert_eq!(cpu_percent(b, a), None, "backwards");
        let c = CpuTimes { busy: 1, total: 3 };
        assert_eq!(cpu_percent(CpuTimes { busy: 0, total: 0 }, c), Some(33.33));
    }

    #[test]
    fn meminfo_in_bytes() {
        let m = memory(b"MemTotal:       24683792 kB\nMemFree:        18915168 kB\nMemAvailable:   23429504 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n").unwrap();
        assert_eq!(m.total, 24683792 * 1024);
        assert_eq!(m.available, 23429504 * 1024);
        assert_eq!((m.swap_total, m.swap_free), (0, 0));
        // A kernel before 3.14 has no MemAvailable: no memory figures rather than wrong ones.
        assert_eq!(
            memory(b"MemTotal: 1 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"),
            None
        );
        assert_eq!(memory(b"MemTotal: 1 MB\n"), None);
    }

    #[test]
    fn load_averages_in_hundredths() {
        assert_eq!(
            load_averages(b"6.34 7.43 5.12 7/192 29730\n"),
            Some([634, 743, 512])
        );
        assert_eq!(load_averages(b"0.00 0.5 12\n"), Some([0, 50, 1200]));
        for bad in [&b"0.52 0.58\n"[..], b"0.521 1 1\n", b"-1 1 1\n", b"a b c\n"] {
            assert_eq!(
                load_averages(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn uptime_in_whole_seconds() {
        assert_eq!(uptime_seconds(b"5106.76 7719.85\n"), Some(5106));
        assert_eq!(uptime_seconds(b"12 3\n"), Some(12));
        assert_eq!(uptime_seconds(b"x 1\n"), None);
    }

    fn all(text: &[u8]) -> Option<Vec<Interface<'_>>> {
        let mut v = Vec::new();
        interfaces(text, &mut |i| v.push(i))?;
        Some(v)
    }

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    #[test]
    fn interfaces_but_loopback_bridges_and_veths() {
        let text = format!(
            "{HEADER}    lo: 2541496101 5192835    0    0    0     0          0         0 2541496101 5192835    0    0    0     0       0          0\n  eth0: 329429567   11440    0    0    0     0          0         0   499630    6637    0    0    0     0       0          0\ndocker0:       0       0    0    0    0     0          0         0        0       0    0    2    0     0       0          0\nveth1a2b3c4: 5 1 0 0 0 0 0 0 6 1 0 0 0 0 0 0\n wwan0: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n"
        );
        let got = all(text.as_bytes()).unwrap();
        assert_eq!(
            got,
            [
                Interface {
                    name: "eth0",
                    received: 329429567,
                    sent: 499630
                },
                Interface {
                    name: "wwan0",
                    received: 100,
                    sent: 200
                }
            ]
        );
        assert_eq!(all(b"eth0: 1 2 3\n"), None);
        assert_eq!(all(HEADER.as_bytes()), Some(vec![]));
    }

    #[test]
    fn at_most_sixteen_interfaces() {
        let text: String = (0..40)
            .map(|i| format!("usb{i}: {i} 0 0 0 0 0 0 0 {i} 0 0 0 0 0 0 0\n"))
            .collect();
        let got = all(text.as_bytes()).unwrap();
        assert_eq!(got.len(), MAX_INTERFACES);
        assert_eq!(got[15].name, "usb15");
    }

    #[test]
    fn which_interfaces_count() {
        for yes in [
            "eth0",
            "wlan0",
            "wwan0",
            "enp3s0",
            "usb0",
            "resin-vpn",
            "balena-vpn",
        ] {
            assert!(counted(yes), "{yes}");
        }
        for no in [
            "lo",
            "veth9f2e1c0",
            "docker0",
            "br-0a1b2c3d4e5f",
            "balena0",
            "supervisor0",
            "resin-dns",
            "virbr0",
            "ifb0",
            "",
        ] {
            assert!(!counted(no), "{no}");
        }
    }
}
