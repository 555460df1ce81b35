//! MQTT over TLS against a real mosquitto TLS listener, with certificates made by the test at run time.
//!
//! Each broker has a TLS listener (the agent's) and a plain one on loopback for the test's subscriber,
//! so what was delivered is counted independently of the agent's TLS.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A TLS broker, its plain port, and the files the agent needs.
struct Setup {
    broker: Broker,
    plain_port: u16,
    files: TempDir,
    pki: Pki,
}

/// A broker whose TLS listener has a certificate for localhost and 127.0.0.1 from a fresh CA.
fn tls_broker(options: &str, expired: bool) -> Setup {
    let pki = Pki::new("Test Broker CA");
    let server = pki.issue(&["localhost", "127.0.0.1"], expired);
    let files = TempDir::new("tls");
    files.write("ca.pem", &pki.ca_pem);
    let plain_port = free_port();
    let broker = Broker::start_with(&tls_broker_config(
        &files,
        &server,
        &pki.ca_pem,
        options,
        plain_port,
    ));
    Setup {
        broker,
        plain_port,
        files,
        pki,
    }
}

impl Setup {
    fn ca_file(&self) -> String {
        self.files.path().join("ca.pem").display().to_string()
    }

    /// mqtt.config.json for `mqtts://127.0.0.1:<tls port>` plus `extra` keys.
    fn mqtt(&self, extra: &str) -> String {
        format!(
            r#"{{"broker_url": "mqtts://127.0.0.1:{}", "device_id": "dev1", "once_timeout_in_seconds": 4,
                "reconnect_max_delay_in_seconds": 1{extra}}}"#,
            self.broker.port
        )
    }

    /// A client certificate and key, written as files; returns the config keys naming them.
    fn client_files(&self, tag: &str) -> String {
        let (cert, key) = self.pki.issue(&["telemetry-client"], false);
        let c = self.files.write(&format!("{tag}-cert.pem"), &cert);
        let k = self.files.write(&format!("{tag}-key.pem"), &key);
        format!(
            r#", "tls_cert_file": "{}", "tls_key_file": "{}""#,
            c.display(),
            k.display()
        )
    }
}

