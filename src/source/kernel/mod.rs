//! A running container's figures read straight from the kernel: its cgroup's counter files and its main
//! process's `/proc/<pid>/net/dev`, instead of asking the engine's stats API (which reads the same files,
//! at a much higher cost to the device).
//!
//! This file is the I/O edge: it finds the files and reads each with a bound; the text is read by the
//! pure parsers in `cgroup` (which cgroup a process is in), `counters` (the counter files) and `netdev`.
//! `cgroup` and `proc` roots are configurable because in a balena container the host's `/sys` and
//! `/proc` are bind-mounted where the device's labels put them, and so tests can use fixture trees.

pub mod cgroup;
pub mod counters;
pub mod netdev;

use crate::stats::{Figures, Metric, Value};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Largest kernel file we read: `memory.stat` is about 1.5 KB and `net/dev` grows by 130 bytes an
/// interface, so a larger file is not what we think it is.
const MAX_FILE: usize = 64 * 1024;

/// A container's counter files kept open between ticks, by slot (below): reading an open kernel file
/// again from its start costs a fifth of opening it anew (2 us against 13 us here), and at seven files
/// a container, opening was most of what a tick cost. A file of a removed cgroup reads as an error
/// (ENODEV), so a kept file never passes off stale figures for a container that went away; the engine
/// source drops them when the container's main process changes.
#[derive(Default)]
pub struct Files {
    kept: Vec<Option<OwnedFd>>,
}

impl Drop for Files {
    fn drop(&mut self) {
        let n = self.kept.iter().flatten().count();
        KEEP_BUDGET.fetch_add(n, Ordering::Relaxed);
    }
}

/// Descriptors we may still keep open (see [`keep_files_open`]); none until it is called.
static KEEP_BUDGET: AtomicUsize = AtomicUsize::new(0);

/// Lets [`read`] keep counter files open, as many as the descriptor limit allows after raising the soft
/// limit to the hard one: half of it, leaving the rest to the engine's connections and the broker.
/// Containers past that budget have their files opened at each read.
pub fn keep_files_open() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max.min(1 << 20),
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    let budget = usize::try_from(lim.rlim_cur / 2).unwrap_or(usize::MAX);
    KEEP_BUDGET.store(budget.min(65_536), Ordering::Relaxed);
}

/// Slots of [`Files`]: one per counter file, whatever the hierarchy's version names it.
const CPU: usize = 0;
const MEM_USAGE: usize = 1;
const MEM_LIMIT: usize = 2;
const MEM_STAT: usize = 3;
const BLOCK: usize = 4;
const PIDS: usize = 5;
const NET: usize = 6;
/// Not kept: files read once (where a container is, the host's memory).
const ONCE: usize = usize::MAX;

/// Where the host's cgroup hierarchy and process table are mounted as we see them.
pub struct Roots {
    pub cgroup: PathBuf,
    pub proc: PathBuf,
}

/// Where one container's counter files are; found once per (container, pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    V1 {
        cpuacct: PathBuf,
        memory: PathBuf,
        blkio: Option<PathBuf>,
        pids: Option<PathBuf>,
    },
    V2(PathBuf),
}

/// One sample of a container's counters, every number as the kernel wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// v1 `cpuacct.usage`; v2 `cpu.stat` `usage_usec` * 1000.
    pub cpu_ns: u64,
    /// v1 `memory.usage_in_bytes`; v2 `memory.current`.
    pub memory_usage: u64,
    /// v1 `total_inactive_file`, or `inactive_file` when that one is not below the usage (the CLI's
    /// order); v2 `inactive_file`; 0 when absent.
    pub inactive_file: u64,
    /// `None` when unlimited (v2 `max`, v1's largest value); a limit above the host's memory is left
    /// to [`figures`].
    pub limit: Option<u64>,
    /// Summed over devices; 0 when the blkio (v1) or io (v2) controller is not there, as the engine
    /// reports it.
    pub block_read: u64,
    pub block_written: u64,
    /// `pids.current`; `None` when the pids controller is missing.
    pub pids: Option<u64>,
    /// `/proc/<pid>/net/dev` summed over interfaces but `lo`.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Reads `{proc}/{pid}/cgroup` and finds the container's counter directories: v1 when the file lists
