//! The deployment as pasted (issue 14): the README's compose file brought up with `docker-compose` on the
//! real engine, with a locally built FROM scratch image, the engine socket bind-mounted where balena's
//! `io.balena.features.balena-socket` label puts it, and the figures arriving at a real mosquitto; and
//! balena's Dockerfile.template picking the right binary for each balena architecture.
//!
//! Names carry this process's id: other people run engine tests on the same engine at the same time.
//! Everything the tests create is removed however they end. No engine, no docker-compose or no dist/
//! binaries is a loud SKIPPED line (under CI, a failure).

mod common;
use common::engine::engine_available;
use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds `dockerfile` (relative to the repository, or absolute) with the classic builder and no cache,
/// so every image it makes is its own. Returns the ids of those images: the classic builder keeps the
/// unused stages of a multi-stage file as untagged images, which removing the tag leaves behind.
fn build_image(dockerfile: &Path, tag: &str, build_args: &[&str]) -> Vec<String> {
    let root = repo().display().to_string();
    let file = dockerfile.display().to_string();
    let mut args = vec!["build", "--no-cache", "--force-rm", "-f", &file, "-t", tag];
    for a in build_args {
        args.extend(["--build-arg", a]);
    }
    args.push(&root);
    let out = Command::new("docker")
        .args(&args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker build {file} failed: {log}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("---> "))
        .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect()
}

/// Removes what a test made, in reverse order of making, however the test ends.
#[derive(Default)]
struct Cleanup(Vec<Vec<String>>);

