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

pub use crate::publish::discovery::PayloadMode;
use crate::publish::topics::{TopicTemplate, DEFAULT_TEMPLATE, DEFAULT_UNIT};
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
    /// ENGINE mode: where each running container's figures come from.
    pub engine_figures: EngineFigures,
    /// Where the host's cgroup hierarchies and its `/proc` are seen from here (a balena container sees
    /// them only with the `io.balena.features.sysfs` and `io.balena.features.procfs` labels).
    pub cgroup_root: String,
    pub proc_root: String,
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
    /// How long a service may go unreported before its entities are removed from Home Assistant.
    pub remove_after: Option<Duration>,
}

/// What the process environment contributes.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub device_uuid: Option<String>,
    /// Every `STATS_*` and `MQTT_*` variable, name and value (`MQTT_PASSWORD` among them).
    pub vars: Vec<(String, String)>,
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

/// Prefixes of the variables that set keys of each file.
pub const COLLECTOR_PREFIX: &str = "STATS_";
pub const MQTT_PREFIX: &str = "MQTT_";

/// The variable that sets `key`: `MQTT_` + `broker_url` -> `MQTT_BROKER_URL`.
pub fn env_name(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", key.to_ascii_uppercase())
}

/// PEM text instead of the `tls_*_file` keys' files, in the order CA, certificate, key. They name no key
/// of the file, so the overlay of `MQTT_<KEY>` variables leaves them to `parse_tls`.
pub const TLS_PEM_VARS: [&str; 3] = ["MQTT_TLS_CA_PEM", "MQTT_TLS_CERT_PEM", "MQTT_TLS_KEY_PEM"];

/// The text of a config file, or `None` when it does not exist.
pub struct Source<'a> {
    pub path: &'a str,
    pub text: Option<&'a str>,
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
];

