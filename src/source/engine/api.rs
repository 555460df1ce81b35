//! The Engine API's JSON, read into the same figures CLI mode publishes, computed the way the docker CLI
//! computes them (docker/cli `cli/command/container/stats_helpers.go`), so the two modes agree.
//!
//! Pure: bodies in, figures out. Fields the engine leaves out are absent (or 0 where the CLI sums over an
//! empty set, as for networks and block I/O); nothing here can panic on hostile JSON.

use crate::source::filter::{Filter, Subject, SERVICE_LABEL};
use crate::stats::lifecycle::{Health, Lifecycle, State};
use crate::stats::{ContainerStats, Figures, Metric, Value};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

/// One container from `GET /containers/json` (`?all=1`: stopped ones too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    /// First name, leading `/` dropped.
    pub name: String,
    /// `io.balena.service-name`, else `com.docker.compose.service`, when set and non-empty.
    pub service: Option<String>,
    /// The list's `State` word, when it is one of ours (not `removing`, see [`parse_inspect`]).
    pub state: Option<State>,
}

#[derive(Deserialize)]
struct RawListed {
    #[serde(rename = "Id")]
    id: Option<String>,
    #[serde(rename = "Names")]
    names: Option<Vec<String>>,
    /// As a JSON value, read by the same code as the config files: a type of its own cost more.
    #[serde(rename = "Labels", default)]
    labels: Json,
    #[serde(rename = "State")]
    state: Option<String>,
}

/// A container's labels (none: an empty map).
pub fn labels_of(labels: Json) -> Map<String, Json> {
    match labels {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

/// The service name balena's supervisor (`io.balena.service-name`) or, without it, docker-compose gave
/// (without that, compose's containers would be named `project_service_1`), when set and not empty.
pub fn service_of(labels: &Map<String, Json>) -> Option<String> {
    let get = |k| labels.get(k)?.as_str().filter(|s| !s.is_empty());
    get(SERVICE_LABEL)
        .or_else(|| get("com.docker.compose.service"))
        .map(str::to_owned)
}

/// Whether the filter wants this container; its labels are all known here.
pub fn wanted(containers: &Filter, listed: &Listed, labels: &Map<String, Json>) -> bool {
    containers.keeps(&Subject {
        name: &listed.name,
        service: listed.service.as_deref(),
        labels: Some(labels),
    })
}

/// Reads the container list, less the containers the filter does not want. Entries without an id are
/// skipped; one without a name is named by its short id, as the CLI does.
pub fn parse_list(body: &[u8], containers: &Filter) -> Result<Vec<Listed>, String> {
    let raw: Vec<RawListed> = serde_json::from_slice(body)
        .map_err(|e| format!("container list is not the expected JSON: {e}"))?;
    Ok(raw
        .into_iter()
        .filter_map(|c| {
            let id = c.id.filter(|i| is_id(i))?;
            let name = c
                .names
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.trim_start_matches('/').to_owned())
                .find(|n| !n.is_empty())
                .unwrap_or_else(|| short_id(&id).to_owned());
            let labels = labels_of(c.labels);
            let state = c.state.as_deref().and_then(State::parse);
            let listed = Listed {
                id,
                name,
                service: service_of(&labels),
                state,
            };
            wanted(containers, &listed, &labels).then_some(listed)
        })
        .collect())
}

/// Container ids go into a request path: only hex digits are let through.
fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The `message` of an engine error body, clipped, or the body itself when it is not one.
pub fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        message: String,
    }
    let text = match serde_json::from_slice::<E>(body) {
        Ok(e) => e.message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// What CPU % needs from one sample: the container's and the whole system's CPU time so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub total: u64,
    pub system: u64,
    pub online_cpus: u64,
}

