//! Where figures come from: the stats file a host job writes (`file`), the CLI run as a child (`cli`), and
//! the engine's API socket (`engine`).
//!
//! These are the agent's only process and file I/O after start-up; `agent.rs` drives them from its loop
//! through one interface, [`Source`]: each is a state machine that says which descriptors it waits on and
//! until when, is told what became ready, and hands over what it collected. Pipes and sockets are
//! non-blocking so the loop can wait on them together with the broker socket, and everything read is
//! capped so no input can grow memory without bound.

pub mod cli;
pub mod device;
pub mod engine;
pub mod file;
pub mod filter;
pub mod kernel;

use crate::stats::lifecycle::Lifecycle;
use crate::stats::ContainerStats;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What a source hands the loop.
pub enum Output {
    /// Stats text to parse (FILE, CLI), named for the log (`stats file ...`, `docker stats`).
    Text {
        source: String,
        collected: Collected,
    },
    /// Figures already parsed, with each container's lifecycle (ENGINE).
    Parsed {
        source: String,
        stats: Vec<ContainerStats>,
    },
    /// Lifecycle changes between collections (ENGINE's event stream): to publish at once. Figures empty.
    Changes(Vec<ContainerStats>),
    /// The stats file is the version the last tick published (FILE): nothing to publish. When that
    /// version was read.
    Unchanged { read_at: Instant },
    /// The collection failed; `expected` when that happens in normal operation (a stats file not written
    /// yet), logged as a warning rather than an error. An empty `error` was said already (a source that
    /// reminds of a lasting fault at most once a minute): the tick is skipped without a line.
    Failed { error: String, expected: bool },
}

/// Every source, as the loop sees it. The loop calls `start` when a tick is due and the source is not
/// `busy`, polls the descriptors `fds` lists (with their events) until `deadline`, tells `advance` what
/// became ready (the same slots, with `revents` filled in; called after every wake-up, ready or not) and
/// routes whatever `take` gives.
pub trait Source {
    /// A tick is due: begin a collection (a quick one may finish at once; `take` has the result).
    fn start(&mut self, now: Instant);
    /// A collection is under way: the next tick waits for it.
    fn busy(&self) -> bool;
    /// The descriptors to wait on, with the events wanted; appended to `out`.
    fn fds(&self, out: &mut Vec<libc::pollfd>);
    /// When the source needs to act even if nothing becomes ready.
    fn deadline(&self) -> Option<Instant>;
    /// After a wake-up: `ready` holds the slots `fds` gave, with `revents` set.
    fn advance(&mut self, now: Instant, ready: &[libc::pollfd]);
    /// What the source has for the loop, one at a time.
    fn take(&mut self) -> Option<Output>;
    /// A finished tick's text buffer, for the next read to reuse.
    fn recycle(&mut self, _text: Vec<u8>) {}
    /// The agent is stopping: end children and connections now.
    fn stop(&mut self);
}

pub fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Largest stats text we take in one tick (about 60,000 containers' worth).
pub const MAX_STATS_BYTES: usize = 16 * 1024 * 1024;
/// The stats text of one collection, with a note when it had to be cut short.
pub struct Collected {
    pub text: StatsText,
    /// The input ran past [`MAX_STATS_BYTES`]: `text` is its whole lines before the cap (possibly none).
    pub overflowed: bool,
    /// When the figures were taken, in Unix milliseconds, if the source says (a file's modification
    /// time); otherwise the collection time is used.
    pub taken_at_ms: Option<u64>,
}

/// Stats text, with what the source knows of the containers' lives by name (CLI mode's `ps --all`; empty
/// for FILE mode). It reads as its bytes, so whoever only needs the text need not know the lives ride
/// along to the tick, which attaches each to its stats record and reports the rest (stopped containers)
/// after the text.
#[derive(Default)]
pub struct StatsText {
    pub bytes: Vec<u8>,
    pub lives: Vec<(String, Lifecycle)>,
}

impl From<Vec<u8>> for StatsText {
    fn from(bytes: Vec<u8>) -> StatsText {
        StatsText {
            bytes,
            lives: Vec::new(),
        }
    }
}

impl std::ops::Deref for StatsText {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.bytes
    }
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Drops a partial last line (all of the text when it holds no line break).
pub fn cut_to_whole_lines(text: &mut Vec<u8>) {
    text.truncate(text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1));
}
