//! Payloads: `{"value":N,"timestamp":MS}`.
//!
//! MS is the collection time in Unix milliseconds, so a consumer can tell when a figure was taken and a
//! message delivered late is never mistaken for a fresh one.

use crate::stats::Value;
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
    fn payload_is_valid_json() {
        let v: serde_json::Value = serde_json::from_str(&text(Value::Percent(398.71))).unwrap();
        assert_eq!(v["value"].as_f64(), Some(398.71));
        assert_eq!(v["timestamp"].as_u64(), Some(1_700_000_000_123));
    }
}
