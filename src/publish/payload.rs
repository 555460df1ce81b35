//! Payloads: `{"value":N,"timestamp":MS}`; lifecycle values may also be strings (`"exited"`) or booleans.
//!
//! MS is the collection time in Unix milliseconds, so a consumer can tell when a figure was taken and a
//! message delivered late is never mistaken for a fresh one.

use crate::stats::{Figures, Value};

/// Appends the payload for one figure to `out`.
pub fn write_value(out: &mut Vec<u8>, value: Value, timestamp_ms: u64) {
    out.extend_from_slice(b"{\"value\":");
    push_value(out, value);
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(itoa::Buffer::new().format(timestamp_ms).as_bytes());
    out.push(b'}');
}

/// A lifecycle value (`publish::lifecycle`): what a figure's [`Value`] is for the container's life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    Count(u64),
    /// An exit code, which may be negative.
    Signed(i64),
    Text(&'a str),
    Flag(bool),
}

/// Appends the payload for one lifecycle value to `out`.
pub fn write_field(out: &mut Vec<u8>, field: Field, timestamp_ms: u64) {
    out.extend_from_slice(b"{\"value\":");
    push_field(out, field);
    out.extend_from_slice(b",\"timestamp\":");
    out.extend_from_slice(itoa::Buffer::new().format(timestamp_ms).as_bytes());
    out.push(b'}');
}

/// Appends the per-service payload: `{"timestamp":MS,"<metric>":N,...}` with only the metrics present,
/// then the lifecycle values given (`"state":"running",...`).
pub fn write_service(
    out: &mut Vec<u8>,
    figures: &Figures,
    life: &[(&str, Field)],
    timestamp_ms: u64,
) {
    out.extend_from_slice(b"{\"timestamp\":");
    out.extend_from_slice(itoa::Buffer::new().format(timestamp_ms).as_bytes());
    for (metric, value) in figures.iter() {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(metric.name().as_bytes());
        out.extend_from_slice(b"\":");
        push_value(out, value);
    }
    for (name, field) in life {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        push_field(out, *field);
    }
    out.push(b'}');
}

