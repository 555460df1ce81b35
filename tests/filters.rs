//! Which containers are reported (issue 19), on the real Docker Engine through a real mosquitto: include
//! and exclude rules by label and by name in ENGINE mode, at a `--once` run and through the event stream
//! of a running agent, and balenaOS's default (the supervisor's containers) in ENGINE and CLI modes.
//!
//! The image is built `FROM scratch` with Debian's static busybox; every container and the image carry
//! this process's id in their names and are removed by a Drop guard, also when an assertion fails. Other
//! containers on the engine (other tests') are ignored: only our prefix's services are looked at. Without
//! a Docker Engine the tests say SKIPPED loudly and pass (under CI they fail).

mod common;
use common::engine::*;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

/// Our services that published anything under `root` (figures or lifecycle).
fn services(lines: &[String], root: &str, prefix: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(' ').map(|(t, _)| t))
        .filter_map(|t| t.strip_prefix(root))
        .filter_map(|rest| rest.split('/').next())
        .filter(|s| s.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// One `--once` run with these settings (and extra environment); every line our subscriber got under
/// `root/<device>/#` and `homeassistant/#`, the run's root topic, and its log.
fn once_with(
    collector: &str,
    mqtt_extra: &str,
    env: &[(&str, &str)],
) -> (Vec<String>, String, String) {
    let broker = Broker::start();
    let device = format!("filters{}", std::process::id());
    let sub = Subscriber::start_args(
        broker.port,
        &[
            "-t",
            &format!("root/{device}/#"),
            "-t",
            "homeassistant/#",
            "-t",
            "probe/ready",
        ],
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "{device}"{mqtt_extra}}}"#,
        broker.url()
    );
    let cfg = config_dir(collector, &mqtt);
    let mut cmd = once(cfg.path());
    cmd.envs(env.iter().copied());
    let (code, log) = run_limited(&mut cmd, Duration::from_secs(60));
    assert_eq!(code, Some(0), "agent --once failed:\n{log}");
    // Everything the run published was acknowledged before it exited 0: all of it is here after this.
    let lines = sub.received();
    (lines, format!("root/{device}/telemetry/system/"), log)
}

#[test]
fn engine_mode_reports_what_the_labels_and_names_let_through() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("flt");
    let label = format!("bmct.test={}", std::process::id());
    let wanted = f.run_prefixed("wanted", &["--label", &label], &["sleep", "3600"]);
    let plain = f.run_prefixed("plain", &[], &["sleep", "3600"]);
    let named_out = f.run_prefixed("named-out", &["--label", &label], &["sleep", "3600"]);
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}",
            "container_label_include": ["{label}"], "container_name_exclude": "*-out"}}"#
    );
    let (lines, root, log) = once_with(&collector, r#", "home_assistant_discovery": true"#, &[]);
    // The positive marker: the wanted container's figures and configs came, in the same run.
    let pids = format!("{root}{wanted}/pids ");
    assert!(
        lines.iter().any(|l| l.starts_with(&pids)),
        "{lines:#?}\n{log}"
    );
    let got = services(&lines, &root, &f.prefix);
    assert_eq!(got, BTreeSet::from([wanted.clone()]), "{lines:#?}");
    let configs: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("homeassistant/"))
        .collect();
    assert!(configs.iter().any(|l| l.contains(&wanted)), "{configs:#?}");
    for out in [&plain, &named_out] {
        assert!(
            !lines.iter().any(|l| l.contains(out.as_str())),
            "{out} published something: {lines:#?}"
        );
    }
    assert!(
        log.contains("containers: 1 include and 1 exclude patterns"),
        "{log}"
    );
}

#[test]
fn events_of_unwanted_containers_cost_no_inspect() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("fev");
    let broker = Broker::start();
    let device = format!("filterev{}", std::process::id());
    let sub = Subscriber::start(broker.port, &format!("root/{device}/#"));
    let collector = format!(
        r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}", "collection_interval_in_seconds": 3600,
            "container_name_include": "{}*", "container_name_exclude": "*-skip"}}"#,
        f.prefix
    );
    let mqtt = format!(
        r#"{{"broker_url": "{}", "device_id": "{device}"}}"#,
        broker.url()
    );
    let cfg = config_dir(&collector, &mqtt);
    let agent = Running::start(cfg.path());
    // The event stream is opened with the first collection, as in tests/lifecycle.rs.
    assert!(
        agent.wait_log("engine collection took", Duration::from_secs(30)),
        "no first collection:\n{}",
        agent.log()
    );
    // Started after the first tick: only the event stream tells of them, the unwanted one first.
    let skip = f.run_prefixed("late-skip", &[], &["sleep", "3600"]);
    let late = f.run_prefixed("late", &[], &["sleep", "3600"]);
    let short = |name: &str| docker(&["inspect", "-f", "{{.Id}}", name]).unwrap()[..12].to_owned();
    let (skip_id, late_id) = (short(&skip), short(&late));
    // The wanted one's start, inspected and published: the stream has passed the unwanted one's events.
    let state = format!("root/{device}/telemetry/system/{late}/state ");
    assert!(
        sub.wait_for(
            |l| l
                .iter()
                .any(|x| x.starts_with(&state) && x.contains("running")),
            Duration::from_secs(30)
        ),
        "{:#?}\n{}",
        sub.lines(),
        agent.log()
    );
    let log = agent.stop();
    assert!(
        log.contains(&format!("engine event: {late_id} start")),
        "{log}"
    );
    assert!(
        !log.contains(&skip_id),
        "the unwanted container was looked at:\n{log}"
    );
    assert!(
        !sub.received().iter().any(|l| l.contains(&skip)),
        "{:#?}",
        sub.lines()
    );
}

