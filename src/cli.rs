//! The command line, parsed by hand: `[--once] [--config-dir DIR] [--help] [--version]`.

use std::ffi::OsString;

pub const USAGE: &str = "usage: balena-multi-container-telemetry [--once] [--config-dir DIR] [--help] [--version]
 --once            collect once, publish, wait for acknowledgements, exit (0: all delivered, 1: not)
 --config-dir DIR  config files from DIR (wins over CONFIG_DIR; default: config/)
Config: config/balena_stats_collector.config.json and config/mqtt.config.json, both optional.
A variable sets any key and wins over the file:
 STATS_<KEY>  a collector key, e.g. STATS_MODE=ENGINE
 MQTT_<KEY>   an MQTT key, e.g. MQTT_BROKER_URL=tcp://192.168.1.10:1883
Mode (STATS_MODE): CLI runs `balena stats` (cli_path), FILE reads its output (file_path), ENGINE asks
the engine's socket. Unset: CLI when cli_path is found, else ENGINE when an engine socket is.
Also: CONFIG_DIR, BALENA_DEVICE_UUID (the device id; default: the host name), DOCKER_HOST (unix://
only), LOG_LEVEL (error|warn|info|debug). More: README.md, Configuration and Running it.";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Args {
    pub once: bool,
    pub config_dir: Option<OsString>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Args),
    Help,
    Version,
}

/// `args` excludes the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    let mut out = Args::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        match text.as_ref() {
            "--once" => out.once = true,
            "--help" | "-h" => return Ok(Command::Help),
            "--version" | "-V" => return Ok(Command::Version),
            "--config-dir" => {
                out.config_dir = Some(args.next().ok_or("--config-dir needs a directory")?);
            }
            other => match other.strip_prefix("--config-dir=") {
                Some(dir) if !dir.is_empty() => out.config_dir = Some(dir.into()),
                _ => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    Ok(Command::Run(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn flags() {
        assert_eq!(p(&[]), Ok(Command::Run(Args::default())));
        assert_eq!(
            p(&["--once", "--config-dir", "/etc/x"]),
            Ok(Command::Run(Args {
                once: true,
                config_dir: Some("/etc/x".into())
            }))
        );
        assert_eq!(
            p(&["--config-dir=/c"]),
            Ok(Command::Run(Args {
                once: false,
                config_dir: Some("/c".into())
            }))
        );
        assert_eq!(p(&["--once", "--help"]), Ok(Command::Help));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
    }

    #[test]
    fn mistakes() {
        assert!(p(&["--onse"]).unwrap_err().contains("--onse"));
        assert!(p(&["--config-dir"]).is_err());
        assert!(p(&["--config-dir="]).is_err());
        assert!(p(&["extra"]).is_err());
    }
}
