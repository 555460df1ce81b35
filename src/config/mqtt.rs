//! The MQTT file's keys (`MQTT_*`): the broker, the topics, the session and Home Assistant.

use super::broker_url::{parse_broker_list, Address};
use super::keys::{Fields, MQTT_PREFIX};
use super::tls::{parse_tls, Tls};
use super::{ConfigError, Env, PayloadMode, Source};
use crate::publish::discovery::Form;
use crate::publish::topics::{TopicTemplate, DEFAULT_TEMPLATE, DEFAULT_UNIT};
use mqttrs::QoS;
use std::time::Duration;

/// `Debug` is written by hand below, so that the password never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct Mqtt {
    /// `broker_url`'s addresses, one or more: the nodes the agent fails over between.
    pub brokers: Vec<Address>,
    pub device_id: String,
    /// The device id is the host name: nothing else named one (said at start).
    pub device_id_is_host_name: bool,
    pub template: TopicTemplate,
    pub client_id: String,
    pub qos: QoS,
    pub retain: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub reconnect_max_delay: Duration,
    pub max_buffered_messages: usize,
    /// The same buffer's bound in bytes (encoded messages plus their bookkeeping).
    pub max_buffered_bytes: usize,
    /// Where messages that cannot be delivered now are kept across restarts (see `spool`); none: memory.
    pub spool_dir: Option<String>,
    pub spool_max_bytes: u64,
    pub availability_topic: String,
    pub once_timeout: Duration,
    pub payload_mode: PayloadMode,
    pub home_assistant: Option<HomeAssistant>,
    /// `mqtts://` (or `ssl://`): MQTT over TLS with these settings.
    pub tls: Option<Tls>,
}

impl std::fmt::Debug for Mqtt {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Mqtt")
            .field("brokers", &self.brokers)
            .field("device_id", &self.device_id)
            .field("template", &self.template)
            .field("client_id", &self.client_id)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("max_buffered_messages", &self.max_buffered_messages)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("availability_topic", &self.availability_topic)
            .field("once_timeout", &self.once_timeout)
            .field("payload_mode", &self.payload_mode)
            .field("home_assistant", &self.home_assistant)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Home Assistant MQTT discovery, when `home_assistant_discovery` is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeAssistant {
    pub prefix: String,
    /// How long a service may go unreported before its entities are removed from Home Assistant.
    pub remove_after: Option<Duration>,
    /// `home_assistant_discovery_form`: a message per entity (the default) or per service.
    pub form: Form,
}

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
    "max_buffered_bytes",
    "availability_topic",
    "spool_dir",
    "spool_max_bytes",
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
    "home_assistant_discovery_form",
];

/// The host name as a device id: one topic level, so `+`, `#` and `/` (which no host name has) would make
/// it unusable; `None` then, and for an empty name.
fn host_name_id(env: &Env) -> Option<String> {
    env.host_name
        .as_deref()
        .map(str::trim)
        .filter(|h| !h.is_empty() && check_level(h).is_ok())
        .map(str::to_owned)
}

/// Built-in defaults, equal to `config/mqtt.example-config.json`.
pub const DEFAULT_BROKER_URL: &str = "tcp://localhost:1883";
pub const DEFAULT_DEVICE_ID: &str = "my-device";

