//! One `docker stats --format '{{json .}}'` line, read into figures.
//!
//! Field formats are docker/cli's `formatter_stats.go` (balena-engine ships the same). `--` means the CLI had
//! no valid sample: that metric is absent, never 0. A field we cannot read is also absent, and reported, so
//! the container's other figures still go out.

pub mod lifecycle;
pub mod ps;
pub mod records;
pub mod units;

use serde::Deserialize;
use std::borrow::Cow;
use units::{parse_bytes, parse_count, parse_percent, UnitError};

/// The metrics we publish, in publishing order. The name is the last topic level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    CpuPercent,
    MemoryPercent,
    MemoryUsage,
    MemoryLimit,
    NetworkReceived,
    NetworkSent,
    BlockRead,
    BlockWritten,
    Pids,
    // The device pseudo-service's own (`source::device`); its CPU, memory and, per interface, network
    // figures are the ones above.
    LoadAverage1m,
    LoadAverage5m,
    LoadAverage15m,
    SwapUsage,
    SwapTotal,
    CpuTemperature,
    Uptime,
    UnderVoltage,
    FrequencyCapped,
    Throttled,
    SoftTemperatureLimit,
    UnderVoltageSinceBoot,
    FrequencyCappedSinceBoot,
    ThrottledSinceBoot,
    SoftTemperatureLimitSinceBoot,
    StorageUsed,
    StorageTotal,
}

impl Metric {
    pub const ALL: [Metric; 26] = [
        Metric::CpuPercent,
        Metric::MemoryPercent,
        Metric::MemoryUsage,
        Metric::MemoryLimit,
        Metric::NetworkReceived,
        Metric::NetworkSent,
        Metric::BlockRead,
        Metric::BlockWritten,
        Metric::Pids,
        Metric::LoadAverage1m,
        Metric::LoadAverage5m,
        Metric::LoadAverage15m,
        Metric::SwapUsage,
        Metric::SwapTotal,
        Metric::CpuTemperature,
        Metric::Uptime,
        Metric::UnderVoltage,
        Metric::FrequencyCapped,
        Metric::Throttled,
        Metric::SoftTemperatureLimit,
        Metric::UnderVoltageSinceBoot,
        Metric::FrequencyCappedSinceBoot,
        Metric::ThrottledSinceBoot,
        Metric::SoftTemperatureLimitSinceBoot,
        Metric::StorageUsed,
        Metric::StorageTotal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::CpuPercent => "cpu_usage_in_percent",
            Metric::MemoryPercent => "memory_usage_in_percent",
            Metric::MemoryUsage => "memory_usage_in_bytes",
            Metric::MemoryLimit => "memory_limit_in_bytes",
            Metric::NetworkReceived => "network_received_in_bytes",
            Metric::NetworkSent => "network_sent_in_bytes",
            Metric::BlockRead => "block_read_in_bytes",
            Metric::BlockWritten => "block_written_in_bytes",
            Metric::Pids => "pids",
            Metric::LoadAverage1m => "load_average_1m",
            Metric::LoadAverage5m => "load_average_5m",
            Metric::LoadAverage15m => "load_average_15m",
            Metric::SwapUsage => "swap_usage_in_bytes",
            Metric::SwapTotal => "swap_total_in_bytes",
            Metric::CpuTemperature => "cpu_temperature_in_celsius",
            Metric::Uptime => "uptime_in_seconds",
            Metric::UnderVoltage => "under_voltage",
            Metric::FrequencyCapped => "frequency_capped",
            Metric::Throttled => "throttled",
            Metric::SoftTemperatureLimit => "soft_temperature_limit",
            Metric::UnderVoltageSinceBoot => "under_voltage_since_boot",
            Metric::FrequencyCappedSinceBoot => "frequency_capped_since_boot",
            Metric::ThrottledSinceBoot => "throttled_since_boot",
            Metric::SoftTemperatureLimitSinceBoot => "soft_temperature_limit_since_boot",
            Metric::StorageUsed => "storage_used_in_bytes",
            Metric::StorageTotal => "storage_total_in_bytes",
        }
    }
}