pub const MQTT_KEYS: &[&str] = &[
    "broker_url",
    "device_id",
    // The original program's topic level for `{unit}` in the template.
    "unit",
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
    "home_assistant_remove_after_in_seconds",
    // The old name of `home_assistant_remove_after_in_seconds`, read with a warning: it never did what
    // Home Assistant calls expire_after (mark unavailable), it removed entities.
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
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
pub const DEFAULT_PROC_ROOT: &str = "/proc";

pub fn parse_collector(
    src: &Source,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Collector, ConfigError> {
    let f = Fields::new(src, COLLECTOR_KEYS, COLLECTOR_PREFIX, env, warnings)?;
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
    Ok(Collector {
        mode,
        interval: Duration::from_secs(interval),
        cli_path,
        file_path,
        cli_timeout: Duration::from_secs(cli_timeout),
        engine_socket,
        engine_figures,
        cgroup_root,
        proc_root,
    })
}

pub fn parse_mqtt(
    src: &Source,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Mqtt, ConfigError> {
    let f = Fields::new(src, MQTT_KEYS, MQTT_PREFIX, env, warnings)?;
    let url = f
        .string("broker_url")?
        .unwrap_or_else(|| DEFAULT_BROKER_URL.into());
    let (host, port) = parse_broker_url(&url).map_err(|m| f.error("broker_url", m))?;
    let tls = parse_tls(&f, env, &host, is_tls_url(&url), warnings)?;

    // MQTT_DEVICE_ID, set for this agent on purpose, wins over the UUID balena sets everywhere; the
    // UUID wins over the file's device_id.
    let uuid = env.device_uuid.as_deref().filter(|s| !s.is_empty());
    let device_id = match uuid.filter(|_| !f.set_by_env("device_id")) {
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

    let unit = f.string("unit")?.unwrap_or_else(|| DEFAULT_UNIT.into());
    check_level(&unit).map_err(|m| f.error("unit", m))?;
    if unit.is_empty() {
        return Err(f.error("unit", "must not be empty".into()));
    }
    let template_text = f
        .string("root_topic_template")?
        .unwrap_or_else(|| DEFAULT_TEMPLATE.into());
    let template = TopicTemplate::parse_with_unit(&template_text, &device_id, &unit)
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
    let password = f.string("password")?.filter(|p| !p.is_empty());
    if let Some(p) = &password {
        check_mqtt_string(p).map_err(|m| f.error("password", m))?;
        // MQTT-3.1.2-22: a CONNECT may carry a password only with a user name; brokers refuse it, and
        // retrying could never succeed.
        if username.is_none() {
            return Err(f.error(
                "password",
                "is set but \"username\" is not: MQTT sends a password only with a user name"
                    .into(),
            ));
        }
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
                .replace("{unit}", &unit)
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
    let remove = match f.uint("home_assistant_remove_after_in_seconds", 0, 31_536_000)? {
        Some(n) => Some(n),
        None => f.uint("home_assistant_expire_after_in_seconds", 0, 31_536_000)?,
    };
    if f.get("home_assistant_expire_after_in_seconds").is_some() {
        warnings.push(format!(
            "{}: \"home_assistant_expire_after_in_seconds\" is deprecated: it removes entities, which is \
             not Home Assistant's expire_after; use \"home_assistant_remove_after_in_seconds\"{}",
            f.origin("home_assistant_expire_after_in_seconds"),
            if f.get("home_assistant_remove_after_in_seconds").is_some() {
                " (set too, and it wins)"
            } else {
                ""
            }
        ));
    }
    let remove = remove.unwrap_or(0);
    let home_assistant = f
        .boolean("home_assistant_discovery")?
        .unwrap_or(false)
        .then(|| HomeAssistant {
            prefix,
            remove_after: (remove > 0).then(|| Duration::from_secs(remove)),
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
        let inline = env.get(var).filter(|t| !t.trim().is_empty());
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

/// One config file's top-level object with the environment's values put in, read key by key.
struct Fields<'a> {
    path: &'a str,
    map: Map<String, Value>,
    /// Keys whose value came from the environment, with the variable's name. Their values are the
    /// variable's text (a JSON string), converted by the typed getters below.
    env_keys: Vec<(&'static str, String)>,
}

impl<'a> Fields<'a> {
    fn new(
        src: &Source<'a>,
        known: &[&'static str],
        prefix: &str,
        env: &Env,
        warnings: &mut Vec<String>,
    ) -> Result<Fields<'a>, ConfigError> {
        let error = |message: String| ConfigError {
            file: src.path.to_owned(),
            key: None,
            message,
        };
        let mut map = match src.text {
            None => Map::new(),
            Some(text) => match serde_json::from_slice::<Value>(text.as_bytes()) {
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
        let mut env_keys = Vec::new();
        for &key in known {
            let name = env_name(prefix, key);
            if let Some(value) = env.get(&name) {
                map.insert(key.to_owned(), Value::String(value.to_owned()));
                env_keys.push((key, name));
            }
        }
        // Not an error: fleet-wide variables reach every service, and may be meant for another one.
        for (name, _) in env.vars.iter().filter(|(n, _)| n.starts_with(prefix)) {
            let known_var = known.iter().any(|k| env_name(prefix, k) == *name)
                || TLS_PEM_VARS.contains(&name.as_str());
            if !known_var {
                warnings.push(format!(
                    "environment variable {name} ignored: no such key (variables {prefix}<KEY> set: {})",
                    known.join(", ")
                ));
            }
        }
        Ok(Fields {
            path: src.path,
            map,
            env_keys,
        })
    }

    /// The variable that set `key`, if one did.
    fn env_var(&self, key: &str) -> Option<&str> {
        self.env_keys
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, n)| n.as_str())
    }

    /// Where `key`'s value came from: the variable that set it, or the file.
    fn origin(&self, key: &str) -> String {
        match self.env_var(key) {
            Some(name) => format!("environment variable {name}"),
            None => self.path.to_owned(),
        }
    }

    fn set_by_env(&self, key: &str) -> bool {
        self.env_var(key).is_some()
    }

    fn error(&self, key: &'static str, message: String) -> ConfigError {
        ConfigError {
            file: match self.env_var(key) {
                Some(name) => format!("environment variable {name}"),
                None => self.path.to_owned(),
            },
            key: Some(key),
            message,
        }
    }

    /// `null` counts as absent, so a key can be blanked without deleting it.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A value from the environment: always text, to be read as the key's type.
    fn env_text(&self, key: &str) -> Option<&str> {
        self.env_var(key)?;
        self.get(key)?.as_str()
    }

    fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("must be a string, not {other}"))),
        }
    }

    fn uint(&self, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let range_error = |v: &dyn std::fmt::Display| {
            self.error(
                key,
                format!("must be an integer from {min} to {max}, not {v}"),
            )
        };
        if let Some(text) = self.env_text(key) {
            return match text.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(range_error(&format_args!("{text:?}"))),
            };
        }
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(range_error(v)),
            },
        }
    }

    fn boolean(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        if let Some(text) = self.env_text(key) {
            return match text.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(self.error(
                    key,
                    format!("must be true or false (or 1 or 0), not {text:?}"),
                )),
            };
        }
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.error(key, format!("must be true or false, not {other}"))),
        }
    }
}

