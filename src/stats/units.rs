//! The number notations `docker stats` prints, read back into numbers.
//!
//! docker/go-units prints sizes as `%.4g` + binary unit (`7.676GiB`, from `BytesSize`) or `%.3g` + decimal
//! unit (`1e+03kB`, from `HumanSizeWithPrecision`), with no space. The unit names the base, so one reader
//! serves both. Percentages are `%.2f%%`.
//!
//! Rust's `f64::from_str` also accepts `NaN`, `inf` and `infinity`; we check the shape of the number first so
//! that none of those, nor a sign, ever reaches a payload.

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
    let value: f64 = s[..n].parse().map_err(|_| UnitError::NotANumber)?;
    Ok((value, s[n..].trim_ascii_start()))
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
