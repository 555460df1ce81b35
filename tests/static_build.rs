//! The static musl binaries that `make dist` builds (issues 4 and 14): each one run for real, the Arm ones
//! under qemu-user on the CPU they target, against a real mosquitto; and the FROM scratch image run on the
//! real Docker Engine.
//!
//! `make test` builds the binaries before `cargo test`. A binary that is not there (its target could not
//! be installed, or `cargo test` ran without `make dist`), a missing qemu or a Docker Engine that does not
//! answer is a loud SKIPPED line, not a failure (under CI, which has them all, a failure).

mod common;
use common::engine::engine_available;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where `make dist` put it: `dist/<docker platform>/` (what the image and the size check use too).
fn static_binary(dist_dir: &str) -> PathBuf {
    repo()
        .join("dist")
        .join(dist_dir)
        .join("balena-multi-container-telemetry")
}

/// The binary in `dist_dir` and the command that runs it on this machine (qemu emulating `cpu` for a
/// foreign one), or None after a SKIPPED line.
fn runner(dist_dir: &str, qemu: Option<(&str, &str)>) -> Option<(PathBuf, Command)> {
    let bin = static_binary(dist_dir);
    if !bin.is_file() {
        skipped(&format!(
            "{dist_dir}: {} not built (see make dist's SKIPPED line, or run `make dist`; `make test` does)",
            bin.display()
        ));
        return None;
    }
    let cmd = match qemu {
        Some((q, cpu)) => {
            if !have_program(q, &["--version"], "apt-get install qemu-user-static") {
                return None;
            }
            let mut c = Command::new(q);
            c.args(["-cpu", cpu]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    Some((bin, cmd))
}

/// Reads the ELF header (no dependency on the `file` tool): the right CPU, and no PT_INTERP, so no
/// dynamic loader and no libc assumption on the host.
fn assert_static_elf(bin: &Path, machine: u16) {
    let data = std::fs::read(bin).unwrap();
    assert_eq!(&data[..4], b"\x7fELF", "{} is not ELF", bin.display());
    let is64 = data[4] == 2;
    assert_eq!(data[5], 1, "little-endian");
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    assert_eq!(u16_at(18), machine, "e_machine of {}", bin.display());
    let (phoff, phentsize, phnum) = if is64 {
        (
            u64_at(32) as usize,
            u16_at(54) as usize,
            u16_at(56) as usize,
        )
    } else {
        (
            u32_at(28) as usize,
            u16_at(42) as usize,
            u16_at(44) as usize,
        )
    };
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let p_type = u32_at(phoff + i * phentsize);
        assert_ne!(
            p_type,
            PT_INTERP,
            "{} asks for a dynamic loader: not static",
            bin.display()
        );
    }
}

fn file_mode_config(broker: &Broker, stats: &Path) -> TempDir {
    config_dir(
        &format!(
            r#"{{"mode": "FILE", "file_path": "{}", "collection_interval_in_seconds": 3600}}"#,
            stats.display()
        ),
        &format!(
            r#"{{"broker_url": "{}", "device_id": "static1"}}"#,
            broker.url()
        ),
    )
}

/// ELF e_flags of a 32-bit Arm binary: which float ABI it was built for.
fn arm_float_abi(bin: &Path) -> &'static str {
    let data = std::fs::read(bin).unwrap();
    let flags = u32::from_le_bytes(data[36..40].try_into().unwrap());
    const EF_ARM_ABI_FLOAT_SOFT: u32 = 0x200;
    const EF_ARM_ABI_FLOAT_HARD: u32 = 0x400;
    match (
        flags & EF_ARM_ABI_FLOAT_SOFT != 0,
        flags & EF_ARM_ABI_FLOAT_HARD != 0,
    ) {
        (true, false) => "soft",
        (false, true) => "hard",
        _ => "unknown",
    }
}

/// `--version`, then a FILE-mode `--once` on the sample file with every published figure checked.
fn run_binary(dist_dir: &str, qemu: Option<(&str, &str)>, machine: u16) {
    let Some((bin, _)) = runner(dist_dir, qemu) else {
        return;
    };
    assert_static_elf(&bin, machine);

    let (_, mut version) = runner(dist_dir, qemu).unwrap();
    let out = version.arg("--version").output().unwrap();
    assert!(out.status.success(), "{dist_dir} --version: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "balena-multi-container-telemetry {}",
            env!("CARGO_PKG_VERSION")
        ),
        "{dist_dir} --version"
    );

    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    let cfg = file_mode_config(&broker, &sample_stats());
    let (_, mut once) = runner(dist_dir, qemu).unwrap();
    once.arg("--once")
        .arg("--config-dir")
        .arg(cfg.path())
        .env_remove("BALENA_DEVICE_UUID")
        .env_remove("MQTT_PASSWORD")
        .env("LOG_LEVEL", "debug")
        .env("STATS_DEVICE_METRICS", "false");
    // qemu-user emulation is slow to start; the limit only guards against a hang.
    let (code, log) = run_limited(&mut once, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{dist_dir} --once: {log}");
    sub.sync(broker.port);
    let lines = sub.lines();
    assert_sample_figures(&lines, "static1");
    // --once says nothing about availability: the figures are all there is.
    assert_eq!(lines.len(), SAMPLE_EXPECTED.len(), "{dist_dir}: {lines:#?}");
    // Device builds print derived Debug impls shallowly (static.sh): what the agent says must not
    // depend on one, so its start line reads as the host build's does with the same settings.
    let mut host = Command::new(env!("CARGO_BIN_EXE_balena-multi-container-telemetry"));
    host.arg("--once").arg("--config-dir").arg(cfg.path());
    for (k, v) in once.get_envs() {
        match v {
            Some(v) => host.env(k, v),
            None => host.env_remove(k),
        };
    }
    let (code, host_log) = run_limited(&mut host, Duration::from_secs(60));
    assert_eq!(code, Some(0), "host build --once: {host_log}");
    let start = |log: &str| {
        log.lines()
            .find(|l| l.contains(" mode, every "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no start line in {log}"))
    };
    assert_eq!(start(&log), start(&host_log), "{dist_dir}: the start line");
}

const EM_ARM: u16 = 40;
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;

// Each Arm binary on the oldest core of the devices it is for: a Cortex-A53 (Pi 3, Zero 2; the Pi 4's
// A72 and the Pi 5's A76 are newer), a Cortex-A7 (Pi 2) and the Pi Zero's and Pi 1's ARM1176, where
// qemu traps any newer instruction.
#[test]
fn aarch64_static_binary_under_qemu() {
    run_binary(
        "arm64",
        Some(("qemu-aarch64-static", "cortex-a53")),
        EM_AARCH64,
    );
}

#[test]
fn armv7_static_binary_under_qemu_on_a_cortex_a7() {
    run_binary("arm/v7", Some(("qemu-arm-static", "cortex-a7")), EM_ARM);
    let bin = static_binary("arm/v7");
    if bin.is_file() {
        assert_eq!(arm_float_abi(&bin), "hard", "armv7hf is hard-float");
    }
}

#[test]
fn armv6_static_binary_under_qemu_on_an_arm1176() {
    run_binary("arm/v6", Some(("qemu-arm-static", "arm1176")), EM_ARM);
    // Soft-float EABI: the same binary runs on every ARM from v6 up, with or without a VFP.
    let bin = static_binary("arm/v6");
    if bin.is_file() {
        assert_eq!(arm_float_abi(&bin), "soft", "armv6 binary is soft-float");
    }
}

#[test]
fn x86_64_static_binary() {
    run_binary("amd64", None, EM_X86_64);
}

// ---- the scratch image on the real engine ----

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker runs")
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes the test's container and image however the test ends, and the classic builder's intermediate
/// images when a build fails half way (a successful build's are removed with its tag).
struct DockerCleanup {
    container: String,
    image: String,
    layers: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        if !self.image.is_empty() {
            let _ = docker(&["rmi", "-f", &self.image]);
        }
        for id in self.layers.iter().rev() {
            let _ = docker(&["rmi", id]);
        }
    }
}

#[test]
fn scratch_image_runs_on_the_engine_and_stops_cleanly() {
    if !engine_available() {
        return;
    }
    let bin = repo().join("dist/amd64/balena-multi-container-telemetry");
    if !bin.is_file() {
        skipped(&format!(
            "{} not built (run `make dist`; `make test` does)",
            bin.display()
        ));
        return;
    }
    assert_static_elf(&bin, EM_X86_64);

    let pid = std::process::id();
    let mut guard = DockerCleanup {
        container: format!("bmct-static-test-{pid}"),
        image: format!("bmct-static-test:{pid}"),
        layers: Vec::new(),
    };
    // The root Dockerfile as `make image` uses it, with the classic builder (no buildx here), which needs
    // TARGETARCH passed in. No cache, so every intermediate image is this build's own to remove.
    let root = repo().display().to_string();
    let build = Command::new("docker")
        .args(["build", "--no-cache", "--force-rm", "--build-arg"])
        .args(["TARGETARCH=amd64", "-t", &guard.image, &root])
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let build_log = String::from_utf8_lossy(&build.stdout);
    guard.layers = build_log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("---> "))
        .filter(|id| id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    assert!(
        build.status.success(),
        "docker build failed:\n{build_log}{}",
        String::from_utf8_lossy(&build.stderr)
    );
    assert_eq!(
        docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", &guard.image]),
        "65534:65534",
        "runs as nobody"
    );

    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "root/#");
    // Paths as the container sees them: the stats file and config dir are bind-mounted.
    let cfg = file_mode_config(&broker, Path::new("/data/balena-stats.jsonl"));
    let stats_mount = format!("{}:/data/balena-stats.jsonl:ro", sample_stats().display());
    let config_mount = format!("{}:/config:ro", cfg.path().display());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &guard.container,
        "--network",
        "host",
        "-e",
        "BALENA_DEVICE_UUID=img1",
        "-v",
        &stats_mount,
        "-v",
        &config_mount,
        &guard.image,
    ]);

    let arrived = sub.wait_for(|l| l.len() > SAMPLE_EXPECTED.len(), Duration::from_secs(30));
    let logs = || {
        let out = docker(&["logs", &guard.container]);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(
        arrived,
        "messages did not arrive: {:?}\n{}",
        sub.lines(),
        logs()
    );

    // docker stop sends SIGTERM to the agent (PID 1 in the container): it must publish `offline` and exit 0
    // well within docker's 10 s grace period.
    docker_ok(&["stop", "-t", "10", &guard.container]);
    assert_eq!(
        docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &guard.container]),
        "0",
        "exit code after docker stop\n{}",
        logs()
    );
    let lines = sub.collect(SAMPLE_EXPECTED.len() + 2, Duration::from_secs(5));
    // BALENA_DEVICE_UUID came through the container's environment.
    assert_sample_figures(&lines, "img1");
    let avail: Vec<_> = lines
        .iter()
        .filter(|l| l.starts_with("root/img1/telemetry/system/availability "))
        .collect();
    assert_eq!(
        avail,
        [
            "root/img1/telemetry/system/availability online",
            "root/img1/telemetry/system/availability offline"
        ]
    );

    // The one config file baked into the image: ENGINE mode (everything else from the environment).
    let probe = format!("{}-cp", guard.container);
    let _probe_guard = DockerCleanup {
        container: probe.clone(),
        image: String::new(),
        layers: Vec::new(),
    };
    docker_ok(&["create", "--name", &probe, &guard.image]);
    let out_dir = TempDir::new("image-config");
    let dest = out_dir.path().join("copied.json");
    docker_ok(&[
        "cp",
        &format!("{probe}:/config/balena_stats_collector.config.json"),
        &dest.display().to_string(),
    ]);
    assert_eq!(
        std::fs::read(&dest).unwrap(),
        std::fs::read(repo().join("config/image/balena_stats_collector.config.json")).unwrap(),
        "the image's collector config"
    );
}

