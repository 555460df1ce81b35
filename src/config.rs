//! The two JSON config files, checked key by key.
//!
//! Pure: the caller reads the files and the environment and hands over their text. Every error names the
//! file and the key; unknown keys are warnings, because a typo silently falling back to a default is worse.
//! A missing file means the built-in defaults, which equal the shipped example files (a test holds them
//! to that).

pub use crate::discovery::PayloadMode;
use crate::topics::{TopicTemplate, DEFAULT_TEMPLATE};
use mqttrs::QoS;
use serde_json::{Map, Value};
use std::time::Duration;

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
    pub interval: Duration,
    pub cli_path: String,
    pub file_path: String,
    pub cli_timeout: Duration,
    /// ENGINE mode's socket; `None`: `DOCKER_HOST` (`unix://`) or the usual places (see `engine`).
    pub engine_socket: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqtt {
    pub host: String,
    pub port: u16,
    pub device_id: String,
    pub template: TopicTemplate,
    pub client_id: String,
    pub qos: QoS,
    pub retain: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub reconnect_max_delay: Duration,
    pub max_buffered_messages: usize,
    pub availability_topic: String,
    pub once_timeout: Duration,
    pub payload_mode: PayloadMode,
    pub home_assistant: Option<HomeAssistant>,
    /// `mqtts://` (or `ssl://`): MQTT over TLS with these settings.
    pub tls: Option<Tls>,
}

/// TLS settings (`mqtts://`), not yet read: see `mqtt::tls` for the certificates themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Verified against the server's certificate and sent as SNI; the URL's host by default.
    pub server_name: String,
    /// A PEM bundle of trusted roots; `None`: the built-in public roots.
    pub ca: Option<Pem>,
    /// Client certificate chain and its key, for brokers that ask for one (both or neither).
    pub cert: Option<Pem>,
    pub key: Option<Pem>,
}

/// Where a PEM text comes from, with the name to give in an error about it.
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    /// `path`, from the config key `key`.
    File { key: &'static str, path: String },
    /// The text itself, from the environment variable `var`.
    Inline { var: &'static str, text: String },
}

impl Pem {
    /// The config key or environment variable it came from, for error messages.
    pub fn origin(&self) -> &'static str {
        match self {
            Pem::File { key, .. } => key,
            Pem::Inline { var, .. } => var,
        }
    }
}

/// Never prints an inline PEM's text: it may be a private key.
impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Pem::File { key, path } => write!(f, "{key}: {path:?}"),
            Pem::Inline { var, text } => write!(f, "{var}: {} bytes", text.len()),
        }
    }
}

/// Home Assistant MQTT discovery, when `home_assistant_discovery` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistant {
    pub prefix: String,
    pub expire_after: Option<Duration>,
}

/// What the process environment contributes.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub device_uuid: Option<String>,
    pub mqtt_password: Option<String>,
    /// `MQTT_TLS_CA_PEM`, `MQTT_TLS_CERT_PEM`, `MQTT_TLS_KEY_PEM`: PEM text instead of the files.
    pub tls_pem: [Option<String>; 3],
}

/// The environment variables of `Env::tls_pem`, in its order.
pub const TLS_PEM_VARS: [&str; 3] = ["MQTT_TLS_CA_PEM", "MQTT_TLS_CERT_PEM", "MQTT_TLS_KEY_PEM"];

/// The text of a config file, or `None` when it does not exist.
pub struct Source<'a> {
    pub path: &'a str,
    pub text: Option<&'a str>,
}

const COLLECTOR_KEYS: &[&str] = &[
    "mode",
    "collection_interval_in_seconds",
    "cli_path",
    "file_path",
    "cli_timeout_in_seconds",
    "engine_socket",
];

