//! FILE mode: the stats file a host job (or a sidecar) writes, read without ever waiting on it.

use super::{cut_to_whole_lines, unix_ms, Collected, Output, Source, MAX_STATS_BYTES};
use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

/// FILE mode as a [`Source`]: the read happens in `start` (it never waits: see [`read_file`]), so a
/// collection is never under way across wake-ups and there is nothing to poll.
pub struct FileSource {
    path: String,
    /// How old the file may grow before it is called stale, in milliseconds (see [`stale_after`]).
    stale_after_ms: u64,
    /// The file has not been written for a long time (warned once).
    stale: bool,
    /// The last finished tick's text buffer, reused by the next read.
    spare: Vec<u8>,
    /// The version of the stats file the last tick published, and when it was read.
    seen: Option<(FileStamp, Instant)>,
    out: Option<Output>,
}

impl FileSource {
    pub fn new(path: String, interval: Duration) -> FileSource {
        FileSource {
            path,
            stale_after_ms: stale_after(interval).as_millis() as u64,
            stale: false,
            spare: Vec::new(),
            seen: None,
            out: None,
        }
    }
}

impl Source for FileSource {
    fn start(&mut self, now: Instant) {
        let spare = std::mem::take(&mut self.spare);
        // Once the first tick is out, a file nobody has rewritten holds nothing new: publishing it again
        // would present old figures as a fresh sample.
        let previous = self.seen.map(|(stamp, _)| stamp);
        self.out = Some(match read_file(&self.path, spare, previous) {
            Ok(FileRead::Unchanged { taken_at_ms }) => {
                self.note_staleness(taken_at_ms);
                Output::Unchanged {
                    read_at: self.seen.map_or(now, |(_, at)| at),
                }
            }
            Ok(FileRead::Read(stamp, collected)) => {
                if let Some(taken_at_ms) = collected.taken_at_ms {
                    self.note_staleness(taken_at_ms);
                }
                self.seen = Some((stamp, now));
                Output::Text {
                    source: format!("stats file {}", self.path),
                    collected,
                }
            }
            Err(error) => Output::Failed {
                error,
                expected: true,
            },
        });
    }

    fn busy(&self) -> bool {
        false
    }

    fn fds(&self, _out: &mut Vec<libc::pollfd>) {}

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn advance(&mut self, _now: Instant, _ready: &[libc::pollfd]) {}

    fn take(&mut self) -> Option<Output> {
        self.out.take()
    }

    fn recycle(&mut self, text: Vec<u8>) {
        self.spare = text;
    }

    fn stop(&mut self) {}
}

impl FileSource {
    /// A stats file the host stopped refreshing keeps its old timestamp in every payload; say so once
    /// when it goes stale and once when it is fresh again.
    fn note_staleness(&mut self, taken_at_ms: u64) {
        let age_ms = unix_ms(SystemTime::now()).saturating_sub(taken_at_ms);
        let stale = age_ms > self.stale_after_ms;
        if stale && !self.stale {
            crate::warn!(
                "stats file {} was last written {}s ago: is the host's stats job still running?",
                self.path,
                age_ms / 1000
            );
        } else if !stale && self.stale {
            crate::info!("stats file {} is being written again", self.path);
        }
        self.stale = stale;
    }
}

/// How old the stats file may grow before it is called stale: three intervals, and ten minutes at least
/// (a host job may run less often than the agent reads).
pub fn stale_after(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(600))
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
            text: text.into(),
            overflowed,
            taken_at_ms: Some(taken_at_ms),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

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

    #[test]
    fn a_file_is_stale_after_three_intervals_and_ten_minutes_at_least() {
        assert_eq!(
            stale_after(Duration::from_secs(10)),
            Duration::from_secs(600)
        );
        assert_eq!(
            stale_after(Duration::from_secs(300)),
            Duration::from_secs(900)
        );
    }
}
