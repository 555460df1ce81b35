//! CLI mode: `<cli> stats --no-stream --format {{json .}}` run as a child, its pipes read without blocking,
//! and beside it `<cli> ps --all --no-trunc --format {{json .}}` for the containers' lives (stopped ones
//! too). Both are killed at the tick's deadline; a failing `ps` costs the lives, never the figures. A
//! child is reaped without waiting: one that closes its pipes and goes on running is looked at again
//! until the deadline, and killed then, like one that never closes them.

use super::{cut_to_whole_lines, pollfd, Collected, Output, Source, MAX_STATS_BYTES};
use crate::stats::lifecycle::Lifecycle;
use crate::stats::ps;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// CLI mode as a [`Source`]: one child per tick, its two pipes polled, killed at its deadline.
pub struct CliSource {
    program: String,
    timeout: Duration,
    run: Option<CliRun>,
    /// `ps` of the same tick, and then what it gave (the lives, or why there are none).
    ps: Option<CliRun>,
    lives: Option<Result<Vec<(String, Lifecycle)>, String>>,
    /// `stats`' result while `ps` is still running.
    stats: Option<Result<Collected, String>>,
    out: Option<Output>,
}

impl CliSource {
    pub fn new(program: String, timeout: Duration) -> CliSource {
        CliSource {
            program,
            timeout,
            run: None,
            ps: None,
            lives: None,
            stats: None,
            out: None,
        }
    }

    /// Once both children are over: the figures with the lives, or the figures alone and a warning.
    fn finish_tick(&mut self) {
        if self.run.is_some() || self.ps.is_some() {
            return;
        }
        let Some(mut result) = self.stats.take() else {
            return;
        };
        match self.lives.take() {
            Some(Ok(lives)) => {
                if let Ok(c) = &mut result {
                    c.text.lives = lives;
                }
            }
            Some(Err(e)) if result.is_ok() => {
                crate::warn!("{e}; publishing the figures without the containers' states")
            }
            _ => {}
        }
        self.done(result);
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
        let deadline = now + self.timeout;
        match CliRun::spawn(&self.program, STATS, deadline) {
            Ok(run) => self.run = Some(run),
            Err(e) => return self.done(Err(e)),
        }
        match CliRun::spawn(&self.program, PS, deadline) {
            Ok(run) => self.ps = Some(run),
            Err(e) => self.lives = Some(Err(e)),
        }
    }

    fn busy(&self) -> bool {
        self.run.is_some() || self.ps.is_some() || self.stats.is_some()
    }

