//! The broker's name is resolved on a thread of its own, off the loop (issue 11): a name reaches the
//! broker, and a name that does not resolve is a retried warning while ticks and stops go on as usual.

mod common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn a_broker_named_by_host_name_is_reached() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        &format!(
            r#"{{"broker_url": "tcp://localhost:{}", "device_id": "dev1"}}"#,
            broker.port
        ),
    );
    let (code, log) = run_limited(&mut once(cfg.path()), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{log}");
    sub.sync(broker.port);
    assert_sample_figures(&sub.lines(), "dev1");
}

#[test]
fn a_name_that_does_not_resolve_leaves_the_loop_running() {
    let cfg = config_dir(
        &file_collector(&sample_stats(), 1),
        r#"{"broker_url": "tcp://no-such-broker.invalid:1883", "device_id": "dev1"}"#,
    );
    let agent = Running::start(cfg.path());
    // Ticks go on while the name fails (FILE mode publishes a file once per version: the later ticks
    // find it unchanged).
    assert!(
        agent.wait_log(
            "broker no-such-broker.invalid:1883 unreachable",
            Duration::from_secs(30)
        ),
        "{}",
        agent.log()
    );
    assert!(
        agent.wait_count("unchanged since the last tick", 2, Duration::from_secs(30)),
        "{}",
        agent.log()
    );
    let t = Instant::now();
    let log = agent.stop();
    assert!(t.elapsed() < Duration::from_secs(2), "{log}");
    assert!(log.contains("unchanged since the last tick"), "{log}");
    assert!(
        log.contains("broker no-such-broker.invalid:1883 unreachable"),
        "{log}"
    );
}