/// the memory and cpuacct controllers, else the unified (`0::`) hierarchy. A path that does not name
/// the container's full `id` (a reused pid, or `proc` not being the engine's pid namespace), one outside
/// our cgroup namespace, or a directory that is not there is an error.
pub fn locate(roots: &Roots, pid: u32, id: &str) -> Result<Place, String> {
    let mut r = Reader::new(None);
    let text = r.load(ONCE, &pid_dir(&roots.proc, pid), "cgroup")?;
    let m = cgroup::parse(text);
    let id = id.as_bytes();
    match (m.cpuacct, m.memory) {
        (Some(cpuacct), Some(memory)) => Ok(Place::V1 {
            cpuacct: v1_required(roots, pid, id, cpuacct, "cpuacct")?,
            memory: v1_required(roots, pid, id, memory, "memory")?,
            blkio: v1_dir(roots, pid, id, m.blkio, "blkio")?,
            pids: v1_dir(roots, pid, id, m.pids, "pids")?,
        }),
        _ => {
            let path = m.unified.ok_or_else(|| {
                format!("pid {pid}: its cgroup file names neither v1 memory and cpuacct nor a v2 cgroup")
            })?;
            checked(pid, id, path)?;
            let dir = under(&roots.cgroup, path);
            if dir.is_dir() {
                Ok(Place::V2(dir))
            } else {
                Err(format!("pid {pid}: no cgroup directory {}", dir.display()))
            }
        }
    }
}

fn v1_required(
    roots: &Roots,
    pid: u32,
    id: &[u8],
    line: cgroup::Line,
    controller: &str,
) -> Result<PathBuf, String> {
    v1_dir(roots, pid, id, Some(line), controller)?.ok_or_else(|| {
        let root = roots.cgroup.display();
        format!("pid {pid}: no {controller} cgroup directory under {root}")
    })
}

/// A v1 controller's directory: under the mount named for the hierarchy's controller list as written
/// (`cpu,cpuacct`), else under the one named for the controller alone; `None` when neither is there.
fn v1_dir(
    roots: &Roots,
    pid: u32,
    id: &[u8],
    line: Option<cgroup::Line>,
    controller: &str,
) -> Result<Option<PathBuf>, String> {
    let Some(line) = line else { return Ok(None) };
    checked(pid, id, line.path)?;
    let mounts = [line.controllers, controller.as_bytes()];
    Ok(mounts
        .iter()
        .map(|m| under(&roots.cgroup.join(OsStr::from_bytes(m)), line.path))
        .find(|d| d.is_dir()))
}

fn checked(pid: u32, id: &[u8], path: &[u8]) -> Result<(), String> {
    cgroup::check(path, id).map_err(|e| {
        let why = match e {
            cgroup::PathError::Outside => "is outside our cgroup namespace",
            cgroup::PathError::NotTheContainer => {
                "is not the container's (a reused pid, or not the host's /proc?)"
            }
        };
        format!("pid {pid}: cgroup {} {why}", String::from_utf8_lossy(path))
    })
}

/// `root` joined with an absolute cgroup path (a plain join would replace the root).
fn under(root: &Path, path: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(path.strip_prefix(b"/").unwrap_or(path)))
}

fn pid_dir(proc: &Path, pid: u32) -> PathBuf {
    proc.join(itoa::Buffer::new().format(pid))
}

/// Reads all counter files of `place` and `{proc}/{pid}/net/dev`. A file or process that is gone, or a
/// file that is garbled or larger than the bound, is an error naming the file. `files` keeps them open
/// for the next read of the same container, within the budget [`keep_files_open`] set.
pub fn read(roots: &Roots, place: &Place, pid: u32, files: &mut Files) -> Result<Reading, String> {
    let mut r = Reader::new(Some(files));
    let mut reading = match place {
        Place::V1 {
            cpuacct,
            memory,
            blkio,
            pids,
        } => read_v1(&mut r, cpuacct, memory, blkio.as_deref(), pids.as_deref())?,
        Place::V2(dir) => read_v2(&mut r, dir)?,
    };
    // Last, so that a container gone since its first file was read is an error, not a short reading.
    let net = netdev::totals(r.load(NET, &pid_dir(&roots.proc, pid), "net/dev")?);
    (reading.rx_bytes, reading.tx_bytes) = net.ok_or_else(|| r.garbled())?;
    Ok(reading)
}

fn read_v1(
    r: &mut Reader,
    cpuacct: &Path,
    memory: &Path,
    blkio: Option<&Path>,
    pids: Option<&Path>,
) -> Result<Reading, String> {
    let cpu_ns = r.number(CPU, cpuacct, "cpuacct.usage", counters::single)?;
    let memory_usage = r.number(MEM_USAGE, memory, "memory.usage_in_bytes", counters::single)?;
    let limit = counters::v1_limit(r.load(MEM_LIMIT, memory, "memory.limit_in_bytes")?);
    let limit = limit.ok_or_else(|| r.garbled())?;
    let stat = r.load(MEM_STAT, memory, "memory.stat")?;
    let inactive_file = counters::keyed(stat, b"total_inactive_file")
        .filter(|&v| v < memory_usage)
        .or_else(|| counters::keyed(stat, b"inactive_file"))
        .unwrap_or(0);
    let (block_read, block_written) = match blkio {
        Some(dir) => read_blkio(r, dir)?,
        None => (0, 0),
    };
    let pids = match pids {
        Some(dir) => Some(r.number(PIDS, dir, "pids.current", counters::single)?),
        None => None,
    };
    Ok(Reading {
        cpu_ns,
        memory_usage,
        inactive_file,
        limit,
        block_read,
        block_written,
        pids,
        rx_bytes: 0,
        tx_bytes: 0,
    })
}

