//! balena-multi-container-telemetry: per-container stats from `balena stats` (or a file it wrote),
//! published to MQTT. See README.md.

mod agent;
mod cli;
mod config;
mod fuzz;
mod log;
mod mqtt;
mod publish;
mod schedule;
mod signal;
mod source;
mod spool;
mod start_file;
mod stats;
mod thread_name;

use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(cli::Command::Run(args)) => args,
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            return 0;
        }
        Ok(cli::Command::Version) => {
            println!(
                "balena-multi-container-telemetry {}",
                env!("CARGO_PKG_VERSION")
            );
            return 0;
        }
        Err(e) => {
            eprintln!("{e}\n{}", cli::USAGE);
            return 2;
        }
    };
    if let Some(level) = std::env::var("LOG_LEVEL").ok().filter(|l| !l.is_empty()) {
        match log::Level::parse(&level) {
            Some(l) => log::set_level(l),
            None => warn!("LOG_LEVEL {level:?} is not one of error, warn, info, debug; using info"),
        }
    }
    let dir: PathBuf = args
        .config_dir
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CONFIG_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("config"));
    let mut settings = match load_settings(&dir, args.once) {
        Ok(s) => s,
        Err(e) => {
            error!("config: {e}");
            return 2;
        }
    };
    choose_mode(&mut settings.collector);
    let c = &mut settings.collector;
    // Only the engine's list tells labels: elsewhere the name rules are what is known.
    if c.mode != config::Mode::Engine && c.containers.drop_label_rules() {
        warn!("config: container label patterns left out: only ENGINE mode knows labels");
    }
    info!(
        "balena-multi-container-telemetry {}: {}",
        env!("CARGO_PKG_VERSION"),
        config::summary(&settings.collector, &settings.mqtt)
    );
    signal::install();
    agent::Agent::new(settings, Instant::now()).run()
}

fn load_settings(dir: &Path, once: bool) -> Result<agent::Settings, config::ConfigError> {
    let collector_path = dir.join(config::COLLECTOR_FILE);
    let mqtt_path = dir.join(config::MQTT_FILE);
    let collector_text = read_config(&collector_path)?;
    let mqtt_text = read_config(&mqtt_path)?;
    let env = config::Env {
        device_uuid: std::env::var("BALENA_DEVICE_UUID").ok(),
        host_name: host_name(),
        // BALENA alone: BALENA_DEVICE_UUID is also how a device id is given by hand, which says
        // nothing about the engine's containers.
        balena: std::env::var_os("BALENA").is_some_and(|x| !x.is_empty()),
        vars: config_vars()?,
    };
    let mut warnings = Vec::new();
    let collector_path = collector_path.to_string_lossy();
    let mqtt_path = mqtt_path.to_string_lossy();
    let collector_src = config::Source {
        path: &collector_path,
        text: collector_text.as_deref(),
    };
    let mqtt_src = config::Source {
        path: &mqtt_path,
        text: mqtt_text.as_deref(),
    };
    // Running on the environment alone is normal in a container, so a missing file is no warning.
    for src in [&collector_src, &mqtt_src] {
        if src.text.is_none() {
            info!(
                "config: {} not found: settings from the environment and built-in defaults",
                src.path
            );
        }
    }
    let collector = config::parse_collector(&collector_src, &env, &mut warnings);
    let mqtt = config::parse_mqtt(&mqtt_src, &env, &mut warnings);
    for w in warnings {
        warn!("config: {w}");
    }
    if log::enabled(log::Level::Debug) {
        let keys = [
            (
                &collector_src,
                config::COLLECTOR_KEYS,
                config::COLLECTOR_PREFIX,
            ),
            (&mqtt_src, config::MQTT_KEYS, config::MQTT_PREFIX),
        ];
        for (src, known, prefix) in keys {
            for (key, origin) in config::origins(src, known, prefix, &env) {
                debug!("config: {key} from {origin}");
            }
        }
    }
    let (collector, mqtt) = (collector?, mqtt?);
    let tls = mqtt::transport::load(&mqtt, &mqtt_path)?;
    Ok(agent::Settings {
        collector,
        mqtt,
        once,
        tls,
    })
}

/// With `mode` unset, CLI mode needs its CLI: where `cli_path` is not on the PATH but an engine socket
/// is there (a container with the socket mounted), ask the engine instead, and say so.
fn choose_mode(c: &mut config::Collector) {
    if c.mode_given || c.mode != config::Mode::Cli || on_path(&c.cli_path) {
        return;
    }
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let exists = |p: &str| Path::new(p).exists();
    let socket =
        source::engine::resolve_socket(c.engine_socket.as_deref(), docker_host.as_deref(), &exists);
    if exists(&socket) {
        info!(
            "mode not set and {:?} is not on the PATH: ENGINE mode, with the engine socket {socket} \
             (STATS_MODE chooses)",
            c.cli_path
        );
        c.mode = config::Mode::Engine;
    }
}

/// `program` as `Command` would find it: a path as it is, a bare name in one of the PATH's directories.
fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// This machine's host name, as the kernel has it (a container's own, unless it shares the host's UTS
/// namespace, as `network_mode: host` does).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&buf[..end]).ok().map(str::to_owned)
}

/// The `STATS_*` and `MQTT_*` variables of the process; one that is not UTF-8 is an error naming it.
fn config_vars() -> Result<Vec<(String, String)>, config::ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(config::COLLECTOR_PREFIX) && !name.starts_with(config::MQTT_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| config::ConfigError {
            file: format!("environment variable {name}"),
            key: None,
            message: "is not valid UTF-8".into(),
        })?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

/// A config file of a few dozen keys is about 1 KB; whatever is far larger is not one.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// The file's text; `None` when it does not exist (defaults apply), an error when it cannot be read.
fn read_config(path: &Path) -> Result<Option<String>, config::ConfigError> {
    match start_file::read(&path.to_string_lossy(), MAX_CONFIG_BYTES) {
        Ok(bytes) if bytes.len() > MAX_CONFIG_BYTES => Err(config::ConfigError {
            file: path.display().to_string(),
            key: None,
            message: format!("is larger than {} KiB", MAX_CONFIG_BYTES / 1024),
        }),
        Ok(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| config::ConfigError {
                file: path.display().to_string(),
                key: None,
                message: "is not valid UTF-8".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(config::ConfigError {
            file: path.display().to_string(),
            key: None,
            message: format!("cannot be read: {e}"),
        }),
    }
}
