//! balena-multi-container-telemetry: per-container stats from `balena stats` (or a file it wrote),
//! published to MQTT. See README.md.

mod agent;
mod backoff;
mod balena;
mod cli;
mod collect;
mod config;
mod connect;
mod discovery;
mod engine;
mod fuzz;
mod log;
mod mqtt;
mod payload;
mod records;
mod schedule;
mod signal;
mod stats;
mod tick;
mod topics;
mod transport;
mod units;

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
    let settings = match load_settings(&dir, args.once) {
        Ok(s) => s,
        Err(e) => {
            error!("config: {e}");
            return 2;
        }
    };
    info!(
        "balena-multi-container-telemetry {}: {} mode every {}s, broker {}:{}{}, device {}",
        env!("CARGO_PKG_VERSION"),
        match settings.collector.mode {
            config::Mode::Cli => "CLI",
            config::Mode::File => "FILE",
            config::Mode::Engine => "ENGINE",
        },
        settings.collector.interval.as_secs(),
        settings.mqtt.host,
        settings.mqtt.port,
        if settings.tls.is_some() {
            " over TLS"
        } else {
            ""
        },
        settings.mqtt.device_id
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
        mqtt_password: std::env::var("MQTT_PASSWORD").ok(),
        tls_pem: config::TLS_PEM_VARS.map(|v| std::env::var(v).ok()),
    };
    let mut warnings = Vec::new();
    let collector_path = collector_path.to_string_lossy();
    let mqtt_path = mqtt_path.to_string_lossy();
    let collector = config::parse_collector(
        &config::Source {
            path: &collector_path,
            text: collector_text.as_deref(),
        },
        &mut warnings,
    );
    let mqtt = config::parse_mqtt(
        &config::Source {
            path: &mqtt_path,
            text: mqtt_text.as_deref(),
        },
        &env,
        &mut warnings,
    );
    for w in warnings {
        warn!("config: {w}");
    }
    let collector = collector?;
    let mqtt = mqtt?;
    let tls = transport::load(&mqtt, &mqtt_path)?;
    Ok(agent::Settings {
        collector,
        mqtt,
        once,
        tls,
    })
}

/// The file's text; `None` when it does not exist (defaults apply), an error when it cannot be read.
fn read_config(path: &Path) -> Result<Option<String>, config::ConfigError> {
    match std::fs::read(path) {
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
