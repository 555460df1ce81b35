//! What the host's `/sys` says of the CPU's temperature and a Raspberry Pi's power and throttling, read
//! from the text of its attributes. Pure: the files are found and read elsewhere (`mod.rs`, `reader.rs`).

use crate::source::kernel::counters::integer;

/// Whether a thermal zone's `type` is the CPU's: any type naming the CPU (`cpu-thermal` on a Raspberry
/// Pi and most Arm boards, `cpu_thermal`, `cpu0-thermal`, `CPU-therm` on a Jetson, `TCPU` for Intel's
/// processor thermal device), Intel's package sensor `x86_pkg_temp`, and `soc-thermal`/`soc_thermal`
/// on SoCs whose only sensor sits by their cores (Rockchip). Not counted: `acpitz` (a motherboard zone
/// that ACPI defines as it likes, often a constant in a virtual machine), and the GPU's, the battery's,
/// the Wi-Fi chip's zones.
pub fn is_cpu_zone(zone_type: &[u8]) -> bool {
    let t = zone_type.trim_ascii();
    t.windows(3).any(|w| w.eq_ignore_ascii_case(b"cpu"))
        || t == b"x86_pkg_temp"
        || t == b"soc-thermal"
        || t == b"soc_thermal"
}

/// A thermal zone's `temp`: millidegrees Celsius, which may be negative (`-5000` outdoors).
pub fn millidegrees(text: &[u8]) -> Option<i64> {
    let t = text.trim_ascii();
    match t.strip_prefix(b"-") {
        Some(digits) => i64::try_from(integer(digits)?).ok().map(|n| -n),
        None => i64::try_from(integer(t)?).ok(),
    }
}

/// Hundredths of a degree, rounded to the nearest, from millidegrees.
pub fn hundredths_of_degree(milli: i64) -> i64 {
    (milli + 5 * milli.signum()) / 10
}

/// A hwmon alarm attribute (`in0_lcrit_alarm`): `0` or `1`.
pub fn alarm(text: &[u8]) -> Option<bool> {
    match text.trim_ascii() {
        b"0" => Some(false),
        b"1" => Some(true),
        _ => None,
    }
}

/// The firmware's `get_throttled` node: the flags in hexadecimal without `0x`, as the Raspberry Pi
/// firmware driver prints them (`%x\n`: `0`, `50005`); a `0x` prefix (`vcgencmd`'s form) is taken too.
pub fn throttled(text: &[u8]) -> Option<u32> {
    let t = text.trim_ascii();
    let t = t.strip_prefix(b"0x").unwrap_or(t);
    if t.is_empty() || t.len() > 8 {
        return None;
    }
    t.iter().try_fold(0u32, |n, &b| {
        let digit = (b as char).to_digit(16)?;
        Some(n << 4 | digit)
    })
}

/// The throttled flags as `vcgencmd get_throttled` documents them: bits 0 to 3 now, 16 to 19 since
/// boot (as far as the firmware remembers: see the README on what clears them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    UnderVoltage = 0,
    FrequencyCapped = 1,
    Throttled = 2,
    SoftTemperatureLimit = 3,
}

impl Flag {
    pub const ALL: [Flag; 4] = [
        Flag::UnderVoltage,
        Flag::FrequencyCapped,
        Flag::Throttled,
        Flag::SoftTemperatureLimit,
    ];

    /// (now, since boot) in `flags`.
    pub fn read(self, flags: u32) -> (bool, bool) {
        let bit = self as u32;
        (flags >> bit & 1 == 1, flags >> (bit + 16) & 1 == 1)
    }
}

/// A filesystem's part name in topics: `disk_root` for `/`, else `disk_` and the path's components
/// joined by `_` (`/mnt/data` -> `disk_mnt_data`), so it cannot be taken for an interface's.
pub fn disk_label(path: &str) -> String {
    let mut label = String::from("disk");
    for part in path.split('/').filter(|p| !p.is_empty()) {
        label.push('_');
        label.push_str(part);
    }
    if label.len() == 4 {
        label.push_str("_root");
    }
    crate::publish::balena::topic_level(&label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_zones_by_type() {
        for yes in [
            &b"cpu-thermal\n"[..],
            b"cpu_thermal",
            b"cpu0-thermal",
            b"CPU-therm",
            b"TCPU",
            b"x86_pkg_temp",
            b"soc-thermal",
        ] {
            assert!(is_cpu_zone(yes), "{:?}", String::from_utf8_lossy(yes));
        }
        for no in [
            &b"acpitz"[..],
            b"gpu-thermal",
            b"iwlwifi_1",
            b"pch_skylake",
            b"INT3400 Thermal",
            b"battery",
            b"",
        ] {
            assert!(!is_cpu_zone(no), "{:?}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn temperatures() {
        assert_eq!(millidegrees(b"45277\n"), Some(45277));
        assert_eq!(millidegrees(b"-5000\n"), Some(-5000));
        assert_eq!(millidegrees(b"4x\n"), None);
        assert_eq!(millidegrees(b"\n"), None);
        assert_eq!(millidegrees(b"--1"), None);
        assert_eq!(hundredths_of_degree(45277), 4528);
        assert_eq!(hundredths_of_degree(45274), 4527);
        assert_eq!(hundredths_of_degree(-5005), -501);
        assert_eq!(hundredths_of_degree(0), 0);
    }

    #[test]
    fn throttled_flags_in_hex() {
        assert_eq!(throttled(b"0\n"), Some(0));
        assert_eq!(throttled(b"50005\n"), Some(0x50005));
        assert_eq!(throttled(b"0x80008\n"), Some(0x80008));
        assert_eq!(throttled(b"e0000\n"), Some(0xe0000));
        for bad in [&b""[..], b"0x", b"xyz", b"123456789"] {
            assert_eq!(throttled(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // 0x50005: under-voltage and throttled now, both also since boot.
        let f = 0x50005;
        assert_eq!(Flag::UnderVoltage.read(f), (true, true));
        assert_eq!(Flag::FrequencyCapped.read(f), (false, false));
        assert_eq!(Flag::Throttled.read(f), (true, true));
        assert_eq!(Flag::SoftTemperatureLimit.read(0x80000), (false, true));
    }

    #[test]
    fn alarms() {
        assert_eq!(alarm(b"0\n"), Some(false));
        assert_eq!(alarm(b"1\n"), Some(true));
        assert_eq!(alarm(b"2\n"), None);
    }

    #[test]
    fn disk_labels() {
        assert_eq!(disk_label("/"), "disk_root");
        assert_eq!(disk_label("/mnt/data"), "disk_mnt_data");
        assert_eq!(disk_label("/mnt/data/"), "disk_mnt_data");
        assert_eq!(disk_label("/a+b/#"), "disk_a_b_#".replace('#', "_"));
    }
}
