//! The real Docker Engine for the tests that need one: `docker` itself, whether an engine is there (and a
//! loud SKIPPED when not), and a fixture that builds a `FROM scratch` busybox image and runs containers
//! whose names carry this process's id, removing all of it on drop, also when an assertion fails.

use super::TempDir;
use std::process::{Command, Stdio};

pub const BUSYBOX: &str = "/bin/busybox";
pub const SOCKET: &str = "/var/run/docker.sock";

pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a Docker Engine answers (`docker` follows `DOCKER_HOST`); when none does, a SKIPPED line
/// (under CI, a failure: see [`super::skipped`]).
pub fn engine_available() -> bool {
    match docker(&["info", "--format", "{{.ServerVersion}}"]) {
        Ok(_) => true,
        Err(e) => {
            super::skipped(&format!("no Docker Engine answers ({e})"));
            false
        }
    }
}

/// The image and containers one test made; all removed on drop.
pub struct Fixture {
    pub image: String,
    pub containers: Vec<String>,
    /// Prefix of every service name we made, so other containers on the engine are ignored.
    pub prefix: String,
}

impl Fixture {
    /// Builds the test image: Debian's static busybox, also as `/bin/sh` (healthchecks run through it).
    pub fn new(tag: &str) -> Fixture {
        assert!(
            std::path::Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: install Debian's busybox-static"
        );
        let pid = std::process::id();
        let f = Fixture {
            image: format!("bmct-test-busybox-{tag}:{pid}"),
            containers: Vec::new(),
            prefix: format!("bmct{pid}{tag}-"),
        };
        let ctx = TempDir::new("image");
        std::fs::copy(BUSYBOX, ctx.path().join("busybox")).unwrap();
        ctx.write(
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY busybox /bin/sh\nENTRYPOINT [\"/bin/busybox\"]\n",
        );
        docker(&[
            "build",
            "-q",
            "-t",
            &f.image,
            &ctx.path().display().to_string(),
        ])
        .expect("test image builds");
        f
    }

    /// `docker run -d` without networking, under exactly `name`; remembered for clean-up first.
    pub fn run(&mut self, name: &str, opts: &[&str], cmd: &[&str]) {
        self.run_on("none", name, opts, cmd);
    }

    /// [`Fixture::run`] on `network`.
    pub fn run_on(&mut self, network: &str, name: &str, opts: &[&str], cmd: &[&str]) {
        self.containers.push(name.to_owned());
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(opts);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        docker(&args).expect("container starts");
    }

    /// [`Fixture::run`] under this fixture's prefix; returns the full name.
    pub fn run_prefixed(&mut self, name: &str, opts: &[&str], cmd: &[&str]) -> String {
        let name = self.service(name);
        self.run(&name, opts, cmd);
        name
    }

    pub fn service(&self, s: &str) -> String {
        format!("{}{s}", self.prefix)
    }

    /// Removes the containers in batches (one `docker rm` for a hundred is slow to start).
    pub fn remove_all(&mut self) {
        for batch in self.containers.chunks(50) {
            let mut args = vec!["rm", "-f"];
            args.extend(batch.iter().map(String::as_str));
            if let Err(e) = docker(&args) {
                eprintln!("clean-up: {e}");
            }
        }
        self.containers.clear();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.remove_all();
        if let Err(e) = docker(&["rmi", "-f", &self.image]) {
            eprintln!("clean-up: {e}");
        }
    }
}