/// Where each key's value comes from, for the debug log: `key: environment variable X`, `key: <file>`
/// or `key: default`. Pure, like the parsers; a file that is not valid JSON counts as empty here (the
/// parser reports it).
pub fn origins(
    src: &Source,
    known: &[&'static str],
    prefix: &str,
    env: &Env,
) -> Vec<(&'static str, String)> {
    let fields = Fields::new(src, known, prefix, env, &mut Vec::new()).ok();
    known
        .iter()
        .map(|&key| {
            let origin = match &fields {
                Some(f) if f.set_by_env(key) => {
                    format!("environment variable {}", f.env_var(key).unwrap_or(""))
                }
                // parse_mqtt's rule: the balena UUID wins over the file's device_id.
                _ if key == "device_id"
                    && prefix == MQTT_PREFIX
                    && env.device_uuid.as_deref().is_some_and(|u| !u.is_empty()) =>
                {
                    "environment variable BALENA_DEVICE_UUID".to_owned()
                }
                Some(f) if f.get(key).is_some() => src.path.to_owned(),
                _ => "default".to_owned(),
            };
            (key, origin)
        })
        .collect()
}

/// The effective settings in one line, secrets masked.
pub fn summary(c: &Collector, m: &Mqtt) -> String {
    let mode = match c.mode {
        Mode::Cli => "CLI",
        Mode::File => "FILE",
        Mode::Engine => "ENGINE",
    };
    let mut s = format!("{mode} mode, every {}s", c.interval.as_secs());
    match c.mode {
        Mode::Cli => {
            s += &format!(
                ", cli_path {:?}, cli_timeout {}s",
                c.cli_path,
                c.cli_timeout.as_secs()
            )
        }
        Mode::File => s += &format!(", file_path {:?}", c.file_path),
        Mode::Engine => {
            let figures = match c.engine_figures {
                EngineFigures::Auto => "auto",
                EngineFigures::Cgroup => "cgroup",
                EngineFigures::Api => "api",
            };
            s += &format!(
                ", engine_socket {}, timeout {}s, engine_figures {figures}, cgroup_root {:?}, proc_root {:?}",
                c.engine_socket
                    .as_deref()
                    .unwrap_or("(DOCKER_HOST or the usual places)"),
                c.cli_timeout.as_secs(),
                c.cgroup_root,
                c.proc_root
            )
        }
    }
    s += &format!(
        "; broker {}:{}{}, device_id {:?}, root topic {:?}, client_id {:?}, qos {}, retain {}, keep_alive {}s, \
         username {}, password {}, availability_topic {:?}, payload_mode {}, buffer {}, \
         reconnect_max_delay {}s, once_timeout {}s, home_assistant {}",
        m.host,
        m.port,
        if m.tls.is_some() { " over TLS" } else { "" },
        m.device_id,
        {
            let mut root = String::new();
            let names = crate::publish::topics::Names {
                service_name: "{service_name}",
                container_name: "{container_name}",
                container_id: "{container_id}",
            };
            m.template.render_root(&names, &mut root);
            root
        },
        m.client_id,
        match m.qos {
            QoS::AtMostOnce => 0,
            _ => 1,
        },
        m.retain,
        m.keep_alive,
        m.username.as_deref().map_or("(none)".into(), |u| format!("{u:?}")),
        if m.password.is_some() { "***" } else { "(none)" },
        m.availability_topic,
        match m.payload_mode {
            PayloadMode::PerMetric => "per_metric",
            PayloadMode::PerService => "per_service",
        },
        m.max_buffered_messages,
        m.reconnect_max_delay.as_secs(),
        m.once_timeout.as_secs(),
        match &m.home_assistant {
            None => "off".to_owned(),
            Some(h) => format!("on (prefix {:?})", h.prefix),
        },
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLLECTOR_EXAMPLE: &str =
        include_str!("../config/balena_stats_collector.example-config.json");
    const MQTT_EXAMPLE: &str = include_str!("../config/mqtt.example-config.json");

    fn collector(text: Option<&str>) -> Result<Collector, ConfigError> {
        collector_env(text, &Env::default())
    }

    fn collector_env(text: Option<&str>, env: &Env) -> Result<Collector, ConfigError> {
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
    fn vars(pairs: &[(&str, &str)]) -> Env {
        Env {
            device_uuid: None,
            vars: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
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
            vars: Vec::new(),
        };
        let m = mqtt_env(Some(r#"{"device_id": "file-id"}"#), &env).unwrap();
        assert_eq!(m.device_id, "abc123");
        assert_eq!(
            m.availability_topic,
            "root/abc123/telemetry/system/availability"
        );
        let empty = Env {
            device_uuid: Some(String::new()),
            vars: Vec::new(),
        };
        assert_eq!(
            mqtt_env(Some(r#"{"device_id": "file-id"}"#), &empty)
                .unwrap()
                .device_id,
            "file-id"
        );
        let bad = Env {
            device_uuid: Some("a+b".into()),
            vars: Vec::new(),
        };
        let e = mqtt_env(None, &bad).unwrap_err();
        assert_eq!(e.key, Some("BALENA_DEVICE_UUID"));
        assert_eq!(
            key_of(mqtt_env(Some(r#"{"device_id": ""}"#), &empty)),
            Some("device_id")
        );
    }

    #[test]
    fn a_password_without_a_user_name_is_refused() {
        let env = Env::default();
        let e = mqtt_env(Some(r#"{"password": "pw"}"#), &env).unwrap_err();
        assert_eq!(e.key, Some("password"));
        assert!(e.message.contains("\"username\" is not"), "{e}");
        let from_env = vars(&[("MQTT_PASSWORD", "envpw")]);
        let e = mqtt_env(Some(r#"{"username": ""}"#), &from_env).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key),
            ("environment variable MQTT_PASSWORD", Some("password"))
        );
    }

    #[test]
    fn password_from_the_environment_wins() {
        let env = vars(&[("MQTT_PASSWORD", "envpw")]);
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
        let env = vars(&[(
            "MQTT_TLS_CA_PEM",
            "-----BEGIN X-----\\nAAAA\\n-----END X-----",
        )]);
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
                "home_assistant_remove_after_in_seconds": 600}"#,
        )
        .unwrap();
        assert_eq!(m.payload_mode, PayloadMode::PerService);
        assert_eq!(
            m.home_assistant,
            Some(HomeAssistant {
                prefix: "homeassistant".into(),
                remove_after: Some(Duration::from_secs(600))
            })
        );
        let m =
            mqtt(r#"{"home_assistant_discovery": true, "home_assistant_discovery_prefix": "ha"}"#)
                .unwrap();
        assert_eq!(
            m.home_assistant.unwrap(),
            HomeAssistant {
                prefix: "ha".into(),
                remove_after: None
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
    fn the_old_name_of_remove_after_still_works_with_a_warning() {
        let parse = |text: &str, env: &[(&str, &str)]| {
            let mut warnings = Vec::new();
            let src = Source {
                path: "m.json",
                text: Some(text),
            };
            let m = parse_mqtt(&src, &vars(env), &mut warnings).unwrap();
            (m.home_assistant.unwrap().remove_after, warnings)
        };
        let on = r#"{"home_assistant_discovery": true"#;
        let (after, w) = parse(
            &format!(r#"{on}, "home_assistant_expire_after_in_seconds": 90}}"#),
            &[],
        );
        assert_eq!(after, Some(Duration::from_secs(90)));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("m.json: ") && w[0].contains("remove_after"),
            "{w:?}"
        );
        // From the environment, the warning names the variable.
        let (after, w) = parse(
            &format!("{on}}}"),
            &[("MQTT_HOME_ASSISTANT_EXPIRE_AFTER_IN_SECONDS", "30")],
        );
        assert_eq!(after, Some(Duration::from_secs(30)));
        assert!(
            w[0].contains("MQTT_HOME_ASSISTANT_EXPIRE_AFTER_IN_SECONDS"),
            "{w:?}"
        );
        // Both: the new name wins, and the warning says so.
        let (after, w) = parse(
            &format!(
                r#"{on}, "home_assistant_expire_after_in_seconds": 90, "home_assistant_remove_after_in_seconds": 0}}"#
            ),
            &[],
        );
        assert_eq!(after, None);
        assert!(w[0].contains("wins"), "{w:?}");
        let (after, w) = parse(&format!("{on}}}"), &[]);
        assert_eq!((after, w.len()), (None, 0));
    }

    #[test]
    fn null_means_default() {
        let m = mqtt(r#"{"client_id": null, "qos": null}"#).unwrap();
        assert_eq!(m.client_id, "balena-telemetry-my-device");
        assert_eq!(m.qos, QoS::AtLeastOnce);
    }

    // ---- the environment ----

    /// A value for every key, none of them the default: as JSON for a file, and as the text of the
    /// environment variable that means the same.
    const EVERY_COLLECTOR_KEY: &[(&str, &str, &str)] = &[
        ("mode", r#""ENGINE""#, "ENGINE"),
        ("collection_interval_in_seconds", "7", "7"),
        ("cli_path", r#""docker""#, "docker"),
        ("file_path", r#""/s.jsonl""#, "/s.jsonl"),
        ("cli_timeout_in_seconds", "4", "4"),
        ("engine_socket", r#""/run/e.sock""#, "/run/e.sock"),
        ("engine_figures", r#""api""#, "api"),
        (
            "cgroup_root",
            r#""/host/sys/fs/cgroup""#,
            "/host/sys/fs/cgroup",
        ),
        ("proc_root", r#""/host/proc""#, "/host/proc"),
    ];
    const EVERY_MQTT_KEY: &[(&str, &str, &str)] = &[
        ("broker_url", r#""tcp://b:1884""#, "tcp://b:1884"),
        ("device_id", r#""d1""#, "d1"),
        ("unit", r#""u1""#, "u1"),
        (
            "root_topic_template",
            r#""x/{device_id}/{unit}/{container_id}""#,
            "x/{device_id}/{unit}/{container_id}",
        ),
        ("client_id", r#""c1""#, "c1"),
        ("qos", "0", "0"),
        ("retain", "true", "true"),
        ("keep_alive_in_seconds", "30", "30"),
        ("username", r#""u""#, "u"),
        ("password", r#""p""#, "p"),
        ("reconnect_max_delay_in_seconds", "9", "9"),
        ("max_buffered_messages", "77", "77"),
        (
            "availability_topic",
            r#""av/{device_id}""#,
            "av/{device_id}",
        ),
        ("once_timeout_in_seconds", "8", "8"),
        ("payload_mode", r#""per_service""#, "per_service"),
        ("home_assistant_discovery", "true", "TRUE"),
        ("home_assistant_discovery_prefix", r#""ha""#, "ha"),
        ("home_assistant_remove_after_in_seconds", "60", "60"),
        ("home_assistant_expire_after_in_seconds", "70", "70"),
        ("tls_ca_file", r#""/c/ca.pem""#, "/c/ca.pem"),
        ("tls_cert_file", r#""/c/cert.pem""#, "/c/cert.pem"),
        ("tls_key_file", r#""/c/key.pem""#, "/c/key.pem"),
        ("tls_server_name", r#""s.example""#, "s.example"),
    ];

    fn file_of(values: &[(&str, &str, &str)]) -> String {
        let body: Vec<String> = values
            .iter()
            .map(|(k, j, _)| format!("{k:?}: {j}"))
            .collect();
        format!("{{{}}}", body.join(", "))
    }

    fn env_of(prefix: &str, values: &[(&str, &str, &str)]) -> Env {
        let pairs: Vec<(String, String)> = values
            .iter()
            .map(|(k, _, v)| (env_name(prefix, k), v.to_string()))
            .collect();
        Env {
            device_uuid: None,
            vars: pairs,
        }
    }

    #[test]
    fn every_key_can_come_from_the_environment() {
        // The lists above must name every key, so a new key cannot miss this test.
        let names = |v: &[(&str, &str, &str)]| -> Vec<String> {
            let mut n: Vec<String> = v.iter().map(|(k, _, _)| k.to_string()).collect();
            n.sort();
            n
        };
        let sorted = |v: &[&str]| -> Vec<String> {
            let mut n: Vec<String> = v.iter().map(|k| k.to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(names(EVERY_COLLECTOR_KEY), sorted(COLLECTOR_KEYS));
        assert_eq!(names(EVERY_MQTT_KEY), sorted(MQTT_KEYS));

        let from_file = collector(Some(&file_of(EVERY_COLLECTOR_KEY))).unwrap();
        let from_env = collector_env(None, &env_of("STATS_", EVERY_COLLECTOR_KEY)).unwrap();
        assert_eq!(from_env, from_file);
        assert_ne!(from_env, collector(None).unwrap(), "not the defaults");

        let from_file = mqtt(&file_of(EVERY_MQTT_KEY)).unwrap();
        let from_env = mqtt_env(None, &env_of("MQTT_", EVERY_MQTT_KEY)).unwrap();
        assert_eq!(from_env, from_file);
        assert_eq!(from_env.device_id, "d1");
        assert_eq!(from_env.availability_topic, "av/d1");
        assert_ne!(from_env, mqtt_env(None, &Env::default()).unwrap());
    }

    #[test]
    fn environment_then_file_then_default() {
        let file = r#"{"mode": "FILE", "collection_interval_in_seconds": 5, "file_path": "/f"}"#;
        let env = vars(&[("STATS_COLLECTION_INTERVAL_IN_SECONDS", "30")]);
        let c = collector_env(Some(file), &env).unwrap();
        assert_eq!(c.interval, Duration::from_secs(30), "environment over file");
        assert_eq!(c.mode, Mode::File, "file over default");
        assert_eq!(c.cli_path, DEFAULT_CLI_PATH, "default");
        // A blank variable is unset: the file's value stays.
        let env = vars(&[("STATS_COLLECTION_INTERVAL_IN_SECONDS", "")]);
        let c = collector_env(Some(file), &env).unwrap();
        assert_eq!(c.interval, Duration::from_secs(5));

        let m = mqtt_env(
            Some(r#"{"qos": 1, "retain": true, "broker_url": "tcp://f:1"}"#),
            &vars(&[("MQTT_QOS", " 0 "), ("MQTT_RETAIN", "false")]),
        )
        .unwrap();
        assert_eq!((m.qos, m.retain), (QoS::AtMostOnce, false));
        assert_eq!((m.host.as_str(), m.port), ("f", 1));
        // A file value that is null is absent; the variable still applies.
        let m = mqtt_env(Some(r#"{"qos": null}"#), &vars(&[("MQTT_QOS", "0")])).unwrap();
        assert_eq!(m.qos, QoS::AtMostOnce);
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let e = mqtt_env(None, &vars(&[("MQTT_QOS", "2")])).unwrap_err();
        assert_eq!(e.file, "environment variable MQTT_QOS");
        assert_eq!(e.key, Some("qos"));
        assert_eq!(
            e.to_string(),
            r#"environment variable MQTT_QOS: "qos": must be an integer from 0 to 1, not "2""#
        );
        for (name, value, key) in [
            ("MQTT_RETAIN", "yes", "retain"),
            ("MQTT_KEEP_ALIVE_IN_SECONDS", "-1", "keep_alive_in_seconds"),
            ("MQTT_KEEP_ALIVE_IN_SECONDS", "1.5", "keep_alive_in_seconds"),
            ("MQTT_BROKER_URL", "http://x", "broker_url"),
            ("MQTT_DEVICE_ID", "a/b", "device_id"),
            ("MQTT_UNIT", "a+b", "unit"),
            (
                "MQTT_ROOT_TOPIC_TEMPLATE",
                "a/{nope}",
                "root_topic_template",
            ),
            ("MQTT_PAYLOAD_MODE", "x", "payload_mode"),
            ("MQTT_PASSWORD", "a\0b", "password"),
        ] {
            let e = mqtt_env(Some("{}"), &vars(&[(name, value)])).unwrap_err();
            assert_eq!(e.file, format!("environment variable {name}"), "{value}");
            assert_eq!(e.key, Some(key), "{name}");
        }
        let e = collector_env(None, &vars(&[("STATS_MODE", "SOCKET")])).unwrap_err();
        assert_eq!(e.file, "environment variable STATS_MODE");
        // The same value in the file names the file.
        let e = mqtt(r#"{"qos": 2}"#).unwrap_err();
        assert_eq!(e.file, "m.json");
    }

    #[test]
    fn unknown_variables_warn_and_do_not_fail() {
        let env = vars(&[
            ("MQTT_BROKER", "tcp://x"),
            ("MQTT_QOS", "0"),
            ("STATS_MODEE", "FILE"),
            ("BALENA_APP_NAME", "a"),
        ]);
        let mut w = Vec::new();
        let m = parse_mqtt(
            &Source {
                path: "m.json",
                text: None,
            },
            &env,
            &mut w,
        )
        .unwrap();
        assert_eq!(m.qos, QoS::AtMostOnce);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("environment variable MQTT_BROKER ignored: no such key"),
            "{}",
            w[0]
        );
        let mut w = Vec::new();
        parse_collector(
            &Source {
                path: "c.json",
                text: None,
            },
            &env,
            &mut w,
        )
        .unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("STATS_MODEE"), "{}", w[0]);
    }

    #[test]
    fn device_id_variable_wins_over_the_balena_uuid() {
        let mut env = vars(&[("MQTT_DEVICE_ID", "mine")]);
        env.device_uuid = Some("uuid1".into());
        let file = r#"{"device_id": "file-id"}"#;
        assert_eq!(mqtt_env(Some(file), &env).unwrap().device_id, "mine");
        env.vars.clear();
        assert_eq!(mqtt_env(Some(file), &env).unwrap().device_id, "uuid1");
    }

    #[test]
    fn the_original_programs_config_runs_unchanged() {
        // Its default config/mqtt.config.json, with the `unit` key and the `{unit}` placeholder.
        let original = r#"{
  "broker_url": "tcp://127.0.0.1:1883",
  "device_id": "d35a7ea843c61c723a12f19a41c26ef1",
  "unit": "my-unit",
  "root_topic_template": "isb/{device_id}/telemetry/{unit}/{service_name}"
}"#;
        let mut w = Vec::new();
        let m = parse_mqtt(
            &Source {
                path: "m.json",
                text: Some(original),
            },
            &Env::default(),
            &mut w,
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let mut root = String::new();
        m.template.render_root(
            &crate::publish::topics::Names {
                service_name: "main",
                container_name: "main_1_2",
                container_id: "abc",
            },
            &mut root,
        );
        assert_eq!(
            root,
            "isb/d35a7ea843c61c723a12f19a41c26ef1/telemetry/my-unit/main"
        );
        assert_eq!(
            m.availability_topic,
            "isb/d35a7ea843c61c723a12f19a41c26ef1/telemetry/my-unit/availability"
        );
        // Without `unit`, {unit} is the default template's level.
        let m = mqtt(r#"{"root_topic_template": "a/{unit}/{service_name}"}"#).unwrap();
        assert_eq!(m.availability_topic, "a/system/availability");
        assert_eq!(key_of(mqtt(r#"{"unit": "a/b"}"#)), Some("unit"));
        assert_eq!(key_of(mqtt(r#"{"unit": ""}"#)), Some("unit"));
    }

    #[test]
    fn origins_say_where_each_value_came_from() {
        let src = Source {
            path: "m.json",
            text: Some(r#"{"qos": 0, "retain": null}"#),
        };
        let env = vars(&[("MQTT_BROKER_URL", "tcp://e:1"), ("MQTT_CLIENT_ID", "")]);
        let o = origins(&src, MQTT_KEYS, MQTT_PREFIX, &env);
        let of = |key: &str| o.iter().find(|(k, _)| *k == key).unwrap().1.clone();
        assert_eq!(of("broker_url"), "environment variable MQTT_BROKER_URL");
        assert_eq!(of("qos"), "m.json");
        assert_eq!(of("retain"), "default");
        assert_eq!(of("client_id"), "default");
        assert_eq!(of("device_id"), "default");
        assert_eq!(o.len(), MQTT_KEYS.len());
        let mut env = env;
        env.device_uuid = Some("uuid".into());
        let o = origins(&src, MQTT_KEYS, MQTT_PREFIX, &env);
        let of = |key: &str| o.iter().find(|(k, _)| *k == key).unwrap().1.clone();
        assert_eq!(of("device_id"), "environment variable BALENA_DEVICE_UUID");
    }

    #[test]
    fn summary_masks_the_password() {
        let m = mqtt_env(
            Some(r#"{"username": "bob", "password": "s3cret"}"#),
            &vars(&[("MQTT_QOS", "0")]),
        )
        .unwrap();
        let s = summary(&collector(None).unwrap(), &m);
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("password ***"), "{s}");
        assert!(s.contains("username \"bob\""), "{s}");
        assert!(s.contains("qos 0"), "{s}");
        assert!(
            s.contains(r#"root topic "root/my-device/telemetry/system/{service_name}""#),
            "{s}"
        );
    }

    #[test]
    fn readme_lists_every_variable() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("<!-- env-vars -->")
            .expect("README has the variable list");
        let end = readme.find("<!-- /env-vars -->").unwrap();
        let listed: Vec<&str> = readme[start..end].split('`').skip(1).step_by(2).collect();
        let expected: Vec<String> = COLLECTOR_KEYS
            .iter()
            .map(|k| env_name(COLLECTOR_PREFIX, k))
            .chain(MQTT_KEYS.iter().map(|k| env_name(MQTT_PREFIX, k)))
            .collect();
        assert_eq!(
            listed, expected,
            "README.md's list, in the key lists' order"
        );
    }
}