pub fn parse_mqtt(
    src: &Source,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Mqtt, ConfigError> {
    let f = Fields::new(src, MQTT_KEYS, MQTT_PREFIX, env, warnings)?;
    let urls = broker_urls(&f, warnings)?;
    let broker = parse_broker_list(&urls).map_err(|m| f.error("broker_url", m))?;
    let hosts: Vec<&str> = broker.addresses.iter().map(|a| a.host.as_str()).collect();
    let tls = parse_tls(&f, env, &hosts, broker.tls, warnings)?;

    // MQTT_DEVICE_ID, set for this agent on purpose, wins over the UUID balena sets everywhere; the
    // UUID wins over the file's device_id.
    let uuid = env.device_uuid.as_deref().filter(|s| !s.is_empty());
    let host_name = host_name_id(env);
    let device_id_is_host_name =
        uuid.is_none() && host_name.is_some() && f.string("device_id")?.is_none();
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
                .or(host_name)
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
    // The keys (and their variables) win over the user name and password in the URL.
    let from_url = |v: Option<String>| v.map(|v| (v, "broker_url"));
    let username = f
        .string("username")?
        .filter(|u| !u.is_empty())
        .map(|u| (u, "username"))
        .or_else(|| from_url(broker.username));
    let password = f
        .secret("password")?
        .filter(|p| !p.is_empty())
        .map(|p| (p, "password"))
        .or_else(|| from_url(broker.password));
    for (value, key) in [&username, &password].into_iter().flatten() {
        check_mqtt_string(value).map_err(|m| match *key {
            "broker_url" => f.error(key, format!("its user name or password {m}")),
            _ => f.error(key, m),
        })?;
    }
    // MQTT-3.1.2-22: a CONNECT may carry a password only with a user name; brokers refuse it, and
    // retrying could never succeed.
    match (&username, &password) {
        (None, Some((_, "broker_url"))) => {
            return Err(f.error(
                "broker_url",
                "has a password but no user name: MQTT sends a password only with a user name \
                 (user:password@, or the \"username\" key)"
                    .into(),
            ))
        }
        (None, Some(_)) => {
            return Err(f.error(
                "password",
                "is set but \"username\" is not: MQTT sends a password only with a user name"
                    .into(),
            ))
        }
        _ => {}
    }
    let (username, password) = (username.map(|(u, _)| u), password.map(|(p, _)| p));
    let reconnect_max_delay = f
        .uint("reconnect_max_delay_in_seconds", 1, 3_600)?
        .unwrap_or(60);
    let max_buffered_messages = f
        .uint("max_buffered_messages", 1, 10_000_000)?
        .unwrap_or(10_000) as usize;
    // At least 1 MiB: the in-flight window alone (2,048 messages) must fit while connected.
    let max_buffered_bytes = f
        .uint("max_buffered_bytes", 1 << 20, 1 << 30)?
        .map_or(crate::mqtt::session::DEFAULT_MAX_QUEUED_BYTES, |b| {
            b as usize
        });
    let spool_dir = f.string("spool_dir")?.filter(|d| !d.is_empty());
    // At least 64 KiB: a tick of a few dozen containers, with room to drop the oldest.
    let spool_max_bytes = f
        .uint("spool_max_bytes", 1 << 16, 1 << 30)?
        .unwrap_or(16 << 20);
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
    let form = match f
        .string("home_assistant_discovery_form")?
        .as_deref()
        .unwrap_or("entity")
    {
        "entity" => Form::Entity,
        "device" => Form::Device,
        other => {
            return Err(f.error(
                "home_assistant_discovery_form",
                format!("{other:?} is not a discovery form (use \"entity\" or \"device\")"),
            ))
        }
    };
    let home_assistant = f
        .boolean("home_assistant_discovery")?
        .unwrap_or(false)
        .then(|| HomeAssistant {
            prefix,
            remove_after: (remove > 0).then(|| Duration::from_secs(remove)),
            form,
        });

    Ok(Mqtt {
        brokers: broker.addresses,
        device_id,
        device_id_is_host_name,
        template,
        client_id,
        qos,
        retain,
        keep_alive,
        username,
        password,
        reconnect_max_delay: Duration::from_secs(reconnect_max_delay),
        max_buffered_messages,
        max_buffered_bytes,
        spool_dir,
        spool_max_bytes,
        availability_topic,
        once_timeout: Duration::from_secs(once_timeout),
        payload_mode,
        home_assistant,
        tls,
    })
}

/// `broker_url`'s URLs: a string holds one, or several separated by commas (the only way a variable can
/// hold several); a file may give a JSON array of them instead.
fn broker_urls(f: &Fields, warnings: &mut Vec<String>) -> Result<Vec<String>, ConfigError> {
    match f.get("broker_url") {
        None => {
            // In a container, localhost is the container itself: a missing MQTT_BROKER_URL is the
            // likely reason nothing arrives, so say it once.
            warnings.push(format!(
                "broker_url is not set (MQTT_BROKER_URL, or {}): using the default broker \
                 {DEFAULT_BROKER_URL}, which in a container is the container itself",
                f.path
            ));
            Ok(split_urls(DEFAULT_BROKER_URL))
        }
        Some(serde_json::Value::String(s)) => Ok(split_urls(s)),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    let e = format!("entry {} of {} must be a string, not {v}", i + 1, a.len());
                    f.error("broker_url", e)
                })
            })
            .collect(),
        Some(other) => Err(f.error(
            "broker_url",
            format!("must be a string or an array of strings, not {other}"),
        )),
    }
}

