//! The collector file's keys (`STATS_*`): where figures come from and how often.

use super::containers::parse_filter;
use super::keys::{Fields, COLLECTOR_PREFIX};
use super::report::parse_report;
use super::{ConfigError, Env, Source};
use crate::publish::exception::Report;
use crate::source::filter::Filter;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Cli,
    File,
    /// The engine's API over its unix socket.
    Engine,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub mode: Mode,
    /// `mode` was set (file or variable). Unset, CLI mode may give way to ENGINE at start when the CLI
    /// is not there and an engine socket is (see `main`).
    pub mode_given: bool,
    pub interval: Duration,
    pub cli_path: String,
    pub file_path: String,
    pub cli_timeout: Duration,
    /// ENGINE mode's socket; `None`: `DOCKER_HOST` (`unix://`) or the usual places (see `engine`).
    pub engine_socket: Option<String>,
    /// ENGINE mode: where each running container's figures come from.
    pub engine_figures: EngineFigures,
    /// Where the host's cgroup hierarchies and its `/proc` are seen from here (a balena container sees
    /// them only with the `io.balena.features.sysfs` and `io.balena.features.procfs` labels).
    pub cgroup_root: String,
    pub proc_root: String,
    /// Every figure every tick, or by exception.
    pub report: Report,
    /// The device pseudo-service (`source::device`): whether it is published, its name, the paths whose
    /// filesystems' storage it reports (and whether they were configured or are the defaults), and
    /// where the host's `/sys` is seen from here (its `/proc` is `proc_root`).
    pub device_metrics: bool,
    pub device_service_name: String,
    pub device_disk_paths: Vec<String>,
    pub device_disk_paths_configured: bool,
    pub host_sys_root: String,
    /// Which containers are reported (the device is no container: always).
    pub containers: Filter,
}

/// `engine_figures`: the kernel's own counters, or the engine's stats API that reads the same files for us
/// at a far higher price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFigures {
    /// The kernel's files when they are usable at start, else the stats API.
    Auto,
    /// The kernel's files; a container whose files cannot be read falls back to the API for that tick.
    Cgroup,
    Api,
}

pub const COLLECTOR_KEYS: &[&str] = &[
    "mode",
    "collection_interval_in_seconds",
    "cli_path",
    "file_path",
    "cli_timeout_in_seconds",
    "engine_socket",
    "engine_figures",
    "cgroup_root",
    "proc_root",
    // Report by exception (config/report.rs).
    "report",
    "report_heartbeat_in_seconds",
    "report_cpu_deadband_in_percentage_points",
    "report_memory_deadband_in_percent",
    "report_network_deadband_in_bytes",
    "report_block_io_deadband_in_bytes",
    "report_temperature_deadband_in_celsius",
    "report_storage_deadband_in_bytes",
    "device_metrics",
    "device_service_name",
    "device_disk_paths",
    "host_sys_root",
    // Which containers (config/containers.rs).
    "container_name_include",
    "container_name_exclude",
    "container_label_include",
    "container_label_exclude",
];

/// Built-in defaults, equal to `config/balena_stats_collector.example-config.json`.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 10;
pub const DEFAULT_CLI_PATH: &str = "balena";
pub const DEFAULT_FILE_PATH: &str = "/data/balena-stats.jsonl";
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// `@` cannot stand in a compose service name (`[a-zA-Z0-9._-]+`) or a container name, so no
/// container's topics can be the device's.
pub const DEFAULT_DEVICE_SERVICE_NAME: &str = "@device";
/// The root filesystem, and balenaOS's data partition as its host OS mounts it.
pub const DEFAULT_DEVICE_DISK_PATHS: [&str; 2] = ["/", "/mnt/data"];
pub const DEFAULT_HOST_SYS_ROOT: &str = "/sys";