/// The throttle file counts I/O on every device whatever its scheduler; CFQ's file (BFQ's on newer
/// kernels) is the fallback for kernels built without throttling. None of them: no block I/O to show.
fn read_blkio(r: &mut Reader, dir: &Path) -> Result<(u64, u64), String> {
    for name in [
        "blkio.throttle.io_service_bytes_recursive",
        "blkio.io_service_bytes_recursive",
        "blkio.bfq.io_service_bytes_recursive",
    ] {
        if let Some(text) = r.load_optional(BLOCK, dir, name)? {
            return counters::v1_blkio(text).ok_or_else(|| r.garbled());
        }
    }
    Ok((0, 0))
}

/// v2 has `cpu.stat` in every cgroup; the memory files are required (without the memory controller
/// there is nothing to show), `io.stat` and `pids.current` only exist where their controller is enabled.
fn read_v2(r: &mut Reader, dir: &Path) -> Result<Reading, String> {
    let usage_usec = r.number(CPU, dir, "cpu.stat", |t| counters::keyed(t, b"usage_usec"))?;
    let memory_usage = r.number(MEM_USAGE, dir, "memory.current", counters::single)?;
    let limit = counters::v2_limit(r.load(MEM_LIMIT, dir, "memory.max")?);
    let limit = limit.ok_or_else(|| r.garbled())?;
    let stat = r.load(MEM_STAT, dir, "memory.stat")?;
    let inactive_file = counters::keyed(stat, b"inactive_file").unwrap_or(0);
    let (block_read, block_written) = match r.load_optional(BLOCK, dir, "io.stat")? {
        Some(text) => counters::v2_io(text).ok_or_else(|| r.garbled())?,
        None => (0, 0),
    };
    let pids = match r.load_optional(PIDS, dir, "pids.current")? {
        Some(text) => Some(counters::single(text).ok_or_else(|| r.garbled())?),
        None => None,
    };
    Ok(Reading {
        cpu_ns: usage_usec.saturating_mul(1000),
        memory_usage,
        inactive_file,
        limit,
        block_read,
        block_written,
        pids,
        rx_bytes: 0,
        tx_bytes: 0,
    })
}

/// `MemTotal` from `{proc}/meminfo`, in bytes: what the engine reports as an unlimited container's limit.
pub fn host_memory(roots: &Roots) -> Result<u64, String> {
    Reader::new(None).number(ONCE, &roots.proc, "meminfo", counters::mem_total)
}

/// The figures `docker stats` shows for this reading: memory is usage less inactive file pages when
/// those are below it; the limit is the engine's (the host's memory when unlimited or larger, since the
/// daemon caps it so); `cpu_percent` as given (`None` = no CPU % this time).
pub fn figures(r: &Reading, host_memory: u64, cpu_percent: Option<f64>) -> Figures {
    let mut f = Figures::default();
    if let Some(p) = cpu_percent {
        f.set(Metric::CpuPercent, Value::Percent(p));
    }
    let used = if r.inactive_file < r.memory_usage {
        r.memory_usage - r.inactive_file
    } else {
        r.memory_usage
    };
    f.set(Metric::MemoryUsage, Value::Count(used));
    let limit = match r.limit {
        Some(l) if host_memory == 0 || l <= host_memory => l,
        _ => host_memory,
    };
    if limit > 0 {
        f.set(Metric::MemoryLimit, Value::Count(limit));
        f.set(
            Metric::MemoryPercent,
            Value::Percent(two_places(used as f64 / limit as f64 * 100.0)),
        );
    }
    f.set(Metric::NetworkReceived, Value::Count(r.rx_bytes));
    f.set(Metric::NetworkSent, Value::Count(r.tx_bytes));
    f.set(Metric::BlockRead, Value::Count(r.block_read));
    f.set(Metric::BlockWritten, Value::Count(r.block_written));
    if let Some(p) = r.pids {
        f.set(Metric::Pids, Value::Count(p));
    }
    f
}