/// A figure as it goes into a payload: bytes and counts are integers, percentages are decimals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Count(u64),
    Percent(f64),
    /// Hundredths, which may be negative: a temperature, a load average (two decimals at most).
    Hundredths(i64),
    /// A yes or no (the device's throttling flags).
    Flag(bool),
}

/// One container's figures; `None` where docker had none or the field was unreadable.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    values: [Option<Value>; Metric::ALL.len()],
}

impl Default for Figures {
    /// Not inlined: with the device's metrics there are 26 slots, and every place that starts a
    /// container's figures was writing each of them (about 1 KB of the device binary).
    #[inline(never)]
    fn default() -> Figures {
        Figures {
            values: [None; Metric::ALL.len()],
        }
    }
}

impl Figures {
    pub fn set(&mut self, metric: Metric, value: Value) {
        self.values[metric as usize] = Some(value);
    }

    pub fn get(&self, metric: Metric) -> Option<Value> {
        self.values[metric as usize]
    }

    /// The metrics that have a value, in publishing order.
    pub fn iter(&self) -> impl Iterator<Item = (Metric, Value)> + '_ {
        Metric::ALL
            .iter()
            .filter_map(move |&m| self.get(m).map(|v| (m, v)))
    }
}

/// A parsed line: who the container is and what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerStats {
    /// As docker prints it (`Name`), leading `/` already dropped.
    pub name: String,
    /// Short id (`ID`, or `Container` when `ID` is absent); may be empty.
    pub id: String,
    /// The service name when the source says it outright (ENGINE mode's `io.balena.service-name`
    /// label); otherwise it is read from `name`.
    pub service: Option<String>,
    /// Possibly none at all (a stopped container is still reported, by its lifecycle alone).
    pub figures: Figures,
    /// State, health, restarts, exit and OOM, where the source knows them (not FILE mode).
    pub lifecycle: Option<lifecycle::Lifecycle>,
    /// A part of the device pseudo-service (`source::device`) these figures are of: a network interface
    /// or a filesystem, published one topic level below the service. None for a container.
    pub part: Option<String>,
}

/// A field that was present but unreadable; the rest of the line still counts.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldWarning {
    pub field: &'static str,
    pub text: String,
    pub error: UnitError,
}

impl std::fmt::Display for FieldWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} {:?}: {}", self.field, self.text, self.error)
    }
}

/// Why a whole line was skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum LineError {
    Json(String),
    NoName,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            LineError::Json(e) => write!(f, "not a stats object: {e}"),
            LineError::NoName => f.write_str("no container Name"),
        }
    }
}

#[derive(Deserialize)]
struct RawLine<'a> {
    #[serde(rename = "Name", borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(rename = "ID", borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "Container", borrow)]
    container: Option<Cow<'a, str>>,
    #[serde(rename = "CPUPerc", borrow)]
    cpu: Option<Cow<'a, str>>,
    #[serde(rename = "MemPerc", borrow)]
    mem_perc: Option<Cow<'a, str>>,
    #[serde(rename = "MemUsage", borrow)]
    mem_usage: Option<Cow<'a, str>>,
    #[serde(rename = "NetIO", borrow)]
    net_io: Option<Cow<'a, str>>,
    #[serde(rename = "BlockIO", borrow)]
    block_io: Option<Cow<'a, str>>,
    #[serde(rename = "PIDs", borrow)]
    pids: Option<Cow<'a, str>>,
}

