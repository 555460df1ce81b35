//! The device's reads that may reach a driver or a remote filesystem, done in a child process so that
//! one that never returns stalls the child, not the agent's loop.
//!
//! Reading a sysfs attribute runs the driver's code in the reading process: a thermal zone asks its
//! sensor (over I2C, ACPI or the SoC's registers), and on older Raspberry Pi kernels `get_throttled`
//! asks the firmware over its mailbox and waits for the answer uninterruptibly. A driver that hangs
//! holds its reader in the kernel, where no signal, timeout or `O_NONBLOCK` (sysfs ignores it) reaches
//! it; `statvfs` on a network filesystem whose server is gone does the same. Only another thread or
//! process can wait on such a read with a bound, and the agent has one thread. So these reads are made
//! by a child forked at start: asked with one byte, it reads every item and writes the answers back in
//! one message of fixed-size slots. The loop waits for them with `poll` and [`BOUND`]; a child that
//! misses it (or dies) is killed and never asked again, so a hung driver costs the loop that bound once
//! and its figures are left out from then on.
//!
//! The child is forked before the agent starts any thread, runs only system calls on memory prepared
//! before the fork (no allocation, nothing that can panic), closes every descriptor but its two pipe
//! ends, ignores the terminal's signals, and dies with its parent (`PR_SET_PDEATHSIG`) or when the
//! request pipe closes.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// How long the loop waits for the child's answers at most. Healthy reads take microseconds (a Pi's
/// firmware mailbox about a millisecond); a second leaves room for a device under heavy load.
pub const BOUND: Duration = Duration::from_secs(1);
/// One answer's bytes: a length (or [`FAILED`]) and the file's first bytes, or two u64 for a filesystem.
const SLOT: usize = 32;
/// Items at most: the answer must fit one atomic pipe write (4,096 bytes).
pub const MAX_ITEMS: usize = 4096 / SLOT;
/// The slot's first byte when the read failed; an errno follows.
const FAILED: u8 = 0xff;

/// What the child reads when asked.
pub enum Item {
    /// A sysfs attribute: its first bytes (enough for a number).
    File(CString),
    /// `statvfs` of a path: the size and use of the filesystem holding it.
    Disk(CString),
}

impl Item {
    pub fn file(path: &Path) -> Item {
        Item::File(c_path(path))
    }

    pub fn disk(path: &Path) -> Item {
        Item::Disk(c_path(path))
    }
}

/// A path with a NUL in it cannot exist: it reads as one that does not.
fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

/// One item's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<'a> {
    Text(&'a [u8]),
    Space {
        total: u64,
        used: u64,
    },
    /// The errno of the failed open, read or statvfs.
    Failed(i32),
}

/// The child, seen from the loop.
pub struct Reader {
    pid: libc::pid_t,
    ask: OwnedFd,
    answers: OwnedFd,
    buf: Vec<u8>,
}

impl Reader {
    /// Forks the child for `items` (at most [`MAX_ITEMS`]). Call before any thread is started.
    pub fn start(items: Vec<Item>) -> io::Result<Reader> {
        if items.len() > MAX_ITEMS {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let (ask_r, ask_w) = pipe()?;
        let (answer_r, answer_w) = pipe()?;
        let mut out = vec![0u8; items.len() * SLOT];
        // SAFETY: getpid and fork have no preconditions; the child below only makes system calls.
        let parent = unsafe { libc::getpid() };
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            child(
                parent,
                ask_r.as_raw_fd(),
                answer_w.as_raw_fd(),
                &items,
                &mut out,
            );
        }
        drop((ask_r, answer_w));
        // SAFETY: plain fcntl calls on a descriptor we own.
        unsafe {
            let fd = answer_r.as_raw_fd();
            libc::fcntl(
                fd,
                libc::F_SETFL,
                libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
            );
        }
        Ok(Reader {
            pid,
            ask: ask_w,
            answers: answer_r,
            buf: out,
        })
    }

    /// Asks the child to read every item; [`Reader::answers`] takes the result.
    pub fn ask(&mut self) {
        // SAFETY: writes one byte from a live buffer. A full pipe (the child stopped reading) shows as
        // no answer.
        unsafe { libc::write(self.ask.as_raw_fd(), b"r".as_ptr().cast(), 1) };
    }

