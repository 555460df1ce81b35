//! Several broker addresses (issue 20): three real mosquittos, the agent given all of them. Killing the
//! one it is on moves it to the next within twice its keep-alive, every tick from then on reaches the
//! survivor (QoS 1, duplicates counted), discovery configs and `online` are retained there, and the
//! killed one coming back does not draw the agent back.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

const KEEP_ALIVE: u64 = 4;

#[test]
fn killing_the_agents_broker_moves_it_to_a_survivor_and_it_stays() {
    let mut brokers: Vec<Broker> = (0..3).map(|_| Broker::start()).collect();
    let subs: Vec<Subscriber> = brokers
        .iter()
        .map(|b| Subscriber::start(b.port, "root/#"))
        .collect();
    let urls: Vec<String> = brokers.iter().map(Broker::url).collect();
    let mqtt = format!(
        r#"{{"broker_url": {urls:?}, "device_id": "dev1", "qos": 1, "keep_alive_in_seconds": {KEEP_ALIVE},
            "home_assistant_discovery": true}}"#
    );
    let cfg = config_dir(&cli_collector(1), &mqtt);
    let agent = Running::spawn(agent(cfg.path()).env("FAKE_STATS", sample_stats()));
    assert!(
        agent.wait_log("INFO connected to broker", Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("brokers 127.0.0.1:"),
        "the start line lists them:\n{log}"
    );
    let first = log.lines().find_map(connected_port).unwrap();
    let on = brokers.iter().position(|b| b.port == first).unwrap();
    // Two ticks through it first.
    let metrics = |l: &[String]| l.iter().filter(|l| parse_metric(l).is_some()).count();
    assert!(
        subs[on].wait_for(|l| metrics(l) >= 2 * 63, Duration::from_secs(20)),
        "{}",
        agent.log()
    );

    let killed_at = now_ms();
    brokers[on].kill();
    let moved = agent.wait_for(
        |l| l.iter().any(|l| l.contains("(failover from 127.0.0.1:")),
        Duration::from_secs(2 * KEEP_ALIVE),
    );
    assert!(
        moved,
        "no failover within twice the keep-alive:\n{}",
        agent.log()
    );
    let line = agent
        .lines()
        .into_iter()
        .find(|l| l.contains("(failover from"))
        .unwrap();
    let now_on = brokers
        .iter()
        .position(|b| Some(b.port) == connected_port(&line))
        .unwrap();
    assert_ne!(now_on, on);
    assert!(
        agent
            .log()
            .contains(&format!("connection to broker 127.0.0.1:{first} lost")),
        "{}",
        agent.log()
    );
    // Three ticks through the survivor; then the killed node comes back, and three more.
    let base = metrics(&subs[now_on].lines());
    assert!(
        subs[now_on].wait_for(|l| metrics(l) >= base + 3 * 63, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    brokers[on].restart();
    let base = metrics(&subs[now_on].lines());
    assert!(
        subs[now_on].wait_for(|l| metrics(l) >= base + 3 * 63, Duration::from_secs(20)),
        "{}",
        agent.log()
    );
    // The new node holds (before the stop's `offline`) the discovery configs and `online`, retained.
    let retained = Subscriber::start_args(brokers[now_on].port, &["-t", "#"]);
    let lines = retained.received();
    assert!(
        lines.contains(&"root/dev1/telemetry/system/availability online".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("homeassistant/") && l.contains("/config ")),
        "{lines:?}"
    );
    let log = agent.stop();
    assert_eq!(
        log.matches("INFO connected to broker").count(),
        2,
        "it stays on the survivor:\n{log}"
    );

    // Every tick from the kill on reached the survivor whole: ticks a second apart, each with its 63
    // figures (at least once; duplicates counted).
    let mut per_tick: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
    for (topic, _, ts) in subs[now_on]
        .received()
        .iter()
        .filter_map(|l| parse_metric(l))
    {
        *per_tick.entry(ts).or_default().entry(topic).or_insert(0) += 1;
    }
    let after: Vec<(&u64, &BTreeMap<String, usize>)> =
        per_tick.range(killed_at.saturating_sub(1500)..).collect();
    // The first tick may have been delivered to the killed node before it died.
    let after: Vec<_> = after
        .into_iter()
        .skip_while(|(ts, _)| **ts < killed_at)
        .collect();
    let duplicates: usize = after
        .iter()
        .flat_map(|(_, t)| t.values())
        .map(|n| n - 1)
        .sum();
    eprintln!(
        "failover: {} ticks on the survivor since the kill, {duplicates} duplicates",
        after.len()
    );
    // Six waits of 63 figures since the kill, duplicates among them: four distinct ticks at least.
    assert!(after.len() >= 4, "{:?}", per_tick.keys());
    for (ts, topics) in &after {
        assert_eq!(topics.len(), 63, "tick {ts} incomplete:\n{log}");
    }
    for pair in after.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 < 1900,
            "a tick missing between {} and {}",
            pair[0].0,
            pair[1].0
        );
    }
}
