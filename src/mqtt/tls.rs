//! MQTT over TLS 1.2 and 1.3 with rustls (ring provider): the certificates checked at start, and a
//! connection that is bytes in, bytes out.
//!
//! rustls does no I/O of its own: `Conn` takes ciphertext from any `Read` and gives it to any `Write`,
//! so the agent's one poll loop drives it over its non-blocking socket (through `transport`), and the
//! tests drive it over memory. Failures are turned into words a user can act on: which issuer is not
//! trusted, which names the certificate has, when it expired, which alert the broker sent.

use super::x509;
use crate::config::{ConfigError, Pem, Tls as Settings};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    Error, OtherError, RootCertStore, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// What every connection needs, loaded and checked once at start.
pub struct Client {
    config: Arc<ClientConfig>,
    /// One per broker address, in `broker_url`'s order.
    server_names: Vec<ServerName<'static>>,
    has_cert: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "tls::Client({:?}, client certificate: {})",
            self.server_names, self.has_cert
        )
    }
}

/// The most a PEM file (or variable) may hold: a CA bundle like Mozilla's whole one (about 220 KB)
/// several times over, and a bound on what start-up reads from a file a key names.
pub const MAX_PEM_BYTES: usize = 1024 * 1024;

/// A file's first MAX_PEM_BYTES + 1 bytes: enough for `client` to tell that it is too large. What the
/// caller gives `client` to read files with.
pub fn read_file(path: &str) -> io::Result<Vec<u8>> {
    crate::start_file::read(path, MAX_PEM_BYTES)
}

