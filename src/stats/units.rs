//! The number notations `docker stats` prints, read back into numbers.
//!
//! docker/go-units prints sizes as `%.4g` + binary unit (`7.676GiB`, from `BytesSize`) or `%.3g` + decimal
//! unit (`1e+03kB`, from `HumanSizeWithPrecision`), with no space. The unit names the base, so one reader
//! serves both. Percentages are `%.2f%%`.
//!
//! We check the shape of the number first, so that no `NaN`, `inf` or sign ever reaches a payload, then read
//! its value ourselves rather than with `f64::from_str`: core's float parser and its tables were 15 KB of
//! the 1,000 KiB device binary, for numbers docker prints with at most 4 significant digits.

/// Why a figure could not be read. The caller names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitError {
    NotANumber,
    UnknownUnit,
    OutOfRange,
}

impl std::fmt::Display for UnitError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            UnitError::NotANumber => "not a number",
            UnitError::UnknownUnit => "unknown unit",
            UnitError::OutOfRange => "out of range",
        })
    }
}

const UNITS: &[(&str, f64)] = &[
    ("B", 1.0),
    ("kB", 1e3),
    ("KB", 1e3),
    ("MB", 1e6),
    ("GB", 1e9),
    ("TB", 1e12),
    ("PB", 1e15),
    ("EB", 1e18),
    ("KiB", 1024.0),
    ("MiB", 1_048_576.0),
    ("GiB", 1_073_741_824.0),
    ("TiB", 1_099_511_627_776.0),
    ("PiB", 1_125_899_906_842_624.0),
    ("EiB", 1_152_921_504_606_846_976.0),
];

/// Length of the leading unsigned decimal number (`12`, `1.5`, `.5`, `1e+03`) in `s`; 0 when there is none.
fn number_len(s: &[u8]) -> usize {
    let digits = |from: usize| s[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = digits(0);
    let mut mantissa = i;
    if s.get(i) == Some(&b'.') {
        let frac = digits(i + 1);
        mantissa += frac;
        i += 1 + frac;
    }
    if mantissa == 0 {
        return 0;
    }
    if matches!(s.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(s.get(i + 1), Some(b'+' | b'-')));
        let exp = digits(i + 1 + sign);
        if exp > 0 {
            i += 1 + sign + exp;
        }
    }
    i
}

fn split_number(s: &str) -> Result<(f64, &str), UnitError> {
    let s = s.trim_ascii();
    let n = number_len(s.as_bytes());
    if n == 0 {
        return Err(UnitError::NotANumber);
    }
    Ok((decimal_value(&s.as_bytes()[..n]), s[n..].trim_ascii_start()))
}

/// 10^0 ..= 10^22: the powers of ten an f64 holds exactly.
const EXACT_POW10: [f64; 23] = {
    let mut t = [1.0; 23];
    let mut i = 1;
    while i < t.len() {
        t[i] = t[i - 1] * 10.0;
        i += 1;
    }
    t
};

/// The value of `s`, an unsigned number as [`number_len`] measured it.
///
/// Correctly rounded, as `f64::from_str` is, whenever the significant digits fit 2^53 and the exponent
/// left once they are an integer is within ±22 (Clinger's fast path: one exact operand, one rounding):
/// everything docker prints. Beyond that (more than 15 digits, or an exponent past ±22) the value is
/// within a few units in the last place of the exact one, and still overflows to infinity exactly when
/// it is far out of range.
fn decimal_value(s: &[u8]) -> f64 {
    // mantissa * 10^exp; digits past the 19th (which a u64 may not hold) are dropped, the exponent
    // keeps their place.
    let (mut mantissa, mut significant, mut exp) = (0u64, 0, 0i64);
    let mut point = false;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'.' => point = true,
            b'0'..=b'9' if significant < 19 => {
                mantissa = mantissa * 10 + u64::from(b - b'0');
                significant += usize::from(mantissa != 0);
                exp -= i64::from(point);
            }
            b'0'..=b'9' => exp += i64::from(!point),
            _ => break,
        }
        i += 1;
    }
    if i < s.len() {
        // `e`, an optional sign, at least one digit. Saturated: past ±10^5 the value is 0 or infinite.
        let negative = s[i + 1] == b'-';
        let written = s[i + 1..].iter().filter(|b| b.is_ascii_digit());
        let e = written.fold(0i64, |e, b| (e * 10 + i64::from(b - b'0')).min(100_000));
        exp += if negative { -e } else { e };
    }
    scale(mantissa, exp)
}

