//! What waits to go to the broker, and the QoS 1 messages awaiting their PUBACK: the outbound queue and
//! the in-flight window, apart from the protocol in `session.rs`.
//!
//! Invariants:
//! - Messages leave in the order they were queued, kept ones (see [`Outbox::push_kept`]) first;
//!   `inflight` holds the QoS 1 ones not yet acknowledged, oldest first, and on disconnect they go back to
//!   the front of their queue, marked DUP.
//! - `queue` never holds more than `max_queued` messages, nor more than `max_queued_bytes` bytes (see
//!   [`cost`]; `queued_bytes` is the sum): past either the oldest are dropped and counted. `kept` is never
//!   dropped from; its producer bounds it.
//! - At most `max_inflight` QoS 1 messages await a PUBACK, and no two of them share a packet id.
//! - The in-flight messages whose bytes the socket has taken are a prefix of `inflight` (`stamped`).

use super::message::Message;
use std::collections::VecDeque;
use std::time::Instant;

/// The queue's byte bound unless configured: 16 MiB of a Raspberry Pi Zero's 512 MB, some 130,000
/// messages of one figure each (such a PUBLISH is about 100 bytes, plus 24 for its slot in the queue).
/// The message bound's default (10,000) stays well below it; its maximum (10,000,000) does not.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 16 << 20;

/// Names a kept message (see [`Outbox::push_kept`]) when it is delivered.
pub type Tag = u64;

#[derive(Debug)]
struct Inflight {
    pid: u16,
    /// Where the PUBLISH ends in this connection's outbound byte stream.
    end: u64,
    /// When the socket took its last byte; `None` while part of it still waits to be written.
    taken_at: Option<Instant>,
    tag: Option<Tag>,
    message: Message,
}

/// A PUBACK for a packet id not in flight.
#[derive(Debug, PartialEq)]
pub struct NotInFlight;

pub struct Outbox {
    max_inflight: usize,
    max_queued: usize,
    max_queued_bytes: usize,
    queue: VecDeque<Message>,
    queued_bytes: usize,
    /// Messages the queue bound never drops, sent before `queue`.
    kept: VecDeque<(Message, Tag)>,
    inflight: VecDeque<Inflight>,
    /// How many in-flight messages, from the front, the socket has taken whole.
    stamped: usize,
    pids_in_use: Box<[u64; 1024]>,
    /// The in-flight window filled up and has not drained to half yet (see `window_open`).
    window_shut: bool,
    next_pid: u16,
    dropped: u64,
}

impl Outbox {
    pub fn new(max_inflight: usize, max_queued: usize, max_queued_bytes: usize) -> Outbox {
        Outbox {
            max_inflight,
            max_queued,
            max_queued_bytes,
            queue: VecDeque::new(),
            queued_bytes: 0,
            kept: VecDeque::new(),
            inflight: VecDeque::new(),
            stamped: 0,
            pids_in_use: Box::new([0; 1024]),
            window_shut: false,
            next_pid: 1,
            dropped: 0,
        }
    }

    /// The connection is gone. Unacknowledged messages go back to the front of their queue, marked DUP.
    pub fn requeue_inflight(&mut self) {
        self.window_shut = false;
        while let Some(mut f) = self.inflight.pop_back() {
            self.release_pid(f.pid);
            f.message.set_dup();
            match f.tag {
                Some(tag) => self.kept.push_front((f.message, tag)),
                None => {
                    self.queued_bytes += cost(&f.message);
                    self.queue.push_front(f.message);
                }
            }
        }
        self.stamped = 0;
        self.enforce_queue_bound();
    }

    /// Queues a message; when the queue is full the oldest ones are dropped and counted. One larger than
    /// the whole byte bound is dropped (and counted) itself, rather than emptying the queue first.
    pub fn push(&mut self, message: Message) {
        let cost = cost(&message);
        if cost > self.max_queued_bytes {
            self.dropped += 1;
            return;
        }
        self.queued_bytes += cost;
        self.queue.push_back(message);
        self.enforce_queue_bound();
    }

    fn enforce_queue_bound(&mut self) {
        while self.queue.len() > self.max_queued || self.queued_bytes > self.max_queued_bytes {
            let Some(oldest) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= cost(&oldest);
            self.dropped += 1;
        }
    }

