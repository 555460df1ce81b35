//! The spool: messages that cannot be delivered now, kept on disk (`spool_dir`) so that a restart or a
//! power cut during an outage loses nothing. The bytes are `format`'s; this is the thin file side the
//! main loop drives: it decides nothing about when (see `agent.rs`), and never blocks on anything but
//! the disk.
//!
//! Flash wear: segments are append-only, one `write` and one `fdatasync` per batch (the loop makes one
//! batch a tick at most), never rewritten; a segment is deleted once every record of it is acknowledged,
//! and the oldest is dropped whole when the next batch would take the spool past its bound.
//!
//! Written for size (the aarch64 binary's budget): a `Vec` of segments, libc's directory listing, and
//! messages read back by [`Message::from_bytes`] rather than decoded.

pub mod format;

use crate::mqtt::session::Tag;
use crate::mqtt::Message;
use format::{Head, Step, HEADER, RECORD_HEAD};
use std::fs::{File, OpenOptions};
use std::io::Write;

/// Tags of replayed records: this bit, and the segment's sequence number (discovery's tags are small).
pub const TAG: Tag = 1 << 63;
const HEAD: u64 = HEADER.len() as u64;

struct Segment {
    seq: u64,
    /// Bytes in the file (what counts against the bound), and where its readable records end.
    size: u64,
    end: u64,
    records: u64,
    /// Where the next record to replay starts, how many were handed out and how many acknowledged.
    read_at: u64,
    replayed: u64,
    acked: u64,
}

pub struct Spool {
    pub dir: String,
    max: u64,
    /// A segment takes new batches until it is this large.
    segment_max: u64,
    /// Held for the process's life: the lock on `dir/lock`.
    _lock: File,
    /// Oldest first.
    segments: Vec<Segment>,
    size: u64,
    /// The last segment, open for appending while it takes batches.
    append: Option<File>,
    next_seq: u64,
    /// The segment being replayed, whole: its sequence number and bytes.
    reading: Option<(u64, Vec<u8>)>,
    /// Messages for the next batch, oldest first.
    pub pending: Vec<Message>,
    /// New messages go to the spool, not to the session, until it has caught up (see `agent.rs`).
    pub engaged: bool,
    /// Messages dropped at the bound since the last call to `take_lost`.
    lost: u64,
    /// Warnings about what was found at start: one line each, for the caller to log.
    pub found: Vec<String>,
}

/// The spool in `dir`, with what it holds from an earlier run; or why not, for the caller to log before
/// going on with memory only.
#[inline(never)]
pub fn open(dir: &str, max: u64) -> Result<Spool, String> {
    use std::os::unix::io::AsRawFd;
    let refuse = |why: &dyn std::fmt::Display| {
        format!("spool {dir}: {why}: messages are kept in memory only")
    };
    // Missing, not a directory, read-only, not ours: opening the lock file says which.
    let lock_path = format!("{dir}/lock");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| refuse(&format_args!("{lock_path}: {e}")))?;
    // SAFETY: a valid descriptor we own; flock has no memory arguments.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(refuse(&format_args!(
            "in use by another agent (its lock {lock_path} is held)"
        )));
    }
    let seqs = list(dir);
    let mut s = Spool {
        dir: dir.to_owned(),
        max,
        segment_max: (max / 16).clamp(4096, 1 << 20),
        _lock: lock,
        segments: Vec::new(),
        size: 0,
        append: None,
        next_seq: seqs.last().map_or(0, |l| l + 1),
        reading: None,
        pending: Vec::new(),
        engaged: false,
        lost: 0,
        found: Vec::new(),
    };
    for seq in seqs {
        let path = s.path(seq);
        let bytes = crate::start_file::read(&path, max as usize).map_err(|e| refuse(&e))?;
        let why = match format::head(&bytes) {
            Head::Ours => {
                s.scan(seq, &path, &bytes);
                continue;
            }
            // Made, then the power went before its first write.
            _ if bytes.is_empty() => {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            Head::Newer(v) => format!("was written by a newer agent (format {v}); left as it is"),
            Head::Foreign => "is no spool segment".into(),
        };
        return Err(refuse(&format_args!("{path} {why}")));
    }
    s.engaged = s.unread() > 0;
    Ok(s)
}