pub fn parse_collector(
    src: &Source,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Collector, ConfigError> {
    let f = Fields::new(src, COLLECTOR_KEYS, COLLECTOR_PREFIX, env, warnings)?;
    let mode_text = f.string("mode")?;
    let mode_given = mode_text.is_some();
    let mode = match mode_text.as_deref().unwrap_or("CLI") {
        "CLI" => Mode::Cli,
        "FILE" => Mode::File,
        "ENGINE" => Mode::Engine,
        other => {
            return Err(f.error(
                "mode",
                format!("{other:?} is not a mode (use \"CLI\", \"FILE\" or \"ENGINE\")"),
            ))
        }
    };
    let interval = f
        .uint("collection_interval_in_seconds", 1, 86_400)?
        .unwrap_or(DEFAULT_INTERVAL_SECONDS);
    let cli_path = f
        .string("cli_path")?
        .unwrap_or_else(|| DEFAULT_CLI_PATH.into());
    let file_path = f
        .string("file_path")?
        .unwrap_or_else(|| DEFAULT_FILE_PATH.into());
    let cli_timeout = f
        .uint("cli_timeout_in_seconds", 1, 86_400)?
        .unwrap_or(interval.max(10));
    if mode == Mode::Cli && cli_path.is_empty() {
        return Err(f.error("cli_path", "must not be empty in CLI mode".into()));
    }
    if mode == Mode::File && file_path.is_empty() {
        return Err(f.error("file_path", "must not be empty in FILE mode".into()));
    }
    let engine_socket = f.string("engine_socket")?.filter(|s| !s.is_empty());
    if let Some(s) = &engine_socket {
        let path = s.strip_prefix("unix://").unwrap_or(s);
        if !path.starts_with('/') {
            return Err(f.error(
                "engine_socket",
                format!("{s:?} must be an absolute path to a unix socket (or unix:///path)"),
            ));
        }
    }
    let engine_figures = match f.string("engine_figures")?.as_deref().unwrap_or("auto") {
        "auto" => EngineFigures::Auto,
        "cgroup" => EngineFigures::Cgroup,
        "api" => EngineFigures::Api,
        other => {
            return Err(f.error(
                "engine_figures",
                format!("{other:?} is not a choice (use \"auto\", \"cgroup\" or \"api\")"),
            ))
        }
    };
    let root = |key, default: &str| -> Result<String, ConfigError> {
        let r = f.string(key)?.unwrap_or_else(|| default.into());
        if !r.starts_with('/') {
            return Err(f.error(key, format!("{r:?} must be an absolute path")));
        }
        Ok(r)
    };
    let cgroup_root = root("cgroup_root", DEFAULT_CGROUP_ROOT)?;
    let proc_root = root("proc_root", DEFAULT_PROC_ROOT)?;
    let report = parse_report(&f)?;
    let device_metrics = f.boolean("device_metrics")?.unwrap_or(true);
    let device_service_name = f
        .string("device_service_name")?
        .unwrap_or_else(|| DEFAULT_DEVICE_SERVICE_NAME.into());
    if device_service_name.is_empty() || device_service_name.contains(['/', '+', '#', '\0']) {
        return Err(f.error(
            "device_service_name",
            format!("{device_service_name:?} must be one topic level: not empty, no / + # or NUL"),
        ));
    }
    let disks = disk_paths(&f)?;
    let device_disk_paths_configured = disks.is_some();
    let device_disk_paths =
        disks.unwrap_or_else(|| DEFAULT_DEVICE_DISK_PATHS.map(String::from).to_vec());
    let host_sys_root = root("host_sys_root", DEFAULT_HOST_SYS_ROOT)?;
    let containers = parse_filter(&f, env.balena)?;
    Ok(Collector {
        mode,
        mode_given,
        interval: Duration::from_secs(interval),
        cli_path,
        file_path,
        cli_timeout: Duration::from_secs(cli_timeout),
        engine_socket,
        engine_figures,
        cgroup_root,
        proc_root,
        report,
        device_metrics,
        device_service_name,
        device_disk_paths,
        device_disk_paths_configured,
        host_sys_root,
        containers,
    })
}

/// `device_disk_paths`: a list of absolute paths, or (as a variable must be) one text of paths separated
/// by commas; an empty list publishes no storage.
fn disk_paths(f: &Fields) -> Result<Option<Vec<String>>, ConfigError> {
    const KEY: &str = "device_disk_paths";
    const WHAT: &str = "absolute paths";
    let Some(list) = f.list(KEY, WHAT)? else {
        return Ok(None);
    };
    let mut paths = Vec::new();
    for p in list.into_iter().filter(|p| !p.is_empty()) {
        if !p.starts_with('/') {
            return Err(f.error(
                KEY,
                format!("must be {WHAT} (a list, or one text separated by commas), not {p:?}"),
            ));
        }
        paths.push(p.to_owned());
    }
    Ok(Some(paths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn missing_file_is_no_warning() {
        // Running on the environment alone is normal; main.rs logs the missing file at info.
        let mut w = Vec::new();
        parse_collector(
            &Source {
                path: "/x/c.json",
                text: None,
            },
            &Env::default(),
            &mut w,
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn cli_timeout_defaults_to_at_least_the_interval() {
        let c = collector(Some(r#"{"collection_interval_in_seconds": 30}"#)).unwrap();
        assert_eq!(c.cli_timeout, Duration::from_secs(30));
        let c = collector(Some(
            r#"{"collection_interval_in_seconds": 1, "cli_timeout_in_seconds": 3}"#,
        ))
        .unwrap();
        assert_eq!(c.cli_timeout, Duration::from_secs(3));
    }

    #[test]
    fn collector_errors_name_the_key() {
        assert_eq!(
            key_of(collector(Some(r#"{"mode": "SOCKET"}"#))),
            Some("mode")
        );
        assert_eq!(
            key_of(collector(Some(r#"{"collection_interval_in_seconds": 0}"#))),
            Some("collection_interval_in_seconds")
        );
        assert_eq!(
            key_of(collector(Some(
                r#"{"collection_interval_in_seconds": 1.5}"#
            ))),
            Some("collection_interval_in_seconds")
        );
        assert_eq!(
            key_of(collector(Some(
                r#"{"collection_interval_in_seconds": "5"}"#
            ))),
            Some("collection_interval_in_seconds")
        );
        assert_eq!(
            key_of(collector(Some(r#"{"collection_interval_in_seconds": -1}"#))),
            Some("collection_interval_in_seconds")
        );
        assert_eq!(
            key_of(collector(Some(r#"{"cli_path": 5}"#))),
            Some("cli_path")
        );
        assert_eq!(
            key_of(collector(Some(r#"{"mode": "FILE", "file_path": ""}"#))),
            Some("file_path")
        );
        let e = collector(Some("{not json")).unwrap_err();
        assert_eq!(e.key, None);
        assert!(
            e.to_string().starts_with("c.json: is not valid JSON"),
            "{e}"
        );
        assert!(collector(Some("[1]"))
            .unwrap_err()
            .message
            .contains("JSON object"));
    }

    #[test]
    fn engine_mode_and_socket() {
        let c = collector(Some(
            r#"{"mode": "ENGINE", "engine_socket": "/var/run/docker.sock"}"#,
        ))
        .unwrap();
        assert_eq!(c.mode, Mode::Engine);
        assert_eq!(c.engine_socket.as_deref(), Some("/var/run/docker.sock"));
        let c = collector(Some(r#"{"mode": "ENGINE", "engine_socket": ""}"#)).unwrap();
        assert_eq!(c.engine_socket, None, "empty means the default search");
        assert_eq!(collector(None).unwrap().engine_socket, None);
        assert_eq!(
            key_of(collector(Some(r#"{"engine_socket": "docker.sock"}"#))),
            Some("engine_socket")
        );
        assert_eq!(
            key_of(collector(Some(r#"{"engine_socket": 1}"#))),
            Some("engine_socket")
        );
    }

    #[test]
    fn engine_figures_and_roots() {
        let c = collector(None).unwrap();
        assert_eq!(c.engine_figures, EngineFigures::Auto);
        assert_eq!(
            (c.cgroup_root.as_str(), c.proc_root.as_str()),
            ("/sys/fs/cgroup", "/proc")
        );
        let c = collector(Some(
            r#"{"engine_figures": "cgroup", "cgroup_root": "/h/cg", "proc_root": "/h/proc"}"#,
        ))
        .unwrap();
        assert_eq!(c.engine_figures, EngineFigures::Cgroup);
        assert_eq!(
            (c.cgroup_root.as_str(), c.proc_root.as_str()),
            ("/h/cg", "/h/proc")
        );
        for bad in [
            r#"{"engine_figures": "kernel"}"#,
            r#"{"engine_figures": 1}"#,
        ] {
            assert_eq!(
                key_of(collector(Some(bad))),
                Some("engine_figures"),
                "{bad}"
            );
        }
        assert_eq!(
            key_of(collector(Some(r#"{"cgroup_root": "sys"}"#))),
            Some("cgroup_root")
        );
        assert_eq!(
            key_of(collector(Some(r#"{"proc_root": ""}"#))),
            Some("proc_root")
        );
    }

    #[test]
    fn device_keys() {
        let c = collector(None).unwrap();
        assert!(c.device_metrics);
        assert_eq!(c.device_service_name, "@device");
        assert_eq!(c.device_disk_paths, ["/", "/mnt/data"]);
        assert!(!c.device_disk_paths_configured);
        assert_eq!(c.host_sys_root, "/sys");
        let c = collector(Some(
            r#"{"device_metrics": false, "device_service_name": "host", "device_disk_paths": ["/data"], "host_sys_root": "/h/sys"}"#,
        ))
        .unwrap();
        assert!(!c.device_metrics);
        assert_eq!(c.device_service_name, "host");
        assert_eq!(
            (
                c.device_disk_paths.as_slice(),
                c.device_disk_paths_configured
            ),
            (&["/data".to_owned()][..], true)
        );
        assert_eq!(c.host_sys_root, "/h/sys");
        let c = collector_env(
            None,
            &vars(&[("STATS_DEVICE_DISK_PATHS", " /, /mnt/data ,")]),
        )
        .unwrap();
        assert_eq!(c.device_disk_paths, ["/", "/mnt/data"]);
        let c = collector(Some(r#"{"device_disk_paths": []}"#)).unwrap();
        assert!(c.device_disk_paths.is_empty() && c.device_disk_paths_configured);
        for (bad, key) in [
            (r#"{"device_metrics": "yes"}"#, "device_metrics"),
            (r#"{"device_service_name": "a/b"}"#, "device_service_name"),
            (r#"{"device_service_name": ""}"#, "device_service_name"),
            (r##"{"device_service_name": "#"}"##, "device_service_name"),
            (r#"{"device_disk_paths": "data"}"#, "device_disk_paths"),
            (r#"{"device_disk_paths": ["/", 1]}"#, "device_disk_paths"),
            (r#"{"device_disk_paths": 5}"#, "device_disk_paths"),
            (r#"{"host_sys_root": "sys"}"#, "host_sys_root"),
        ] {
            assert_eq!(key_of(collector(Some(bad))), Some(key), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_warn() {
        let mut w = Vec::new();
        parse_collector(
            &Source {
                path: "c.json",
                text: Some(r#"{"intervall": 5}"#),
            },
            &Env::default(),
            &mut w,
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("unknown key \"intervall\""), "{}", w[0]);
    }
}