    /// Queues a message the queue bound never drops: it goes out before the ordinary queue. The caller
    /// bounds how many it keeps here.
    pub fn push_kept(&mut self, message: Message, tag: Tag) {
        self.kept.push_back((message, tag));
    }

    /// Moves the ordinary queue (not the kept messages) to the end of `into`, oldest first.
    pub fn take_queue(&mut self, into: &mut Vec<Message>) {
        while let Some(m) = self.queue.pop_front() {
            into.push(m);
        }
        self.queued_bytes = 0;
    }

    /// Messages dropped for want of room since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Messages waiting to be sent, kept ones included.
    pub fn queued(&self) -> usize {
        self.queue.len() + self.kept.len()
    }

    /// QoS 1 messages awaiting their PUBACK.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.kept.is_empty() && self.inflight.is_empty()
    }

    /// How many more messages may be queued before they would only wait: for the window or for room.
    pub fn room(&self) -> usize {
        let limit = self.max_inflight.min(self.max_queued);
        limit.saturating_sub(self.queued())
    }

    /// The socket has taken the first `written` bytes of this connection's stream at `now`: in-flight
    /// PUBLISHes taken whole are stamped, their PUBACK awaited from now. O(1) amortised per message.
    pub fn stamp(&mut self, written: u64, now: Instant) {
        while let Some(f) = self.inflight.get_mut(self.stamped) {
            if f.end > written {
                break;
            }
            f.taken_at = Some(now);
            self.stamped += 1;
        }
    }

    /// When the socket took the oldest in-flight message, if it has.
    pub fn oldest_taken(&self) -> Option<Instant> {
        self.inflight.front()?.taken_at
    }

    /// The broker acknowledged `pid`: `None` when no message of that id is in flight, otherwise the tag
    /// of the message, if it was a kept one.
    pub fn acknowledge(&mut self, pid: u16) -> Result<Option<Tag>, NotInFlight> {
        // Brokers acknowledge in order, so the match is nearly always at the front.
        let at = self
            .inflight
            .iter()
            .position(|f| f.pid == pid)
            .ok_or(NotInFlight)?;
        let mut tag = None;
        if let Some(f) = self.inflight.remove(at) {
            self.release_pid(f.pid);
            if at < self.stamped {
                self.stamped -= 1;
            }
            tag = f.tag;
        }
        Ok(tag)
    }

    /// QoS 1 messages may go out now. Once the window has filled it stays shut until half of it has been
    /// acknowledged. Refilling after every PUBACK batch meant one small write, and one broker wake-up, per
    /// handful of messages: 30 to 45 ms of mostly kernel CPU per 9,000-message tick on loopback, against
    /// about 7 ms when the same messages go out in large batches (measured, 1,000 containers).
    fn window_open(&self) -> bool {
        let n = self.inflight.len();
        n < self.max_inflight && (!self.window_shut || n <= self.max_inflight / 2)
    }

    /// Moves messages into `out` while it is shorter than `limit` and the window lets them go: kept ones
    /// first, QoS 1 ones into the window under a fresh packet id. `base` is where `out` starts in this
    /// connection's outbound stream. `delivered` hears the tag of every kept QoS 0 message written: no
    /// acknowledgement will come for it.
    pub fn fill(
        &mut self,
        out: &mut Vec<u8>,
        limit: usize,
        base: u64,
        mut delivered: impl FnMut(Tag),
    ) {
        if self.inflight.len() <= self.max_inflight / 2 {
            self.window_shut = false;
        }
        while out.len() < limit {
            let Some(front) = self.next_message() else {
                break;
            };
            if front.is_qos1() && !self.window_open() {
                break;
            }
            let (mut message, tag) = match self.kept.pop_front() {
                Some((m, tag)) => (m, Some(tag)),
                None => match self.queue.pop_front() {
                    Some(m) => {
                        self.queued_bytes -= cost(&m);
                        (m, None)
                    }
                    None => break,
                },
            };
            if message.is_qos1() {
                let pid = self.allocate_pid();
                message.set_pid(pid);
                out.extend_from_slice(message.bytes());
                self.inflight.push_back(Inflight {
                    pid,
                    end: base + out.len() as u64,
                    taken_at: None,
                    tag,
                    message,
                });
                self.window_shut |= self.inflight.len() >= self.max_inflight;
            } else {
                out.extend_from_slice(message.bytes());
                if let Some(tag) = tag {
                    delivered(tag);
                }
            }
        }
    }

    /// The message [`Outbox::fill`] takes next: kept ones first.
    fn next_message(&self) -> Option<&Message> {
        self.kept.front().map(|(m, _)| m).or(self.queue.front())
    }

    /// Queued QoS 1 messages wait for the window to reopen.
    pub fn waits_for_window(&self) -> bool {
        self.window_shut && self.next_message().is_some()
    }

    /// True when [`Outbox::fill`] would move ordinary queued messages out now.
    pub fn can_send_more(&self) -> bool {
        self.queue
            .front()
            .is_some_and(|m| !m.is_qos1() || self.window_open())
    }

    /// A packet id for a packet that is not kept in flight (SUBSCRIBE): taken from the PUBLISH id space,
    /// so it is none of those in flight, and free again at once.
    pub fn spare_pid(&mut self) -> u16 {
        let pid = self.allocate_pid();
        self.release_pid(pid);
        pid
    }

    fn allocate_pid(&mut self) -> u16 {
        // max_inflight is far below 65,535, so a free id is always found.
        loop {
            let pid = self.next_pid;
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            let (word, bit) = (usize::from(pid) / 64, pid % 64);
            if self.pids_in_use[word] & (1 << bit) == 0 {
                self.pids_in_use[word] |= 1 << bit;
                return pid;
            }
        }
    }

    fn release_pid(&mut self, pid: u16) {
        self.pids_in_use[usize::from(pid) / 64] &= !(1 << (pid % 64));
    }
}

