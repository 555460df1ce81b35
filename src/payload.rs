//! Payloads: `{"value":N,"timestamp":MS}`.
//!
//! MS is the collection time in Unix milliseconds, so a consumer can tell when a figure was taken and a
//! message delivered late is never mistaken for a fresh one.

use crate::stats::{Figures, Value};
use std::io::Write;

/// Appends the payload for one figure to `out`.
pub fn write_value(out: &mut Vec<u8>, value: Value, timestamp_ms: u64) {
    // Writing to a Vec cannot fail. Rust's f64 Display never uses exponents or NaN here (values are
    // checked finite when parsed), so the text is always a JSON number.
    let _ = match value {
        Value::Count(n) => write!(out, "{{\"value\":{n},\"timestamp\":{timestamp_ms}}}"),
        Value::Percent(p) => write!(out, "{{\"value\":{p},\"timestamp\":{timestamp_ms}}}"),
    };
}

/// Appends the per-service payload: `{"timestamp":MS,"<metric>":N,...}` with only the metrics present.
pub fn write_service(out: &mut Vec<u8>, figures: &Figures, timestamp_ms: u64) {
    let _ = write!(out, "{{\"timestamp\":{timestamp_ms}");
    for (metric, value) in figures.iter() {
        let _ = match value {
            Value::Count(n) => write!(out, ",\"{}\":{n}", metric.name()),
            Value::Percent(p) => write!(out, ",\"{}\":{p}", metric.name()),
        };
    }
    out.push(b'}');
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
    fn payload_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(&text(Value::Percent(398.71))).unwrap();
        assert_eq!(v["value"].as_f64(), Some(398.71));
        assert_eq!(v["timestamp"].as_u64(), Some(1_700_000_000_123));
    }
}
