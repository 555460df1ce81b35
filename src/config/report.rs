//! The collector file's `report` keys: every figure every tick, or by exception with a heartbeat and a
//! deadband per kind of figure (`publish::exception`).

use super::keys::Fields;
use super::ConfigError;
use crate::publish::exception::{Deadbands, Report, DEFAULT_DEADBANDS, DEFAULT_HEARTBEAT_SECONDS};
use serde_json::Value;
use std::time::Duration;

pub(super) fn parse_report(f: &Fields) -> Result<Report, ConfigError> {
    let on_change = match f.string("report")?.as_deref().unwrap_or("every_tick") {
        "every_tick" => false,
        "on_change" => true,
        other => {
            return Err(f.error(
                "report",
                format!("{other:?} is not a choice (use \"every_tick\" or \"on_change\")"),
            ))
        }
    };
    let heartbeat = f
        .uint("report_heartbeat_in_seconds", 1, 86_400)?
        .unwrap_or(DEFAULT_HEARTBEAT_SECONDS);
    let d = DEFAULT_DEADBANDS;
    let bytes = |key, default| -> Result<u64, ConfigError> {
        Ok(f.uint(key, 0, 1 << 40)?.unwrap_or(default))
    };
    Ok(Report {
        on_change,
        heartbeat: Duration::from_secs(heartbeat),
        deadbands: Deadbands {
            cpu: hundredths(f, "report_cpu_deadband_in_percentage_points", 10_000)?
                .unwrap_or(d.cpu),
            memory: hundredths(f, "report_memory_deadband_in_percent", 100)?.unwrap_or(d.memory),
            network: bytes("report_network_deadband_in_bytes", d.network)?,
            block_io: bytes("report_block_io_deadband_in_bytes", d.block_io)?,
            temperature: hundredths(f, "report_temperature_deadband_in_celsius", 100)?
                .unwrap_or(d.temperature),
            storage: bytes("report_storage_deadband_in_bytes", d.storage)?,
        },
    })
}

/// A number from 0 to `max` (decimals allowed), in hundredths. A variable's text is read as JSON, by the
/// same parser as the file, so no float parser of its own is linked.
fn hundredths(f: &Fields, key: &'static str, max: u64) -> Result<Option<u64>, ConfigError> {
    let parsed;
    let value = match f.env_text(key) {
        Some(text) => {
            parsed = serde_json::from_slice::<Value>(text.as_bytes()).unwrap_or(Value::Null);
            &parsed
        }
        None => match f.get(key) {
            None => return Ok(None),
            Some(v) => v,
        },
    };
    match value.as_f64() {
        Some(x) if (0.0..=max as f64).contains(&x) => Ok(Some((x * 100.0).round() as u64)),
        _ => Err(f.error(
            key,
            match f.env_text(key) {
                Some(text) => format!("must be a number from 0 to {max}, not {text:?}"),
                None => format!("must be a number from 0 to {max}, not {value}"),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn every_tick_unless_on_change_and_the_documented_defaults() {
        let r = collector(None).unwrap().report;
        assert_eq!(
            r,
            Report {
                on_change: false,
                heartbeat: Duration::from_secs(900),
                deadbands: Deadbands {
                    cpu: 100,
                    memory: 200,
                    network: 1_048_576,
                    block_io: 1_048_576,
                    temperature: 100,
                    storage: 16_777_216,
                },
            }
        );
        let r = collector(Some(
            r#"{"report": "on_change", "report_heartbeat_in_seconds": 60,
                "report_cpu_deadband_in_percentage_points": 0.5, "report_memory_deadband_in_percent": 5,
                "report_network_deadband_in_bytes": 0, "report_block_io_deadband_in_bytes": 4096,
                "report_temperature_deadband_in_celsius": 2.5, "report_storage_deadband_in_bytes": 1}"#,
        ))
        .unwrap()
        .report;
        assert!(r.on_change);
        assert_eq!(r.heartbeat, Duration::from_secs(60));
        assert_eq!(
            r.deadbands,
            Deadbands {
                cpu: 50,
                memory: 500,
                network: 0,
                block_io: 4096,
                temperature: 250,
                storage: 1,
            }
        );
        let env = vars(&[
            ("STATS_REPORT", "on_change"),
            ("STATS_REPORT_CPU_DEADBAND_IN_PERCENTAGE_POINTS", " 2.25 "),
            ("STATS_REPORT_MEMORY_DEADBAND_IN_PERCENT", "1"),
        ]);
        let r = collector_env(None, &env).unwrap().report;
        assert!(r.on_change);
        assert_eq!((r.deadbands.cpu, r.deadbands.memory), (225, 100));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, key) in [
            (r#"{"report": "on_exception"}"#, "report"),
            (r#"{"report": true}"#, "report"),
            (
                r#"{"report_heartbeat_in_seconds": 0}"#,
                "report_heartbeat_in_seconds",
            ),
            (
                r#"{"report_heartbeat_in_seconds": 1.5}"#,
                "report_heartbeat_in_seconds",
            ),
            (
                r#"{"report_cpu_deadband_in_percentage_points": -1}"#,
                "report_cpu_deadband_in_percentage_points",
            ),
            (
                r#"{"report_cpu_deadband_in_percentage_points": "1"}"#,
                "report_cpu_deadband_in_percentage_points",
            ),
            (
                r#"{"report_memory_deadband_in_percent": 101}"#,
                "report_memory_deadband_in_percent",
            ),
            (
                r#"{"report_network_deadband_in_bytes": 1.5}"#,
                "report_network_deadband_in_bytes",
            ),
            (
                r#"{"report_block_io_deadband_in_bytes": -1}"#,
                "report_block_io_deadband_in_bytes",
            ),
            (
                r#"{"report_temperature_deadband_in_celsius": 101}"#,
                "report_temperature_deadband_in_celsius",
            ),
            (
                r#"{"report_storage_deadband_in_bytes": "1 GB"}"#,
                "report_storage_deadband_in_bytes",
            ),
        ] {
            assert_eq!(key_of(collector(Some(text))), Some(key), "{text}");
        }
        for (name, text) in [
            ("STATS_REPORT", "ON_CHANGE"),
            ("STATS_REPORT_CPU_DEADBAND_IN_PERCENTAGE_POINTS", "one"),
            ("STATS_REPORT_CPU_DEADBAND_IN_PERCENTAGE_POINTS", "1,5"),
            ("STATS_REPORT_MEMORY_DEADBAND_IN_PERCENT", "-2"),
        ] {
            let e = collector_env(None, &vars(&[(name, text)])).unwrap_err();
            assert_eq!(e.file, format!("environment variable {name}"), "{text}");
        }
        let e = collector(Some(r#"{"report_memory_deadband_in_percent": 200}"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"c.json: "report_memory_deadband_in_percent": must be a number from 0 to 100, not 200"#
        );
    }
}