fn scale(mantissa: u64, mut exp: i64) -> f64 {
    let mut value = mantissa as f64;
    // Past ±22, steps of 10^22 until the rest is exact; they stop once the value is 0 or infinite.
    while exp > 22 && value.is_finite() {
        value *= EXACT_POW10[22];
        exp -= 22;
    }
    while exp < -22 && value != 0.0 {
        value /= EXACT_POW10[22];
        exp += 22;
    }
    let power = EXACT_POW10[exp.unsigned_abs().min(22) as usize];
    if exp < 0 {
        value / power
    } else {
        value * power
    }
}

/// `"7.676GiB"` -> 8241927356, `"1e+03kB"` -> 1000000, `"0B"` -> 0. Rounded to the nearest byte.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let (value, unit) = split_number(s)?;
    let multiplier = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, m)| *m)
        .ok_or(UnitError::UnknownUnit)?;
    let bytes = (value * multiplier).round();
    // 2^64 is exactly representable; anything at or above it does not fit a u64.
    if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
        return Err(UnitError::OutOfRange);
    }
    Ok(bytes as u64)
}

/// `"12.34%"` -> 12.34. CPU exceeds 100 on multi-core machines, so there is no upper bound but finiteness.
pub fn parse_percent(s: &str) -> Result<f64, UnitError> {
    let (value, rest) = split_number(s)?;
    if rest != "%" {
        return Err(UnitError::UnknownUnit);
    }
    if !value.is_finite() {
        return Err(UnitError::OutOfRange);
    }
    Ok(value)
}