/// One `GET /containers/{id}/stats` answer, reduced to what we publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `None` when the engine had no CPU figures (a stopped container answers with zeros).
    pub cpu: Option<CpuSample>,
    /// What the engine itself gives as the previous sample (filled without `one-shot`, zeros with it).
    pub precpu: Option<CpuSample>,
    /// Everything but CPU %, complete.
    pub figures: Figures,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStats {
    read: Option<String>,
    cpu_stats: RawCpu,
    precpu_stats: RawCpu,
    memory_stats: RawMemory,
    networks: Option<NetTotals>,
    blkio_stats: RawBlkio,
    pids_stats: RawPids,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCpu {
    cpu_usage: RawCpuUsage,
    system_cpu_usage: Option<u64>,
    online_cpus: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCpuUsage {
    total_usage: Option<u64>,
    percpu_usage: Option<Counted>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawMemory {
    usage: Option<u64>,
    limit: Option<u64>,
    stats: Option<PageCache>,
}

/// The page-cache figures of `memory_stats.stats`, kept as the object streams past rather than stored
/// as a map of every counter (the map's code was 1 KB of the device binary). As with the map: every
/// value must be a u64, and a repeated key counts with its last value.
#[derive(Default)]
struct PageCache {
    total_inactive_file: Option<u64>,
    inactive_file: Option<u64>,
}

impl<'de> Deserialize<'de> for PageCache {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Counters;
        impl<'de> serde::de::Visitor<'de> for Counters {
            type Value = PageCache;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<PageCache, A::Error> {
                let mut cache = PageCache::default();
                while let Some(key) = m.next_key::<String>()? {
                    let value = m.next_value::<u64>()?;
                    match key.as_str() {
                        "total_inactive_file" => cache.total_inactive_file = Some(value),
                        "inactive_file" => cache.inactive_file = Some(value),
                        _ => {}
                    }
                }
                Ok(cache)
            }
        }
        d.deserialize_map(Counters)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawNetwork {
    rx_bytes: u64,
    tx_bytes: u64,
}

/// How many numbers a list holds (`percpu_usage`, whose length is all that is read), counted as it streams
/// past rather than kept; each must still be a u64.
struct Counted(u64);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Numbers;
        impl<'de> serde::de::Visitor<'de> for Numbers {
            type Value = Counted;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<Counted, A::Error> {
                let mut n = 0;
                while s.next_element::<u64>()?.is_some() {
                    n += 1;
                }
                Ok(Counted(n))
            }
        }
        d.deserialize_seq(Numbers)
    }
}

/// `networks`: bytes received and sent, summed over the interfaces (saturating) as the object streams
/// past, rather than kept as a map of each (the map's code was about 2 KB of the device binary). Every
/// interface's figures must still read as numbers; an interface named twice, which the engine never
/// does, would count twice where the map kept its last.
#[derive(Default)]
struct NetTotals {
    rx: u64,
    tx: u64,
}

impl<'de> Deserialize<'de> for NetTotals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Interfaces;
        impl<'de> serde::de::Visitor<'de> for Interfaces {
            type Value = NetTotals;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<NetTotals, A::Error> {
                let mut t = NetTotals::default();
                while m.next_key::<String>()?.is_some() {
                    let n = m.next_value::<RawNetwork>()?;
                    t.rx = t.rx.saturating_add(n.rx_bytes);
                    t.tx = t.tx.saturating_add(n.tx_bytes);
                }
                Ok(t)
            }
        }
        d.deserialize_map(Interfaces)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBlkio {
    io_service_bytes_recursive: Option<BlockTotals>,
}

/// `io_service_bytes_recursive`: bytes read and written, summed over the entries (saturating) as the
/// list streams past rather than kept as a vector of them (like [`NetTotals`], to save the device
/// binary the vector's code). Every entry must still read as before; only `Read` and `Write` count.
#[derive(Default)]
struct BlockTotals {
    read: u64,
    written: u64,
}

impl<'de> Deserialize<'de> for BlockTotals {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = BlockTotals;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> Result<BlockTotals, A::Error> {
                let mut t = BlockTotals::default();
                while let Some(e) = s.next_element::<RawBlkioEntry>()? {
                    if e.op.eq_ignore_ascii_case("read") {
                        t.read = t.read.saturating_add(e.value);
                    } else if e.op.eq_ignore_ascii_case("write") {
                        t.written = t.written.saturating_add(e.value);
                    }
                }
                Ok(t)
            }
        }
        d.deserialize_seq(Entries)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawBlkioEntry {
    op: String,
    value: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPids {
    current: Option<u64>,
}

impl RawCpu {
    fn sample(&self) -> Option<CpuSample> {
        let total = self.cpu_usage.total_usage?;
        let system = self.system_cpu_usage.filter(|&s| s > 0)?;
        // The CLI falls back to the per-CPU list's length on engines that do not send online_cpus.
        let online_cpus = self
            .online_cpus
            .filter(|&n| n > 0)
            .or_else(|| self.cpu_usage.percpu_usage.as_ref().map(|p| p.0))
            .filter(|&n| n > 0)?;
        Some(CpuSample {
            total,
            system,
            online_cpus,
        })
    }
}

/// Why a stats answer gave nothing to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SampleError {
    Json(String),
    /// The engine answered with an empty sample: the container is no longer running.
    NotRunning,
}

impl std::fmt::Display for SampleError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            SampleError::Json(e) => write!(f, "stats are not the expected JSON: {e}"),
            SampleError::NotRunning => f.write_str("no sample (the container is not running)"),
        }
    }
}

