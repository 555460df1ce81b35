//! Payloads: `{"value":N,"timestamp":MS}`.
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

/// Appends the per-service payload: `{"timestamp":MS,"<metric>":N,...}` with only the metrics present.
pub fn write_service(out: &mut Vec<u8>, figures: &Figures, timestamp_ms: u64) {
    out.extend_from_slice(b"{\"timestamp\":");
    out.extend_from_slice(itoa::Buffer::new().format(timestamp_ms).as_bytes());
    for (metric, value) in figures.iter() {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(metric.name().as_bytes());
        out.extend_from_slice(b"\":");
        push_value(out, value);
    }
    out.push(b'}');
}

// Payloads are written by hand rather than with `write!`: the formatting machinery was 7% of the
// per-message cost (callgrind), and these are the agent's hottest lines.
fn push_value(out: &mut Vec<u8>, value: Value) {
    match value {
        Value::Count(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        Value::Percent(p) => push_percent(out, p),
    }
}

/// Percentages with at most two decimals, as docker prints them (`%.2f`), trailing zeros dropped:
/// 1.75, 4.07, 99.8, 0. ENGINE mode's computed figures are rounded the same way, so both modes agree.
fn push_percent(out: &mut Vec<u8>, p: f64) {
    let hundredths = (p * 100.0).round();
    if !(0.0..1e18).contains(&hundredths) {
        // Not from docker (parsed percentages are finite and non-negative); keep it valid JSON anyway.
        out.push(b'0');
        return;
    }
    let h = hundredths as u64;
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
        write_service(&mut out, &f, 42);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"timestamp":42,"cpu_usage_in_percent":1.75,"memory_usage_in_bytes":334076314}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v.get("pids").is_none(), "absent, not null or 0");
        out.clear();
        write_service(&mut out, &Figures::default(), 7);
        assert_eq!(out, br#"{"timestamp":7}"#);
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
    fn payload_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(&text(Value::Percent(398.71))).unwrap();
        assert_eq!(v["value"].as_f64(), Some(398.71));
        assert_eq!(v["timestamp"].as_u64(), Some(1_700_000_000_123));
    }
}