/// Parses one JSON object. Unreadable fields are pushed to `warnings`; the line fails only when it is not
/// a JSON object of strings or has no name to publish under.
pub fn parse_line(
    line: &str,
    warnings: &mut Vec<FieldWarning>,
) -> Result<ContainerStats, LineError> {
    // from_slice, as every other JSON body but the config's: each of serde_json's readers (str, slice)
    // is a copy of its parser in the binary.
    let raw: RawLine =
        serde_json::from_slice(line.as_bytes()).map_err(|e| LineError::Json(e.to_string()))?;
    let name = raw.name.as_deref().map(|n| n.trim_start_matches('/'));
    let name = match name {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => return Err(LineError::NoName),
    };
    let id = raw.id.or(raw.container).unwrap_or_default().into_owned();

    let mut figures = Figures::default();
    let mut read = |field: &'static str,
                    text: Option<&str>,
                    metric: Metric,
                    f: fn(&str) -> Result<Value, UnitError>| {
        let Some(text) = text.map(str::trim_ascii).filter(|t| !is_unavailable(t)) else {
            return;
        };
        match f(text) {
            Ok(v) => figures.set(metric, v),
            Err(error) => warnings.push(FieldWarning {
                field,
                text: clip(text),
                error,
            }),
        }
    };
    let percent = |s: &str| parse_percent(s).map(Value::Percent);
    let bytes = |s: &str| parse_bytes(s).map(Value::Count);
    let count = |s: &str| parse_count(s).map(Value::Count);

    read("CPUPerc", raw.cpu.as_deref(), Metric::CpuPercent, percent);
    read(
        "MemPerc",
        raw.mem_perc.as_deref(),
        Metric::MemoryPercent,
        percent,
    );
    let (used, limit) = split_pair(raw.mem_usage.as_deref());
    read("MemUsage", used, Metric::MemoryUsage, bytes);
    read("MemUsage", limit, Metric::MemoryLimit, bytes);
    let (rx, tx) = split_pair(raw.net_io.as_deref());
    read("NetIO", rx, Metric::NetworkReceived, bytes);
    read("NetIO", tx, Metric::NetworkSent, bytes);
    let (rd, wr) = split_pair(raw.block_io.as_deref());
    read("BlockIO", rd, Metric::BlockRead, bytes);
    read("BlockIO", wr, Metric::BlockWritten, bytes);
    read("PIDs", raw.pids.as_deref(), Metric::Pids, count);

    Ok(ContainerStats {
        part: None,
        name,
        id,
        service: None,
        figures,
        lifecycle: None,
    })
}

fn is_unavailable(text: &str) -> bool {
    text == "--" || text.is_empty()
}

/// `"a / b"` -> (a, b); `"a"` alone (the Windows MemUsage form) -> (a, none).
fn split_pair(text: Option<&str>) -> (Option<&str>, Option<&str>) {
    match text {
        None => (None, None),
        Some(t) => match t.split_once('/') {
            Some((a, b)) => (Some(a), Some(b)),
            None => (Some(t), None),
        },
    }
}