const MQTT_KEYS: &[&str] = &[
    "broker_url",
    "device_id",
    "root_topic_template",
    "client_id",
    "qos",
    "retain",
    "keep_alive_in_seconds",
    "username",
    "password",
    "reconnect_max_delay_in_seconds",
    "max_buffered_messages",
    "availability_topic",
    "once_timeout_in_seconds",
    "payload_mode",
    "home_assistant_discovery",
    "home_assistant_discovery_prefix",
    "home_assistant_expire_after_in_seconds",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_server_name",
];

/// Built-in defaults, equal to `config/*.example-config.json`.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 10;
pub const DEFAULT_CLI_PATH: &str = "balena";
pub const DEFAULT_FILE_PATH: &str = "/data/balena-stats.jsonl";
pub const DEFAULT_BROKER_URL: &str = "tcp://localhost:1883";
pub const DEFAULT_DEVICE_ID: &str = "my-device";

pub fn parse_collector(src: &Source, warnings: &mut Vec<String>) -> Result<Collector, ConfigError> {
    let f = Fields::new(src, COLLECTOR_KEYS, warnings)?;
    let mode = match f.string("mode")?.as_deref().unwrap_or("CLI") {
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
    Ok(Collector {
        mode,
        interval: Duration::from_secs(interval),
        cli_path,
        file_path,
        cli_timeout: Duration::from_secs(cli_timeout),
        engine_socket,
    })
}

pub fn parse_mqtt(
    src: &Source,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Mqtt, ConfigError> {
    let f = Fields::new(src, MQTT_KEYS, warnings)?;
    let url = f
        .string("broker_url")?
        .unwrap_or_else(|| DEFAULT_BROKER_URL.into());
    let (host, port) = parse_broker_url(&url).map_err(|m| f.error("broker_url", m))?;
    let tls = parse_tls(&f, env, &host, is_tls_url(&url), warnings)?;

    let device_id = match env.device_uuid.as_deref().filter(|s| !s.is_empty()) {
        Some(uuid) => {
            check_level(uuid).map_err(|m| ConfigError {
                file: "environment".into(),
                key: Some("BALENA_DEVICE_UUID"),
                message: m,
            })?;
            uuid.to_owned()
        }
        None => {
            let id = f
                .string("device_id")?
                .unwrap_or_else(|| DEFAULT_DEVICE_ID.into());
            if id.is_empty() {
                return Err(f.error(
                    "device_id",
                    "is empty and BALENA_DEVICE_UUID is not set".into(),
                ));
            }
            check_level(&id).map_err(|m| f.error("device_id", m))?;
            id
        }
    };

    let template_text = f
        .string("root_topic_template")?
        .unwrap_or_else(|| DEFAULT_TEMPLATE.into());
    let template = TopicTemplate::parse(&template_text, &device_id)
        .map_err(|m| f.error("root_topic_template", m))?;
    if !template.is_per_container() {
        warnings.push(format!(
            "{}: \"root_topic_template\" names no container ({{service_name}}, {{container_name}} or \
             {{container_id}}): every container will publish to the same topics",
            f.path
        ));
    }

    let client_id = f
        .string("client_id")?
        .unwrap_or_else(|| format!("balena-telemetry-{device_id}"));
    check_mqtt_string(&client_id).map_err(|m| f.error("client_id", m))?;
    if client_id.is_empty() {
        return Err(f.error("client_id", "must not be empty".into()));
    }
    let qos = match f.uint("qos", 0, 1)?.unwrap_or(1) {
        0 => QoS::AtMostOnce,
        _ => QoS::AtLeastOnce,
    };
    let retain = f.boolean("retain")?.unwrap_or(false);
    let keep_alive = f.uint("keep_alive_in_seconds", 0, 65_535)?.unwrap_or(60) as u16;
    let username = f.string("username")?.filter(|u| !u.is_empty());
    if let Some(u) = &username {
        check_mqtt_string(u).map_err(|m| f.error("username", m))?;
    }
    let password = match env.mqtt_password.clone().filter(|p| !p.is_empty()) {
        Some(p) => Some(p),
        None => f.string("password")?.filter(|p| !p.is_empty()),
    };
    if let Some(p) = &password {
        check_mqtt_string(p).map_err(|m| f.error("password", m))?;
    }
    let reconnect_max_delay = f
        .uint("reconnect_max_delay_in_seconds", 1, 3_600)?
        .unwrap_or(60);
    let max_buffered_messages = f
        .uint("max_buffered_messages", 1, 10_000_000)?
        .unwrap_or(10_000) as usize;
    let availability_topic = match f.string("availability_topic")? {
        Some(t) => {
            check_topic(&t).map_err(|m| f.error("availability_topic", m))?;
            t.replace("{device_id}", &device_id)
        }
        None => template.default_availability_topic(),
    };
    let once_timeout = f.uint("once_timeout_in_seconds", 1, 3_600)?.unwrap_or(30);
    let payload_mode = match f.string("payload_mode")?.as_deref().unwrap_or("per_metric") {
        "per_metric" => PayloadMode::PerMetric,
        "per_service" => PayloadMode::PerService,
        other => {
            return Err(f.error(
                "payload_mode",
                format!("{other:?} is not a payload mode (use \"per_metric\" or \"per_service\")"),
            ))
        }
    };
    let prefix = f
        .string("home_assistant_discovery_prefix")?
        .unwrap_or_else(|| "homeassistant".into());
    // The prefix goes into a SUBSCRIBE filter (`<prefix>/status`), which we keep under 256 bytes.
    if prefix.is_empty()
        || prefix.len() > 200
        || prefix.contains(['+', '#', '\0'])
        || prefix.ends_with('/')
    {
        return Err(f.error(
            "home_assistant_discovery_prefix",
            format!(
                "{prefix:?} must be a topic of 1 to 200 bytes without '+', '#' or a trailing '/'"
            ),
        ));
    }
    let expire = f
        .uint("home_assistant_expire_after_in_seconds", 0, 31_536_000)?
        .unwrap_or(0);
    let home_assistant = f
        .boolean("home_assistant_discovery")?
        .unwrap_or(false)
        .then(|| HomeAssistant {
            prefix,
            expire_after: (expire > 0).then(|| Duration::from_secs(expire)),
        });

    Ok(Mqtt {
        host,
        port,
        device_id,
        template,
        client_id,
        qos,
        retain,
        keep_alive,
        username,
        password,
        reconnect_max_delay: Duration::from_secs(reconnect_max_delay),
        max_buffered_messages,
        availability_topic,
        once_timeout: Duration::from_secs(once_timeout),
        payload_mode,
        home_assistant,
        tls,
    })
}

/// The `tls_*` keys and the inline PEM variables; `None` for a plain `tcp://` or `mqtt://` URL.
fn parse_tls(
    f: &Fields,
    env: &Env,
    host: &str,
    tls_url: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<Tls>, ConfigError> {
    let mut pem = |key: &'static str, i: usize| -> Result<Option<Pem>, ConfigError> {
        let var = TLS_PEM_VARS[i];
        // Literal newlines or `\n` escapes: balena's dashboard takes a variable on one line.
        let inline = env.tls_pem[i].as_deref().filter(|t| !t.trim().is_empty());
        let file = f.string(key)?.filter(|p| !p.is_empty());
        let got = match (inline, file) {
            (Some(text), _) => Some(Pem::Inline {
                var,
                text: text.replace("\\n", "\n"),
            }),
            (None, Some(path)) => Some(Pem::File { key, path }),
            (None, None) => None,
        };
        if got.is_some() && !tls_url {
            warnings.push(format!(
                "{}: {} is set but \"broker_url\" is not mqtts://: TLS is not used",
                f.path,
                got.as_ref().map_or(key, Pem::origin)
            ));
        }
        Ok(got)
    };
    let ca = pem("tls_ca_file", 0)?;
    let cert = pem("tls_cert_file", 1)?;
    let key = pem("tls_key_file", 2)?;
    let server_name = f.string("tls_server_name")?.filter(|n| !n.is_empty());
    if !tls_url {
        return Ok(None);
    }
    if !cfg!(feature = "tls") {
        return Err(f.error(
            "broker_url",
            "mqtts:// needs TLS, which this build leaves out (cargo feature \"tls\")".into(),
        ));
    }
    match (&cert, &key) {
        (Some(c), None) => {
            return Err(f.error(
                "tls_key_file",
                format!(
                    "{} is set: its key is needed too (tls_key_file or MQTT_TLS_KEY_PEM)",
                    c.origin()
                ),
            ))
        }
        (None, Some(k)) => {
            return Err(f.error(
                "tls_cert_file",
                format!(
                    "{} is set: its certificate is needed too (tls_cert_file or MQTT_TLS_CERT_PEM)",
                    k.origin()
                ),
            ))
        }
        _ => {}
    }
    let server_name = server_name.unwrap_or_else(|| host.to_owned());
    if server_name.contains(['/', ' ', '\0']) {
        return Err(f.error(
            "tls_server_name",
            format!("{server_name:?} is not a host name or IP address"),
        ));
    }
    Ok(Some(Tls {
        server_name,
        ca,
        cert,
        key,
    }))
}

/// `mqtts://` or paho's `ssl://`.
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// `tcp://host:port` or `mqtt://host:port`, port 1883 when absent; `mqtts://` or `ssl://` (TLS), port
/// 8883 when absent; `[::1]` for IPv6 literals.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), String> {
    let default_port = if is_tls_url(url) { 8883 } else { 1883 };
    let rest = ["tcp://", "mqtt://", "mqtts://", "ssl://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| format!("{url:?} must start with tcp://, mqtt://, mqtts:// or ssl://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?} has an unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(format!("{url:?} has no valid host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{url:?} has an invalid port {p:?}"))?,
    };
    Ok((host.to_owned(), port))
}

fn check_mqtt_string(s: &str) -> Result<(), String> {
    if s.len() > usize::from(u16::MAX) {
        return Err("is longer than MQTT allows (65,535 bytes)".into());
    }
    if s.contains('\0') {
        return Err("must not contain NUL".into());
    }
    Ok(())
}

/// A value that becomes one topic level.
fn check_level(s: &str) -> Result<(), String> {
    check_mqtt_string(s)?;
    if s.contains(['+', '#', '/']) {
        return Err(format!(
            "{s:?} must not contain '+', '#' or '/' (it becomes one topic level)"
        ));
    }
    Ok(())
}

fn check_topic(s: &str) -> Result<(), String> {
    check_mqtt_string(s)?;
    if s.is_empty() || s.contains(['+', '#']) {
        return Err(format!(
            "{s:?} must be a non-empty topic without '+' or '#'"
        ));
    }
    Ok(())
}

/// One config file's top-level object, read key by key.
struct Fields<'a> {
    path: &'a str,
    map: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(
        src: &Source<'a>,
        known: &[&str],
        warnings: &mut Vec<String>,
    ) -> Result<Fields<'a>, ConfigError> {
        let error = |message: String| ConfigError {
            file: src.path.to_owned(),
            key: None,
            message,
        };
        let map = match src.text {
            None => {
                warnings.push(format!("{} not found: using built-in defaults", src.path));
                Map::new()
            }
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(error("must hold a JSON object".into())),
                Err(e) => return Err(error(format!("is not valid JSON: {e}"))),
            },
        };
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            warnings.push(format!(
                "{}: unknown key {key:?} ignored (known: {})",
                src.path,
                known.join(", ")
            ));
        }
        Ok(Fields {
            path: src.path,
            map,
        })
    }

    fn error(&self, key: &'static str, message: String) -> ConfigError {
        ConfigError {
            file: self.path.to_owned(),
            key: Some(key),
            message,
        }
    }

    /// `null` counts as absent, so a key can be blanked without deleting it.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("must be a string, not {other}"))),
        }
    }

    fn uint(&self, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(self.error(
                    key,
                    format!("must be an integer from {min} to {max}, not {v}"),
                )),
            },
        }
    }

    fn boolean(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(key, format!("must be true or false, not {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLLECTOR_EXAMPLE: &str =
        include_str!("../config/balena_stats_collector.example-config.json");
    const MQTT_EXAMPLE: &str = include_str!("../config/mqtt.example-config.json");

    fn collector(text: Option<&str>) -> Result<Collector, ConfigError> {
        parse_collector(
            &Source {
                path: "c.json",
                text,
            },
            &mut Vec::new(),
        )
    }

    fn mqtt_env(text: Option<&str>, env: &Env) -> Result<Mqtt, ConfigError> {
        parse_mqtt(
            &Source {
                path: "m.json",
                text,
            },
            env,
            &mut Vec::new(),
        )
    }

    fn mqtt(text: &str) -> Result<Mqtt, ConfigError> {
        mqtt_env(Some(text), &Env::default())
    }

    fn key_of(r: Result<impl std::fmt::Debug, ConfigError>) -> Option<&'static str> {
        r.unwrap_err().key
    }

    #[test]
    fn defaults_equal_the_example_files() {
        assert_eq!(
            collector(None).unwrap(),
            collector(Some(COLLECTOR_EXAMPLE)).unwrap()
        );
        let env = Env::default();
        assert_eq!(
            mqtt_env(None, &env).unwrap(),
            mqtt_env(Some(MQTT_EXAMPLE), &env).unwrap()
        );
    }

    #[test]
    fn missing_file_warns_with_its_path() {
        let mut w = Vec::new();
        parse_collector(
            &Source {
                path: "/x/c.json",
                text: None,
            },
            &mut w,
        )
        .unwrap();
        assert_eq!(w, vec!["/x/c.json not found: using built-in defaults"]);
    }

    #[test]
    fn default_values() {
        let c = collector(None).unwrap();
        assert_eq!(c.mode, Mode::Cli);
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.cli_path, "balena");
        assert_eq!(c.cli_timeout, Duration::from_secs(10));
        let m = mqtt_env(None, &Env::default()).unwrap();
        assert_eq!((m.host.as_str(), m.port), ("localhost", 1883));
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
    fn unknown_keys_warn() {
        let mut w = Vec::new();
        parse_collector(
            &Source {
                path: "c.json",
                text: Some(r#"{"intervall": 5}"#),
            },
            &mut w,
        )
        .unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("unknown key \"intervall\""), "{}", w[0]);
    }

    #[test]
    fn mqtt_errors_name_the_key() {
        assert_eq!(
            key_of(mqtt(r#"{"broker_url": "https://x:8883"}"#)),
            Some("broker_url")
        );
        assert_eq!(
            key_of(mqtt(r#"{"broker_url": "tcp://:1883"}"#)),
            Some("broker_url")
        );
        assert_eq!(
            key_of(mqtt(r#"{"broker_url": "tcp://h:99999"}"#)),
            Some("broker_url")
        );
        assert_eq!(key_of(mqtt(r#"{"qos": 2}"#)), Some("qos"));
        assert_eq!(key_of(mqtt(r#"{"retain": "yes"}"#)), Some("retain"));
        assert_eq!(
            key_of(mqtt(r#"{"keep_alive_in_seconds": 70000}"#)),
            Some("keep_alive_in_seconds")
        );
        assert_eq!(
            key_of(mqtt(r#"{"root_topic_template": "a/{nope}"}"#)),
            Some("root_topic_template")
        );
        assert_eq!(
            key_of(mqtt(r#"{"root_topic_template": "a/+/{service_name}"}"#)),
            Some("root_topic_template")
        );
        assert_eq!(key_of(mqtt(r#"{"device_id": ""}"#)), Some("device_id"));
        assert_eq!(key_of(mqtt(r#"{"device_id": "a/b"}"#)), Some("device_id"));
        assert_eq!(key_of(mqtt(r#"{"client_id": ""}"#)), Some("client_id"));
        assert_eq!(
            key_of(mqtt(r#"{"availability_topic": "a/#"}"#)),
            Some("availability_topic")
        );
        assert_eq!(
            key_of(mqtt(r#"{"max_buffered_messages": 0}"#)),
            Some("max_buffered_messages")
        );
    }

    #[test]
    fn device_uuid_from_the_environment_wins() {
        let env = Env {
            device_uuid: Some("abc123".into()),
            mqtt_password: None,
            ..Env::default()
        };
        let m = mqtt_env(Some(r#"{"device_id": "file-id"}"#), &env).unwrap();
        assert_eq!(m.device_id, "abc123");
        assert_eq!(
            m.availability_topic,
            "root/abc123/telemetry/system/availability"
        );
        let empty = Env {
            device_uuid: Some(String::new()),
            mqtt_password: None,
            ..Env::default()
        };
        assert_eq!(
            mqtt_env(Some(r#"{"device_id": "file-id"}"#), &empty)
                .unwrap()
                .device_id,
            "file-id"
        );
        let bad = Env {
            device_uuid: Some("a+b".into()),
            mqtt_password: None,
            ..Env::default()
        };
        let e = mqtt_env(None, &bad).unwrap_err();
        assert_eq!(e.key, Some("BALENA_DEVICE_UUID"));
        assert_eq!(
            key_of(mqtt_env(Some(r#"{"device_id": ""}"#), &empty)),
            Some("device_id")
        );
    }

    #[test]
    fn password_from_the_environment_wins() {
        let env = Env {
            device_uuid: None,
            mqtt_password: Some("envpw".into()),
            ..Env::default()
        };
        let m = mqtt_env(Some(r#"{"username": "u", "password": "filepw"}"#), &env).unwrap();
        assert_eq!(
            (m.username.as_deref(), m.password.as_deref()),
            (Some("u"), Some("envpw"))
        );
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker_url("tcp://localhost:1883"),
            Ok(("localhost".into(), 1883))
        );
        assert_eq!(
            parse_broker_url("mqtt://10.0.0.2"),
            Ok(("10.0.0.2".into(), 1883))
        );
        assert_eq!(
            parse_broker_url("mqtt://broker:1884/"),
            Ok(("broker".into(), 1884))
        );
        assert_eq!(
            parse_broker_url("tcp://[::1]:1999"),
            Ok(("::1".into(), 1999))
        );
        assert_eq!(parse_broker_url("tcp://[::1]"), Ok(("::1".into(), 1883)));
        assert!(parse_broker_url("localhost:1883").is_err());
        assert!(parse_broker_url("tcp://h:0").is_err());
        assert!(parse_broker_url("tcp://h:x").is_err());
        assert!(parse_broker_url("tcp://[::1").is_err());
        assert!(parse_broker_url("tcp://user@h").is_err());
    }

    #[test]
    fn tls_urls_keys_and_inline_pem() {
        assert_eq!(
            parse_broker_url("mqtts://b.example"),
            Ok(("b.example".into(), 8883))
        );
        assert_eq!(
            parse_broker_url("ssl://b.example:8884"),
            Ok(("b.example".into(), 8884))
        );
        assert_eq!(mqtt(r#"{}"#).unwrap().tls, None);
        if !cfg!(feature = "tls") {
            let e = mqtt(r#"{"broker_url": "mqtts://h"}"#).unwrap_err();
            assert!(e.message.contains("cargo feature \"tls\""), "{e}");
            return;
        }
        let m = mqtt(r#"{"broker_url": "mqtts://10.0.0.5", "tls_ca_file": "/c/ca.pem"}"#).unwrap();
        let t = m.tls.unwrap();
        assert_eq!((m.port, t.server_name.as_str()), (8883, "10.0.0.5"));
        assert_eq!(
            t.ca,
            Some(Pem::File {
                key: "tls_ca_file",
                path: "/c/ca.pem".into()
            })
        );
        let m = mqtt(r#"{"broker_url": "ssl://h", "tls_server_name": "b.example"}"#).unwrap();
        assert_eq!(m.tls.unwrap().server_name, "b.example");
        assert_eq!(
            key_of(mqtt(
                r#"{"broker_url": "mqtts://h", "tls_cert_file": "c.pem"}"#
            )),
            Some("tls_key_file")
        );
        assert_eq!(
            key_of(mqtt(
                r#"{"broker_url": "mqtts://h", "tls_key_file": "k.pem"}"#
            )),
            Some("tls_cert_file")
        );
        assert_eq!(
            key_of(mqtt(r#"{"broker_url": "mqtts://h", "tls_ca_file": 1}"#)),
            Some("tls_ca_file")
        );
        // The environment's PEM text wins over a file, with `\n` escapes turned into newlines.
        let env = Env {
            tls_pem: [
                Some("-----BEGIN X-----\\nAAAA\\n-----END X-----".into()),
                None,
                None,
            ],
            ..Env::default()
        };
        let m = mqtt_env(
            Some(r#"{"broker_url": "mqtts://h", "tls_ca_file": "/c/ca.pem"}"#),
            &env,
        )
        .unwrap();
        assert_eq!(
            m.tls.unwrap().ca,
            Some(Pem::Inline {
                var: "MQTT_TLS_CA_PEM",
                text: "-----BEGIN X-----\nAAAA\n-----END X-----".into()
            })
        );
        // TLS settings with a plain URL are a warning, not silently ignored.
        let mut w = Vec::new();
        let src = Source {
            path: "m.json",
            text: Some(r#"{"tls_ca_file": "/c/ca.pem"}"#),
        };
        assert_eq!(parse_mqtt(&src, &Env::default(), &mut w).unwrap().tls, None);
        assert!(w[0].contains("tls_ca_file is set but"), "{w:?}");
    }

    #[test]
    fn home_assistant_and_payload_mode() {
        let m = mqtt(r#"{}"#).unwrap();
        assert_eq!(
            (m.payload_mode, m.home_assistant.clone()),
            (PayloadMode::PerMetric, None)
        );
        let m = mqtt(
            r#"{"home_assistant_discovery": true, "payload_mode": "per_service",
                "home_assistant_expire_after_in_seconds": 600}"#,
        )
        .unwrap();
        assert_eq!(m.payload_mode, PayloadMode::PerService);
        assert_eq!(
            m.home_assistant,
            Some(HomeAssistant {
                prefix: "homeassistant".into(),
                expire_after: Some(Duration::from_secs(600))
            })
        );
        let m =
            mqtt(r#"{"home_assistant_discovery": true, "home_assistant_discovery_prefix": "ha"}"#)
                .unwrap();
        assert_eq!(
            m.home_assistant.unwrap(),
            HomeAssistant {
                prefix: "ha".into(),
                expire_after: None
            }
        );
        assert_eq!(
            key_of(mqtt(r#"{"payload_mode": "per_container"}"#)),
            Some("payload_mode")
        );
        assert_eq!(
            key_of(mqtt(r#"{"home_assistant_discovery": "yes"}"#)),
            Some("home_assistant_discovery")
        );
        for bad in [r#""""#, r#""ha/+""#, r#""ha/""#] {
            let text = format!(r#"{{"home_assistant_discovery_prefix": {bad}}}"#);
            assert_eq!(
                key_of(mqtt(&text)),
                Some("home_assistant_discovery_prefix"),
                "{bad}"
            );
        }
        let long = format!(
            r#"{{"home_assistant_discovery_prefix": "{}"}}"#,
            "h".repeat(201)
        );
        assert_eq!(key_of(mqtt(&long)), Some("home_assistant_discovery_prefix"));
    }

    #[test]
    fn null_means_default() {
        let m = mqtt(r#"{"client_id": null, "qos": null}"#).unwrap();
        assert_eq!(m.client_id, "balena-telemetry-my-device");
        assert_eq!(m.qos, QoS::AtLeastOnce);
    }
}