/// `"12"` -> 12. A plain non-negative integer.
pub fn parse_count(s: &str) -> Result<u64, UnitError> {
    let s = s.trim_ascii();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError::NotANumber);
    }
    s.parse().map_err(|_| UnitError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_units_as_netio_and_blockio_print_them() {
        assert_eq!(parse_bytes("0B"), Ok(0));
        assert_eq!(parse_bytes("512B"), Ok(512));
        assert_eq!(parse_bytes("999MB"), Ok(999_000_000));
        assert_eq!(parse_bytes("1.5kB"), Ok(1_500));
        assert_eq!(parse_bytes("1e+03kB"), Ok(1_000_000));
        assert_eq!(parse_bytes("1e+03MB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("2.46GB"), Ok(2_460_000_000));
        assert_eq!(parse_bytes("3.1TB"), Ok(3_100_000_000_000));
        assert_eq!(parse_bytes("1PB"), Ok(1_000_000_000_000_000));
    }

    #[test]
    fn binary_units_as_memusage_prints_them() {
        assert_eq!(parse_bytes("7.676GiB"), Ok(8_242_042_241));
        assert_eq!(parse_bytes("318.6MiB"), Ok(334_076_314));
        assert_eq!(parse_bytes("64MiB"), Ok(67_108_864));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1_536));
        assert_eq!(parse_bytes("1.2TiB"), Ok(1_319_413_953_331));
        assert_eq!(parse_bytes("1PiB"), Ok(1_125_899_906_842_624));
    }

    #[test]
    fn tolerates_surrounding_and_inner_space() {
        assert_eq!(parse_bytes(" 12.5 MiB "), Ok(13_107_200));
    }

    #[test]
    fn rejects_what_docker_never_prints() {
        assert_eq!(parse_bytes("--"), Err(UnitError::NotANumber));
        assert_eq!(parse_bytes("-5MB"), Err(UnitError::NotANumber));
        assert_eq!(parse_bytes("NaNMB"), Err(UnitError::NotANumber));
        assert_eq!(parse_bytes("infGB"), Err(UnitError::NotANumber));
        assert_eq!(parse_bytes("12"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_bytes("12 bytes"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_bytes("12mb"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_bytes("1e+308GB"), Err(UnitError::OutOfRange));
        assert_eq!(parse_bytes("20EB"), Err(UnitError::OutOfRange));
        assert_eq!(parse_bytes(""), Err(UnitError::NotANumber));
        assert_eq!(parse_bytes("."), Err(UnitError::NotANumber));
        assert_eq!(parse_bytes("1e"), Err(UnitError::UnknownUnit));
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("12.34%"), Ok(12.34));
        assert_eq!(parse_percent("0.00%"), Ok(0.0));
        assert_eq!(parse_percent("398.71%"), Ok(398.71));
        assert_eq!(parse_percent("NaN%"), Err(UnitError::NotANumber));
        assert_eq!(parse_percent("-1.00%"), Err(UnitError::NotANumber));
        assert_eq!(parse_percent("12.34"), Err(UnitError::UnknownUnit));
        assert_eq!(parse_percent("--"), Err(UnitError::NotANumber));
        assert_eq!(parse_percent("1e999%"), Err(UnitError::OutOfRange));
    }

    /// `decimal_value` of `text` against core's correctly rounded parser: equal, or within `ulps`.
    fn agrees(text: &str, ulps: u64) {
        let (ours, std) = (decimal_value(text.as_bytes()), text.parse::<f64>().unwrap());
        let apart = ours.to_bits().abs_diff(std.to_bits());
        assert!(apart <= ulps, "{text}: {ours} against {std}");
    }

    #[test]
    fn every_number_docker_prints_reads_as_the_float_parser_reads_it() {
        // %.2f percentages up to 10,000%, and %.4g / %.3g sizes: 4 significant digits, any point.
        for n in 0..1_000_000u32 {
            agrees(&format!("{}.{:02}", n / 100, n % 100), 0);
        }
        for n in 0..10_000u32 {
            let d = n.to_string();
            for point in 1..d.len() {
                agrees(&format!("{}.{}", &d[..point], &d[point..]), 0);
            }
            agrees(&d, 0);
            agrees(&format!("{d}e+03"), 0);
            agrees(&format!("{}.{}e+{:02}", &d[..1], &d[1..], n % 23), 0);
        }
    }

    #[test]
    fn exact_within_the_fast_path_and_close_beyond() {
        let mut x = 0x1234_5678_9abc_def0_u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mantissa = x >> 11; // below 2^53
            let digits = mantissa.to_string();
            let point = (x % (digits.len() as u64 + 1)) as usize;
            let exp = (x >> 5) % 23;
            let exp = if x & 1 == 0 {
                exp as i64
            } else {
                -(exp as i64)
            };
            let text = format!("{}.{}e{exp}", &digits[..point], &digits[point..]);
            // Fewer than `point` integer digits once the point moves: still an exponent within ±22
            // of an integer below 2^53 only when the shift keeps it so; check the bound instead.
            let shift = exp - (digits.len() - point) as i64;
            agrees(&text, if shift.abs() <= 22 { 0 } else { 4 });
            // Far exponents and long digit strings: close, and 0 or infinite when out of range.
            agrees(&format!("{mantissa}{mantissa}e{}", exp * 14), 8);
        }
        assert_eq!(decimal_value(b"1e400"), f64::INFINITY);
        assert_eq!(decimal_value(b"1e-400"), 0.0);
        assert_eq!(decimal_value(b"00000.000e99999999999999999999999"), 0.0);
        assert_eq!(decimal_value(b"1.5e99999999999999999999999"), f64::INFINITY);
        assert_eq!(decimal_value(b".5"), 0.5);
        assert_eq!(decimal_value(b"5."), 5.0);
        agrees("123456789012345678901234567890", 1);
        agrees(
            "0.000000000000000000000000000123456789012345678901234567890",
            2,
        );
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("0"), Ok(0));
        assert_eq!(parse_count("42"), Ok(42));
        assert_eq!(parse_count("-1"), Err(UnitError::NotANumber));
        assert_eq!(parse_count("4.2"), Err(UnitError::NotANumber));
        assert_eq!(
            parse_count("99999999999999999999999"),
            Err(UnitError::OutOfRange)
        );
    }
}