/// Reads a stats body into a sample. Memory, network, block I/O and PIDs are final here; CPU % needs a
/// second sample, see [`cpu_percent`].
pub fn parse_stats(body: &[u8]) -> Result<Sample, SampleError> {
    let raw: RawStats =
        serde_json::from_slice(body).map_err(|e| SampleError::Json(clip(&e.to_string())))?;
    // A container that is not running is answered with an all-zero sample read at the zero time.
    let read_never = raw.read.as_deref().is_none_or(|r| r.starts_with("0001-"));
    let cpu = raw.cpu_stats.sample();
    if read_never && cpu.is_none() {
        return Err(SampleError::NotRunning);
    }
    let mut f = Figures::default();
    let mem = &raw.memory_stats;
    if let Some(usage) = mem.usage {
        // cgroup v1 reports total_inactive_file, v2 inactive_file; the CLI subtracts that page cache.
        let cache = mem.stats.as_ref().map_or(0, |s| {
            let below = |v: Option<u64>| v.filter(|&v| v < usage);
            below(s.total_inactive_file)
                .or(below(s.inactive_file))
                .unwrap_or(0)
        });
        let used = usage - cache;
        f.set(Metric::MemoryUsage, Value::Count(used));
        if let Some(limit) = mem.limit.filter(|&l| l > 0) {
            f.set(
                Metric::MemoryPercent,
                Value::Percent(two_places(used as f64 / limit as f64 * 100.0)),
            );
        }
    }
    if let Some(limit) = mem.limit.filter(|&l| l > 0) {
        f.set(Metric::MemoryLimit, Value::Count(limit));
    }
    // As the CLI: a container without networks (`--network none`) shows 0 received and 0 sent.
    let (rx, tx) = raw.networks.map_or((0, 0), |n| (n.rx, n.tx));
    f.set(Metric::NetworkReceived, Value::Count(rx));
    f.set(Metric::NetworkSent, Value::Count(tx));
    let blocks = raw.blkio_stats.io_service_bytes_recursive;
    let (read, written) = blocks.map_or((0, 0), |b| (b.read, b.written));
    f.set(Metric::BlockRead, Value::Count(read));
    f.set(Metric::BlockWritten, Value::Count(written));
    if let Some(p) = raw.pids_stats.current {
        f.set(Metric::Pids, Value::Count(p));
    }
    Ok(Sample {
        cpu,
        precpu: raw.precpu_stats.sample(),
        figures: f,
    })
}

/// CPU % between two samples of one container: (cpu delta / system delta) x online CPUs x 100, rounded
/// to two places as the CLI prints it. `None` when the pair cannot give one (no time passed on the system
/// clock, or the counters went backwards because the container restarted).
pub fn cpu_percent(before: &CpuSample, now: &CpuSample) -> Option<f64> {
    let system = now.system.checked_sub(before.system).filter(|&d| d > 0)?;
    let cpu = now.total.checked_sub(before.total)?;
    Some(two_places(
        cpu as f64 / system as f64 * now.online_cpus as f64 * 100.0,
    ))
}