fn push_field(out: &mut Vec<u8>, field: Field) {
    match field {
        Field::Count(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        Field::Signed(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        Field::Text(s) => push_string(out, s),
        Field::Flag(true) => out.extend_from_slice(b"true"),
        Field::Flag(false) => out.extend_from_slice(b"false"),
    }
}

/// A JSON string (RFC 8259 section 7): quote, backslash and control characters escaped, the rest as is.
/// Our texts are fixed words, but the writer must be right for any text it is handed.
pub fn push_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

// Payloads are written by hand rather than with `write!`: the formatting machinery was 7% of the
// per-message cost (callgrind), and these are the agent's hottest lines.
fn push_value(out: &mut Vec<u8>, value: Value) {
    match value {
        Value::Count(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        Value::Percent(p) => push_percent(out, p),
        Value::Hundredths(h) => {
            if h < 0 {
                out.push(b'-');
            }
            push_hundredths(out, h.unsigned_abs());
        }
        Value::Flag(b) => push_field(out, Field::Flag(b)),
    }
}

/// Percentages with at most two decimals, as docker prints them (`%.2f`), trailing zeros dropped:
/// 1.75, 4.07, 99.8, 0. ENGINE mode's computed figures are rounded the same way, so both modes agree.
fn push_percent(out: &mut Vec<u8>, p: f64) {
    let Some(h) = hundredths(p) else {
        // Not from docker (parsed percentages are finite and non-negative); keep it valid JSON anyway.
        out.push(b'0');
        return;
    };
    push_hundredths(out, h);
}

/// `h` hundredths as a decimal with at most two places, trailing zeros dropped: 175 -> 1.75, 1230 -> 12.3.
fn push_hundredths(out: &mut Vec<u8>, h: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(h / 100).as_bytes());
    let (tens, ones) = ((h / 10 % 10) as u8, (h % 10) as u8);
    if tens != 0 || ones != 0 {
        out.push(b'.');
        out.push(b'0' + tens);
        if ones != 0 {
            out.push(b'0' + ones);
        }
    }
}

/// A percentage in hundredths, rounded as it is published; `None` for what no payload can say.
pub fn hundredths(p: f64) -> Option<u64> {
    let h = (p * 100.0).round();
    (0.0..1e18).contains(&h).then_some(h as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, value, 1_700_000_000_123);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn integers_and_decimals() {
        assert_eq!(
            text(Value::Count(334_076_314)),
            r#"{"value":334076314,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Percent(1.75)),
            r#"{"value":1.75,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Percent(0.0)),
            r#"{"value":0,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Count(u64::MAX)),
            r#"{"value":18446744073709551615,"timestamp":1700000000123}"#
        );
    }

    #[test]
    fn per_service_payload_has_only_the_metrics_present() {
        use crate::stats::Metric;
        let mut f = Figures::default();
        f.set(Metric::CpuPercent, Value::Percent(1.75));
        f.set(Metric::MemoryUsage, Value::Count(334_076_314));
        let mut out = Vec::new();
        write_service(&mut out, &f, &[], 42);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"timestamp":42,"cpu_usage_in_percent":1.75,"memory_usage_in_bytes":334076314}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("pids").is_none(), "absent, not null or 0");
        out.clear();
        write_service(&mut out, &Figures::default(), &[], 7);
        assert_eq!(out, br#"{"timestamp":7}"#);
    }

    #[test]
    fn per_service_payload_carries_lifecycle_values_after_the_figures() {
        use crate::stats::Metric;
        let mut f = Figures::default();
        f.set(Metric::Pids, Value::Count(3));
        let mut out = Vec::new();
        let life = [
            ("state", Field::Text("exited")),
            ("exit_code", Field::Signed(-1)),
            ("oom_killed", Field::Flag(false)),
        ];
        write_service(&mut out, &f, &life, 9);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"timestamp":9,"pids":3,"state":"exited","exit_code":-1,"oom_killed":false}"#
        );
    }

    fn field(f: Field) -> String {
        let mut out = Vec::new();
        write_field(&mut out, f, 5);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lifecycle_values_are_strings_booleans_and_integers() {
        assert_eq!(
            field(Field::Text("running")),
            r#"{"value":"running","timestamp":5}"#
        );
        assert_eq!(field(Field::Flag(true)), r#"{"value":true,"timestamp":5}"#);
        assert_eq!(
            field(Field::Flag(false)),
            r#"{"value":false,"timestamp":5}"#
        );
        assert_eq!(
            field(Field::Signed(-137)),
            r#"{"value":-137,"timestamp":5}"#
        );
        assert_eq!(field(Field::Count(42)), r#"{"value":42,"timestamp":5}"#);
    }

    #[test]
    fn strings_are_escaped_into_valid_json() {
        let nasty = "a\"b\\c\nd\u{1}e\u{7f}é😀/\t\r\u{1f}";
        let text = field(Field::Text(nasty));
        assert!(!text.contains('\u{1}') && !text.contains('\n'), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["value"].as_str(), Some(nasty));
        assert_eq!(
            field(Field::Text("x\u{1}")),
            r#"{"value":"x\u0001","timestamp":5}"#
        );
        // Every byte below 0x80 round-trips.
        let all: String = (0u8..0x80).map(char::from).collect();
        let v: serde_json::Value = serde_json::from_str(&field(Field::Text(&all))).unwrap();
        assert_eq!(v["value"].as_str(), Some(all.as_str()));
    }

    #[test]
    fn percentages_have_at_most_two_decimals() {
        let cases = [
            (4.07, "4.07"),
            (99.80, "99.8"),
            (0.05, "0.05"),
            (0.5, "0.5"),
            (100.0, "100"),
            (398.71, "398.71"),
            (67.51234, "67.51"),
            (0.004, "0"),
            (0.005, "0.01"),
            (12345.678, "12345.68"),
        ];
        for (p, text) in cases {
            let mut out = Vec::new();
            push_percent(&mut out, p);
            assert_eq!(String::from_utf8(out).unwrap(), text, "{p}");
        }
    }

    #[test]
    fn hundredths_and_flags() {
        assert_eq!(
            text(Value::Hundredths(4528)),
            r#"{"value":45.28,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Hundredths(-501)),
            r#"{"value":-5.01,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Hundredths(-50)),
            r#"{"value":-0.5,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Hundredths(i64::MIN)),
            r#"{"value":-92233720368547758.08,"timestamp":1700000000123}"#
        );
        assert_eq!(
            text(Value::Flag(true)),
            r#"{"value":true,"timestamp":1700000000123}"#
        );
    }

    #[test]
    fn payload_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(&text(Value::Percent(398.71))).unwrap();
        assert_eq!(v["value"].as_f64(), Some(398.71));
        assert_eq!(v["timestamp"].as_u64(), Some(1_700_000_000_123));
    }
}