/// CPU % between two readings: CPU time used over time elapsed, times 100, to two places. The CLI
/// divides by the host's total CPU time and multiplies by the CPU count, which is the same. `None` when
/// no time passed or the counter went backwards (the container restarted).
pub fn cpu_percent(before: (u64, Instant), now: (u64, Instant)) -> Option<f64> {
    // Seconds as f64 rather than nanoseconds as u128, whose conversion to f64 costs code.
    let elapsed = now.1.checked_duration_since(before.1)?.as_secs_f64();
    let used = now.0.checked_sub(before.0)?;
    (elapsed > 0.0).then(|| two_places(used as f64 / elapsed / 1e7))
}

fn two_places(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Reads files one at a time into one buffer, each with the bound.
struct Reader<'a> {
    buf: Vec<u8>,
    path: PathBuf,
    files: Option<&'a mut Files>,
}

impl<'a> Reader<'a> {
    fn new(files: Option<&'a mut Files>) -> Reader<'a> {
        Reader {
            buf: Vec::with_capacity(4096),
            path: PathBuf::new(),
            files,
        }
    }

    /// Reads the file of `slot` from its start when it is kept open, else `dir/name`, which is then
    /// kept if the budget allows. A kept file stands for its slot whatever name was asked (the block
    /// I/O file found first stays the one read).
    fn fill(&mut self, slot: usize, dir: &Path, name: &str) -> io::Result<()> {
        self.path.clear();
        self.path.push(dir);
        self.path.push(name);
        self.buf.clear();
        let kept = self.files.as_ref().and_then(|f| f.kept.get(slot)?.as_ref());
        if let Some(fd) = kept {
            return read_whole(fd, &mut self.buf);
        }
        let fd = open(&self.path)?;
        read_whole(&fd, &mut self.buf)?;
        if let Some(files) = self.files.as_deref_mut().filter(|_| slot != ONCE) {
            let took = KEEP_BUDGET
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if took.is_ok() {
                if files.kept.len() <= slot {
                    files.kept.resize_with(slot + 1, || None);
                }
                files.kept[slot] = Some(fd);
            }
        }
        Ok(())
    }

    fn failed(&self, e: io::Error) -> String {
        format!("{}: {e}", self.path.display())
    }

    fn load(&mut self, slot: usize, dir: &Path, name: &str) -> Result<&[u8], String> {
        match self.fill(slot, dir, name) {
            Ok(()) => Ok(&self.buf),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// `None` when the file does not exist.
    fn load_optional(
        &mut self,
        slot: usize,
        dir: &Path,
        name: &str,
    ) -> Result<Option<&[u8]>, String> {
        match self.fill(slot, dir, name) {
            Ok(()) => Ok(Some(&self.buf)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// A file holding one number `f` finds in it.
    fn number(
        &mut self,
        slot: usize,
        dir: &Path,
        name: &str,
        f: fn(&[u8]) -> Option<u64>,
    ) -> Result<u64, String> {
        let n = f(self.load(slot, dir, name)?);
        n.ok_or_else(|| self.garbled())
    }

    /// The file just read is not what the kernel writes.
    fn garbled(&self) -> String {
        format!("{}: not what the kernel writes", self.path.display())
    }
}

/// Opens a kernel file in one system call (musl's `open` adds an `fcntl` for `O_CLOEXEC`); O_NONBLOCK so
/// that a FIFO planted under a configured root cannot hang the loop in open.
pub(crate) fn open(path: &Path) -> io::Result<OwnedFd> {
    let mut c_path = Vec::with_capacity(path.as_os_str().len() + 1);
    c_path.extend_from_slice(path.as_os_str().as_bytes());
    if c_path.contains(&0) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    c_path.push(0);
    // SAFETY: a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The whole file from its start into `buf`, at most [`MAX_FILE`] bytes. A kernel file (a `seq_file`)
/// fills a read up to its end, so a short read is the end and one call is enough; a full one reads on.
pub(crate) fn read_whole(fd: &OwnedFd, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    buf.reserve(4096);
    loop {
        let room = MAX_FILE + 1 - buf.len();
        let at = buf.len() as libc::off_t;
        let spare = buf.spare_capacity_mut();
        let want = spare.len().min(room);
        // SAFETY: reads at most `want` bytes into the vector's spare capacity.
        let n = unsafe { libc::pread(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let n = n as usize;
        // SAFETY: the kernel wrote those `n` bytes.
        unsafe { buf.set_len(buf.len() + n) };
        if buf.len() > MAX_FILE {
            return Err(io::ErrorKind::FileTooLarge.into());
        }
        if n < want {
            return Ok(());
        }
        buf.reserve(buf.len());
    }
}

#[cfg(test)]
mod tests;
