//! Where figures come from: the stats file a host job writes (`file`), the CLI run as a child (`cli`), and
//! the engine's API socket (`engine`).
//!
//! These are the agent's only process and file I/O after start-up; `agent.rs` drives them from its loop.
//! Pipes and sockets are non-blocking so the loop can wait on them together with the broker socket, and
//! everything read is capped so no input can grow memory without bound.

pub mod cli;
pub mod engine;
pub mod file;

use std::time::{SystemTime, UNIX_EPOCH};

/// Largest stats text we take in one tick (about 60,000 containers' worth).
pub const MAX_STATS_BYTES: usize = 16 * 1024 * 1024;
/// The stats text of one collection, with a note when it had to be cut short.
pub struct Collected {
    pub text: Vec<u8>,
    /// The input ran past [`MAX_STATS_BYTES`]: `text` is its whole lines before the cap (possibly none).
    pub overflowed: bool,
    /// When the figures were taken, in Unix milliseconds, if the source says (a file's modification
    /// time); otherwise the collection time is used.
    pub taken_at_ms: Option<u64>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Drops a partial last line (all of the text when it holds no line break).
pub fn cut_to_whole_lines(text: &mut Vec<u8>) {
    text.truncate(text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
}