#[test]
fn make_image_builds_one_platform_after_another() {
    // The classic builder's cache ignores the platform: a second platform used to reuse the first's
    // layers and fail. Two platforms in turn, through the script `make image` runs.
    if !engine_available() {
        return;
    }
    // Each image is tagged by the platform asked for, as Docker names it.
    let platforms = [
        ("linux/arm/v6", "arm-v6", "arm", "v6"),
        ("linux/amd64", "amd64", "amd64", ""),
        ("linux/arm/v7", "arm-v7", "arm", "v7"),
    ];
    if let Some((p, ..)) = platforms
        .iter()
        .find(|(_, _, arch, v)| !static_binary(&format!("{arch}/{v}")).is_file())
    {
        skipped(&format!("no binary for {p} in dist/ (run `make dist`)"));
        return;
    }
    let name = format!("bmct-image-test-{}", std::process::id());
    // Every image stays until the end: the earlier ones are the cache that used to break the later.
    let mut guards = Vec::new();
    for (platform, tag, arch, variant) in platforms {
        let image = format!("{name}:{tag}");
        guards.push(DockerCleanup {
            container: String::new(),
            image: image.clone(),
            layers: Vec::new(),
        });
        let out = without_cargo_env(Command::new("sh").arg(repo().join("cross-compile/static.sh")))
            .args(["image", platform, &name])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "static.sh image {platform}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            docker_ok(&[
                "image",
                "inspect",
                "-f",
                "{{.Architecture}}/{{.Variant}}",
                &image
            ]),
            format!("{arch}/{variant}"),
            "{platform}"
        );
    }
}

/// `cmd` without the variables `cargo test` gives this process (CARGO_PKG_NAME, CARGO_MANIFEST_DIR, ...).
/// A build started from a test would otherwise see them: ring's build
/// script reruns when they change, so the device binaries were built again, dist/ was overwritten, and the
/// next `make dist` built them once more. What the user set for cargo (CARGO_HOME, CARGO_TARGET_DIR, the
/// CARGO_BUILD_* and CARGO_PROFILE_* settings) stays.
fn without_cargo_env(cmd: &mut Command) -> &mut Command {
    let theirs = |k: &str| {
        k == "CARGO"
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_CRATE_NAME"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "OUT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_RUSTC_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
    };
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(theirs) {
            cmd.env_remove(&k);
        }
    }
    cmd
}
