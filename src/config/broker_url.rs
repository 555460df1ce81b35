//! `broker_url`: the scheme, host and port of the broker, and the user name and password it may carry
//! (`tcp://alice:s3cret@host`, a form mqtt.js and many tools take); or several such addresses, the nodes
//! of one cluster (see [`parse_broker_list`]).

/// What a `broker_url` says. Its password is never shown: not by `Debug`, not in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    /// `mqtts://` or `ssl://`.
    pub tls: bool,
    /// From `user:password@` before the host, percent-decoded; empty ones are absent.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// One broker address, as the log shows it: `host:port`, never credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// What a list of URLs says: the addresses, whether they all use TLS, and the one user name and
/// password they carry.
#[derive(Debug)]
pub struct BrokerList {
    pub addresses: Vec<Address>,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Several URLs, each checked as [`parse_broker_url`]; an error names the entry (`entry 2 of 3`) when
/// there are several. They are the nodes of one service, so they share its settings: all TLS or none
/// (a fallback to plain MQTT would hand the password to whoever can block the TLS port), and one set of
/// credentials: a URL that carries some gives them to every address, and two URLs that carry different
/// ones are an error rather than a guess.
pub fn parse_broker_list<S: AsRef<str>>(urls: &[S]) -> Result<BrokerList, String> {
    let n = urls.len();
    if n == 0 {
        return Err("is an empty list: give at least one address".into());
    }
    let entry = |i: usize| {
        if n > 1 {
            format!("entry {} of {n}: ", i + 1)
        } else {
            String::new()
        }
    };
    let mut list = BrokerList {
        addresses: Vec::with_capacity(n),
        tls: false,
        username: None,
        password: None,
    };
    let mut credentials_from = None;
    for (i, url) in urls.iter().enumerate() {
        let url = url.as_ref().trim();
        if url.is_empty() {
            return Err(match n {
                1 => "is empty".into(),
                _ => format!("entry {} of {n} is empty", i + 1),
            });
        }
        let b = parse_broker_url(url).map_err(|m| format!("{}{m}", entry(i)))?;
        if i == 0 {
            list.tls = b.tls;
        } else if b.tls != list.tls {
            return Err(format!(
                "{}{:?} and entry 1 differ in TLS: every address must be mqtts:// (or ssl://), or none",
                entry(i),
                masked(url)
            ));
        }
        if b.username.is_some() || b.password.is_some() {
            match credentials_from {
                None => {
                    credentials_from = Some(i);
                    (list.username, list.password) = (b.username, b.password);
                }
                Some(j) if (&b.username, &b.password) != (&list.username, &list.password) => {
                    return Err(format!(
                        "{}{:?} carries other credentials than entry {}: they apply to every address, \
                         so give them once (or set the \"username\" and \"password\" keys)",
                        entry(i),
                        masked(url),
                        j + 1
                    ))
                }
                Some(_) => {}
            }
        }
        list.addresses.push(Address {
            host: b.host,
            port: b.port,
        });
    }
    Ok(list)
}

/// `mqtts://` or paho's `ssl://`.
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// `tcp://host:port` or `mqtt://host:port`, port 1883 when absent; `mqtts://` or `ssl://` (TLS), port
/// 8883 when absent; `[::1]` for IPv6 literals; `user:password@` before the host. An error shows the
/// URL with its password masked.
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let shown = masked(url);
    let tls = is_tls_url(url);
    let default_port = if tls { 8883 } else { 1883 };
    let rest = ["tcp://", "mqtt://", "mqtts://", "ssl://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| format!("{shown:?} must start with tcp://, mqtt://, mqtts:// or ssl://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    // The last '@': a host has none, a password may have one that was not encoded.
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (u, r),
        None => ("", rest),
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let username = decode(user).map_err(|m| format!("{shown:?}: the user name {m}"))?;
    let password = decode(password).map_err(|m| format!("{shown:?}: the password {m}"))?;
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{shown:?} has an unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err(format!("{shown:?} has no valid host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{shown:?} has an invalid port {p:?}"))?,
    };
    Ok(BrokerUrl {
        host: host.to_owned(),
        port,
        tls,
        username,
        password,
    })
}

