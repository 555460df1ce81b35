//! Getting stats text: running the CLI as a child process, or reading the file a host cron job writes.
//!
//! These are the agent's only process and file I/O after start-up; `agent.rs` drives them from its loop.
//! The child's pipes are non-blocking so the loop can wait on them together with the broker socket, and
//! everything read is capped so no input can grow memory without bound.

use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Largest stats text we take in one tick (about 60,000 containers' worth).
pub const MAX_STATS_BYTES: usize = 16 * 1024 * 1024;
/// How much of the CLI's stderr we keep for the log.
const MAX_STDERR_BYTES: usize = 4 * 1024;

/// The stats text of one collection, with a note when it had to be cut short.
pub struct Collected {
    pub text: Vec<u8>,
    /// The input ran past [`MAX_STATS_BYTES`]: `text` is its whole lines before the cap (possibly none).
    pub overflowed: bool,
    /// When the figures were taken, in Unix milliseconds, if the source says (a file's modification
    /// time); otherwise the collection time is used.
    pub taken_at_ms: Option<u64>,
}

/// Which version of the stats file a read saw: a writer that replaces the file (`mv`) changes the inode,
/// one that rewrites it changes its size or modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

/// What a FILE-mode collection found.
pub enum FileRead {
    /// The file is the one the previous tick read: nothing new to publish. Its figures' time, for the
    /// staleness check.
    Unchanged {
        taken_at_ms: u64,
    },
    Read(FileStamp, Collected),
}

/// A stats file's figures were taken when the host wrote it, not when we read it: its modification
/// time, unless that lies in the future (a clock set wrong), where the read time is the honest answer.
pub fn taken_at(modified: Option<SystemTime>, now: SystemTime) -> u64 {
    let now_ms = unix_ms(now);
    match modified.map(unix_ms) {
        Some(m) if m <= now_ms.saturating_add(60_000) => m.min(now_ms),
        _ => now_ms,
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads the stats file, at most [`MAX_STATS_BYTES`], cut back to the last whole line when longer, unless
/// it is still the version `previous` saw. `text` is the previous tick's buffer, reused: a fresh one each
/// tick made musl's allocator map and unmap memory every tick.
///
/// Only regular files are read, and the open itself cannot wait: opening a FIFO for reading blocks until
/// a writer appears (it hung the agent for good), so it is opened non-blocking and then refused.
pub fn read_file(
    path: &str,
    mut text: Vec<u8>,
    previous: Option<FileStamp>,
) -> Result<FileRead, String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot open stats file {path}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read stats file {path}: {e}"))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(format!(
            "stats file {path} is {what}, not a regular file: FILE mode reads only regular files"
        ));
    }
    let taken_at_ms = taken_at(meta.modified().ok(), SystemTime::now());
    let stamp = FileStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        len: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
    };
    if previous == Some(stamp) {
        return Ok(FileRead::Unchanged { taken_at_ms });
    }
    text.clear();
    file.take(MAX_STATS_BYTES as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read stats file {path}: {e}"))?;
    let overflowed = text.len() > MAX_STATS_BYTES;
    if overflowed {
        text.truncate(MAX_STATS_BYTES);
        cut_to_whole_lines(&mut text);
    }
    Ok(FileRead::Read(
        stamp,
        Collected {
            text,
            overflowed,
            taken_at_ms: Some(taken_at_ms),
        },
    ))
}

/// Drops a partial last line (all of the text when it holds no line break).
fn cut_to_whole_lines(text: &mut Vec<u8>) {
    text.truncate(text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn file_figures_are_stamped_with_the_modification_time() {
        let now = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let earlier = now - Duration::from_secs(42);
        assert_eq!(taken_at(Some(earlier), now), 1_800_000_000_000 - 42_000);
        // Slightly ahead (clocks a little apart): capped at now. Far ahead or unknown: now.
        assert_eq!(
            taken_at(Some(now + Duration::from_secs(5)), now),
            1_800_000_000_000
        );
        assert_eq!(
            taken_at(Some(now + Duration::from_secs(3_600)), now),
            1_800_000_000_000
        );
        assert_eq!(taken_at(None, now), 1_800_000_000_000);
    }
}