fn two_places(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn clip(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// An inspect answer: who the container is, how its life goes, and its main process (the host's pid, while
/// it runs) whose cgroup and network namespace hold its figures.
pub struct Inspected {
    pub listed: Listed,
    pub life: Lifecycle,
    pub pid: Option<u32>,
    pub network: Network,
    /// For the container filter; not kept.
    pub labels: Map<String, Json>,
}

/// Whose network namespace a container's process is in (`HostConfig.NetworkMode`): `/proc/<pid>/net/dev`
/// is the container's own only in the first case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Own,
    /// `host`: the engine reports no networks (docker stats shows 0B / 0B); net/dev is the host's.
    Host,
    /// `container:<id>`: another container's; only the engine knows what it reports.
    Shared,
}

/// `GET /containers/{id}/json`, reduced to who the container is and how its life goes; `None` while the
/// engine removes it (`State.Status` `removing`, between the kill and the `destroy` of `docker rm -f`):
/// docker's one word that is no state of ours, a container on its way to `removed`.
pub fn parse_inspect(body: &[u8]) -> Result<Option<Inspected>, String> {
    #[derive(Deserialize)]
    struct RawHealth {
        #[serde(rename = "Status")]
        status: Option<String>,
    }
    #[derive(Deserialize)]
    struct RawState {
        #[serde(rename = "Status")]
        status: Option<String>,
        #[serde(rename = "ExitCode")]
        exit_code: Option<i64>,
        #[serde(rename = "OOMKilled")]
        oom_killed: Option<bool>,
        #[serde(rename = "StartedAt")]
        started_at: Option<String>,
        #[serde(rename = "Health")]
        health: Option<RawHealth>,
        #[serde(rename = "Pid")]
        pid: Option<u32>,
    }
    #[derive(Deserialize)]
    struct RawConfig {
        #[serde(rename = "Labels", default)]
        labels: Json,
    }
    #[derive(Deserialize)]
    struct RawHostConfig {
        #[serde(rename = "NetworkMode")]
        network_mode: Option<String>,
    }
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "Id")]
        id: Option<String>,
        #[serde(rename = "Name")]
        name: Option<String>,
        #[serde(rename = "RestartCount")]
        restart_count: Option<u64>,
        #[serde(rename = "State")]
        state: Option<RawState>,
        #[serde(rename = "Config")]
        config: Option<RawConfig>,
        #[serde(rename = "HostConfig")]
        host_config: Option<RawHostConfig>,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|e| format!("inspect answer is not the expected JSON: {e}"))?;
    let id = raw
        .id
        .filter(|i| is_id(i))
        .ok_or("inspect answer without an id")?;
    let st = raw.state.ok_or("inspect answer without a State")?;
    if st.status.as_deref() == Some("removing") {
        return Ok(None);
    }
    let state = st
        .status
        .as_deref()
        .and_then(State::parse)
        .ok_or("inspect answer without a known State.Status")?;
    let name = raw
        .name
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| short_id(&id).to_owned());
    let labels = labels_of(raw.config.map_or(Json::Null, |c| c.labels));
    let life = Lifecycle {
        state,
        health: st
            .health
            .and_then(|h| h.status)
            .as_deref()
            .and_then(Health::parse),
        restart_count: raw.restart_count,
        exit_code: st.exit_code,
        oom_killed: st.oom_killed,
        started_at_ms: st.started_at.as_deref().and_then(rfc3339_ms),
    };
    let listed = Listed {
        id,
        name,
        service: service_of(&labels),
        state: Some(state),
    };
    // The engine says 0 for a container that is not running.
    let pid = st.pid.filter(|&p| p > 0 && state == State::Running);
    let mode = raw.host_config.and_then(|h| h.network_mode);
    let network = match mode.as_deref() {
        Some("host") => Network::Host,
        Some(m) if m.starts_with("container:") => Network::Shared,
        _ => Network::Own,
    };
    Ok(Some(Inspected {
        listed,
        life,
        pid,
        network,
        labels,
    }))
}

