//! The spool: messages that cannot be delivered now, kept on disk (`spool_dir`) so that a restart or a
//! power cut during an outage loses nothing. The bytes are `format`'s; this is the thin file side the
//! main loop drives: it decides nothing about when (see `agent.rs`), and never blocks on anything but
//! the disk.
//!
//! Flash wear: segments are append-only, one `write` and one `fdatasync` per batch (the loop makes one
//! batch a tick at most), never rewritten; a segment is deleted once every record of it is acknowledged,
//! and the oldest is dropped whole when the next batch would take the spool past its bound.

pub mod format;

use crate::mqtt::session::Tag;
use crate::mqtt::Message;
use format::{Head, Step};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;

/// Tags of replayed records: this bit, and the segment's sequence number (discovery's tags are small).
pub const TAG: Tag = 1 << 63;

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
    segments: VecDeque<Segment>,
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

/// `ERROR`-free ways a spool can be refused: the caller logs the text and goes on with memory only.
pub fn open(dir: &str, max: u64) -> Result<Spool, String> {
    use std::os::unix::io::AsRawFd;
    let refuse = |why: &dyn std::fmt::Display| {
        format!("spool {dir}: {why}: messages are kept in memory only")
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(refuse(&"not a directory")),
        Err(e) => return Err(refuse(&e)),
    }
    let lock_path = format!("{dir}/lock");
    let lock = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) => return Err(refuse(&format_args!("{lock_path}: {e}"))),
    };
    // SAFETY: a valid descriptor we own; flock has no memory arguments.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(refuse(&format_args!(
            "in use by another agent (its lock {lock_path} is held)"
        )));
    }
    let mut seqs: Vec<u64> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| format::seq_of(e.ok()?.file_name().to_str()?))
            .collect(),
        Err(e) => return Err(refuse(&e)),
    };
    seqs.sort_unstable();
    let mut s = Spool {
        dir: dir.to_owned(),
        max,
        segment_max: (max / 16).clamp(4096, 1 << 20),
        _lock: lock,
        segments: VecDeque::new(),
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
        if bytes.is_empty() {
            // Made, then the power went before its first write.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        match format::head(&bytes) {
            Head::Ours => {}
            Head::Newer(v) => {
                return Err(refuse(&format_args!(
                    "{path} was written by a newer agent (format {v}); left as it is"
                )))
            }
            Head::Foreign => return Err(refuse(&format_args!("{path} is no spool segment"))),
        }
        let (end, records) = s.scan(&path, &bytes);
        s.size += bytes.len() as u64;
        s.segments.push_back(Segment {
            seq,
            size: bytes.len() as u64,
            end,
            records,
            read_at: format::HEADER.len() as u64,
            replayed: 0,
            acked: 0,
        });
    }
    s.engaged = s.unread() > 0;
    Ok(s)
}

impl Spool {
    fn path(&self, seq: u64) -> String {
        format!("{}/{}", self.dir, format::name(seq))
    }

