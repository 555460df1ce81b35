//! No password is ever printed. A password in `broker_url` (`tcp://alice:s3cret@host`), in the
//! `password` key or in MQTT_PASSWORD is looked for in every line the agent prints, stdout and stderr,
//! at debug level, across configs that work, configs the broker refuses and configs that are wrong.

mod common;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The broker's password: characters a URL must percent-encode, so both spellings are looked for.
const SECRET: &str = "Wh1sper:@/%Secret";
const SECRET_IN_URL: &str = "Wh1sper%3A%40%2F%25Secret";
/// A wrong password is a secret too (it may be the right one for another broker).
const WRONG: &str = "Wr0ngGuess";

/// A broker that wants user alice with SECRET; the directory holds its password file.
fn broker() -> (Broker, TempDir) {
    let dir = TempDir::new("secrets");
    let passwd = dir.path().join("passwd");
    let ok = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["alice", SECRET])
        .status()
        .expect("mosquitto_passwd is installed");
    assert!(ok.success());
    let broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}\n",
        passwd.display()
    ));
    (broker, dir)
}

fn subscriber(broker: &Broker) -> Subscriber {
    Subscriber::start_args(
        broker.port,
        &[
            "-u",
            "alice",
            "-P",
            SECRET,
            "-t",
            "root/#",
            "-t",
            "probe/ready",
        ],
    )
}

/// mqtt.config.json with this `broker_url` and `extra` keys.
fn mqtt(url: &str, extra: &str) -> String {
    format!(
        r#"{{"broker_url": "{url}", "device_id": "dev1", "once_timeout_in_seconds": 4,
            "reconnect_max_delay_in_seconds": 1{extra}}}"#
    )
}

/// `--once` in FILE mode at debug level (the harness sets LOG_LEVEL=debug): the exit code and
/// everything printed, stdout and stderr, which must hold no secret in any spelling.
fn run(mqtt: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let cfg = config_dir(&file_collector(&sample_stats(), 10), mqtt);
    let mut cmd = once(cfg.path());
    cmd.envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let text = out.join().unwrap() + &err.join().unwrap();
    assert!(text.contains("DEBUG "), "printed at debug level:\n{text}");
    for secret in [SECRET, SECRET_IN_URL, WRONG] {
        for (n, line) in text.lines().enumerate() {
            assert!(
                !line.contains(secret),
                "line {} prints a password: {line}",
                n + 1
            );
        }
    }
    assert!(!text.contains("panicked"), "{text}");
    (code, text)
}

#[test]
fn credentials_in_the_url_deliver_every_figure_and_are_never_printed() {
    let (broker, _dir) = broker();
    let sub = subscriber(&broker);
    let url = format!("tcp://alice:{SECRET_IN_URL}@127.0.0.1:{}", broker.port);
    let (code, log) = run(&mqtt(&url, ""), &[]);
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.collect(63, Duration::from_secs(5)), "dev1");
    assert!(log.contains("username \"alice\", password ***"), "{log}");
}

#[test]
fn the_password_key_and_variable_win_over_the_url() {
    let (broker, _dir) = broker();
    let url = format!("mqtt://alice:{WRONG}@127.0.0.1:{}/", broker.port);
    let sub = subscriber(&broker);
    let (code, log) = run(&mqtt(&url, ""), &[("MQTT_PASSWORD", SECRET)]);
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.collect(63, Duration::from_secs(5)), "dev1");

    let sub = subscriber(&broker);
    let key = format!(r#", "password": "{SECRET}""#);
    let (code, log) = run(&mqtt(&url, &key), &[]);
    assert_eq!(code, Some(0), "{log}");
    assert_sample_figures(&sub.collect(63, Duration::from_secs(5)), "dev1");
}

#[test]
fn a_wrong_password_is_refused_in_words_and_never_printed() {
    let (broker, _dir) = broker();
    let url = format!("tcp://alice:{WRONG}@127.0.0.1:{}", broker.port);
    let (code, log) = run(&mqtt(&url, ""), &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("bad user name or password") || log.contains("not authorised"),
        "{log}"
    );
}

#[test]
fn bad_configs_name_the_key_and_never_print_the_password() {
    let at = |rest: &str| format!("alice:{SECRET_IN_URL}@{rest}");
    let none = || Vec::<(&str, String)>::new();
    for (mqtt, env, key) in [
        // The URL is wrong in some other way: shown with its password masked.
        (
            mqtt(&format!("tcp://{}", at("127.0.0.1:99999")), ""),
            none(),
            "broker_url",
        ),
        (
            mqtt(&format!("http://{}", at("127.0.0.1")), ""),
            none(),
            "broker_url",
        ),
        (mqtt(&format!("tcp://{}", at("")), ""), none(), "broker_url"),
        (
            mqtt(&format!("tcp://alice:{SECRET_IN_URL}%zz@h"), ""),
            none(),
            "broker_url",
        ),
        // A password without a user name, in the URL.
        (
            mqtt(&format!("tcp://:{SECRET_IN_URL}@h"), ""),
            none(),
            "broker_url",
        ),
        // The password key of the wrong type.
        (
            mqtt(
                "tcp://h",
                &format!(r#", "username": "alice", "password": ["{WRONG}"]"#),
            ),
            none(),
            "password",
        ),
        // From the environment: no user name, or something else wrong next to the password.
        (
            mqtt("tcp://h", ""),
            vec![("MQTT_PASSWORD", SECRET.into())],
            "password",
        ),
        (
            mqtt("tcp://h", ""),
            vec![
                ("MQTT_BROKER_URL", format!("mqtts://{}", at("h"))),
                ("MQTT_TLS_CA_FILE", "/nonexistent/ca.pem".into()),
            ],
            "tls_ca_file",
        ),
        (
            mqtt(&format!("tcp://{}", at("h")), ""),
            vec![("MQTT_QOS", "2".into())],
            "qos",
        ),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, log) = run(&mqtt, &env);
        assert_eq!(code, Some(2), "{env:?}:\n{log}");
        assert!(log.contains(&format!("\"{key}\"")), "{key}:\n{log}");
    }
}