/// The engine's times (`2026-11-25T09:19:41.269701798Z`, or with an offset) in Unix milliseconds; `None`
/// for its "never" (`0001-01-01T00:00:00Z`) and anything unreadable.
pub fn rfc3339_ms(t: &str) -> Option<u64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, time) = t.get(..10).zip(t.get(11..))?;
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let (h, mi, sec) = (
        num(time.get(..2)?)?,
        num(time.get(3..5)?)?,
        num(time.get(6..8)?)?,
    );
    let rest = time.get(8..)?;
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let ms = num(&format!("{frac:0<3}")[..3]).unwrap_or(0);
    let offset_min = match zone {
        "Z" | "z" => 0,
        z if z.len() == 6 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (num(z.get(1..3)?)? * 60 + num(z.get(4..6)?)?)
        }
        _ => return None,
    };
    if y < 1970 || !(1..=12).contains(&mo) || !(1..=31).contains(&day) || h > 23 || mi > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm, written out from its description).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    u64::try_from(secs * 1000 + ms).ok()
}

/// A container's figures, ready for the tick.
pub fn container_stats(listed: &Listed, figures: Figures) -> ContainerStats {
    ContainerStats {
        part: None,
        name: listed.name.clone(),
        id: short_id(&listed.id).to_owned(),
        service: listed.service.clone(),
        figures,
        lifecycle: None,
    }
}

#[cfg(test)]
mod lifecycle_tests {
    use super::*;