    /// Where a segment's readable records end, and how many there are; a damaged or cut record ends it,
    /// with one warning.
    fn scan(&mut self, path: &str, bytes: &[u8]) -> (u64, u64) {
        let mut at = format::HEADER.len();
        let mut n = 0;
        loop {
            match format::step(&bytes[at..]) {
                Step::Record(len) => {
                    at += len;
                    n += 1;
                }
                Step::More(_) if at == bytes.len() => break,
                _ => {
                    self.found.push(format!(
                        "spool {path}: the record at byte {at} is cut short or damaged: the {n} \
                         records before it are replayed, the rest of this segment is not"
                    ));
                    break;
                }
            }
        }
        (at as u64, n)
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
    pub fn next(&mut self) -> Option<(Message, Tag)> {
        loop {
            let seg = self.segments.iter_mut().find(|s| s.read_at < s.end)?;
            let stale = match &self.reading {
                Some((seq, bytes)) => *seq != seg.seq || (bytes.len() as u64) < seg.end,
                None => true,
            };
            if stale {
                let path = format!("{}/{}", self.dir, format::name(seg.seq));
                match crate::start_file::read(&path, seg.end as usize) {
                    Ok(b) if b.len() as u64 >= seg.end => self.reading = Some((seg.seq, b)),
                    // Gone or shorter than we wrote: nothing more of it can be read.
                    _ => {
                        seg.end = seg.read_at;
                        seg.records = seg.replayed;
                        continue;
                    }
                }
            }
            let bytes = &self.reading.as_ref()?.1;
            let at = seg.read_at as usize;
            let Step::Record(len) = format::step(&bytes[at..seg.end as usize]) else {
                seg.end = seg.read_at;
                continue;
            };
            seg.read_at += len as u64;
            seg.replayed += 1;
            let m = format::message(&bytes[at + format::RECORD_HEAD..at + len]);
            if seg.read_at >= seg.end {
                self.reading = None;
            }
            match m {
                Some(m) => return Some((m, TAG | seg.seq)),
                // Whole and checksummed, yet no PUBLISH of ours: count it as acknowledged.
                None => seg.acked += 1,
            }
        }
    }

    /// The broker acknowledged a replayed record (or its QoS 0 bytes went out).
    pub fn acked(&mut self, tag: Tag) {
        if let Some(seg) = self.segments.iter_mut().find(|s| TAG | s.seq == tag) {
            seg.acked += 1;
        }
        self.remove_done();
    }

    /// Deletes the segments whose every record is out and acknowledged.
    fn remove_done(&mut self) {
        while let Some(i) = self
            .segments
            .iter()
            .position(|s| s.read_at >= s.end && s.acked >= s.replayed)
        {
            self.remove(i);
        }
    }

    fn remove(&mut self, i: usize) {
        let Some(seg) = self.segments.remove(i) else {
            return;
        };
        self.size -= seg.size;
        if self.segments.len() == i {
            self.append = None; // it was the last: the next batch starts a new one
        }
        if self.reading.as_ref().is_some_and(|r| r.0 == seg.seq) {
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
    pub fn flush(&mut self) -> Result<usize, String> {
        let head = format::HEADER.len() as u64;
        let cost = |m: &Message| (format::RECORD_HEAD + m.bytes().len()) as u64;
        // The newest messages that fit in an empty spool, with a segment header.
        let mut from = self.pending.len();
        let mut need = head;
        while from > 0 && need + cost(&self.pending[from - 1]) <= self.max {
            need += cost(&self.pending[from - 1]);
            from -= 1;
        }
        self.lost += from as u64;
        self.pending.drain(..from);
        self.pending.retain(|m| m.bytes().len() <= format::MAX_BODY);
        if self.pending.is_empty() {
            return Ok(0);
        }
        if self
            .segments
            .back()
            .is_none_or(|s| s.size >= self.segment_max)
        {
            self.append = None;
        }
        let records = need - head;
        let header = |s: &Spool| if s.append.is_none() { head } else { 0 };
        while self.size + records + header(self) > self.max {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            self.lost += oldest.records - oldest.replayed;
            self.remove(0);
        }
        let new = self.append.is_none();
        let seq = match self.segments.back() {
            Some(s) if !new => s.seq,
            _ => self.next_seq,
        };
        let mut batch = Vec::with_capacity((records + head) as usize);
        if new {
            batch.extend_from_slice(&format::HEADER);
        }
        for m in &self.pending {
            format::record(m.bytes(), &mut batch);
        }
        let path = self.path(seq);
        self.write(&path, &batch)
            .map_err(|e| format!("spool {path}: {e}"))?;
        let n = self.pending.len() as u64;
        self.pending.clear();
        let size = batch.len() as u64;
        self.size += size;
        if new {
            self.next_seq += 1;
            self.segments.push_back(Segment {
                seq,
                size: 0,
                end: 0,
                records: 0,
                read_at: head,
                replayed: 0,
                acked: 0,
            });
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.size += size;
            seg.end += size;
            seg.records += n;
        }
        Ok(n as usize)
    }

    /// Appends `batch` to the open segment, or to a new one, and syncs it; undoes a part-written batch.
    fn write(&mut self, path: &str, batch: &[u8]) -> std::io::Result<()> {
        if self.append.is_none() {
            self.append = Some(
                OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(path)?,
            );
        }
        let Some(f) = self.append.as_mut() else {
            return Ok(());
        };
        let before = f.metadata()?.len();
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
            .contains("not a directory"));
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