/// Comma-separated URLs. A password may hold a comma that was not percent-encoded, as it may hold ':'
/// and '@' (`tcp://u:p,w@host`, one address as before lists existed): a piece with no scheme that
/// holds '@' ends the user information of the address before it, together with any pieces between.
/// Any other piece is an entry of its own, and one without a scheme is refused as such.
fn split_urls(s: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    // Pieces without a scheme after the last address: its password's, if one with '@' follows.
    let mut pending: Vec<&str> = Vec::new();
    for piece in s.split(',') {
        let schemeless = !piece.contains("://");
        let after_one = !urls.is_empty();
        match urls.last_mut().filter(|u| u.contains("://")) {
            Some(last) if schemeless && piece.contains('@') => {
                for p in pending.drain(..).chain([piece]) {
                    last.push(',');
                    last.push_str(p);
                }
            }
            _ if schemeless && after_one => pending.push(piece),
            _ => {
                urls.extend(pending.drain(..).map(str::to_owned));
                urls.push(piece.to_owned());
            }
        }
    }
    urls.extend(pending.drain(..).map(str::to_owned));
    urls
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

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
        assert_eq!(
            key_of(mqtt(r#"{"max_buffered_bytes": 1000}"#)),
            Some("max_buffered_bytes")
        );
        assert_eq!(
            key_of(mqtt(r#"{"spool_max_bytes": 65535}"#)),
            Some("spool_max_bytes")
        );
        assert_eq!(
            key_of(mqtt(r#"{"spool_max_bytes": "x"}"#)),
            Some("spool_max_bytes")
        );
    }

    #[test]
    fn several_brokers_from_a_file_array_or_a_comma_separated_variable() {
        let hosts = |m: Mqtt| m.brokers.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let m = mqtt(r#"{"broker_url": ["tcp://a:1", "mqtt://u:p,w@b"]}"#).unwrap();
        assert_eq!(
            (m.username.as_deref(), m.password.as_deref()),
            (Some("u"), Some("p,w"))
        );
        assert_eq!(hosts(m), ["a:1", "b:1883"]);
        let env = vars(&[("MQTT_BROKER_URL", "tcp://a:1, tcp://b:2,tcp://c")]);
        assert_eq!(
            hosts(mqtt_env(None, &env).unwrap()),
            ["a:1", "b:2", "c:1883"]
        );
        // Errors name the key and the entry, and where the list came from.
        let e = mqtt(r#"{"broker_url": []}"#).unwrap_err();
        assert_eq!(e.key, Some("broker_url"));
        assert!(e.message.contains("empty list"), "{e}");
        let e = mqtt(r#"{"broker_url": ["tcp://a", 7]}"#).unwrap_err();
        assert_eq!(e.message, "entry 2 of 2 must be a string, not 7");
        let e = mqtt(r#"{"broker_url": 7}"#).unwrap_err();
        assert_eq!(e.key, Some("broker_url"));
        let env = vars(&[("MQTT_BROKER_URL", "tcp://a,b:1883")]);
        let e = mqtt_env(None, &env).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key),
            ("environment variable MQTT_BROKER_URL", Some("broker_url"))
        );
        assert!(e.message.starts_with("entry 2 of 2: \"b:1883\""), "{e}");
        let env = vars(&[("MQTT_BROKER_URL", "tcp://a:1,tcp://b:70000")]);
        let e = mqtt_env(None, &env).unwrap_err();
        assert!(
            e.message
                .contains("entry 2 of 2: \"tcp://b:70000\" has an invalid port"),
            "{e}"
        );
        let env = vars(&[("MQTT_BROKER_URL", "tcp://a:1,")]);
        assert_eq!(
            mqtt_env(None, &env).unwrap_err().message,
            "entry 2 of 2 is empty"
        );
    }

    #[test]
    fn a_comma_in_a_password_keeps_its_address_whole() {
        assert_eq!(split_urls("tcp://u:p,w@h"), ["tcp://u:p,w@h"]);
        assert_eq!(split_urls("tcp://u:a,b,c@h:1"), ["tcp://u:a,b,c@h:1"]);
        assert_eq!(
            split_urls("tcp://u:p,w@a,tcp://b"),
            ["tcp://u:p,w@a", "tcp://b"]
        );
        assert_eq!(split_urls("tcp://a,b:1883"), ["tcp://a", "b:1883"]);
        assert_eq!(split_urls("tcp://a,b,tcp://c"), ["tcp://a", "b", "tcp://c"]);
        assert_eq!(split_urls("u@a,tcp://b"), ["u@a", "tcp://b"]);
        assert_eq!(split_urls("tcp://a:1,"), ["tcp://a:1", ""]);
        // The same from a file's string and from the variable.
        let m = mqtt(r#"{"broker_url": "tcp://alice:p,w@host"}"#).unwrap();
        assert_eq!(m.password.as_deref(), Some("p,w"));
        let env = vars(&[("MQTT_BROKER_URL", "tcp://alice:p,w@host:1,tcp://b")]);
        let m = mqtt_env(None, &env).unwrap();
        assert_eq!((m.password.as_deref(), m.brokers.len()), (Some("p,w"), 2));
    }

    #[test]
    fn device_uuid_from_the_environment_wins() {
        let env = Env {
            device_uuid: Some("abc123".into()),
            host_name: None,
            balena: false,
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
            host_name: None,
            balena: false,
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
            host_name: None,
            balena: false,
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
    fn the_host_name_is_the_device_id_when_nothing_else_names_one() {
        let host = |name: &str, uuid: Option<&str>| Env {
            device_uuid: uuid.map(str::to_owned),
            host_name: Some(name.into()),
            balena: false,
            vars: Vec::new(),
        };
        let m = mqtt_env(None, &host("pi-kitchen", None)).unwrap();
        assert_eq!(m.device_id, "pi-kitchen");
        assert!(m.device_id_is_host_name);
        assert_eq!(m.client_id, "balena-telemetry-pi-kitchen");
        // The file's device_id, the UUID and MQTT_DEVICE_ID each win over it.
        let m = mqtt_env(Some(r#"{"device_id": "f"}"#), &host("h", None)).unwrap();
        assert_eq!(
            (m.device_id.as_str(), m.device_id_is_host_name),
            ("f", false)
        );
        let m = mqtt_env(None, &host("h", Some("uuid1"))).unwrap();
        assert_eq!(
            (m.device_id.as_str(), m.device_id_is_host_name),
            ("uuid1", false)
        );
        // No usable host name: the old default.
        let m = mqtt_env(None, &host("", None)).unwrap();
        assert_eq!(
            (m.device_id.as_str(), m.device_id_is_host_name),
            ("my-device", false)
        );
    }

    #[test]
    fn the_default_broker_is_a_warning() {
        let mut w = Vec::new();
        let src = Source {
            path: "m.json",
            text: None,
        };
        parse_mqtt(&src, &Env::default(), &mut w).unwrap();
        assert_eq!(
            w,
            [
                "broker_url is not set (MQTT_BROKER_URL, or m.json): using the default broker \
              tcp://localhost:1883, which in a container is the container itself"
            ]
        );
        let mut w = Vec::new();
        parse_mqtt(&src, &vars(&[("MQTT_BROKER_URL", "tcp://b")]), &mut w).unwrap();
        assert!(w.is_empty(), "{w:?}");
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
    fn credentials_in_the_url_and_the_keys_win_over_them() {
        let creds = |m: Mqtt| (m.username, m.password);
        let some = |u: &str, p: &str| (Some(u.to_owned()), Some(p.to_owned()));
        let url = r#"{"broker_url": "tcp://al%69ce:s3%40cret@h:1884""#;
        let m = mqtt(&format!("{url}}}")).unwrap();
        assert_eq!((m.brokers[0].host.as_str(), m.brokers[0].port), ("h", 1884));
        assert_eq!(creds(m), some("alice", "s3@cret"));
        // Each key, from the file or its variable, wins over its part of the URL.
        let m = mqtt(&format!(r#"{url}, "password": "filepw"}}"#)).unwrap();
        assert_eq!(creds(m), some("alice", "filepw"));
        let m = mqtt(&format!(r#"{url}, "username": "bob"}}"#)).unwrap();
        assert_eq!(creds(m), some("bob", "s3@cret"));
        let env = vars(&[("MQTT_PASSWORD", "envpw"), ("MQTT_USERNAME", "carol")]);
        let m = mqtt_env(Some(&format!(r#"{url}, "password": "filepw"}}"#)), &env).unwrap();
        assert_eq!(creds(m), some("carol", "envpw"));
        // A URL's password with no user name anywhere names broker_url; with the key's, it is fine.
        let e = mqtt(r#"{"broker_url": "tcp://:s3cret@h"}"#).unwrap_err();
        assert_eq!(e.key, Some("broker_url"));
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let m = mqtt(r#"{"broker_url": "tcp://:s3cret@h", "username": "u"}"#).unwrap();
        assert_eq!(creds(m), some("u", "s3cret"));
        let e = mqtt(r#"{"broker_url": "tcp://u:a%00b@h"}"#).unwrap_err();
        assert_eq!(e.key, Some("broker_url"));
        assert!(e.message.contains("must not contain NUL"), "{e}");
    }

    #[test]
    fn no_error_or_debug_output_shows_a_password() {
        let e = mqtt(r#"{"username": "u", "password": ["s3cret"]}"#).unwrap_err();
        assert_eq!(e.key, Some("password"));
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e}");
        let e = mqtt(r#"{"broker_url": "tcp://u:s3cret@h:0"}"#).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("s3cret"), "{e}");
        let env = vars(&[("MQTT_PASSWORD", "envs3cret")]);
        let m = mqtt_env(Some(r#"{"username": "u"}"#), &env).unwrap();
        assert_eq!(m.password.as_deref(), Some("envs3cret"));
        let shown = format!("{m:?} {env:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("MQTT_PASSWORD"), "{shown}");
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
                remove_after: Some(Duration::from_secs(600)),
                form: Form::Entity,
            })
        );
        let m =
            mqtt(r#"{"home_assistant_discovery": true, "home_assistant_discovery_prefix": "ha"}"#)
                .unwrap();
        assert_eq!(
            m.home_assistant.unwrap(),
            HomeAssistant {
                prefix: "ha".into(),
                remove_after: None,
                form: Form::Entity,
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
    fn home_assistant_discovery_form() {
        let form = |text: &str| mqtt(text).map(|m| m.home_assistant.map(|h| h.form));
        let on = r#""home_assistant_discovery": true"#;
        assert_eq!(form(&format!("{{{on}}}")).unwrap(), Some(Form::Entity));
        let device = format!(r#"{{{on}, "home_assistant_discovery_form": "device"}}"#);
        assert_eq!(form(&device).unwrap(), Some(Form::Device));
        let entity = format!(r#"{{{on}, "home_assistant_discovery_form": "entity"}}"#);
        assert_eq!(form(&entity).unwrap(), Some(Form::Entity));
        for bad in [r#""Device""#, r#""devices""#, r#""""#, "1", "true"] {
            let text = format!(r#"{{{on}, "home_assistant_discovery_form": {bad}}}"#);
            assert_eq!(
                key_of(mqtt(&text)),
                Some("home_assistant_discovery_form"),
                "{bad}"
            );
        }
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
        let on = r#"{"broker_url": "tcp://b", "home_assistant_discovery": true"#;
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
}