/// Keeps warnings about hostile input short.
fn clip(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"BlockIO":"1e+03kB / 2.46GB","CPUPerc":"1.75%","Container":"0123456789ab","ID":"0123456789ab","MemPerc":"4.07%","MemUsage":"318.6MiB / 7.676GiB","Name":"main_1_2_0123456789abcdef0123456789abcdef","NetIO":"999MB / 512B","PIDs":"23"}"#;

    #[test]
    fn reading_the_line_as_bytes_errs_as_reading_it_as_text_did() {
        let mut lines = vec![
            SAMPLE.to_owned(),
            String::new(),
            "[]".into(),
            r#"{"Name":"a\ud800"}"#.into(),
            r#"{"Name":"\u00e9t\u00e9","CPUPerc":"1%"}"#.into(),
            r#"{"Name":"été","PIDs":3}"#.into(),
            r#"{"Name":"a",}"#.into(),
            "{\"Name\":\"a\u{1}\"}".into(),
        ];
        lines.extend((0..SAMPLE.len()).map(|n| SAMPLE[..n].to_owned()));
        for line in lines {
            let text = serde_json::from_str::<RawLine>(&line)
                .err()
                .map(|e| e.to_string());
            let bytes = serde_json::from_slice::<RawLine>(line.as_bytes()).err();
            assert_eq!(text, bytes.map(|e| e.to_string()), "{line}");
        }
    }

    fn parse(line: &str) -> (ContainerStats, Vec<FieldWarning>) {
        let mut w = Vec::new();
        let s = parse_line(line, &mut w).expect("line parses");
        (s, w)
    }

    #[test]
    fn reads_all_nine_fields() {
        let (s, w) = parse(SAMPLE);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(s.name, "main_1_2_0123456789abcdef0123456789abcdef");
        assert_eq!(s.id, "0123456789ab");
        let f = &s.figures;
        assert_eq!(f.get(Metric::CpuPercent), Some(Value::Percent(1.75)));
        assert_eq!(f.get(Metric::MemoryPercent), Some(Value::Percent(4.07)));
        assert_eq!(f.get(Metric::MemoryUsage), Some(Value::Count(334_076_314)));
        assert_eq!(
            f.get(Metric::MemoryLimit),
            Some(Value::Count(8_242_042_241))
        );
        assert_eq!(
            f.get(Metric::NetworkReceived),
            Some(Value::Count(999_000_000))
        );
        assert_eq!(f.get(Metric::NetworkSent), Some(Value::Count(512)));
        assert_eq!(f.get(Metric::BlockRead), Some(Value::Count(1_000_000)));
        assert_eq!(
            f.get(Metric::BlockWritten),
            Some(Value::Count(2_460_000_000))
        );
        assert_eq!(f.get(Metric::Pids), Some(Value::Count(23)));
        assert_eq!(f.iter().count(), 9);
    }

    #[test]
    fn dashes_mean_absent_not_zero() {
        let line = r#"{"BlockIO":"--","CPUPerc":"--","Container":"abc","ID":"abc","MemPerc":"--","MemUsage":"-- / --","Name":"idle","NetIO":"--","PIDs":"--"}"#;
        let (s, w) = parse(line);
        assert!(w.is_empty());
        assert_eq!(s.figures.iter().count(), 0);
    }

    #[test]
    fn windows_memusage_has_no_limit() {
        let line = r#"{"Name":"w","MemUsage":"12.5MiB"}"#;
        let (s, _) = parse(line);
        assert_eq!(
            s.figures.get(Metric::MemoryUsage),
            Some(Value::Count(13_107_200))
        );
        assert_eq!(s.figures.get(Metric::MemoryLimit), None);
    }

    #[test]
    fn a_bad_field_is_dropped_with_a_warning_and_the_rest_kept() {
        let line = r#"{"Name":"x","CPUPerc":"NaN%","MemPerc":"1.00%","NetIO":"-5MB / 1e+308GB","PIDs":"7"}"#;
        let (s, w) = parse(line);
        assert_eq!(s.figures.get(Metric::CpuPercent), None);
        assert_eq!(s.figures.get(Metric::NetworkReceived), None);
        assert_eq!(s.figures.get(Metric::NetworkSent), None);
        assert_eq!(
            s.figures.get(Metric::MemoryPercent),
            Some(Value::Percent(1.0))
        );
        assert_eq!(s.figures.get(Metric::Pids), Some(Value::Count(7)));
        let fields: Vec<_> = w.iter().map(|w| (w.field, w.error.clone())).collect();
        assert_eq!(
            fields,
            vec![
                ("CPUPerc", UnitError::NotANumber),
                ("NetIO", UnitError::NotANumber),
                ("NetIO", UnitError::OutOfRange)
            ]
        );
    }

    #[test]
    fn leading_slash_dropped_and_id_falls_back_to_container() {
        let (s, _) = parse(r#"{"Name":"/db","Container":"feedbeef"}"#);
        assert_eq!(s.name, "db");
        assert_eq!(s.id, "feedbeef");
    }

    #[test]
    fn lines_that_cannot_be_published_are_errors() {
        let mut w = Vec::new();
        assert_eq!(
            parse_line(r#"{"CPUPerc":"1%"}"#, &mut w),
            Err(LineError::NoName)
        );
        assert_eq!(
            parse_line(r#"{"Name":"/"}"#, &mut w),
            Err(LineError::NoName)
        );
        assert!(matches!(
            parse_line("not json", &mut w),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            parse_line(r#"{"Name":5}"#, &mut w),
            Err(LineError::Json(_))
        ));
        assert!(matches!(
            parse_line("[1,2]", &mut w),
            Err(LineError::Json(_))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(parse_line(&deep, &mut w), Err(LineError::Json(_))));
    }

    #[test]
    fn long_hostile_values_are_clipped_in_warnings() {
        let junk = "9".repeat(1000);
        let line = format!(r#"{{"Name":"x","PIDs":"{junk}"}}"#);
        let (_, w) = parse(&line);
        assert_eq!(w.len(), 1);
        assert!(w[0].text.len() < 50);
    }
}