    /// The answers to the last [`Reader::ask`], in the items' order, waiting `bound` at most; `None`
    /// when the child did not answer in time or is gone: then it is killed, and this reader is done.
    pub fn answers(&mut self, bound: Duration) -> Option<impl Iterator<Item = Answer<'_>>> {
        let fd = self.answers.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = bound.as_millis().min(60_000) as i32;
        // SAFETY: one live pollfd; then a read into the live buffer of its length.
        let n = unsafe {
            if libc::poll(&mut pfd, 1, ms) != 1 {
                -1
            } else {
                libc::read(fd, self.buf.as_mut_ptr().cast(), self.buf.len())
            }
        };
        if n != self.buf.len() as isize {
            // SAFETY: our own child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            return None;
        }
        Some(self.buf.chunks(SLOT).map(answer))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Reaped if it is already gone; otherwise it exits when its request pipe closes (or, when it is
        // stuck in a driver, whenever the driver lets it go).
        // SAFETY: our own child; WNOHANG never waits.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

fn answer(slot: &[u8]) -> Answer<'_> {
    match slot[0] {
        FAILED => Answer::Failed(i32::from_le_bytes([slot[1], slot[2], slot[3], slot[4]])),
        0 => {
            let word = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&slot[at..at + 8]);
                u64::from_le_bytes(b)
            };
            Answer::Space {
                total: word(1),
                used: word(9),
            }
        }
        n => Answer::Text(&slot[1..=usize::from(n).min(SLOT - 1)]),
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The child's life: system calls only, on memory prepared before the fork.
fn child(parent: libc::pid_t, ask: i32, answer: i32, items: &[Item], out: &mut [u8]) -> ! {
    // SAFETY: system calls on our own descriptors and on buffers that live until _exit.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        for fd in 3..1024 {
            if fd != ask && fd != answer {
                libc::close(fd);
            }
        }
        let mut byte = 0u8;
        loop {
            match libc::read(ask, (&mut byte as *mut u8).cast(), 1) {
                1 => {}
                n if n < 0 && *libc::__errno_location() == libc::EINTR => continue,
                _ => libc::_exit(0),
            }
            read_items(items, out);
            if libc::write(answer, out.as_ptr().cast(), out.len()) != out.len() as isize {
                libc::_exit(0);
            }
        }
    }
}

/// Every item into its slot of `out`. What the child does when asked; system calls only.
pub fn read_items(items: &[Item], out: &mut [u8]) {
    for (item, slot) in items.iter().zip(out.chunks_mut(SLOT)) {
        slot.fill(0);
        let result = match item {
            Item::File(path) => read_file(path, slot),
            Item::Disk(path) => read_disk(path, slot),
        };
        if let Err(errno) = result {
            slot[0] = FAILED;
            slot[1..5].copy_from_slice(&errno.to_le_bytes());
        }
    }
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Blocking, on purpose: this is the process that may wait.
fn read_file(path: &CString, slot: &mut [u8]) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path; a read into the slot's bytes after the length.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::read(fd, slot[1..].as_mut_ptr().cast(), SLOT - 1);
        let e = errno();
        libc::close(fd);
        match n {
            n if n < 0 => Err(e),
            // An empty attribute reads as one that failed with no errno.
            0 => Err(0),
            n => {
                slot[0] = n as u8;
                Ok(())
            }
        }
    }
}

/// Total and used bytes as `df` counts them: blocks of the fragment size, used = all less free.
fn read_disk(path: &CString, slot: &mut [u8]) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path and a zeroed struct for statvfs to fill.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return Err(errno());
        }
        st
    };
    let frsize = st.f_frsize as u64;
    let blocks = st.f_blocks as u64;
    let free = (st.f_bfree as u64).min(blocks);
    slot[1..9].copy_from_slice(&blocks.saturating_mul(frsize).to_le_bytes());
    slot[9..17].copy_from_slice(&(blocks - free).saturating_mul(frsize).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("bmct-reader-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn files_disks_and_failures_in_their_slots() {
        let d = tmp("slots");
        std::fs::write(d.join("temp"), "45277\n").unwrap();
        std::fs::write(d.join("empty"), "").unwrap();
        let long = "9".repeat(100);
        std::fs::write(d.join("long"), &long).unwrap();
        let items = vec![
            Item::file(&d.join("temp")),
            Item::file(&d.join("missing")),
            Item::disk(&d),
            Item::disk(&d.join("missing")),
            Item::file(&d.join("empty")),
            Item::file(&d.join("long")),
        ];
        let mut out = vec![0u8; items.len() * SLOT];
        read_items(&items, &mut out);
        let got: Vec<Answer> = out.chunks(SLOT).map(answer).collect();
        assert_eq!(got[0], Answer::Text(b"45277\n"));
        assert_eq!(got[1], Answer::Failed(libc::ENOENT));
        let Answer::Space { total, used } = got[2] else {
            panic!("{:?}", got[2])
        };
        assert!(total > 0 && used <= total, "{total} {used}");
        assert_eq!(got[3], Answer::Failed(libc::ENOENT));
        assert_eq!(got[4], Answer::Failed(0));
        assert_eq!(got[5], Answer::Text(&long.as_bytes()[..SLOT - 1]));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_child_answers_and_a_hung_read_costs_the_bound_once() {
        let d = tmp("child");
        std::fs::write(d.join("temp"), "51000\n").unwrap();
        let mut r = Reader::start(vec![Item::file(&d.join("temp"))]).unwrap();
        for _ in 0..3 {
            r.ask();
            let got: Option<Vec<Answer>> = r.answers(BOUND).map(Iterator::collect);
            assert_eq!(got, Some(vec![Answer::Text(b"51000\n")]));
        }
        // A FIFO without a writer blocks its reader in open, as a hung driver blocks in read.
        let fifo = d.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut r = Reader::start(vec![Item::file(&d.join("temp")), Item::file(&fifo)]).unwrap();
        r.ask();
        let t0 = std::time::Instant::now();
        assert!(r.answers(Duration::from_millis(200)).is_none());
        assert!(t0.elapsed() >= Duration::from_millis(200));
        // Killed: it is gone, and asking again answers nothing at once.
        r.ask();
        assert!(r.answers(Duration::from_millis(200)).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }
}
