//! The `tls_*` keys and the inline PEM variables: which certificates to load, not yet loaded.

use super::keys::Fields;
use super::{ConfigError, Env};

/// TLS settings (`mqtts://`), not yet read: see `mqtt::tls` for the certificates themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// Verified against the server's certificate and sent as SNI, one per broker address:
    /// `tls_server_name` for all of them, or each URL's own host.
    pub server_names: Vec<String>,
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

/// PEM text instead of the `tls_*_file` keys' files, in the order CA, certificate, key. They name no key
/// of the file, so the overlay of `MQTT_<KEY>` variables leaves them to `parse_tls`.
pub const TLS_PEM_VARS: [&str; 3] = ["MQTT_TLS_CA_PEM", "MQTT_TLS_CERT_PEM", "MQTT_TLS_KEY_PEM"];

/// The `tls_*` keys and the inline PEM variables; `None` for a plain `tcp://` or `mqtt://` URL.
pub(super) fn parse_tls(
    f: &Fields,
    env: &Env,
    hosts: &[&str],
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
    let server_names: Vec<String> = hosts
        .iter()
        .map(|h| server_name.clone().unwrap_or_else(|| (*h).to_owned()))
        .collect();
    if let Some(bad) = server_names.iter().find(|n| n.contains(['/', ' ', '\0'])) {
        return Err(f.error(
            "tls_server_name",
            format!("{bad:?} is not a host name or IP address"),
        ));
    }
    Ok(Some(Tls {
        server_names,
        ca,
        cert,
        key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::{parse_broker_url, parse_mqtt, Source};

    #[test]
    fn tls_urls_keys_and_inline_pem() {
        assert_eq!(
            parse_broker_url("mqtts://b.example").map(|b| (b.host, b.port)),
            Ok(("b.example".into(), 8883))
        );
        assert_eq!(
            parse_broker_url("ssl://b.example:8884").map(|b| (b.host, b.port)),
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
        assert_eq!(
            (m.brokers[0].port, t.server_names),
            (8883, vec!["10.0.0.5".into()])
        );
        assert_eq!(
            t.ca,
            Some(Pem::File {
                key: "tls_ca_file",
                path: "/c/ca.pem".into()
            })
        );
        let m = mqtt(r#"{"broker_url": "ssl://h", "tls_server_name": "b.example"}"#).unwrap();
        assert_eq!(m.tls.unwrap().server_names, ["b.example"]);
        // Several addresses: each its own host, unless tls_server_name names one for all.
        let m = mqtt(r#"{"broker_url": ["mqtts://a", "ssl://b:8884"]}"#).unwrap();
        assert_eq!(m.tls.unwrap().server_names, ["a", "b"]);
        let m = mqtt(r#"{"broker_url": "mqtts://a,mqtts://b", "tls_server_name": "c"}"#).unwrap();
        assert_eq!(m.tls.unwrap().server_names, ["c", "c"]);
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
            text: Some(r#"{"broker_url": "tcp://b", "tls_ca_file": "/c/ca.pem"}"#),
        };
        assert_eq!(parse_mqtt(&src, &Env::default(), &mut w).unwrap().tls, None);
        assert!(w[0].contains("tls_ca_file is set but"), "{w:?}");
    }
}
