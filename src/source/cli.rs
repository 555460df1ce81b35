//! CLI mode: `<cli> stats --no-stream --format {{json .}}` run as a child, its pipes read without blocking.

use super::{cut_to_whole_lines, pollfd, Collected, Output, Source, MAX_STATS_BYTES};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// CLI mode as a [`Source`]: one child per tick, its two pipes polled, killed at its deadline.
pub struct CliSource {
    program: String,
    timeout: Duration,
    run: Option<CliRun>,
    out: Option<Output>,
}

impl CliSource {
    pub fn new(program: String, timeout: Duration) -> CliSource {
        CliSource {
            program,
            timeout,
            run: None,
            out: None,
        }
    }

    fn done(&mut self, result: Result<Collected, String>) {
        self.out = Some(match result {
            Ok(collected) => Output::Text {
                source: format!("{} stats", self.program),
                collected,
            },
            Err(error) => Output::Failed {
                error,
                expected: false,
            },
        });
    }
}

impl Source for CliSource {
    fn start(&mut self, now: Instant) {
        match CliRun::spawn(&self.program, now + self.timeout) {
            Ok(run) => self.run = Some(run),
            Err(e) => self.done(Err(e)),
        }
    }

    fn busy(&self) -> bool {
        self.run.is_some()
    }

    fn fds(&self, out: &mut Vec<libc::pollfd>) {
        if let Some(run) = &self.run {
            out.extend(run.fds().map(|fd| pollfd(fd, libc::POLLIN)));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.run.as_ref().map(|r| r.deadline)
    }

    fn advance(&mut self, now: Instant, ready: &[libc::pollfd]) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if ready.iter().any(|f| f.revents != 0) {
            run.read_available();
        }
        if run.is_done() {
            if let Some(run) = self.run.take() {
                let result = run.finish();
                self.done(result);
            }
        } else if now >= run.deadline {
            if let Some(run) = self.run.take() {
                run.kill();
            }
            let e = format!(
                "{} stats did not finish within {}s and was killed",
                self.program,
                self.timeout.as_secs()
            );
            self.done(Err(e));
        }
    }

    fn take(&mut self) -> Option<Output> {
        self.out.take()
    }

    fn stop(&mut self) {
        if let Some(run) = self.run.take() {
            run.kill();
        }
    }
}

/// How much of the CLI's stderr we keep for the log.
const MAX_STDERR_BYTES: usize = 4 * 1024;

/// A running `<cli> stats --no-stream --format {{json .}}`.
pub struct CliRun {
    program: String,
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Vec<u8>,
    err: Vec<u8>,
    truncated: bool,
    pub deadline: Instant,
}

impl CliRun {
    /// Spawns the CLI directly, without a shell.
    pub fn spawn(program: &str, deadline: Instant) -> Result<CliRun, String> {
        let mut child = Command::new(program)
            .args(["stats", "--no-stream", "--format", "{{json .}}"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => format!("cannot run {program:?}: not found (set cli_path)"),
                _ => format!("cannot run {program:?}: {e}"),
            })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let fds = [
            stdout.as_ref().map(|s| s.as_raw_fd()),
            stderr.as_ref().map(|s| s.as_raw_fd()),
        ];
        fds.into_iter().flatten().for_each(set_nonblocking);
        Ok(CliRun {
            program: program.to_owned(),
            child,
            stdout,
            stderr,
            out: Vec::new(),
            err: Vec::new(),
            truncated: false,
            deadline,
        })
    }

    /// The pipes still open, to wait on.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        let out = self.stdout.as_ref().map(|s| s.as_raw_fd());
        let err = self.stderr.as_ref().map(|s| s.as_raw_fd());
        out.into_iter().chain(err)
    }

    /// Reads whatever the pipes hold now, closing each at end of file.
    pub fn read_available(&mut self) {
        if let Some(pipe) = self.stdout.as_mut() {
            if drain(pipe, &mut self.out, MAX_STATS_BYTES, &mut self.truncated) {
                self.stdout = None;
            }
        }
        if let Some(pipe) = self.stderr.as_mut() {
            let mut ignored = false;
            if drain(pipe, &mut self.err, MAX_STDERR_BYTES, &mut ignored) {
                self.stderr = None;
            }
        }
    }

    /// Once both pipes are closed: the child's exit, and its output or what went wrong.
    pub fn finish(mut self) -> Result<Collected, String> {
        let status = self
            .child
            .wait()
            .map_err(|e| format!("{}: cannot wait for the CLI: {e}", self.program))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&self.err);
            return Err(format!(
                "{} stats exited with {status}: {}",
                self.program,
                stderr.trim()
            ));
        }
        let mut text = self.out;
        if self.truncated {
            cut_to_whole_lines(&mut text);
        }
        Ok(Collected {
            text,
            overflowed: self.truncated,
            taken_at_ms: None,
        })
    }

    pub fn is_done(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    /// Past its deadline: kill it and reap it so no zombie is left.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until the pipe would block; true at end of file. Bytes past `cap` are read and thrown away so a
/// runaway child cannot stall on a full pipe or grow our memory.
fn drain(pipe: &mut impl Read, into: &mut Vec<u8>, cap: usize, truncated: &mut bool) -> bool {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                let room = cap.saturating_sub(into.len());
                into.extend_from_slice(&buf[..n.min(room)]);
                *truncated |= n > room;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a descriptor we own; failure leaves it blocking, which only costs latency.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}