/// The sequence numbers of the segments in `dir`, sorted.
fn list(dir: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    let Ok(c) = std::ffi::CString::new(dir) else {
        return seqs;
    };
    // SAFETY: a NUL-terminated path; each entry is read before the next readdir, and the stream
    // closed once.
    unsafe {
        let d = libc::opendir(c.as_ptr());
        if d.is_null() {
            return seqs;
        }
        loop {
            let e = libc::readdir(d);
            if e.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*e).d_name.as_ptr());
            seqs.extend(format::seq_of(name.to_bytes()));
        }
        libc::closedir(d);
    }
    seqs.sort_unstable();
    seqs
}

impl Spool {
    fn path(&self, seq: u64) -> String {
        let mut p = self.dir.clone() + "/";
        format::push_name(seq, &mut p);
        p
    }

    /// Takes in a segment found at start: where its readable records end, and how many there are. A
    /// damaged or cut record ends it, with one warning.
    fn scan(&mut self, seq: u64, path: &str, bytes: &[u8]) {
        let mut at = HEADER.len();
        let mut n = 0;
        while let Step::Record(len) = format::step(&bytes[at..]) {
            at += len;
            n += 1;
        }
        if at < bytes.len() {
            self.found.push(format!(
                "spool {path}: the record at byte {at} is cut short or damaged: the {n} records \
                 before it are replayed, the rest of this segment is not"
            ));
        }
        let size = bytes.len() as u64;
        self.size += size;
        self.segments.push(Segment {
            seq,
            size,
            end: at as u64,
            records: n,
            read_at: HEAD,
            replayed: 0,
            acked: 0,
        });
    }

    /// Records on disk not yet handed out.
    pub fn unread(&self) -> u64 {
        self.segments.iter().map(|s| s.records - s.replayed).sum()
    }

    /// Records on disk not yet acknowledged.
    pub fn waiting(&self) -> u64 {
        self.segments.iter().map(|s| s.records - s.acked).sum()
    }

    /// The next record to send, oldest first, with its tag; `None` when all are out.
    #[inline(never)]
    pub fn next(&mut self) -> Option<(Message, Tag)> {
        loop {
            let i = self.segments.iter().position(|s| s.read_at < s.end)?;
            let seq = self.segments[i].seq;
            let end = self.segments[i].end;
            if !matches!(&self.reading, Some((r, b)) if *r == seq && b.len() as u64 >= end) {
                self.reading = crate::start_file::read(&self.path(seq), end as usize)
                    .ok()
                    .filter(|b| b.len() as u64 >= end)
                    .map(|b| (seq, b));
            }
            let seg = &mut self.segments[i];
            let record = self.reading.as_ref().and_then(|(_, b)| {
                let rest = &b[seg.read_at as usize..end as usize];
                match format::step(rest) {
                    Step::Record(len) => Some((len, Message::from_bytes(&rest[RECORD_HEAD..len]))),
                    _ => None,
                }
            });
            // Gone, shorter than we wrote, or changed under us: nothing more of it can be read.
            let Some((len, m)) = record else {
                seg.end = seg.read_at;
                seg.records = seg.replayed;
                continue;
            };
            seg.read_at += len as u64;
            seg.replayed += 1;
            match m {
                Some(m) => return Some((m, TAG | seq)),
                // Whole and checksummed, yet no PUBLISH of ours: as good as acknowledged.
                None => seg.acked += 1,
            }
        }
    }

    /// The broker acknowledged a replayed record (or its QoS 0 bytes went out). Segments whose every
    /// record is out and acknowledged are deleted.
    pub fn acked(&mut self, tag: Tag) {
        if let Some(seg) = self.segments.iter_mut().find(|s| TAG | s.seq == tag) {
            seg.acked += 1;
        }
        while let Some(i) =
            (self.segments.iter()).position(|s| s.read_at >= s.end && s.acked >= s.replayed)
        {
            self.remove(i);
        }
    }

    fn remove(&mut self, i: usize) {
        let seg = self.segments.remove(i);
        self.size -= seg.size;
        if self.segments.len() == i {
            self.append = None; // it was the last: the next batch starts a new one
        }
        if matches!(self.reading, Some((r, _)) if r == seg.seq) {
            self.reading = None;
        }
        let _ = std::fs::remove_file(self.path(seg.seq));
    }