    #[test]
    fn engine_times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_ms("2026-11-25T09:19:41.269701798Z"),
            Some(1_795_598_381_269)
        );
        assert_eq!(
            rfc3339_ms("2026-11-25T10:19:41.5+01:00"),
            Some(1_795_598_381_500)
        );
        assert_eq!(rfc3339_ms("2000-03-01T00:00:00Z"), Some(951_868_800_000));
        assert_eq!(rfc3339_ms("0001-01-01T00:00:00Z"), None);
        for junk in [
            "",
            "2026",
            "2026-11-25T09:19:4xZ",
            "2026-13-01T00:00:00Z",
            "é",
        ] {
            assert_eq!(rfc3339_ms(junk), None, "{junk}");
        }
    }

    #[test]
    fn inspect_gives_identity_and_life() {
        let body = br#"{"Id":"ae05f919de0719981a6c958d10cfe328","Name":"/main_1_2","RestartCount":2,
            "State":{"Status":"exited","Running":false,"OOMKilled":true,"ExitCode":137,
                     "StartedAt":"2026-11-25T09:19:41.269701798Z","FinishedAt":"2026-11-25T09:20:00Z",
                     "Health":{"Status":"unhealthy","FailingStreak":3,"Log":[]}},
            "Config":{"Labels":{"io.balena.service-name":"main"}}}"#;
        let Inspected {
            listed: l,
            life,
            pid,
            ..
        } = parse_inspect(body).unwrap().unwrap();
        assert_eq!(
            (l.name.as_str(), l.service.as_deref(), l.state, pid),
            ("main_1_2", Some("main"), Some(State::Exited), None)
        );
        assert_eq!(
            life,
            Lifecycle {
                state: State::Exited,
                health: Some(Health::Unhealthy),
                restart_count: Some(2),
                exit_code: Some(137),
                oom_killed: Some(true),
                started_at_ms: Some(1_795_598_381_269),
            }
        );
        let running = parse_inspect(br#"{"Id":"ab","State":{"Status":"running","Pid":4242}}"#);
        let running = running.unwrap().unwrap();
        assert_eq!((running.pid, running.network), (Some(4242), Network::Own));
        for (mode, network) in [
            ("host", Network::Host),
            ("container:ab12", Network::Shared),
            ("bridge", Network::Own),
            ("my-net", Network::Own),
        ] {
            let body = format!(
                r#"{{"Id":"ab","State":{{"Status":"running","Pid":1}},"HostConfig":{{"NetworkMode":"{mode}"}}}}"#
            );
            assert_eq!(
                parse_inspect(body.as_bytes()).unwrap().unwrap().network,
                network,
                "{mode}"
            );
        }
        let life = parse_inspect(
            br#"{"Id":"ab","State":{"Status":"created","StartedAt":"0001-01-01T00:00:00Z","Pid":0}}"#,
        )
        .unwrap()
        .unwrap()
        .life;
        assert_eq!(
            (life.state, life.health, life.started_at_ms),
            (State::Created, None, None)
        );
        for junk in [
            &b"{}"[..],
            b"[]",
            br#"{"Id":"../x","State":{"Status":"running"}}"#,
            br#"{"Id":"ab","State":{"Status":"zombie"}}"#,
        ] {
            assert!(parse_inspect(junk).is_err());
        }
    }

    /// The real engine's answer (Docker Engine 20.10) between the kill and the destroy of `docker rm -f` on a
    /// running container.
    const REMOVING: &[u8] =
        br#"{"Id":"ab","Name":"/web","RestartCount":0,"State":{"Status":"removing",
        "Running":false,"Paused":false,"Restarting":false,"OOMKilled":false,"Dead":false,"Pid":0,
        "ExitCode":137,"Error":"","StartedAt":"2026-12-04T15:21:46.787057281Z",
        "FinishedAt":"2026-12-04T15:21:46.874813774Z"}}"#;

    #[test]
    fn a_container_being_removed_is_known_not_an_error() {
        let got = parse_inspect(REMOVING);
        assert!(got.is_ok(), "{:?}", got.err());
        assert!(got.unwrap().is_none());
        // Docker's other words are ours, and an unknown one is still an error.
        let word = |w: &str| format!(r#"{{"Id":"ab","State":{{"Status":"{w}"}}}}"#);
        for s in State::ALL.iter().filter(|s| **s != State::Removed) {
            let got = parse_inspect(word(s.name()).as_bytes());
            assert_eq!(got.unwrap().unwrap().life.state, *s);
        }
        assert!(parse_inspect(word("Removing").as_bytes()).is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like Docker Engine 20.10's answer on cgroup v1 (trimmed), with round numbers to check by
    /// hand.
    const V1: &str = r#"{"read":"2026-11-25T09:19:41.269701798Z","preread":"0001-01-01T00:00:00Z",
        "pids_stats":{"current":3},
        "blkio_stats":{"io_service_bytes_recursive":[
            {"major":8,"minor":0,"op":"Read","value":4096},{"major":8,"minor":0,"op":"Write","value":100},
            {"major":8,"minor":0,"op":"Sync","value":7},{"major":8,"minor":0,"op":"Total","value":4196},
            {"major":8,"minor":16,"op":"read","value":4}]},
        "cpu_stats":{"cpu_usage":{"total_usage":5000000000,"percpu_usage":[1,2]},
            "system_cpu_usage":100000000000,"online_cpus":2},
        "precpu_stats":{"cpu_usage":{"total_usage":0}},
        "memory_stats":{"usage":10485760,"limit":67108864,
            "stats":{"inactive_file":1,"total_inactive_file":2097152}},
        "networks":{"eth0":{"rx_bytes":1000,"tx_bytes":20},"eth1":{"rx_bytes":5,"tx_bytes":6}},
        "name":"/web","id":"ae05"}"#;

    fn count(f: &Figures, m: Metric) -> Option<u64> {
        match f.get(m) {
            Some(Value::Count(n)) => Some(n),
            _ => None,
        }
    }

    #[test]
    fn figures_as_the_cli_computes_them() {
        let s = parse_stats(V1.as_bytes()).unwrap();
        let f = &s.figures;
        assert_eq!(count(f, Metric::MemoryUsage), Some(8_388_608));
        assert_eq!(count(f, Metric::MemoryLimit), Some(67_108_864));
        assert_eq!(f.get(Metric::MemoryPercent), Some(Value::Percent(12.5)));
        assert_eq!(count(f, Metric::NetworkReceived), Some(1005));
        assert_eq!(count(f, Metric::NetworkSent), Some(26));
        assert_eq!(count(f, Metric::BlockRead), Some(4100));
        assert_eq!(count(f, Metric::BlockWritten), Some(100));
        assert_eq!(count(f, Metric::Pids), Some(3));
        assert_eq!(f.get(Metric::CpuPercent), None);
        assert_eq!(
            s.cpu,
            Some(CpuSample {
                total: 5_000_000_000,
                system: 100_000_000_000,
                online_cpus: 2
            })
        );
        assert_eq!(s.precpu, None, "one-shot leaves the previous sample empty");
    }

    #[test]
    fn cgroup_v2_subtracts_inactive_file() {
        let body = r#"{"read":"2026-01-01T00:00:00Z","memory_stats":{"usage":3000,"limit":10000,
            "stats":{"inactive_file":1000,"anon":5}},"cpu_stats":{"cpu_usage":{"total_usage":1},
            "system_cpu_usage":9,"online_cpus":4}}"#;
        let s = parse_stats(body.as_bytes()).unwrap();
        assert_eq!(count(&s.figures, Metric::MemoryUsage), Some(2000));
        assert_eq!(
            s.figures.get(Metric::MemoryPercent),
            Some(Value::Percent(20.0))
        );
        // No networks and no block I/O: zeros, as the CLI prints "0B / 0B".
        assert_eq!(count(&s.figures, Metric::NetworkReceived), Some(0));
        assert_eq!(count(&s.figures, Metric::BlockWritten), Some(0));
        // No pids_stats: absent, not 0.
        assert_eq!(s.figures.get(Metric::Pids), None);
    }

    #[test]
    fn cache_larger_than_usage_is_not_subtracted() {
        let body = r#"{"read":"2026-01-01T00:00:00Z","memory_stats":{"usage":3000,
            "stats":{"total_inactive_file":5000}}}"#;
        let s = parse_stats(body.as_bytes()).unwrap();
        assert_eq!(count(&s.figures, Metric::MemoryUsage), Some(3000));
        assert_eq!(s.figures.get(Metric::MemoryLimit), None);
        assert_eq!(s.figures.get(Metric::MemoryPercent), None);
    }

    #[test]
    fn page_cache_counters_escaped_repeated_or_null() {
        let usage = |stats: &str| {
            let body = format!(
                r#"{{"read":"2026-01-01T00:00:00Z","memory_stats":{{"usage":3000,"stats":{stats}}}}}"#
            );
            count(
                &parse_stats(body.as_bytes()).unwrap().figures,
                Metric::MemoryUsage,
            )
        };
        assert_eq!(
            usage(r#"{"inactive_file":1,"inactive_file":500}"#),
            Some(2500)
        );
        assert_eq!(usage(r#"{"inactive\u005ffile":100}"#), Some(2900));
        assert_eq!(
            usage(r#"{"total_inactive_file":4000,"inactive_file":10}"#),
            Some(2990)
        );
        assert_eq!(usage("null"), Some(3000));
        assert_eq!(usage("{}"), Some(3000));
    }

    #[test]
    fn cpu_percent_against_a_previous_sample() {
        let before = CpuSample {
            total: 1_000_000_000,
            system: 10_000_000_000,
            online_cpus: 2,
        };
        // 0.75 s of one container's CPU over 2 s of system time on 2 CPUs (1 s of wall time): 75 %.
        let now = CpuSample {
            total: 1_750_000_000,
            system: 12_000_000_000,
            online_cpus: 2,
        };
        assert_eq!(cpu_percent(&before, &now), Some(75.0));
        assert_eq!(cpu_percent(&before, &before), None, "no time passed");
        assert_eq!(cpu_percent(&now, &before), None, "counters went back");
        let idle = CpuSample {
            system: 11_000_000_000,
            ..before
        };
        assert_eq!(cpu_percent(&before, &idle), Some(0.0));
    }

    #[test]
    fn percpu_length_stands_in_for_online_cpus() {
        let body = r#"{"read":"2026-01-01T00:00:00Z","cpu_stats":{"cpu_usage":{"total_usage":7,
            "percpu_usage":[3,4,0,0]},"system_cpu_usage":90},
            "precpu_stats":{"cpu_usage":{"total_usage":2},"system_cpu_usage":40,"online_cpus":4}}"#;
        let s = parse_stats(body.as_bytes()).unwrap();
        assert_eq!(s.cpu.map(|c| c.online_cpus), Some(4));
        assert_eq!(s.precpu.map(|c| c.total), Some(2));
        assert_eq!(cpu_percent(&s.precpu.unwrap(), &s.cpu.unwrap()), Some(40.0));
    }

    #[test]
    fn a_stopped_container_has_no_sample() {
        let body = r#"{"read":"0001-01-01T00:00:00Z","preread":"0001-01-01T00:00:00Z",
            "pids_stats":{},"cpu_stats":{"cpu_usage":{"total_usage":0}},"memory_stats":{},
            "name":"/x","id":"ab"}"#;
        assert_eq!(parse_stats(body.as_bytes()), Err(SampleError::NotRunning));
    }

    #[test]
    fn hostile_stats_are_errors() {
        for body in [
            "",
            "[]",
            "null",
            r#"{"memory_stats":{"usage":-1}}"#,
            r#"{"memory_stats":{"usage":1e400}}"#,
            r#"{"networks":{"eth0":{"rx_bytes":"x"}}}"#,
            // Streamed rather than kept (networks, block I/O, per-CPU usage), they must still be what
            // the kept map and vectors took.
            r#"{"networks":[]}"#,
            r#"{"networks":{"eth0":1}}"#,
            r#"{"blkio_stats":{"io_service_bytes_recursive":{}}}"#,
            r#"{"blkio_stats":{"io_service_bytes_recursive":[{"op":"Read","value":-1}]}}"#,
            r#"{"cpu_stats":{"cpu_usage":{"percpu_usage":[1,"x"]}}}"#,
            // Counters we do not read must still be numbers, as when the whole map was kept.
            r#"{"memory_stats":{"usage":9,"stats":{"anon":"x","inactive_file":1}}}"#,
            r#"{"memory_stats":{"usage":9,"stats":[]}}"#,
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":18446744073709551616}}}"#,
        ] {
            assert!(parse_stats(body.as_bytes()).is_err(), "{body}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse_stats(deep.as_bytes()).is_err());
    }

    #[test]
    fn sums_saturate() {
        let body = format!(
            r#"{{"read":"2026-01-01T00:00:00Z","networks":{{"a":{{"rx_bytes":{m}}},"b":{{"rx_bytes":{m}}}}}}}"#,
            m = u64::MAX
        );
        let s = parse_stats(body.as_bytes()).unwrap();
        assert_eq!(count(&s.figures, Metric::NetworkReceived), Some(u64::MAX));
    }

    #[test]
    fn list_with_labels_and_odd_entries() {
        let body = br#"[
            {"Id":"ae05f919de0719981a6c958d10cfe32823041cc51818c13ff040239b3c5c6f91","Names":["/main_1_2"],
             "Labels":{"io.balena.service-name":"main","other":"x"},"State":"running"},
            {"Id":"bb05f919de07","Names":["/plain"],"Labels":null},
            {"Id":"cc05f919de07","Names":[]},
            {"Id":"../../version?","Names":["/evil"]},
            {"Names":["/noid"]},
            {"Id":"dd05f919de07","Names":["/x"],"Labels":{"io.balena.service-name":""}},
            {"Id":"ee05f919de07","Names":["/proj_web_1"],"Labels":{"com.docker.compose.service":"web"}},
            {"Id":"ff05f919de07","Names":["/m_1_2"],
             "Labels":{"io.balena.service-name":"main","com.docker.compose.service":"web"}}
        ]"#;
        let l = parse_list(body, &Filter::default()).unwrap();
        let got: Vec<_> = l
            .iter()
            .map(|c| (short_id(&c.id), c.name.as_str(), c.service.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ae05f919de07", "main_1_2", Some("main")),
                ("bb05f919de07", "plain", None),
                ("cc05f919de07", "cc05f919de07", None),
                ("dd05f919de07", "x", None),
                ("ee05f919de07", "proj_web_1", Some("web")),
                ("ff05f919de07", "m_1_2", Some("main")),
            ]
        );
        assert!(parse_list(b"{\"message\":\"x\"}", &Filter::default()).is_err());
        assert!(parse_list(b"", &Filter::default()).is_err());
        // The filter sees every label and the service; the rest never leave the list.
        let f = Filter {
            include: vec![
                crate::source::filter::Rule::Label("oth*=?".into()),
                crate::source::filter::Rule::Name("web".into()),
            ],
            ..Filter::default()
        };
        let names: Vec<_> = parse_list(body, &f)
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["main_1_2", "proj_web_1"]);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"message":"No such container: abc"}"#),
            "No such container: abc"
        );
        assert_eq!(error_message(b"plain text\n"), "plain text");
        assert!(error_message(&[b'x'; 1000]).len() < 210);
    }
}