    fn fds(&self, out: &mut Vec<libc::pollfd>) {
        for run in [&self.run, &self.ps].into_iter().flatten() {
            out.extend(run.fds().map(|fd| pollfd(fd, libc::POLLIN)));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        [&self.run, &self.ps]
            .into_iter()
            .flatten()
            .map(CliRun::next_look)
            .min()
    }

    fn advance(&mut self, now: Instant, ready: &[libc::pollfd]) {
        let woke = ready.iter().any(|f| f.revents != 0);
        if let Some(result) = step(&mut self.run, woke, now) {
            self.stats = Some(result.map_err(|e| self.failure(e, STATS)));
        }
        if let Some(result) = step(&mut self.ps, woke, now) {
            let lives = match result {
                Ok(c) => Ok(parse_ps(&self.program, &c.text)),
                Err(e) => Err(self.failure(e, PS)),
            };
            self.lives = Some(lives);
        }
        self.finish_tick();
    }

    fn take(&mut self) -> Option<Output> {
        self.out.take()
    }

    fn stop(&mut self) {
        for run in [self.run.take(), self.ps.take()].into_iter().flatten() {
            run.kill();
        }
        self.stats = None;
        self.lives = None;
    }
}

impl CliSource {
    /// `None` when the child ran out of time: say so; otherwise its own error.
    fn failure(&self, e: Option<String>, args: &[&str]) -> String {
        e.unwrap_or_else(|| {
            format!(
                "{} {} did not finish within {}s and was killed",
                self.program,
                args[0],
                self.timeout.as_secs()
            )
        })
    }
}

const STATS: &[&str] = &["stats", "--no-stream", "--format", "{{json .}}"];
const PS: &[&str] = &["ps", "--all", "--no-trunc", "--format", "{{json .}}"];

/// Reads what a child has, and once it is over (or past its deadline, then killed): its result, with
/// `Err(None)` for a timeout.
fn step(
    slot: &mut Option<CliRun>,
    woke: bool,
    now: Instant,
) -> Option<Result<Collected, Option<String>>> {
    let run = slot.as_mut()?;
    if woke {
        run.read_available();
    }
    if let Some(result) = run.reap(now) {
        *slot = None;
        return Some(result.map_err(Some));
    }
    if now >= run.deadline {
        if let Some(run) = slot.take() {
            run.kill();
        }
        return Some(Err(None));
    }
    None
}

/// `ps`' lines as lives by container name; unreadable lines are skipped with one warning for the lot.
fn parse_ps(program: &str, text: &[u8]) -> Vec<(String, Lifecycle)> {
    let mut lives = Vec::new();
    let (mut bad, mut first) = (0, None);
    for line in text.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if line.trim().is_empty() {
            continue;
        }
        match ps::parse_line(&line) {
            Ok(life) => lives.push(life),
            Err(e) => {
                bad += 1;
                first.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first {
        crate::warn!("{program} ps: {bad} unreadable line(s) skipped, the first: {e}");
    }
    lives
}

/// How much of the CLI's stderr we keep for the log.
const MAX_STDERR_BYTES: usize = 4 * 1024;
/// A child that closed its pipes but has not exited is looked at again this often until its deadline.
/// Most have exited by the first look (a child's pipes close as it exits, a moment before it can be
/// reaped); one that lingers costs a turn of the loop per look.
const REAP_PAUSE: Duration = Duration::from_millis(10);

/// A running `<cli> stats ...` or `<cli> ps ...`.
pub struct CliRun {
    program: String,
    /// The subcommand, for errors.
    verb: &'static str,
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Vec<u8>,
    err: Vec<u8>,
    truncated: bool,
    pub deadline: Instant,
    /// Once the pipes are closed and the child has not exited yet: when to look again.
    reap_at: Option<Instant>,
}

impl CliRun {
    /// Spawns the CLI directly, without a shell.
    pub fn spawn(
        program: &str,
        args: &[&'static str],
        deadline: Instant,
    ) -> Result<CliRun, String> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => format!(
                    "cannot run {program:?}: not found (set cli_path; or, with the engine's \
                     socket here, STATS_MODE=ENGINE asks the engine without a CLI)"
                ),
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
            verb: args.first().copied().unwrap_or(""),
            child,
            stdout,
            stderr,
            out: Vec::new(),
            err: Vec::new(),
            truncated: false,
            deadline,
            reap_at: None,
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

    /// When the loop should call again even if no pipe turns ready: the deadline, or sooner to look for
    /// the exit of a child whose pipes are closed.
    pub fn next_look(&self) -> Instant {
        self.reap_at
            .map_or(self.deadline, |at| at.min(self.deadline))
    }

    /// Once both pipes are closed and the child has exited: its output or what went wrong. `None` while
    /// either is still open or running; never waits (a blocking `wait` here stalled the whole loop on a
    /// child that closed its output and lived on).
    pub fn reap(&mut self, now: Instant) -> Option<Result<Collected, String>> {
        if !self.is_done() {
            return None;
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => {
                self.reap_at = Some(now + REAP_PAUSE);
                return None;
            }
            Err(e) => {
                return Some(Err(format!(
                    "{}: cannot wait for the CLI: {e}",
                    self.program
                )))
            }
        };
        Some(self.finish(status))
    }

    /// The exited child's output, or what went wrong.
    fn finish(&mut self, status: std::process::ExitStatus) -> Result<Collected, String> {
        if !status.success() {
            let stderr = String::from_utf8_lossy(&self.err);
            return Err(format!(
                "{} {} exited with {status}: {}",
                self.program,
                self.verb,
                stderr.trim()
            ));
        }
        let mut text = std::mem::take(&mut self.out);
        if self.truncated {
            cut_to_whole_lines(&mut text);
        }
        Ok(Collected {
            text: text.into(),
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
