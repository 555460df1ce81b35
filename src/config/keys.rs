//! The key table: one file's object with its `STATS_`/`MQTT_` variables put in, read key by key.

use super::{ConfigError, Env, Source, TLS_PEM_VARS};
use serde_json::{Map, Value};

/// Prefixes of the variables that set keys of each file.
pub const COLLECTOR_PREFIX: &str = "STATS_";
pub const MQTT_PREFIX: &str = "MQTT_";

/// The variable that sets `key`: `MQTT_` + `broker_url` -> `MQTT_BROKER_URL`.
pub fn env_name(prefix: &str, key: &str) -> String {
    format!("{prefix}{}", key.to_ascii_uppercase())
}

/// One config file's top-level object with the environment's values put in, read key by key.
pub(super) struct Fields<'a> {
    pub(super) path: &'a str,
    map: Map<String, Value>,
    /// Keys whose value came from the environment, with the variable's name. Their values are the
    /// variable's text (a JSON string), converted by the typed getters below.
    env_keys: Vec<(&'static str, String)>,
}

impl<'a> Fields<'a> {
    pub(super) fn new(
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
    pub(super) fn env_var(&self, key: &str) -> Option<&str> {
        self.env_keys
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, n)| n.as_str())
    }

    /// Where `key`'s value came from: the variable that set it, or the file.
    pub(super) fn origin(&self, key: &str) -> String {
        match self.env_var(key) {
            Some(name) => format!("environment variable {name}"),
            None => self.path.to_owned(),
        }
    }

    pub(super) fn set_by_env(&self, key: &str) -> bool {
        self.env_var(key).is_some()
    }

    pub(super) fn error(&self, key: &'static str, message: String) -> ConfigError {
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
    pub(super) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A value from the environment: always text, to be read as the key's type.
    pub(super) fn env_text(&self, key: &str) -> Option<&str> {
        self.env_var(key)?;
        self.get(key)?.as_str()
    }

    pub(super) fn string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.error(key, format!("must be a string, not {other}"))),
        }
    }

    /// A string never to be shown (a password): a value of the wrong type is not quoted either.
    pub(super) fn secret(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            Some(v) if !v.is_string() => Err(self.error(key, "must be a string".into())),
            _ => self.string(key),
        }
    }

    pub(super) fn uint(
        &self,
        key: &'static str,
        min: u64,
        max: u64,
    ) -> Result<Option<u64>, ConfigError> {
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

    /// A list of texts, or (as a variable must be) one text separated by commas; each item trimmed,
    /// empty ones kept for the caller to judge. `what` names the items in the error.
    pub(super) fn list(
        &self,
        key: &'static str,
        what: &str,
    ) -> Result<Option<Vec<&str>>, ConfigError> {
        let items = match self.get(key) {
            None => return Ok(None),
            Some(Value::Array(a)) => &a[..],
            Some(v) => std::slice::from_ref(v),
        };
        let mut out = Vec::new();
        for v in items {
            let Value::String(text) = v else {
                return Err(self.error(
                    key,
                    format!("must be {what} (a list, or one text separated by commas), not {v}"),
                ));
            };
            out.extend(text.split(',').map(str::trim));
        }
        Ok(Some(out))
    }

    pub(super) fn boolean(&self, key: &'static str) -> Result<Option<bool>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::*;
    use mqttrs::QoS;
    use std::time::Duration;

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
        ("report", r#""on_change""#, "on_change"),
        ("report_heartbeat_in_seconds", "60", "60"),
        ("report_cpu_deadband_in_percentage_points", "2.5", "2.5"),
        ("report_memory_deadband_in_percent", "0.5", "0.5"),
        ("report_network_deadband_in_bytes", "1000", "1000"),
        ("report_block_io_deadband_in_bytes", "2000", "2000"),
        ("report_temperature_deadband_in_celsius", "0.5", "0.5"),
        ("report_storage_deadband_in_bytes", "3000", "3000"),
        ("device_metrics", "false", "false"),
        ("device_service_name", r#""host""#, "host"),
        ("device_disk_paths", r#"["/a", "/b"]"#, "/a,/b"),
        ("host_sys_root", r#""/host/sys""#, "/host/sys"),
        ("container_name_include", r#"["a*", "b"]"#, "a*,b"),
        ("container_name_exclude", r#""c?""#, "c?"),
        ("container_label_include", r#"["k=v*"]"#, "k=v*"),
        ("container_label_exclude", r#""x""#, "x"),
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
        ("max_buffered_bytes", "2097152", "2097152"),
        ("spool_dir", r#""/data""#, "/data"),
        ("spool_max_bytes", "65536", "65536"),
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
        ("home_assistant_discovery_form", r#""device""#, "device"),
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
            host_name: None,
            balena: false,
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
        assert_eq!((m.brokers[0].host.as_str(), m.brokers[0].port), ("f", 1));
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
            ("MQTT_BROKER_URL", "tcp://b"),
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
    fn readme_lists_every_variable() {
        let readme = include_str!("../../README.md");
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