/// `--once` in FILE mode on the sample; (exit code, log).
fn run_once(mqtt: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let cfg = config_dir(&file_collector(&sample_stats(), 10), mqtt);
    let mut cmd = once(cfg.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_limited(&mut cmd, Duration::from_secs(30))
}

/// Delivered over TLS: exit 0, every one of the sample's 63 figures arrived, the log says TLS.
fn assert_delivered(s: &Setup, sub: &Subscriber, code: Option<i32>, log: &str, version: &str) {
    assert_eq!(code, Some(0), "{log}");
    let lines = sub.collect(SAMPLE_EXPECTED.len(), Duration::from_secs(5));
    assert_sample_figures(&lines, "dev1");
    // The goodbye (DISCONNECT and close_notify) went out over TLS too; --once publishes no `offline`.
    let broker_log = std::fs::read_to_string(s.broker.dir().join("broker.log")).unwrap();
    // mosquitto says "disconnected." only for a DISCONNECT packet (not for a dropped connection).
    assert!(
        broker_log.contains("Client balena-telemetry-dev1 disconnected."),
        "{broker_log}"
    );
    assert!(
        log.contains(&format!(
            "connected to broker 127.0.0.1:{} over {version}",
            s.broker.port
        )),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Refused: `--once` gives up with exit 1, the reason is in the log in words, and it was retried.
fn assert_refused(code: Option<i32>, log: &str, words: &str) {
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(words), "expected {words:?} in:\n{log}");
    assert!(
        log.matches("retrying in").count() >= 2,
        "retried with backoff:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn server_authentication_only_delivers_every_figure() {
    let s = tls_broker("", false);
    let sub = Subscriber::start(s.plain_port, "root/#");
    let (code, log) = run_once(
        &s.mqtt(&format!(r#", "tls_ca_file": "{}""#, s.ca_file())),
        &[],
    );
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");
    assert!(log.contains("broker 127.0.0.1:"), "{log}");
}

#[test]
fn required_client_certificate_ec_and_rsa_delivers_every_figure() {
    let s = tls_broker("require_certificate true", false);
    let sub = Subscriber::start(s.plain_port, "root/#");
    let ca = format!(r#", "tls_ca_file": "{}""#, s.ca_file());
    let (code, log) = run_once(&s.mqtt(&format!("{ca}{}", s.client_files("ec"))), &[]);
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");

    // An RSA key in PKCS#8, made by openssl (rcgen cannot make RSA keys with ring).
    let key_path = s.files.path().join("rsa-key.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key_path)
        .stderr(Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        return skipped("openssl is missing (apt-get install openssl)");
    }
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let cert = s.files.write(
        "rsa-cert.pem",
        &s.pki.issue_for(&["telemetry-client"], &key, false),
    );
    let sub = Subscriber::start(s.plain_port, "root/#");
    let (code, log) = run_once(
        &s.mqtt(&format!(
            r#"{ca}, "tls_cert_file": "{}", "tls_key_file": "{}""#,
            cert.display(),
            key_path.display()
        )),
        &[],
    );
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");

    // The same key in PKCS#1 form (`BEGIN RSA PRIVATE KEY`), as some cloud consoles hand them out.
    let pkcs1 = s.files.path().join("rsa-key-pkcs1.pem");
    let converted = Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&key_path)
        .arg("-out")
        .arg(&pkcs1)
        .stderr(Stdio::null())
        .status();
    assert!(converted.is_ok_and(|s| s.success()));
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let sub = Subscriber::start(s.plain_port, "root/#");
    let (code, log) = run_once(
        &s.mqtt(&format!(
            r#"{ca}, "tls_cert_file": "{}", "tls_key_file": "{}""#,
            cert.display(),
            pkcs1.display()
        )),
        &[],
    );
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");
}

/// `openssl <args>` (split at white space) in `dir`; false when it fails or is missing.
fn openssl(dir: &Path, args: &str) -> bool {
    Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_v1_client_certificate_made_as_mosquittos_guide_makes_it_delivers_every_figure() {
    // The client side as mosquitto's TLS guide makes it (keys without a passphrase): its own CA, a
    // request, and `openssl x509 -req` without extensions, which OpenSSL 3 makes an X.509 v1 certificate.
    let files = TempDir::new("tls-v1");
    let dir = files.path();
    let guide_ca = "req -new -x509 -days 2 -extensions v3_ca -nodes -subj /CN=Guide-CA \
                    -keyout ca.key -out ca.crt";
    if !openssl(dir, guide_ca) {
        return skipped("openssl is missing (apt-get install openssl)");
    }
    assert!(openssl(
        dir,
        "req -new -newkey rsa:2048 -nodes -subj /CN=telemetry-client -keyout client.key -out client.csr"
    ));
    assert!(openssl(
        dir,
        "x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2"
    ));
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", "client.crt"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("Version: 1 (0x0)"),
        "openssl made a v1 certificate"
    );

    // The broker checks client certificates against the guide's CA; its own is the test PKI's.
    let pki = Pki::new("Test Broker CA");
    let server = pki.issue(&["localhost", "127.0.0.1"], false);
    let guide_ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let plain_port = free_port();
    let broker = Broker::start_with(&tls_broker_config(
        &files,
        &server,
        &guide_ca_pem,
        "require_certificate true",
        plain_port,
    ));
    files.write("ca.pem", &pki.ca_pem);
    let s = Setup {
        broker,
        plain_port,
        files,
        pki,
    };
    let dir = s.files.path();
    let keys = |key: &str| {
        s.mqtt(&format!(
            r#", "tls_ca_file": "{}", "tls_cert_file": "{}", "tls_key_file": "{}""#,
            s.ca_file(),
            dir.join("client.crt").display(),
            dir.join(key).display()
        ))
    };
    let sub = Subscriber::start(s.plain_port, "root/#");
    let (code, log) = run_once(&keys("client.key"), &[]);
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");

    // A key that is not the certificate's is still refused at start, naming the key: exit 2.
    assert!(openssl(dir, "genpkey -algorithm RSA -out other.key"));
    let (code, log) = run_once(&keys("other.key"), &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("\"tls_key_file\"")
            && log.contains("does not match the public key of the certificate (tls_cert_file)"),
        "{log}"
    );
}

#[test]
fn required_client_certificate_missing_is_refused_in_words() {
    let s = tls_broker("require_certificate true", false);
    let (code, log) = run_once(
        &s.mqtt(&format!(r#", "tls_ca_file": "{}""#, s.ca_file())),
        &[],
    );
    assert_refused(
        code,
        &log,
        "the broker refused the TLS connection with the alert \"certificate required\" (the broker \
         may want a client certificate: tls_cert_file and tls_key_file)",
    );
}

#[test]
fn an_untrusted_ca_is_named() {
    let s = tls_broker("", false);
    let other = TempDir::new("other-ca");
    let other_ca = other.write("ca.pem", &Pki::new("Somebody Else's CA").ca_pem);
    let (code, log) = run_once(
        &s.mqtt(&format!(r#", "tls_ca_file": "{}""#, other_ca.display())),
        &[],
    );
    assert_refused(
        code,
        &log,
        "the broker's certificate is not trusted: issued by CN=Test Broker CA",
    );
    // Without tls_ca_file the built-in public roots do not trust a private CA either.
    let (code, log) = run_once(&s.mqtt(""), &[]);
    assert_refused(code, &log, "issued by CN=Test Broker CA");
}

#[test]
fn a_wrong_host_name_gives_both_names() {
    let s = tls_broker("", false);
    let (code, log) = run_once(
        &s.mqtt(&format!(
            r#", "tls_ca_file": "{}", "tls_server_name": "broker.example""#,
            s.ca_file()
        )),
        &[],
    );
    assert_refused(
        code,
        &log,
        "the broker's certificate is for localhost, 127.0.0.1, not for broker.example",
    );
}

#[test]
fn an_expired_server_certificate_gives_the_date() {
    let s = tls_broker("", true);
    let (code, log) = run_once(
        &s.mqtt(&format!(r#", "tls_ca_file": "{}""#, s.ca_file())),
        &[],
    );
    assert_refused(
        code,
        &log,
        "the broker's certificate expired on 2021-06-30 00:00:00 UTC",
    );
}

#[test]
fn a_listener_limited_to_tls_1_2_delivers_every_figure() {
    // mosquitto 2's `tls_version` is only a minimum: OpenSSL's own configuration caps the listener.
    let mut s = tls_broker("tls_version tlsv1.2\nrequire_certificate true", false);
    let conf = s.files.write(
        "openssl-tls12.cnf",
        "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = sys\n\
         [sys]\nMaxProtocol = TLSv1.2\n",
    );
    s.broker.env = vec![("OPENSSL_CONF".into(), conf.display().to_string())];
    s.broker.restart();
    let sub = Subscriber::start(s.plain_port, "root/#");
    let (code, log) = run_once(
        &s.mqtt(&format!(
            r#", "tls_ca_file": "{}"{}"#,
            s.ca_file(),
            s.client_files("c")
        )),
        &[],
    );
    assert_delivered(&s, &sub, code, &log, "TLS 1.2");
}

#[test]
fn pem_inline_from_the_environment_with_escaped_newlines() {
    let s = tls_broker("require_certificate true", false);
    let sub = Subscriber::start(s.plain_port, "root/#");
    let (cert, key) = s.pki.issue(&["telemetry-client"], false);
    // The CA and key as balena's one-line variables (`\n` escapes), the certificate with real newlines.
    let escaped = |t: &str| t.replace('\n', "\\n");
    let (code, log) = run_once(
        &s.mqtt(r#", "tls_ca_file": "/nonexistent/overridden.pem""#),
        &[
            ("MQTT_TLS_CA_PEM", &escaped(&s.pki.ca_pem)),
            ("MQTT_TLS_CERT_PEM", &cert),
            ("MQTT_TLS_KEY_PEM", &escaped(&key)),
        ],
    );
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");
    let body = key.lines().nth(1).unwrap();
    assert!(!log.contains(body), "the key never appears in the log");

    // An invalid key in the environment is a config error naming the variable: exit 2.
    let (code, log) = run_once(
        &s.mqtt(""),
        &[
            ("MQTT_TLS_CERT_PEM", &cert),
            (
                "MQTT_TLS_KEY_PEM",
                "-----BEGIN PRIVATE KEY-----\\nbm90IGEga2V5\\n-----END PRIVATE KEY-----",
            ),
        ],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("ERROR config: environment: \"MQTT_TLS_KEY_PEM\": is not usable"),
        "{log}"
    );
    assert!(!log.contains("bm90IGEga2V5"), "{log}");
}

#[test]
fn an_unreadable_or_invalid_pem_file_is_a_config_error_naming_the_key() {
    let s = tls_broker("", false);
    let (code, log) = run_once(&s.mqtt(r#", "tls_ca_file": "/nonexistent/ca.pem""#), &[]);
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("mqtt.config.json: \"tls_ca_file\": /nonexistent/ca.pem: cannot be read"),
        "{log}"
    );
    let junk = s.files.write("junk.pem", "hello\n");
    let (code, log) = run_once(
        &s.mqtt(&format!(r#", "tls_ca_file": "{}""#, junk.display())),
        &[],
    );
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("\"tls_ca_file\"") && log.contains("holds no certificate"),
        "{log}"
    );
}

#[test]
fn a_huge_file_named_by_a_tls_key_is_a_config_error_naming_the_key() {
    let s = tls_broker("", false);
    // 64 MiB that take no disk (a sparse file): only the first MiB and a byte are ever read.
    let huge = s.files.path().join("huge.pem");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let (cert, key) = s.pki.issue(&["telemetry-client"], false);
    let cert = s.files.write("c-cert.pem", &cert);
    let key = s.files.write("c-key.pem", &key);
    let ca = s.ca_file();
    let pair = |c: &Path, k: &Path| {
        format!(
            r#", "tls_ca_file": "{ca}", "tls_cert_file": "{}", "tls_key_file": "{}""#,
            c.display(),
            k.display()
        )
    };
    for (name, keys) in [
        (
            "tls_ca_file",
            format!(r#", "tls_ca_file": "{}""#, huge.display()),
        ),
        ("tls_cert_file", pair(&huge, &key)),
        ("tls_key_file", pair(&cert, &huge)),
    ] {
        let (code, log) = run_once(&s.mqtt(&keys), &[]);
        assert_eq!(code, Some(2), "{name}:\n{log}");
        assert!(
            log.contains(&format!(
                "\"{name}\": {}: is larger than 1024 KiB",
                huge.display()
            )),
            "{name}:\n{log}"
        );
    }
}

#[test]
fn a_plain_port_given_mqtts_and_a_tls_port_given_mqtt_say_so() {
    let s = tls_broker("", false);
    let ca = format!(r#", "tls_ca_file": "{}""#, s.ca_file());
    let mqtts_to_plain = format!(
        r#"{{"broker_url": "mqtts://127.0.0.1:{}", "device_id": "dev1", "once_timeout_in_seconds": 4,
            "reconnect_max_delay_in_seconds": 1{ca}}}"#,
        s.plain_port
    );
    let (code, log) = run_once(&mqtts_to_plain, &[]);
    assert_refused(code, &log, "use mqtt:// for a plain port");
    let mqtt_to_tls = format!(
        r#"{{"broker_url": "mqtt://127.0.0.1:{}", "device_id": "dev1", "once_timeout_in_seconds": 4,
            "reconnect_max_delay_in_seconds": 1}}"#,
        s.broker.port
    );
    let (code, log) = run_once(&mqtt_to_tls, &[]);
    assert_refused(code, &log, "use mqtts://");
}

#[test]
fn a_broker_restart_over_tls_loses_nothing_at_qos1() {
    let mut s = tls_broker(
        "persistence true\npersistence_location {dir}/\nmax_queued_messages 100000",
        false,
    );
    let subscribe = |port| {
        Subscriber::start_args(
            port,
            &[
                "-c",
                "-i",
                "tls-counter",
                "-t",
                "root/#",
                "-t",
                "probe/ready",
            ],
        )
    };
    // The subscriber stays throughout: mosquitto_sub reconnects to the restarted broker, and its
    // persistent session keeps what was published while it was away.
    let sub = subscribe(s.plain_port);
    // CLI mode with the recorded-output stand-in: each tick carries its own collection time.
    let collector = format!(
        r#"{{"mode": "CLI", "cli_path": "{}", "collection_interval_in_seconds": 1}}"#,
        repo().join("tests/data/fake-balena.sh").display()
    );
    let cfg = config_dir(
        &collector,
        &s.mqtt(&format!(r#", "qos": 1, "tls_ca_file": "{}""#, s.ca_file())),
    );
    let agent = Running::spawn(agent(cfg.path()).env("FAKE_STATS", sample_stats()));
    let ticks = |lines: &[String]| {
        let mut t = std::collections::BTreeMap::<u64, std::collections::BTreeSet<String>>::new();
        for (topic, _, ts) in lines.iter().filter_map(|l| parse_metric(l)) {
            t.entry(ts).or_default().insert(topic);
        }
        t
    };
    let tick = "INFO tick: 8 containers, 63 messages";
    assert!(sub.wait_for(|l| ticks(l).len() >= 2, Duration::from_secs(15)));
    s.broker.stop();
    assert!(
        agent.wait_log("connection to broker lost", Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    // Two ticks during the outage.
    let before = agent.count(tick);
    assert!(
        agent.wait_count(tick, before + 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    s.broker.restart();
    assert!(
        agent.wait_count(" over TLS 1.3", 2, Duration::from_secs(30)),
        "reconnected over TLS:\n{}",
        agent.log()
    );
    // A tick collected after the reconnection: ticks are delivered in order, so the earlier ones have
    // arrived by then (unless lost, which the checks below report).
    let logged = agent.count(tick);
    sub.wait_for(|l| ticks(l).len() > logged, Duration::from_secs(30));
    let log = agent.stop();
    let lines = sub.received();
    assert!(log.contains("connection to broker lost"), "{log}");
    assert!(
        log.matches(" over TLS 1.3").count() >= 2,
        "reconnected over TLS:\n{log}"
    );
    let logged = log.matches(tick).count();
    let got = ticks(&lines);
    for (ts, topics) in &got {
        assert_eq!(topics.len(), 63, "tick {ts} arrived whole:\n{log}");
    }
    assert!(logged >= 5, "ticks ran across the outage: {logged}");
    assert_eq!(got.len(), logged, "every tick arrived:\n{log}");
}

/// The static aarch64 device build (`make dist`) under qemu against the TLS listener, with a client
/// certificate: every figure delivered.
#[test]
fn aarch64_static_binary_under_qemu_over_tls() {
    let bin = repo().join("dist/arm64/balena-multi-container-telemetry");
    if !bin.is_file() {
        return skipped(&format!(
            "{} not built (run `make dist`; `make test` does)",
            bin.display()
        ));
    }
    let qemu = "qemu-aarch64-static";
    if !have_program(qemu, &["--version"], "apt-get install qemu-user-static") {
        return;
    }
    let s = tls_broker("require_certificate true", false);
    let sub = Subscriber::start(s.plain_port, "root/#");
    let mqtt = s
        .mqtt(&format!(
            r#", "tls_ca_file": "{}"{}"#,
            s.ca_file(),
            s.client_files("qemu")
        ))
        .replace(
            r#""once_timeout_in_seconds": 4"#,
            r#""once_timeout_in_seconds": 30"#,
        );
    let cfg = config_dir(&file_collector(&sample_stats(), 10), &mqtt);
    let mut cmd = Command::new(qemu);
    cmd.arg(&bin)
        .arg("--once")
        .arg("--config-dir")
        .arg(cfg.path())
        .env_remove("BALENA_DEVICE_UUID")
        .env("LOG_LEVEL", "debug");
    let (code, log) = run_limited(&mut cmd, Duration::from_secs(120));
    assert_delivered(&s, &sub, code, &log, "TLS 1.3");
    let _ = Path::new(&bin);
}
