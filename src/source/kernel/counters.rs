//! The cgroup counter files (v1 and v2) and `/proc/meminfo`, read into integers.
//!
//! Every parser takes the file's bytes and answers `None` when they are not what the kernel writes, so
//! a garbled file is reported, never read as 0. Integers only: the kernel writes no fractions here.

/// The lines of a file. Every parser splits through this one function and [`fields`], so the binary
/// holds one copy of each iterator rather than one per call site.
pub fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
}

/// The space-separated fields of a line, a run of spaces counting as one.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|f| !f.is_empty())
}

/// A decimal integer with nothing around it.
pub fn integer(text: &[u8]) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|&d| d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A file that holds one number and a line break (`cpuacct.usage`, `memory.current`, `pids.current`).
pub fn single(text: &[u8]) -> Option<u64> {
    integer(text.trim_ascii_end())
}

/// v1 `memory.limit_in_bytes`: `None` inside when unlimited. The kernel writes its largest page count
/// times the page size (9223372036854771712 with 4 KiB pages, a little less with larger pages), so
/// anything from 2^62 up means no limit.
pub fn v1_limit(text: &[u8]) -> Option<Option<u64>> {
    single(text).map(|n| Some(n).filter(|&n| n < 1 << 62))
}

/// v2 `memory.max`: `max` or a number.
pub fn v2_limit(text: &[u8]) -> Option<Option<u64>> {
    match text.trim_ascii_end() {
        b"max" => Some(None),
        t => integer(t).map(Some),
    }
}

/// The value of `key` in a `key value` file (`memory.stat`, v2 `cpu.stat`); `None` when absent or
/// unreadable.
pub fn keyed(text: &[u8], key: &[u8]) -> Option<u64> {
    lines(text).find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(b" ")?;
        integer(rest.trim_ascii())
    })
}