/// The URL as it may be shown: the password in it, if any, as `***`.
fn masked(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let Some(at) = url.rfind('@').filter(|&at| at >= start) else {
        return url.to_owned();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// Percent-decoded text (`%40` for `@`), `None` when empty. An error never quotes the text.
fn decode(s: &str) -> Result<Option<String>, String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.bytes();
    while let Some(b) = rest.next() {
        if b != b'%' {
            bytes.push(b);
            continue;
        }
        let hex = |b: Option<u8>| b.and_then(|b| char::from(b).to_digit(16));
        match (hex(rest.next()), hex(rest.next())) {
            (Some(high), Some(low)) => bytes.push((high * 16 + low) as u8),
            _ => return Err("has a '%' without two hex digits after it (write % as %25)".into()),
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| "is not UTF-8 once percent-decoded")?;
    Ok((!text.is_empty()).then_some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_port(url: &str) -> Result<(String, u16), String> {
        parse_broker_url(url).map(|b| (b.host, b.port))
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            host_port("tcp://localhost:1883"),
            Ok(("localhost".into(), 1883))
        );
        assert_eq!(host_port("mqtt://10.0.0.2"), Ok(("10.0.0.2".into(), 1883)));
        assert_eq!(
            host_port("mqtt://broker:1884/"),
            Ok(("broker".into(), 1884))
        );
        assert_eq!(host_port("tcp://[::1]:1999"), Ok(("::1".into(), 1999)));
        assert_eq!(host_port("tcp://[::1]"), Ok(("::1".into(), 1883)));
        assert!(host_port("localhost:1883").is_err());
        assert!(host_port("tcp://h:0").is_err());
        assert!(host_port("tcp://h:x").is_err());
        assert!(host_port("tcp://[::1").is_err());
        assert!(host_port("tcp://u@").is_err());
        assert!(!parse_broker_url("tcp://h").unwrap().tls);
        assert!(parse_broker_url("ssl://h").unwrap().tls);
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let b = parse_broker_url("tcp://alice:s3cret@host:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("host", 1884));
        assert_eq!(
            (b.username.as_deref(), b.password.as_deref()),
            (Some("alice"), Some("s3cret"))
        );
        let b = parse_broker_url("mqtts://al%69ce:p%3Aw%40d%2F%25x%C3%A9@[::1]/").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.tls), ("::1", 8883, true));
        assert_eq!(
            (b.username.as_deref(), b.password.as_deref()),
            (Some("alice"), Some("p:w@d/%x\u{e9}"))
        );
        // Not encoded: a password's ':' and '@' still work, since a host has neither.
        let b = parse_broker_url("tcp://bob:a:b@c@h").unwrap();
        assert_eq!(
            (b.password.as_deref(), b.host.as_str()),
            (Some("a:b@c"), "h")
        );
        let b = parse_broker_url("tcp://bob@h").unwrap();
        assert_eq!((b.username.as_deref(), b.password), (Some("bob"), None));
        let b = parse_broker_url("tcp://bob:@h").unwrap();
        assert_eq!((b.username.as_deref(), b.password), (Some("bob"), None));
        let b = parse_broker_url("tcp://:pw@h").unwrap();
        assert_eq!((b.username, b.password.as_deref()), (None, Some("pw")));
    }

    #[test]
    fn lists_name_the_entry_and_share_tls_and_credentials() {
        let list =
            parse_broker_list(&["tcp://a:1", " mqtt://u:pw@b ", "tcp://u:pw@[::1]:3"]).unwrap();
        let shown: Vec<String> = list.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["a:1", "b:1883", "::1:3"]);
        assert!(!list.tls);
        assert_eq!(
            (list.username.as_deref(), list.password.as_deref()),
            (Some("u"), Some("pw"))
        );
        let err = |urls: &[&str]| parse_broker_list(urls).unwrap_err();
        assert_eq!(err(&[]), "is an empty list: give at least one address");
        assert_eq!(err(&["tcp://a", ""]), "entry 2 of 2 is empty");
        let e = err(&["tcp://a", "b:1883"]);
        assert!(
            e.starts_with("entry 2 of 2: \"b:1883\" must start with tcp://"),
            "{e}"
        );
        let e = err(&["tcp://a:99999", "tcp://b"]);
        assert!(
            e.starts_with("entry 1 of 2: \"tcp://a:99999\" has an invalid port"),
            "{e}"
        );
        let e = err(&["mqtts://a", "tcp://b"]);
        assert!(
            e.starts_with("entry 2 of 2: \"tcp://b\" and entry 1 differ in TLS"),
            "{e}"
        );
        let e = err(&["tcp://u:s3cret@a", "tcp://v:s3cret@b"]);
        assert!(
            e.starts_with("entry 2 of 2: \"tcp://v:***@b\" carries other credentials than entry 1"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        // One URL: its message as it always was.
        assert_eq!(
            err(&["tcp://h:0"]),
            parse_broker_url("tcp://h:0").unwrap_err()
        );
    }

    #[test]
    fn the_password_is_never_shown() {
        for url in [
            "tcp://alice:s3cret@host:99999",
            "tcp://alice:s3cret@",
            "http://alice:s3cret@host",
            "tcp://alice:s3cret@[::1",
            "tcp://alice:s3cret%zz@host",
            "tcp://alice:s3cret%ff@host",
            "tcp://alice:s3c@ret@host:x",
        ] {
            let e = parse_broker_url(url).unwrap_err();
            assert!(!e.contains("s3c") && !e.contains("ret@"), "{url}: {e}");
            assert!(e.contains("alice:***@"), "{url}: {e}");
        }
        let e = parse_broker_url("tcp://alice:pw%2@h").unwrap_err();
        assert!(e.contains("the password has a '%' without"), "{e}");
        let e = parse_broker_url("tcp://al%ice@h").unwrap_err();
        assert!(e.contains("the user name has a '%' without"), "{e}");
        let b = parse_broker_url("tcp://alice:s3cret@host").unwrap();
        assert!(!format!("{b:?}").contains("s3cret"), "{b:?}");
    }
}
