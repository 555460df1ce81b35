//! `broker_url`: the scheme, host and port of the broker.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