/// v1 `blkio.*io_service_bytes_recursive`: (read, written) summed over devices. Lines are
/// `major:minor Op bytes` for the ops Read, Write, Sync, Async, Discard and Total, then a last `Total
/// bytes`; only Read and Write count, as the engine reads them.
pub fn v1_blkio(text: &[u8]) -> Option<(u64, u64)> {
    let (mut read, mut written) = (0u64, 0u64);
    for line in lines(text) {
        let mut fields = fields(line);
        let (Some(_device), Some(op), Some(bytes)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let sum = match op {
            b"Read" => &mut read,
            b"Write" => &mut written,
            _ => continue,
        };
        *sum = sum.saturating_add(integer(bytes)?);
    }
    Some((read, written))
}

/// v2 `io.stat`: (read, written) summed over devices, from lines `major:minor rbytes=N wbytes=N rios=N
/// ...`; keys we do not use are skipped, so newer kernels' extra keys are fine.
pub fn v2_io(text: &[u8]) -> Option<(u64, u64)> {
    let (mut read, mut written) = (0u64, 0u64);
    for line in lines(text) {
        for field in fields(line) {
            let (sum, n) = if let Some(n) = field.strip_prefix(b"rbytes=") {
                (&mut read, n)
            } else if let Some(n) = field.strip_prefix(b"wbytes=") {
                (&mut written, n)
            } else {
                continue;
            };
            *sum = sum.saturating_add(integer(n)?);
        }
    }
    Some((read, written))
}

/// `MemTotal` from `/proc/meminfo` (`MemTotal:       24683656 kB`), in bytes.
pub fn mem_total(text: &[u8]) -> Option<u64> {
    lines(text).find_map(|line| {
        let rest = line.strip_prefix(b"MemTotal:")?.trim_ascii();
        let kib = rest.strip_suffix(b"kB")?.trim_ascii_end();
        integer(kib)?.checked_mul(1024)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_digits_only_and_never_overflow() {
        assert_eq!(integer(b"0"), Some(0));
        assert_eq!(integer(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"-1",
            b"1.5",
            b" 1",
            b"1e3",
            b"\xff",
        ] {
            assert_eq!(integer(bad), None, "{bad:?}");
        }
        assert_eq!(single(b"133740624685\n"), Some(133_740_624_685));
        assert_eq!(single(b"\n"), None);
    }

    #[test]
    fn v1_limit_reads_the_unlimited_value_as_none() {
        assert_eq!(v1_limit(b"67108864\n"), Some(Some(67_108_864)));
        // 4 KiB and 64 KiB pages.
        assert_eq!(v1_limit(b"9223372036854771712\n"), Some(None));
        assert_eq!(v1_limit(b"9223372036854710272\n"), Some(None));
        assert_eq!(v1_limit(b"max\n"), None);
    }

    #[test]
    fn v2_limit_reads_max_as_none() {
        assert_eq!(v2_limit(b"max\n"), Some(None));
        assert_eq!(v2_limit(b"536870912\n"), Some(Some(536_870_912)));
        assert_eq!(v2_limit(b"maximum\n"), None);
    }

    #[test]
    fn keyed_values_match_the_whole_key() {
        let stat = b"inactive_anon 57344\ninactive_file 1437696\ntotal_inactive_file 2437696\n";
        assert_eq!(keyed(stat, b"inactive_file"), Some(1_437_696));
        assert_eq!(keyed(stat, b"total_inactive_file"), Some(2_437_696));
        assert_eq!(keyed(stat, b"inactive"), None);
        assert_eq!(keyed(b"inactive_file x\n", b"inactive_file"), None);
        let cpu = b"usage_usec 12345\nuser_usec 10000\nsystem_usec 2345\n";
        assert_eq!(keyed(cpu, b"usage_usec"), Some(12_345));
    }

    #[test]
    fn v1_blkio_sums_read_and_write_over_devices_and_skips_total() {
        let text = b"8:16 Read 4096\n8:16 Write 8192\n8:16 Sync 12288\n8:16 Async 0\n\
            8:16 Discard 0\n8:16 Total 12288\n8:0 Read 1234\n8:0 Write 5\n8:0 Sync 0\n8:0 Async 1239\n\
            8:0 Discard 0\n8:0 Total 1239\nTotal 13527\n";
        assert_eq!(v1_blkio(text), Some((5330, 8197)));
        // As read on this machine for a container that did no I/O.
        assert_eq!(v1_blkio(b"Total 0\n"), Some((0, 0)));
        assert_eq!(v1_blkio(b""), Some((0, 0)));
        assert_eq!(v1_blkio(b"8:0 Read lots\n"), None);
    }

    #[test]
    fn v2_io_sums_rbytes_and_wbytes_over_devices() {
        let text = b"8:0 rbytes=1048576 wbytes=4096 rios=20 wios=1 dbytes=0 dios=0\n\
            253:0 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0 cost.usage=5\n";
        assert_eq!(v2_io(text), Some((1_048_577, 4098)));
        assert_eq!(v2_io(b""), Some((0, 0)));
        assert_eq!(v2_io(b"8:0 rbytes=-1\n"), None);
    }

    #[test]
    fn mem_total_is_in_bytes() {
        let text = b"MemTotal:       24683656 kB\nMemFree:         1000000 kB\n";
        assert_eq!(mem_total(text), Some(24_683_656 * 1024));
        assert_eq!(mem_total(b"MemFree: 1 kB\n"), None);
        assert_eq!(mem_total(b"MemTotal: 24683656\n"), None);
        assert_eq!(mem_total(b"MemTotal: 99999999999999999999 kB\n"), None);
    }

    #[test]
    fn truncated_files_are_none_or_what_is_whole() {
        assert_eq!(v1_limit(b""), None);
        assert_eq!(v2_limit(b"ma"), None);
        assert_eq!(v1_blkio(b"8:0 Read"), Some((0, 0)));
        assert_eq!(v2_io(b"8:0 rbytes="), None);
        assert_eq!(mem_total(b"MemTotal:  246"), None);
    }
}
