//! Files read at start are inputs like any other: a FIFO named as a config or PEM file, or a huge config
//! file, is a clear config error (exit 2) at once, never a hang or an unbounded read.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_fifo_as_the_config_file_is_refused_at_once() {
    let dir = TempDir::new("fifo-config");
    mkfifo(&dir.path().join("mqtt.config.json"));
    let (code, log) = run_limited(&mut once(dir.path()), Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("mqtt.config.json: cannot be read: is not a regular file"),
        "{log}"
    );
}

#[test]
fn a_config_file_over_a_mebibyte_is_refused() {
    let dir = TempDir::new("huge-config");
    let f = std::fs::File::create(dir.path().join("balena_stats_collector.config.json")).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse: nothing is written
    let (code, log) = run_limited(&mut once(dir.path()), Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("balena_stats_collector.config.json: is larger than 1024 KiB"),
        "{log}"
    );
}

#[test]
fn a_fifo_named_by_a_tls_key_is_refused_at_once() {
    let dir = TempDir::new("fifo-tls");
    let fifo = dir.path().join("ca.pem");
    mkfifo(&fifo);
    let cfg = config_dir(
        "{}",
        &format!(
            r#"{{"broker_url": "mqtts://127.0.0.1:1", "tls_ca_file": "{}"}}"#,
            fifo.display()
        ),
    );
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains("\"tls_ca_file\"") && log.contains("is not a regular file"),
        "{log}"
    );
}
