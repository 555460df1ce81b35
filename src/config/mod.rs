//! The two JSON config files and the environment, checked key by key.
//!
//! Pure: the caller reads the files and the environment and hands over their text. Every key of a file
//! can also be set by an environment variable, `STATS_` (collector file) or `MQTT_` (MQTT file) and the
//! key in capitals; the variable wins over the file, the file over the built-in default. The variable's
//! text is put into the file's object before the checks, so the same checks apply, and an error names
//! the variable instead of the file. Every error names the file (or variable) and the key; unknown keys
//! and unknown `STATS_`/`MQTT_` variables are warnings, because a typo silently falling back to a default
//! is worse. A missing file means the built-in defaults, which equal the shipped example files (a test
//! holds them to that).

mod broker_url;
mod collector;
mod containers;
mod keys;
mod mqtt;
mod report;
mod summary;
mod tls;

pub use crate::publish::discovery::PayloadMode;
// Used only inside this module today; re-exported so every path of the one-file config stays.
#[allow(unused_imports)]
pub use broker_url::{is_tls_url, parse_broker_url, Address};
pub use collector::*;
#[allow(unused_imports)]
pub use keys::env_name;
pub use keys::{origins, COLLECTOR_PREFIX, MQTT_PREFIX};
pub use mqtt::*;
pub use summary::summary;
pub use tls::TLS_PEM_VARS;
// For mqtt::tls, which a build without the `tls` feature leaves out.
#[cfg_attr(not(feature = "tls"), allow(unused_imports))]
pub use tls::{Pem, Tls};

pub const COLLECTOR_FILE: &str = "balena_stats_collector.config.json";
pub const MQTT_FILE: &str = "mqtt.config.json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: Option<&'static str>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.key {
            Some(key) => write!(f, "{}: \"{}\": {}", self.file, key, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// What the process environment contributes. `Debug` shows the variables' names only: their values
/// include passwords and private keys.
#[derive(Clone, Default)]
pub struct Env {
    pub device_uuid: Option<String>,
    /// This machine's host name: the device id when neither the UUID nor `device_id` says one, so that
    /// two hosts left at the defaults do not share a client id.
    pub host_name: Option<String>,
    /// On balenaOS: `BALENA` or `BALENA_DEVICE_UUID` set, as balena sets them in every service
    /// container. Containers are then filtered to balena's own by default (`source::filter`).
    pub balena: bool,
    /// Every `STATS_*` and `MQTT_*` variable, name and value (`MQTT_PASSWORD` among them).
    pub vars: Vec<(String, String)>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let names: Vec<&str> = self.vars.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Env")
            .field("device_uuid", &self.device_uuid)
            .field("balena", &self.balena)
            .field("vars", &names)
            .finish()
    }
}

impl Env {
    /// The variable's value; an empty one counts as unset (balena cannot unset a fleet variable for one
    /// device, but it can blank it).
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The text of a config file, or `None` when it does not exist.
pub struct Source<'a> {
    pub path: &'a str,
    pub text: Option<&'a str>,
}

/// What the tests of every part share: the parsers on text, and an environment made of pairs.
#[cfg(test)]
mod testing {
    use super::*;

    pub(super) fn collector(text: Option<&str>) -> Result<Collector, ConfigError> {
        collector_env(text, &Env::default())
    }

    pub(super) fn collector_env(text: Option<&str>, env: &Env) -> Result<Collector, ConfigError> {
        parse_collector(
            &Source {
                path: "c.json",
                text,
            },
            env,
            &mut Vec::new(),
        )
    }

    /// An environment with these variables (and no BALENA_DEVICE_UUID).
    pub(super) fn vars(pairs: &[(&str, &str)]) -> Env {
        Env {
            device_uuid: None,
            host_name: None,
            balena: false,
            vars: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    pub(super) fn mqtt_env(text: Option<&str>, env: &Env) -> Result<Mqtt, ConfigError> {
        parse_mqtt(
            &Source {
                path: "m.json",
                text,
            },
            env,
            &mut Vec::new(),
        )
    }

    pub(super) fn mqtt(text: &str) -> Result<Mqtt, ConfigError> {
        mqtt_env(Some(text), &Env::default())
    }

    pub(super) fn key_of(r: Result<impl std::fmt::Debug, ConfigError>) -> Option<&'static str> {
        r.unwrap_err().key
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use mqttrs::QoS;
    use std::time::Duration;

    const COLLECTOR_EXAMPLE: &str =
        include_str!("../../config/balena_stats_collector.example-config.json");
    const MQTT_EXAMPLE: &str = include_str!("../../config/mqtt.example-config.json");

    #[test]
    fn defaults_equal_the_example_files() {
        // The example names its mode, which the defaults cannot (mode_given).
        assert_eq!(
            collector(None).unwrap(),
            Collector {
                mode_given: false,
                ..collector(Some(COLLECTOR_EXAMPLE)).unwrap()
            }
        );
        let env = Env::default();
        assert_eq!(
            mqtt_env(None, &env).unwrap(),
            mqtt_env(Some(MQTT_EXAMPLE), &env).unwrap()
        );
    }

    #[test]
    fn default_values() {
        let c = collector(None).unwrap();
        assert_eq!(c.mode, Mode::Cli);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.cli_path, "balena");
        assert_eq!(c.cli_timeout, Duration::from_secs(10));
        let m = mqtt_env(None, &Env::default()).unwrap();
        assert_eq!(
            (m.brokers[0].host.as_str(), m.brokers[0].port),
            ("localhost", 1883)
        );
        assert_eq!(m.qos, QoS::AtLeastOnce);
        assert!(!m.retain);
        assert_eq!(m.keep_alive, 60);
        assert_eq!(m.client_id, "balena-telemetry-my-device");
        assert_eq!(
            m.availability_topic,
            "root/my-device/telemetry/system/availability"
        );
        assert_eq!(m.max_buffered_messages, 10_000);
    }
}