/// What the supervisor starts (its name form and label), a one-off container, and one run from a
/// balenalib-like image (its own `io.balena.*` labels, no service).
fn balena_like_containers(f: &mut Fixture) -> (String, String, String) {
    let service = f.service("svc");
    let label = format!("io.balena.service-name={service}");
    f.run(
        &format!("{service}_5412321_2764432_localrelease"),
        &["--label", &label, "--label", "io.balena.app-id=1"],
        &["sleep", "3600"],
    );
    let oneoff = f.run_prefixed("oneoff", &[], &["sleep", "3600"]);
    let lib = f.run_prefixed(
        "lib",
        &["--label", "io.balena.architecture=amd64"],
        &["sleep", "3600"],
    );
    (service, oneoff, lib)
}

#[test]
fn on_balena_the_default_is_the_supervisors_containers() {
    if !engine_available() {
        return;
    }
    let mut f = Fixture::new("fbal");
    let (service, oneoff, lib) = balena_like_containers(&mut f);
    let modes = [
        format!(r#"{{"mode": "ENGINE", "engine_socket": "{SOCKET}"}}"#),
        r#"{"mode": "CLI", "cli_path": "docker", "cli_timeout_in_seconds": 30}"#.to_owned(),
    ];
    for collector in &modes {
        let (lines, root, log) = once_with(collector, "", &[("BALENA", "1")]);
        let pids = format!("{root}{service}/pids ");
        assert!(
            lines.iter().any(|l| l.starts_with(&pids)),
            "{lines:#?}\n{log}"
        );
        assert_eq!(
            services(&lines, &root, &f.prefix),
            BTreeSet::from([service.clone()]),
            "{collector}: {lines:#?}"
        );
        for other in [&oneoff, &lib] {
            assert!(!lines.iter().any(|l| l.contains(other.as_str())), "{other}");
        }
        assert!(
            log.contains("(balenaOS default: what the supervisor runs)"),
            "{log}"
        );
    }
    // Not on balena: every one of them.
    let (lines, root, log) = once_with(&modes[0], "", &[]);
    assert_eq!(
        services(&lines, &root, &f.prefix),
        BTreeSet::from([service, oneoff, lib]),
        "{log}"
    );
    assert!(log.contains("containers: all"), "{log}");
}

#[test]
fn label_rules_where_there_are_no_labels_are_said_and_left_out() {
    let dir = TempDir::new("flab");
    let stats = dir.write(
        "stats.jsonl",
        concat!(
            r#"{"Name":"keep_1_2","CPUPerc":"1.00%","PIDs":"2"}"#,
            "\n",
            r#"{"Name":"drop-me","CPUPerc":"1.00%","PIDs":"2"}"#,
            "\n"
        ),
    );
    let collector = format!(
        r#"{{"mode": "FILE", "file_path": "{}", "container_label_include": "a=b",
            "container_name_exclude": "drop-*"}}"#,
        stats.display()
    );
    let (lines, root, log) = once_with(&collector, "", &[]);
    assert!(
        log.contains("container label patterns left out: only ENGINE mode knows labels"),
        "{log}"
    );
    // The label include is gone, so no include is left: everything but the excluded name.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{root}keep/pids "))),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("drop-me")), "{lines:#?}");
}

#[test]
fn a_bad_pattern_exits_2_naming_the_key() {
    let cfg = config_dir(r#"{"mode": "FILE"}"#, "{}");
    let mut cmd = once(cfg.path());
    cmd.env("STATS_CONTAINER_LABEL_EXCLUDE", "=x");
    let (code, log) = run_limited(&mut cmd, Duration::from_secs(20));
    assert_eq!(code, Some(2), "{log}");
    assert!(
        log.contains(
            r#"environment variable STATS_CONTAINER_LABEL_EXCLUDE: "container_label_exclude": "=x" is not a pattern"#
        ),
        "{log}"
    );
}