/// What a queued message counts against the byte bound: its encoded bytes and its slot in the queue, so
/// that many tiny messages cannot hold much more memory than the bound says.
fn cost(m: &Message) -> usize {
    m.bytes().len() + std::mem::size_of::<Message>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqttrs::QoS;
    use std::time::Duration;

    fn msg(topic: &str) -> Message {
        Message::publish(topic, b"p", QoS::AtLeastOnce, false).unwrap()
    }

    #[test]
    fn messages_are_stamped_when_their_last_byte_is_taken() {
        let t0 = Instant::now();
        let mut o = Outbox::new(3, 5, DEFAULT_MAX_QUEUED_BYTES);
        for i in 0..3 {
            o.push(msg(&format!("t/{i}")));
        }
        let mut out = Vec::new();
        o.fill(&mut out, usize::MAX, 0, |_| {});
        let len = msg("t/0").bytes().len() as u64;
        let t1 = t0 + Duration::from_secs(1);
        o.stamp(2 * len - 1, t1);
        assert_eq!(o.stamped, 1);
        assert_eq!(o.inflight[0].taken_at, Some(t1));
        assert_eq!(o.inflight[1].taken_at, None);
        let t2 = t0 + Duration::from_secs(2);
        o.stamp(3 * len, t2);
        assert_eq!(o.stamped, 3);
        assert_eq!(o.inflight[1].taken_at, Some(t2));
        // An acknowledgement out of order keeps the stamped prefix right.
        assert_eq!(o.acknowledge(2), Ok(None));
        assert_eq!(o.stamped, 2);
        assert_eq!(o.inflight[1].taken_at, Some(t2));
    }

    #[test]
    fn queued_bytes_follow_messages_out_and_back() {
        let c = cost(&msg("t/0"));
        let mut o = Outbox::new(3, 100, 2 * c);
        o.push(msg("t/0"));
        o.push(msg("t/1"));
        assert_eq!(o.queued_bytes, 2 * c);
        let mut out = Vec::new();
        o.fill(&mut out, usize::MAX, 0, |_| {});
        assert_eq!(
            (o.queued_bytes, o.inflight()),
            (0, 2),
            "sent: no longer queued"
        );
        o.push(msg("t/2"));
        // Back in front of t/2 after a disconnect: three over a bound of two, so the oldest goes.
        o.requeue_inflight();
        assert_eq!(
            (o.queued(), o.take_dropped(), o.queued_bytes),
            (2, 1, 2 * c)
        );
        // One larger than the whole bound is dropped itself; the queue keeps what it had.
        let huge = Message::publish("t/3", &[b'x'; 200], QoS::AtLeastOnce, false).unwrap();
        o.push(huge);
        assert_eq!(
            (o.queued(), o.take_dropped(), o.queued_bytes),
            (2, 1, 2 * c)
        );
        out.clear();
        o.fill(&mut out, usize::MAX, 0, |_| {});
        assert_eq!(o.queued_bytes, 0);
    }
}