    /// Messages dropped at the bound since the last call.
    pub fn take_lost(&mut self) -> u64 {
        std::mem::take(&mut self.lost)
    }

    /// Writes `pending` as one batch: one `write`, one `fdatasync`. The oldest segments go first when it
    /// would not fit under the bound, and the batch's own oldest messages if it alone is too large. On
    /// an error the batch is left in `pending` and the segment as it was before it.
    #[inline(never)]
    pub fn flush(&mut self) -> Result<usize, String> {
        let cost = |m: &Message| (RECORD_HEAD + m.bytes().len()) as u64;
        // The newest messages that fit in an empty spool (none larger than a record may be).
        let mut from = self.pending.len();
        let mut records = 0;
        while let Some(m) = from.checked_sub(1).map(|i| &self.pending[i]) {
            if m.bytes().len() > format::MAX_BODY || HEAD + records + cost(m) > self.max {
                break;
            }
            records += cost(m);
            from -= 1;
        }
        self.lost += from as u64;
        self.pending.drain(..from);
        if self.pending.is_empty() {
            return Ok(0);
        }
        if self
            .segments
            .last()
            .is_none_or(|s| s.size >= self.segment_max)
        {
            self.append = None;
        }
        loop {
            let header = if self.append.is_none() { HEAD } else { 0 };
            if self.size + records + header <= self.max || self.segments.is_empty() {
                break;
            }
            let oldest = &self.segments[0];
            self.lost += oldest.records - oldest.replayed;
            self.remove(0);
        }
        let new = self.append.is_none();
        let mut batch = Vec::with_capacity((HEAD + records) as usize);
        if new {
            batch.extend_from_slice(&HEADER);
        }
        for m in &self.pending {
            format::record(m.bytes(), &mut batch);
        }
        let (seq, before) = match self.segments.last() {
            Some(s) if !new => (s.seq, s.size),
            _ => (self.next_seq, 0),
        };
        let path = self.path(seq);
        self.write(&path, &batch, before)
            .map_err(|e| format!("spool {path}: {e}"))?;
        if new {
            self.next_seq += 1;
            self.segments.push(Segment {
                seq,
                size: 0,
                end: 0,
                records: 0,
                read_at: HEAD,
                replayed: 0,
                acked: 0,
            });
        }
        let n = self.pending.len();
        self.pending.clear();
        let size = batch.len() as u64;
        self.size += size;
        if let Some(seg) = self.segments.last_mut() {
            seg.size += size;
            seg.end += size;
            seg.records += n as u64;
        }
        Ok(n)
    }

    /// Appends `batch` to the open segment (`before` bytes long), or to a new one, and syncs it; a batch
    /// that failed part-way is cut off again, a new segment it failed to start removed.
    fn write(&mut self, path: &str, batch: &[u8], before: u64) -> std::io::Result<()> {
        if self.append.is_none() {
            let f = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(path)?;
            self.append = Some(f);
        }
        let Some(f) = self.append.as_mut() else {
            return Ok(());
        };
        let r = f.write_all(batch).and_then(|_| f.sync_data());
        if r.is_err() {
            let _ = f.set_len(before);
            self.append = None;
            if before == 0 {
                let _ = std::fs::remove_file(path);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqttrs::QoS;

    struct Dir(String);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("bmct-spool-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d.to_str().unwrap().to_owned())
        }
        fn segments(&self) -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(&self.0)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".spool"))
                .collect();
            v.sort();
            v
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn msg(i: usize) -> Message {
        Message::publish(&format!("t/{i}"), &[b'x'; 90], QoS::AtLeastOnce, false).unwrap()
    }

    fn write(sp: &mut Spool, range: std::ops::Range<usize>) {
        sp.pending.extend(range.map(msg));
        sp.flush().unwrap();
    }

    fn replay_all(sp: &mut Spool) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some((m, tag)) = sp.next() {
            out.push(m);
            sp.acked(tag);
        }
        out
    }