/// Reads and checks the certificates of `s`; an error names the config key or environment variable.
/// `read` gives a file's bytes (the caller owns the file system); `config_path` is mqtt.config.json's.
pub fn client(
    s: &Settings,
    config_path: &str,
    read: &dyn Fn(&str) -> io::Result<Vec<u8>>,
) -> Result<Client, ConfigError> {
    let error = |pem: &Pem, message: String| match pem {
        Pem::File { key, path } => ConfigError {
            file: config_path.to_owned(),
            key: Some(key),
            message: format!("{path}: {message}"),
        },
        Pem::Inline { var, .. } => ConfigError {
            file: "environment".into(),
            key: Some(var),
            message,
        },
    };
    let text = |pem: &Pem| -> Result<Vec<u8>, ConfigError> {
        let bytes = match pem {
            Pem::File { path, .. } => {
                read(path).map_err(|e| error(pem, format!("cannot be read: {e}")))?
            }
            Pem::Inline { text, .. } => text.as_bytes().to_vec(),
        };
        if bytes.len() > MAX_PEM_BYTES {
            return Err(error(
                pem,
                format!(
                    "is larger than {} KiB: not a PEM certificate or key",
                    MAX_PEM_BYTES / 1024
                ),
            ));
        }
        Ok(bytes)
    };
    let certs = |pem: &Pem| -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let bytes = text(pem)?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| error(pem, format!("is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(error(
                pem,
                "holds no certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        Ok(certs)
    };

    let mut roots = RootCertStore::empty();
    match &s.ca {
        Some(pem) => {
            for (i, cert) in certs(pem)?.into_iter().enumerate() {
                roots
                    .add(cert)
                    .map_err(|e| error(pem, format!("certificate {} is not usable: {e}", i + 1)))?;
            }
        }
        // A scratch image has no system store: Mozilla's public roots, compiled in.
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keys = provider.key_provider;
    if roots.is_empty() {
        return Err(ConfigError {
            file: config_path.to_owned(),
            key: Some("tls_ca_file"),
            message: "no usable root certificate".into(),
        });
    }
    let verifier = Verifier {
        roots,
        algorithms: provider.signature_verification_algorithms,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ConfigError {
            file: config_path.to_owned(),
            key: None,
            message: format!("TLS: {e}"),
        })?
        // webpki's verification, only with the issuer named when it fails (see Verifier); there is
        // deliberately no way to turn verification off.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let config = match (&s.cert, &s.key) {
        (Some(cert_pem), Some(key_pem)) => {
            let chain = certs(cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(&text(key_pem)?).map_err(|_| {
                // Not the parser's own words: they could quote a line of the key.
                error(
                    key_pem,
                    "holds no private key (PEM \"PRIVATE KEY\" (PKCS#8), \"RSA PRIVATE KEY\" or \
                     \"EC PRIVATE KEY\")"
                        .into(),
                )
            })?;
            let unusable = |why: String| {
                error(
                    key_pem,
                    format!("is not usable with the certificate: {why}"),
                )
            };
            let key = keys
                .load_private_key(key)
                .map_err(|e| unusable(e.to_string()))?;
            // Whether the certificate is valid is the broker's to judge; ours is only whether the key is
            // its key. rustls' with_client_auth_cert checks that too, but through webpki, which refuses
            // the X.509 v1 certificates `openssl x509 -req` makes (mosquitto's own TLS guide).
            let Some(spki) = x509::public_key_info(&chain[0]) else {
                return Err(error(
                    cert_pem,
                    "holds no X.509 certificate we can read".into(),
                ));
            };
            if key.public_key().is_some_and(|k| k.as_ref() != spki) {
                return Err(unusable(format!(
                    "it does not match the public key of the certificate ({})",
                    cert_pem.origin()
                )));
            }
            let chosen = CertifiedKey::new(chain, key);
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(chosen)))
        }
        _ => builder.with_no_client_auth(),
    };
    let server_names = s
        .server_names
        .iter()
        .map(|n| {
            ServerName::try_from(n.clone()).map_err(|_| ConfigError {
                file: config_path.to_owned(),
                key: Some("tls_server_name"),
                message: format!("{n:?} is not a host name or IP address"),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Client {
        config: Arc::new(config),
        server_names,
        has_cert: s.cert.is_some(),
    })
}

/// webpki's verification of the chain, the name and the handshake signatures, as rustls'
/// WebPkiServerVerifier does it, except that "unknown issuer" says which issuer. Calling webpki's checks
/// directly rather than wrapping WebPkiServerVerifier leaves out its revocation (CRL) code, which we have
/// no way to configure: 9 KB on aarch64.
struct Verifier {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Verifier({} roots)", self.roots.len())
    }
}

#[derive(Debug)]
struct Untrusted(String);

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Untrusted {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )
        .map_err(|e| match e {
            Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                // The chain's last certificate is the one whose issuer we lack.
                let last = intermediates.last().unwrap_or(end_entity);
                let issuer = x509::issuer(last).unwrap_or_else(|| "an unnamed issuer".into());
                Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Untrusted(
                    format!(
                        "the broker's certificate is not trusted: issued by {issuer}, which is \
                         not among the trusted roots (tls_ca_file, or the built-in public roots)"
                    ),
                )))))
            }
            e => e,
        })?;
        verify_server_name(&cert, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// rustls keeps at most this much plaintext and ciphertext waiting (each), like the session's own
/// outbound bound.
const BUFFER_LIMIT: usize = 64 * 1024;

/// One TLS connection's state; the socket stays with the caller.
pub struct Conn {
    conn: ClientConnection,
    has_cert: bool,
}

impl Conn {
    /// A connection to broker address `broker` (its index in `broker_url`).
    pub fn new(client: &Client, broker: usize) -> io::Result<Conn> {
        let name = &client.server_names[broker.min(client.server_names.len() - 1)];
        let mut conn = ClientConnection::new(client.config.clone(), name.clone())
            .map_err(|e| io::Error::other(format!("TLS: {e}")))?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(Conn {
            conn,
            has_cert: client.has_cert,
        })
    }

    /// Takes as much plaintext as the bounded buffer has room for (held until the handshake is done).
    pub fn write_plain(&mut self, data: &[u8]) -> usize {
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// True when ciphertext is waiting for the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Writes waiting ciphertext to `w` until it is all out (Ok(true)) or `w` would block (Ok(false)).
    pub fn flush(&mut self, w: &mut dyn Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(w) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(self.during_handshake(e)),
            }
        }
        Ok(true)
    }

    /// A connection that ends while the handshake is under way: most likely not a TLS port.
    fn during_handshake(&self, e: io::Error) -> io::Error {
        use io::ErrorKind::*;
        let ended = matches!(
            e.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        );
        if !(self.conn.is_handshaking() && ended) {
            return e;
        }
        io::Error::other(format!(
            "the broker ended the connection during the TLS handshake ({e}; a plain MQTT port given \
             an mqtts:// URL does this: use mqtt:// for a plain port)"
        ))
    }

    /// Plaintext from the broker: Ok(n > 0) bytes, Ok(0) when the broker closed the TLS session, or
    /// WouldBlock once `r` has nothing more. TLS failures come back as errors in words.
    pub fn read(&mut self, r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.conn.read_tls(r) {
                Ok(0) if self.conn.is_handshaking() => {
                    return Err(self
                        .during_handshake(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")))
                }
                Ok(0) => return Ok(0),
                Ok(_) => {
                    if let Err(e) = self.conn.process_new_packets() {
                        return Err(io::Error::other(describe(&e, self.has_cert)));
                    }
                }
                Err(e) => return Err(self.during_handshake(e)),
            }
        }
    }

    /// The negotiated version and cipher suite, e.g. `TLS 1.3, TLS13_AES_256_GCM_SHA384`.
    pub fn describe(&self) -> String {
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
            other => format!("{other:?}"),
        };
        match self.conn.negotiated_cipher_suite() {
            Some(s) => format!("{version}, {:?}", s.suite()),
            None => version,
        }
    }

    /// Queues the TLS close_notify; `flush` sends it.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

/// A rustls failure in words a user can act on.
pub fn describe(e: &Error, has_cert: bool) -> String {
    match e {
        Error::InvalidCertificate(c) => match c {
            CertificateError::ExpiredContext { not_after, .. } => format!(
                "the broker's certificate expired on {}",
                x509::utc(not_after.as_secs())
            ),
            CertificateError::NotValidYetContext { not_before, .. } => format!(
                "the broker's certificate is not valid before {} (is this device's clock right?)",
                x509::utc(not_before.as_secs())
            ),
            CertificateError::NotValidForNameContext { expected, presented } => format!(
                "the broker's certificate is for {}, not for {} (tls_server_name sets the name to \
                 verify)",
                if presented.is_empty() {
                    "no name".into()
                } else {
                    presented
                        .iter()
                        .map(|p| presented_name(p))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                name_text(expected)
            ),
            CertificateError::Other(other) => other.to_string(),
            other => format!("the broker's certificate was rejected: {other}"),
        },
        Error::AlertReceived(alert) => {
            let hint = match alert {
                AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure
                    if !has_cert =>
                {
                    " (the broker may want a client certificate: tls_cert_file and tls_key_file)"
                }
                AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::CertificateExpired
                    if has_cert =>
                {
                    " (the broker rejected our client certificate)"
                }
                AlertDescription::ProtocolVersion => {
                    " (no TLS version in common: the agent speaks TLS 1.2 and 1.3)"
                }
                _ => "",
            };
            format!(
                "the broker refused the TLS connection with the alert \"{}\"{hint}",
                alert_words(*alert)
            )
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => format!(
            "the broker's answer is not TLS ({e}): a plain MQTT port given an mqtts:// URL does this \
             (use mqtt:// for a plain port)"
        ),
        other => format!("TLS: {other}"),
    }
}

/// rustls gives the certificate's names as `DnsName("a.example")` or `IpAddress(10.0.0.1)`.
fn presented_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            p.strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(p)
}

fn name_text(name: &ServerName) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// `CertificateRequired` as "certificate required".
fn alert_words(alert: AlertDescription) -> String {
    let name = format!("{alert:?}");
    let mut words = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() && !words.is_empty() && !words.ends_with('(') {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
        .replace("c a", "CA")
        .replace("unknown c", "unknown CA")
        .replace("u r l", "URL")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ServerConfig, ServerConnection};

    /// A CA and certificates it signs, made here (no key is committed).
    struct Pki {
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
    }

    impl Pki {
        fn new(name: &str) -> Pki {
            let mut p = rcgen::CertificateParams::new(Vec::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            Pki {
                ca: p.self_signed(&ca_key).unwrap(),
                ca_key,
            }
        }

        fn leaf(&self, names: &[&str], expired: bool) -> (rcgen::Certificate, rcgen::KeyPair) {
            let mut p = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            if expired {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 6, 30);
            }
            let key = rcgen::KeyPair::generate().unwrap();
            (p.signed_by(&key, &self.ca, &self.ca_key).unwrap(), key)
        }
    }

    fn settings(ca: &Pki, server_name: &str) -> Settings {
        Settings {
            server_names: vec![server_name.into()],
            ca: Some(Pem::Inline {
                var: "MQTT_TLS_CA_PEM",
                text: ca.ca.pem(),
            }),
            cert: None,
            key: None,
        }
    }

    fn no_files(_: &str) -> io::Result<Vec<u8>> {
        Err(io::ErrorKind::NotFound.into())
    }

    fn server(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> ServerConnection {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        ServerConnection::new(Arc::new(config)).unwrap()
    }

    /// Bytes arriving on a non-blocking socket: WouldBlock once they are read, never end-of-file.
    struct Wire<'a>(&'a [u8]);

    impl Read for Wire<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.0.read(buf)
        }
    }

    /// Runs client and server over memory until the client has `want` plaintext bytes or fails.
    fn exchange(
        client: &mut Conn,
        server: &mut ServerConnection,
        want: usize,
    ) -> Result<Vec<u8>, String> {
        let mut got = Vec::new();
        for _ in 0..20 {
            let mut wire = Vec::new();
            client.flush(&mut wire).unwrap();
            let mut r = &wire[..];
            while !r.is_empty() {
                server.read_tls(&mut r).unwrap();
            }
            if server.process_new_packets().is_err() {
                // The server's alert still goes to the client below.
            }
            if !server.is_handshaking() {
                let _ = server.writer().write_all(b"hello");
            }
            let mut back = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut back).unwrap();
            }
            let mut r = Wire(&back);
            let mut buf = [0u8; 64];
            loop {
                match client.read(&mut r, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            if got.len() >= want {
                return Ok(got);
            }
        }
        Err("no progress".into())
    }

    #[test]
    fn a_verified_handshake_carries_data_both_ways() {
        let pki = Pki::new("Test CA");
        let (cert, key) = pki.leaf(&["localhost"], false);
        let client = super::client(&settings(&pki, "localhost"), "m.json", &no_files).unwrap();
        let mut conn = Conn::new(&client, 0).unwrap();
        assert_eq!(
            conn.write_plain(b"CONNECT"),
            7,
            "held until the handshake is done"
        );
        let mut srv = server(&cert, &key);
        assert_eq!(exchange(&mut conn, &mut srv, 5).unwrap(), b"hello");
        let mut plain = Vec::new();
        // The early plaintext reached the server once the handshake finished.
        let mut wire = Vec::new();
        conn.flush(&mut wire).unwrap();
        let mut r = &wire[..];
        while !r.is_empty() {
            srv.read_tls(&mut r).unwrap();
        }
        srv.process_new_packets().unwrap();
        let _ = srv.reader().read_to_end(&mut plain);
        assert_eq!(plain, b"CONNECT");
    }

    #[test]
    fn an_untrusted_issuer_is_named() {
        let trusted = Pki::new("Trusted CA");
        let other = Pki::new("Other CA");
        let (cert, key) = other.leaf(&["localhost"], false);
        let client = super::client(&settings(&trusted, "localhost"), "m.json", &no_files).unwrap();
        let e = exchange(
            &mut Conn::new(&client, 0).unwrap(),
            &mut server(&cert, &key),
            1,
        )
        .unwrap_err();
        assert!(e.contains("not trusted: issued by CN=Other CA"), "{e}");
    }

    #[test]
    fn a_name_mismatch_gives_both_names() {
        let pki = Pki::new("Test CA");
        let (cert, key) = pki.leaf(&["broker.example", "10.1.2.3"], false);
        let client = super::client(&settings(&pki, "localhost"), "m.json", &no_files).unwrap();
        let e = exchange(
            &mut Conn::new(&client, 0).unwrap(),
            &mut server(&cert, &key),
            1,
        )
        .unwrap_err();
        assert!(
            e.contains("is for broker.example, 10.1.2.3, not for localhost"),
            "{e}"
        );
    }

    #[test]
    fn an_expired_certificate_gives_the_date() {
        let pki = Pki::new("Test CA");
        let (cert, key) = pki.leaf(&["localhost"], true);
        let client = super::client(&settings(&pki, "localhost"), "m.json", &no_files).unwrap();
        let e = exchange(
            &mut Conn::new(&client, 0).unwrap(),
            &mut server(&cert, &key),
            1,
        )
        .unwrap_err();
        assert!(e.contains("expired on 2021-06-30"), "{e}");
    }

    #[test]
    fn plain_mqtt_bytes_are_not_tls() {
        let pki = Pki::new("Test CA");
        let client = super::client(&settings(&pki, "localhost"), "m.json", &no_files).unwrap();
        let mut conn = Conn::new(&client, 0).unwrap();
        let mut wire = Vec::new();
        conn.flush(&mut wire).unwrap();
        // A CONNACK where a ServerHello should be.
        let e = conn
            .read(&mut Wire(&[0x20, 0x02, 0x00, 0x00]), &mut [0u8; 16])
            .unwrap_err();
        assert!(e.to_string().contains("not TLS"), "{e}");
        // A broker that just closes during the handshake.
        let mut conn = Conn::new(&client, 0).unwrap();
        conn.flush(&mut Vec::new()).unwrap();
        let e = conn.read(&mut &[][..], &mut [0u8; 16]).unwrap_err();
        assert!(
            e.to_string().contains("use mqtt:// for a plain port"),
            "{e}"
        );
    }

    #[test]
    fn alerts_in_words() {
        assert_eq!(
            describe(
                &Error::AlertReceived(AlertDescription::CertificateRequired),
                false
            ),
            "the broker refused the TLS connection with the alert \"certificate required\" (the \
             broker may want a client certificate: tls_cert_file and tls_key_file)"
        );
        assert!(
            describe(&Error::AlertReceived(AlertDescription::UnknownCA), true)
                .contains("\"unknown CA\" (the broker rejected our client certificate)")
        );
    }

    #[test]
    fn bad_pem_is_a_config_error_naming_the_key() {
        let pki = Pki::new("Test CA");
        let mut s = settings(&pki, "localhost");
        s.ca = Some(Pem::File {
            key: "tls_ca_file",
            path: "/nonexistent/ca.pem".into(),
        });
        let e = super::client(&s, "m.json", &no_files).unwrap_err();
        assert_eq!((e.file.as_str(), e.key), ("m.json", Some("tls_ca_file")));
        assert!(
            e.message.contains("/nonexistent/ca.pem: cannot be read"),
            "{e}"
        );

        s.ca = Some(Pem::Inline {
            var: "MQTT_TLS_CA_PEM",
            text: "not a certificate".into(),
        });
        let e = super::client(&s, "m.json", &no_files).unwrap_err();
        assert_eq!(e.key, Some("MQTT_TLS_CA_PEM"));

        let (cert, _) = pki.leaf(&["client"], false);
        let secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n";
        s.ca = None;
        s.cert = Some(Pem::Inline {
            var: "MQTT_TLS_CERT_PEM",
            text: cert.pem(),
        });
        s.key = Some(Pem::Inline {
            var: "MQTT_TLS_KEY_PEM",
            text: secret.into(),
        });
        let e = super::client(&s, "m.json", &no_files).unwrap_err();
        assert_eq!(e.key, Some("MQTT_TLS_KEY_PEM"));
        let shown = format!("{e} {s:?}");
        assert!(!shown.contains("U0VDUkVU"), "the key never shows: {shown}");
    }

    #[test]
    fn files_are_read_with_a_bound() {
        // A huge file (sparse: nothing is written) gives its first bytes and one more, no more; a
        // device such as /dev/zero is no file at all.
        let dir = std::env::temp_dir().join(format!("bmct-tls-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let huge = dir.join("huge.pem");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let huge = huge.to_str().unwrap().to_owned();
        let bytes = read_file(&huge).unwrap();
        assert_eq!(bytes.len(), MAX_PEM_BYTES + 1);
        assert!(read_file("/dev/zero").is_err());
        let pki = Pki::new("Test CA");
        let mut s = settings(&pki, "localhost");
        s.ca = Some(Pem::File {
            key: "tls_ca_file",
            path: huge.clone(),
        });
        let e = super::client(&s, "m.json", &read_file).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!((e.file.as_str(), e.key), ("m.json", Some("tls_ca_file")));
        assert!(
            e.message.contains(&format!(
                "{huge}: is larger than 1024 KiB: not a PEM certificate or key"
            )),
            "{e}"
        );
        let mut pem = pki.ca.pem();
        pem += &"#".repeat(MAX_PEM_BYTES);
        s.ca = Some(Pem::Inline {
            var: "MQTT_TLS_CA_PEM",
            text: pem,
        });
        let e = super::client(&s, "m.json", &no_files).unwrap_err();
        assert_eq!(e.key, Some("MQTT_TLS_CA_PEM"));
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_the_key() {
        let pki = Pki::new("Test CA");
        let (cert, _) = pki.leaf(&["client"], false);
        let other = rcgen::KeyPair::generate().unwrap();
        let mut s = settings(&pki, "localhost");
        s.cert = Some(Pem::Inline {
            var: "MQTT_TLS_CERT_PEM",
            text: cert.pem(),
        });
        s.key = Some(Pem::Inline {
            var: "MQTT_TLS_KEY_PEM",
            text: other.serialize_pem(),
        });
        let e = super::client(&s, "m.json", &no_files).unwrap_err();
        assert_eq!(e.key, Some("MQTT_TLS_KEY_PEM"));
        assert!(
            e.message
                .contains("does not match the public key of the certificate (MQTT_TLS_CERT_PEM)"),
            "{e}"
        );
    }

    #[test]
    fn client_certificates_rsa_pkcs8_and_ec() {
        let pki = Pki::new("Test CA");
        for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_RSA_SHA256] {
            let key = match rcgen::KeyPair::generate_for(alg) {
                Ok(k) => k,
                // rcgen cannot make RSA keys with ring: made by openssl in tests/tls.rs instead.
                Err(_) => continue,
            };
            let cert = rcgen::CertificateParams::new(vec!["client".into()])
                .unwrap()
                .signed_by(&key, &pki.ca, &pki.ca_key)
                .unwrap();
            let mut s = settings(&pki, "localhost");
            s.cert = Some(Pem::Inline {
                var: "MQTT_TLS_CERT_PEM",
                text: cert.pem(),
            });
            s.key = Some(Pem::Inline {
                var: "MQTT_TLS_KEY_PEM",
                text: key.serialize_pem(),
            });
            assert!(super::client(&s, "m.json", &no_files).unwrap().has_cert);
        }
    }
}