impl Cleanup {
    fn then(&mut self, program: &str, args: &[&str]) {
        let mut cmd = vec![program.to_owned()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        self.0.push(cmd);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cmd in self.0.iter().rev() {
            let _ = Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn readme_compose_file_runs_engine_mode_on_the_real_engine() {
    let compose_file = repo().join("docker-compose.yaml");
    let compose_text = std::fs::read_to_string(&compose_file).unwrap();
    // The file the test runs is the README's example, verbatim.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{compose_text}```")),
        "README.md must show docker-compose.yaml verbatim in a ```yaml block"
    );

    if !engine_available()
        || !have_program(
            "docker-compose",
            &["version"],
            "apt-get install docker-compose",
        )
    {
        return;
    }
    let socket = "/var/run/docker.sock";
    if !Path::new(socket).exists() {
        skipped("no engine socket at /var/run/docker.sock to hand to the agent");
        return;
    }
    if !repo()
        .join("dist/amd64/balena-multi-container-telemetry")
        .is_file()
    {
        skipped("dist/amd64 not built (run `make dist`; `make test` does)");
        return;
    }

    let pid = std::process::id();
    let image = format!("bmct-compose-test:{pid}");
    let project = format!("bmctcompose{pid}");
    let device = format!("compose{pid}");
    // Before the cleanup, so that it outlives it: `docker-compose down` reads the override file.
    let dir = TempDir::new("compose");
    let mut cleanup = Cleanup::default();
    let layers = build_image(Path::new("Dockerfile"), &image, &["TARGETARCH=amd64"]);
    for id in layers.iter().rev() {
        cleanup.then("docker", &["rmi", id]);
    }
    cleanup.then("docker", &["rmi", "-f", &image]);

    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    // What differs on this machine, as an override file: the image built above instead of `build: .`,
    // the socket where the balena label mounts it plus the DOCKER_HOST it sets, the device UUID balena
    // sets, the label balena's supervisor gives every service's container (the agent's default filter
    // on balenaOS reports those), the host's network to reach the test broker on loopback, and the
    // broker as a variable.
    let override_file = dir.write(
        "override.yml",
        &format!(
            r#"version: "2.4"
services:
  telemetry:
    image: {image}
    network_mode: host
    labels:
      io.balena.service-name: telemetry
    volumes:
      - {socket}:/host/run/balena-engine.sock
    environment:
      DOCKER_HOST: unix:///host/run/balena-engine.sock
      BALENA: "1"
      BALENA_DEVICE_UUID: {device}
      MQTT_BROKER_URL: {url}
      STATS_COLLECTION_INTERVAL_IN_SECONDS: "2"
"#,
            url = broker.url()
        ),
    );
    let base = compose_file.display().to_string();
    let over = override_file.display().to_string();
    let compose = |args: &[&str]| {
        let mut all = vec!["-p", project.as_str(), "-f", &base, "-f", &over];
        all.extend(args);
        run("docker-compose", &all)
    };
    // Registered before `up`, so a failed start is cleaned up too (down runs before the rmi above).
    {
        let mut down: Vec<&str> = vec!["-p", &project, "-f", &base, "-f", &over];
        // -v: the fleet file's named volume (the spool) too.
        down.extend(["down", "-v", "--remove-orphans", "-t", "10"]);
        cleanup.then("docker-compose", &down);
    }
    let up = compose(&["up", "-d", "--no-build"]);
    assert!(
        up.status.success(),
        "docker-compose up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let container = format!("{project}_telemetry_1");
    let logs = || {
        let out = run("docker", &["logs", &container]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // The agent measures the containers on this engine; among them is its own container, named by its
    // compose service (no balena service label here), not by its container name `{project}_telemetry_1`.
    let prefix = format!("root/{device}/telemetry/system/telemetry/");
    let wanted = [
        "cpu_usage_in_percent",
        "memory_usage_in_bytes",
        "memory_usage_in_percent",
        "pids",
    ];
    let arrived = sub.wait_for(
        |lines| {
            wanted.iter().all(|m| {
                lines
                    .iter()
                    .any(|l| l.starts_with(&format!("{prefix}{m} ")))
            })
        },
        Duration::from_secs(60),
    );
    assert!(
        arrived,
        "figures for {container} did not arrive: {:?}\n{}",
        sub.lines(),
        logs()
    );
    let log = logs();
    assert!(
        log.contains("INFO balena-multi-container-telemetry") && log.contains("ENGINE mode, every"),
        "the image's default is ENGINE mode: {log}"
    );
    assert!(
        log.contains(", report on_change ("),
        "the image reports by exception: {log}"
    );
    let pids = sub
        .lines()
        .iter()
        .filter_map(|l| parse_metric(l))
        .find(|(t, _, _)| *t == format!("{prefix}pids"))
        .map(|(_, v, _)| v)
        .unwrap();
    assert!(
        pids >= 1.0,
        "the agent's own container runs at least it: {pids}"
    );
    assert!(
        sub.lines().contains(&format!(
            "root/{device}/telemetry/system/availability online"
        )),
        "{:?}",
        sub.lines()
    );

    // docker-compose stop: SIGTERM to the agent, which says goodbye and exits 0.
    let stop = compose(&["stop", "-t", "10"]);
    assert!(stop.status.success(), "{stop:?}");
    assert_eq!(
        run_ok(
            "docker",
            &["inspect", "-f", "{{.State.ExitCode}}", &container]
        ),
        "0",
        "{}",
        logs()
    );
    assert!(
        sub.wait_for(
            |l| l.contains(&format!(
                "root/{device}/telemetry/system/availability offline"
            )),
            Duration::from_secs(5)
        ),
        "{:?}",
        sub.lines()
    );
}

#[test]
fn balena_dockerfile_template_copies_the_binary_for_each_balena_arch() {
    if !engine_available() {
        return;
    }
    // balena's architecture names and the dist/ binary each must get.
    let arches = [
        ("aarch64", "arm64"),
        ("armv7hf", "arm/v7"),
        ("rpi", "arm/v6"),
        ("amd64", "amd64"),
    ];
    let bin = |dir: &str| {
        repo()
            .join("dist")
            .join(dir)
            .join("balena-multi-container-telemetry")
    };
    if let Some((_, dir)) = arches.iter().find(|(_, d)| !bin(d).is_file()) {
        skipped(&format!(
            "dist/{dir} not built (run `make dist`; `make test` does)"
        ));
        return;
    }
    let template = std::fs::read_to_string(repo().join("Dockerfile.template")).unwrap();
    let pid = std::process::id();
    let dir = TempDir::new("template"); // outlives each iteration's cleanup
    for (balena_arch, dist_dir) in arches {
        // What balena's builder does with the template, then a build needing no base image.
        let dockerfile = dir.write(
            &format!("Dockerfile.{balena_arch}"),
            &template.replace("%%BALENA_ARCH%%", balena_arch),
        );
        let image = format!("bmct-template-test:{pid}-{balena_arch}");
        let container = format!("bmct-template-test-{pid}-{balena_arch}");
        let mut cleanup = Cleanup::default();
        // Each stage's image, after the tag (cleanup runs in reverse); the selected stage's image goes
        // with the tag already.
        for id in build_image(&dockerfile, &image, &[]).iter().rev() {
            cleanup.then("docker", &["rmi", id]);
        }
        cleanup.then("docker", &["rmi", "-f", &image]);
        cleanup.then("docker", &["rm", "-f", &container]);
        run_ok("docker", &["create", "--name", &container, &image]);
        let copied = dir.path().join(format!("copied-{balena_arch}"));
        run_ok(
            "docker",
            &[
                "cp",
                &format!("{container}:/balena-multi-container-telemetry"),
                &copied.display().to_string(),
            ],
        );
        assert!(
            std::fs::read(&copied).unwrap() == std::fs::read(bin(dist_dir)).unwrap(),
            "{balena_arch}: the image holds dist/{dist_dir}'s binary"
        );
        assert_eq!(
            run_ok(
                "docker",
                &[
                    "image",
                    "inspect",
                    "-f",
                    "{{.Config.User}} {{json .Config.Entrypoint}}",
                    &image
                ]
            ),
            r#"65534:65534 ["/balena-multi-container-telemetry"]"#
        );
    }
}

/// The plain-Docker compose file, brought up as its header says: `docker-compose -f
/// docker-compose.local.yaml up --build`, with the classic builder (no TARGETARCH: the binary comes from
/// dist/host/) and only MQTT_BROKER_URL set. Figures come from the kernel through the mounted /proc and
/// cgroup tree, services are named by their compose service, and the device id is the host name.
#[test]
fn local_compose_file_runs_on_a_plain_docker_host() {
    let compose_file = repo().join("docker-compose.local.yaml");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let compose_text = std::fs::read_to_string(&compose_file).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{compose_text}```")),
        "README.md must show docker-compose.local.yaml verbatim in a ```yaml block"
    );
    if !engine_available()
        || !have_program(
            "docker-compose",
            &["version"],
            "apt-get install docker-compose",
        )
    {
        return;
    }
    if !repo()
        .join("dist/host/balena-multi-container-telemetry")
        .is_file()
    {
        skipped("dist/host not built (run `make host`; `make test` does)");
        return;
    }
    let pid = std::process::id();
    let project = format!("bmctlocal{pid}");
    let file = compose_file.display().to_string();
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let compose = |args: &[&str]| {
        let mut all = vec!["-p", project.as_str(), "-f", &file];
        all.extend(args);
        Command::new("docker-compose")
            .args(&all)
            .env("MQTT_BROKER_URL", broker.url())
            // The classic builder, as docker-compose uses it by default: no TARGETARCH.
            .env_remove("DOCKER_BUILDKIT")
            .env_remove("COMPOSE_DOCKER_CLI_BUILD")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut cleanup = Cleanup::default();
    // compose names the image it builds after the project and the service.
    cleanup.then("docker", &["rmi", "-f", &format!("{project}_telemetry")]);
    cleanup.then(
        "docker-compose",
        &[
            "-p",
            &project,
            "-f",
            &file,
            "down",
            "--remove-orphans",
            "-t",
            "10",
        ],
    );
    let up = compose(&["up", "-d", "--build"]);
    assert!(
        up.status.success(),
        "docker-compose up --build: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    let container = format!("{project}_telemetry_1");
    let logs =
        || String::from_utf8_lossy(&run("docker", &["logs", &container]).stderr).into_owned();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    // Its own container is one of those it measures, named by its compose service.
    let prefix = format!("root/{host}/telemetry/system/telemetry/");
    let arrived = sub.wait_for(
        |lines| {
            ["cpu_usage_in_percent", "memory_usage_in_bytes", "pids"]
                .iter()
                .all(|m| {
                    lines
                        .iter()
                        .any(|l| l.starts_with(&format!("{prefix}{m} ")))
                })
        },
        Duration::from_secs(60),
    );
    assert!(
        arrived,
        "figures under {prefix}: {:?}\n{}",
        sub.lines(),
        logs()
    );
    let log = logs();
    assert!(
        log.contains("figures from the kernel"),
        "the mounted /proc and cgroup tree give kernel figures: {log}"
    );
    let stop = compose(&["stop", "-t", "10"]);
    assert!(stop.status.success(), "{stop:?}");
    assert_eq!(
        run_ok(
            "docker",
            &["inspect", "-f", "{{.State.ExitCode}}", &container]
        ),
        "0",
        "{}",
        logs()
    );
}
