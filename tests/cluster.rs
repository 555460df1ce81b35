//! Several broker addresses on a real RabbitMQ cluster (issue 20): three nodes of Debian's
//! rabbitmq-server with its MQTT plugin, the agent given all three. After 30 s on one (a stable
//! connection, src/mqtt/reconnect.rs), that node is SIGKILLed: the agent publishes through a survivor
//! within twice its keep-alive, a subscriber on another node gets every tick (QoS 1, duplicates counted
//! and printed, not asserted away) and every discovery config again, the survivor holds the retained
//! `online` and configs (RabbitMQ keeps retained messages per node: the agent must have published them
//! there), and the killed node's return does not draw the agent back.

mod common;
use common::rabbitmq::Cluster;
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KEEP_ALIVE: u64 = 10;
/// Figures per tick of the fake CLI's sample.
const PER_TICK: usize = 63;

#[test]
fn killing_the_agents_rabbitmq_node_moves_it_to_a_survivor_and_it_stays() {
    if !Cluster::available() {
        return;
    }
    let t0 = Instant::now();
    let mut cluster = Cluster::new(3);
    eprintln!("cluster: 3 nodes up in {} s", cluster.start_seconds);
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let mqtt = format!(
        r#"{{"broker_url": {urls:?}, "device_id": "dev1", "qos": 1, "keep_alive_in_seconds": {KEEP_ALIVE},
            "home_assistant_discovery": true}}"#
    );
    let cfg = config_dir(&cli_collector(1), &mqtt);
    // Discovery configs go out at the connect: listened for on every node from before it, since
    // RabbitMQ sends no retained message to a wildcard subscription that comes later.
    let config_subs: Vec<Subscriber> = cluster
        .mqtt_ports
        .iter()
        .map(|&p| Subscriber::start_args(p, &["-t", "homeassistant/#", "-t", "probe/ready"]))
        .collect();
    let agent = Running::spawn(agent(cfg.path()).env("FAKE_STATS", sample_stats()));
    let (_, line) = agent
        .wait_line(Duration::from_secs(60), |l| {
            l.contains("INFO connected to broker")
        })
        .unwrap_or_else(|| panic!("never connected:\n{}", agent.log()));
    let first = connected_port(&line).unwrap();
    let on = cluster.mqtt_ports.iter().position(|p| *p == first).unwrap();
    // The subscriber on another node than the agent's, and than the next address, where the failover
    // goes: what it gets crossed the cluster before the kill and after it.
    let sub_node = (on + 2) % 3;
    let sub = Subscriber::start(cluster.mqtt_ports[sub_node], "root/#");
    let config_sub = &config_subs[sub_node];
    let metrics = |l: &[String]| l.iter().filter(|l| parse_metric(l).is_some()).count();
    let configs = |l: &[String]| -> Vec<String> {
        l.iter()
            .filter_map(|l| l.split_once(' ').map(|(t, _)| t))
            .filter(|t| t.starts_with("homeassistant/") && t.ends_with("/config"))
            .map(str::to_owned)
            .collect()
    };
    // 31 ticks heard after the connect: connected for more than 30 s, a stable connection.
    assert!(
        sub.wait_for(|l| metrics(l) >= 31 * PER_TICK, Duration::from_secs(180)),
        "{}",
        agent.log()
    );
    assert_eq!(
        agent.count("INFO connected to broker"),
        1,
        "{}",
        agent.log()
    );

    let before_kill = config_sub.lines().len();
    let mut announced = configs(&config_sub.lines());
    announced.sort();
    announced.dedup();
    assert!(!announced.is_empty(), "no discovery config heard");
    let killed_ms = now_ms();
    let killed_at = Instant::now();
    cluster.kill(on);
    let (moved_at, line) = agent
        .wait_line(Duration::from_secs(120), |l| {
            l.contains("(failover from 127.0.0.1:")
        })
        .unwrap_or_else(|| panic!("no failover:\n{}", agent.log()));
    let failover = moved_at.duration_since(killed_at);
    let now_port = connected_port(&line).unwrap();
    let now_on = cluster
        .mqtt_ports
        .iter()
        .position(|p| *p == now_port)
        .unwrap();
    assert_ne!(now_on, on);
    let retry = agent
        .lines()
        .into_iter()
        .find(|l| l.contains(&format!("connection to broker 127.0.0.1:{first} lost")))
        .unwrap_or_else(|| panic!("no lost line:\n{}", agent.log()));
    let retry_s = retry
        .split("retrying in ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .unwrap_or("?")
        .to_owned();
    // The first tick through the survivor reaching the subscriber.
    let base = metrics(&sub.lines());
    assert!(
        sub.wait_for(|l| metrics(l) > base, Duration::from_secs(60)),
        "{}",
        agent.log()
    );
    let first_message = killed_at.elapsed();
    eprintln!(
        "failover: killed node {on} (port {first}); failover line after {:.1} s (retry delay in the log {retry_s} s), \
         first message via node {now_on} at the subscriber (node {sub_node}) after {:.1} s",
        failover.as_secs_f64(),
        first_message.as_secs_f64()
    );
    assert!(
        first_message < Duration::from_secs(2 * KEEP_ALIVE),
        "the first message through a survivor came {first_message:?} after the kill, more than twice \
         the keep-alive:\n{}",
        agent.log()
    );
    // Every config announced before the kill is announced again through the survivor.
    assert!(
        config_sub.wait_for(
            |l| {
                let again = configs(&l[before_kill.min(l.len())..]);
                announced.iter().all(|c| again.contains(c))
            },
            Duration::from_secs(30)
        ),
        "discovery configs not all re-sent after the failover:\n{}",
        agent.log()
    );
    // The survivor holds `online` and the configs, retained (asked by exact topic: RabbitMQ 3.10 sends
    // retained messages only for subscriptions without wildcards).
    let availability = "root/dev1/telemetry/system/availability";
    let retained = Subscriber::start_args(
        now_port,
        &["-t", availability, "-t", &announced[0], "-t", "probe/ready"],
    );
    assert!(
        retained.wait_for(
            |l| l.iter().any(|l| l == &format!("{availability} online"))
                && l.iter()
                    .any(|l| l.starts_with(&format!("{} {{", announced[0]))),
            Duration::from_secs(10)
        ),
        "retained on node {now_on}: {:?}",
        retained.lines()
    );
    drop(retained);
    // Three ticks through the survivor; the killed node comes back; then five more: the positive marker
    // after which a move back would have shown.
    let base = metrics(&sub.lines());
    assert!(
        sub.wait_for(
            |l| metrics(l) >= base + 3 * PER_TICK,
            Duration::from_secs(60)
        ),
        "{}",
        agent.log()
    );
    let t_restart = Instant::now();
    cluster.restart(on);
    eprintln!(
        "restart: node {on} back in the cluster after {:.1} s",
        t_restart.elapsed().as_secs_f64()
    );
    let base = metrics(&sub.lines());
    assert!(
        sub.wait_for(
            |l| metrics(l) >= base + 5 * PER_TICK,
            Duration::from_secs(60)
        ),
        "{}",
        agent.log()
    );
    let lines = sub.received();
    let log = agent.stop();
    assert_eq!(
        log.matches("INFO connected to broker").count(),
        2,
        "it stays on the survivor:\n{log}"
    );

    // Every tick from the kill on reached the subscriber whole, at least once; duplicates counted.
    let mut per_tick: BTreeMap<u64, BTreeMap<String, usize>> = BTreeMap::new();
    for (topic, _, ts) in lines.iter().filter_map(|l| parse_metric(l)) {
        *per_tick.entry(ts).or_default().entry(topic).or_insert(0) += 1;
    }
    let after: Vec<(&u64, &BTreeMap<String, usize>)> =
        per_tick.range(killed_ms.saturating_sub(1500)..).collect();
    let duplicates: usize = per_tick
        .values()
        .flat_map(|t| t.values())
        .map(|n| n - 1)
        .sum();
    eprintln!(
        "delivery: {} ticks since the kill, {duplicates} duplicate messages in the whole run; test took {:.0} s",
        after.len(),
        t0.elapsed().as_secs_f64()
    );
    assert!(after.len() >= 8, "{:?}", per_tick.keys());
    // The newest tick may still have been crossing the cluster when the lines were taken.
    for (ts, topics) in &after[..after.len() - 1] {
        assert_eq!(topics.len(), PER_TICK, "tick {ts} incomplete:\n{log}");
    }
    for pair in after.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 < 1900,
            "a tick missing between {} and {}:\n{log}",
            pair[0].0,
            pair[1].0
        );
    }
}