    #[test]
    fn batches_survive_a_restart_in_order_and_go_once_acknowledged() {
        let d = Dir::new("order");
        let mut sp = open(&d.0, 1 << 20).unwrap();
        for i in 0..10 {
            write(&mut sp, i * 10..i * 10 + 10);
        }
        assert_eq!(sp.waiting(), 100);
        drop(sp);
        let mut sp = open(&d.0, 1 << 20).unwrap();
        assert!(sp.engaged && sp.found.is_empty());
        assert_eq!(replay_all(&mut sp), (0..100).map(msg).collect::<Vec<_>>());
        assert_eq!(d.segments(), Vec::<String>::new(), "all acknowledged");
        // Written after a replay has caught up: a fresh segment.
        write(&mut sp, 100..101);
        assert_eq!(replay_all(&mut sp), vec![msg(100)]);
        assert!(d.segments().is_empty());
    }

    #[test]
    fn unacknowledged_records_stay_on_disk() {
        let d = Dir::new("unacked");
        let mut sp = open(&d.0, 1 << 20).unwrap();
        write(&mut sp, 0..3);
        let (first, _) = sp.next().unwrap();
        assert_eq!(first, msg(0));
        drop(sp);
        let mut sp = open(&d.0, 1 << 20).unwrap();
        assert_eq!(replay_all(&mut sp), (0..3).map(msg).collect::<Vec<_>>());
    }

    #[test]
    fn a_cut_last_record_ends_the_replay_with_one_warning() {
        let d = Dir::new("cut");
        let mut sp = open(&d.0, 1 << 20).unwrap();
        write(&mut sp, 0..5);
        drop(sp);
        let path = format!("{}/{}", d.0, d.segments()[0]);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 30)
            .unwrap();
        let mut sp = open(&d.0, 1 << 20).unwrap();
        assert_eq!(sp.found.len(), 1, "{:?}", sp.found);
        assert!(sp.found[0].contains(&path), "{:?}", sp.found);
        assert_eq!(replay_all(&mut sp), (0..4).map(msg).collect::<Vec<_>>());
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_them() {
        let d = Dir::new("bound");
        let max = 1 << 16;
        let mut sp = open(&d.0, max).unwrap();
        let mut written = 0;
        for i in 0..40 {
            write(&mut sp, i * 20..i * 20 + 20);
            written += 20;
            assert!(sp.size <= max);
        }
        let lost = sp.take_lost();
        assert!(lost > 0);
        let got = replay_all(&mut sp);
        assert_eq!(got.len() as u64, written - lost);
        assert_eq!(
            got,
            (lost as usize..800).map(msg).collect::<Vec<_>>(),
            "the newest"
        );
        // A batch larger than the whole bound keeps its newest messages.
        write(&mut sp, 0..1000);
        let kept = 1000 - sp.take_lost() as usize;
        assert_eq!(
            replay_all(&mut sp),
            (1000 - kept..1000).map(msg).collect::<Vec<_>>()
        );
    }

    #[test]
    fn faults_refuse_the_spool_naming_the_path() {
        let d = Dir::new("faults");
        let missing = format!("{}/none", d.0);
        assert!(open(&missing, 1 << 20).err().unwrap().contains(&missing));
        let file = format!("{}/file", d.0);
        std::fs::write(&file, b"x").unwrap();
        assert!(open(&file, 1 << 20)
            .err()
            .unwrap()
            .contains("Not a directory"));
        let held = open(&d.0, 1 << 20).unwrap();
        let e = open(&d.0, 1 << 20).err().unwrap();
        assert!(e.contains("in use by another agent"), "{e}");
        drop(held);
        let seg = format!("{}/{}", d.0, format::name(7));
        let mut newer = format::HEADER.to_vec();
        newer[6] = 9;
        std::fs::write(&seg, &newer).unwrap();
        let e = open(&d.0, 1 << 20).err().unwrap();
        assert!(
            e.contains(&seg) && e.contains("newer agent (format 9)"),
            "{e}"
        );
        std::fs::write(&seg, b"not ours").unwrap();
        let e = open(&d.0, 1 << 20).err().unwrap();
        assert!(e.contains(&seg) && e.contains("no spool segment"), "{e}");
        assert_eq!(std::fs::read(&seg).unwrap(), b"not ours", "left alone");
    }
}
