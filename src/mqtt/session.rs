//! The MQTT 3.1.1 client session as a pure state machine.
//!
//! Methods change state and fill an output buffer; none touches the network or reads a clock. The caller
//! owns the socket: it calls [`Session::connected`] once a transport is up, feeds received bytes to
//! [`Session::receive`], writes [`Session::outbound`] and reports progress with [`Session::consumed`], calls
//! [`Session::poll`] at the deadline it returned, and [`Session::disconnected`] when the transport is gone.
//! Any `Err` means the connection is no longer usable: drop it.
//!
//! Invariants:
//! - Messages leave in the order they were queued; `inflight` holds the QoS 1 ones not yet acknowledged,
//!   oldest first, and on disconnect they go back to the front of the queue, marked DUP.
//! - `queue` never holds more than `max_queued` messages: the oldest are dropped and counted.
//! - At most `max_inflight` QoS 1 messages await a PUBACK, and no two of them share a packet id.
//! - Nothing the broker sends is kept beyond a bound: `rx` holds at most one incomplete packet (64 KiB)
//!   plus the bytes of one `receive` call; `events` holds at most one event of each kind (the latest
//!   message per subscription); PUBLISHes on topics we never subscribed to are counted, not kept; and the
//!   caller stops reading while more than [`INPUT_OUT_LIMIT`] bytes wait to be written (see
//!   [`Session::accepts_input`]), so the PUBACKs we owe cannot pile up either.

use super::frame::{self, FrameError, Incoming};
use super::message::Message;
use mqttrs::{
    Connect, ConnectReturnCode, LastWill, Packet, Pid, Protocol, QoS, Subscribe, SubscribeTopic,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The outbound buffer is refilled from the queue only below this size, so a slow socket holds at most
/// about this much encoded data twice (once here, once in the queue or window).
const OUTBOUND_HIGH_WATER: usize = 64 * 1024;

/// While more than this waits to be written, the caller reads nothing more from the broker. Our own
/// messages fill the outbound buffer to about [`OUTBOUND_HIGH_WATER`]; the rest is PUBACKs we owe for
/// incoming QoS 1 PUBLISHes. A broker that floods QoS 1 and does not read cannot make us queue its
/// acknowledgements without end: we stop taking its packets (TCP then holds the broker back) and the
/// caller's write-stall timeout ends the connection.
const INPUT_OUT_LIMIT: usize = 2 * OUTBOUND_HIGH_WATER;

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub client_id: String,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    /// Sent first after every CONNACK (the retained `online` availability message).
    pub birth: Option<Message>,
    /// Topic filters subscribed at QoS 1 after every CONNACK (clean sessions forget them).
    pub subscriptions: Vec<String>,
    pub max_inflight: usize,
    pub max_queued: usize,
    pub connack_timeout: Duration,
    pub ack_timeout: Duration,
}

/// What happened, for the caller to log or act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected {
        session_present: bool,
    },
    /// A PUBLISH from the broker on a topic we subscribed to: only the latest per subscription is kept
    /// until the caller takes the events.
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Subscribed {
        pid: u16,
        any_refused: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    Protocol(FrameError),
    /// The broker refused the CONNECT.
    Refused(ConnectReturnCode),
    /// A packet that is well formed but wrong in this state.
    Unexpected(&'static str),
    Timeout(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Refused(code) => write!(f, "connection refused: {}", refusal_text(*code)),
            Error::Unexpected(what) => write!(f, "protocol error: {what}"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
        }
    }
}

pub fn refusal_text(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Accepted => "accepted",
        ConnectReturnCode::RefusedProtocolVersion => "the broker does not support MQTT 3.1.1",
        ConnectReturnCode::RefusedIdentifierRejected => "client identifier rejected",
        ConnectReturnCode::ServerUnavailable => "server unavailable",
        ConnectReturnCode::BadUsernamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorised",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Down,
    AwaitingConnack { deadline: Instant },
    Up { ping_deadline: Option<Instant> },
}

#[derive(Debug)]
struct Inflight {
    pid: u16,
    sent_at: Instant,
    message: Message,
}

pub struct Session {
    opts: Options,
    state: State,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    rx: Vec<u8>,
    queue: VecDeque<Message>,
    inflight: VecDeque<Inflight>,
    pids_in_use: Box<[u64; 1024]>,
    /// The in-flight window filled up and has not drained to half yet (see `window_open`).
    window_shut: bool,
    next_pid: u16,
    last_sent: Option<Instant>,
    dropped: u64,
    /// At most one event per kind (per subscription for messages): see [`Session::push_event`].
    events: Vec<Event>,
    /// PUBLISHes on topics we never subscribed to, since the last [`Session::take_unsolicited`].
    unsolicited: u64,
    /// The last such topic, cut to [`UNSOLICITED_TOPIC_SHOWN`] bytes, for the log.
    unsolicited_topic: String,
}

const UNSOLICITED_TOPIC_SHOWN: usize = 100;

impl Session {
    pub fn new(opts: Options) -> Session {
        Session {
            opts,
            state: State::Down,
            out: Vec::new(),
            out_pos: 0,
            rx: Vec::new(),
            queue: VecDeque::new(),
            inflight: VecDeque::new(),
            pids_in_use: Box::new([0; 1024]),
            window_shut: false,
            next_pid: 1,
            last_sent: None,
            dropped: 0,
            events: Vec::new(),
            unsolicited: 0,
            unsolicited_topic: String::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// A transport is open: start the handshake.
    pub fn connected(&mut self, now: Instant) {
        self.reset_transport();
        self.write_connect();
        self.last_sent = Some(now);
        self.state = State::AwaitingConnack {
            deadline: now + self.opts.connack_timeout,
        };
    }

    /// The transport is gone. Unacknowledged messages go back to the front of the queue, marked DUP.
    pub fn disconnected(&mut self) {
        self.reset_transport();
        self.state = State::Down;
        self.window_shut = false;
        while let Some(mut f) = self.inflight.pop_back() {
            self.release_pid(f.pid);
            f.message.set_dup();
            self.queue.push_front(f.message);
        }
        self.enforce_queue_bound();
    }

    fn reset_transport(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        self.rx.clear();
    }

    /// Queues a message; when the queue is full the oldest one is dropped and counted.
    pub fn enqueue(&mut self, message: Message) {
        self.queue.push_back(message);
        self.enforce_queue_bound();
    }

    fn enforce_queue_bound(&mut self) {
        while self.queue.len() > self.opts.max_queued {
            self.queue.pop_front();
            self.dropped += 1;
        }
    }

    /// Messages dropped for want of room since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Nothing left to send or to wait for.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty() && self.outbound().is_empty()
    }

    /// True when queueing more would only make it wait: lets the caller feed messages as room opens.
    pub fn has_room(&self) -> bool {
        self.is_up() && self.queue.len() < self.opts.max_inflight.min(self.opts.max_queued)
    }

    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// PUBLISHes on topics we never subscribed to since the last call (acknowledged when QoS 1, otherwise
    /// ignored), and the last such topic.
    pub fn take_unsolicited(&mut self) -> Option<(u64, String)> {
        let n = std::mem::take(&mut self.unsolicited);
        (n > 0).then(|| (n, std::mem::take(&mut self.unsolicited_topic)))
    }

    /// Whether the caller may read more from the broker now: not while the outbound buffer holds more than
    /// [`INPUT_OUT_LIMIT`] bytes (see there).
    pub fn accepts_input(&self) -> bool {
        self.outbound().len() < INPUT_OUT_LIMIT
    }

    pub fn outbound(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Session::outbound`] were written.
    pub fn consumed(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// Bytes from the broker.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        // Taken out for the loop so packets can be handled in place, without a copy each.
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(bytes);
        let mut start = 0;
        let result = loop {
            match frame::frame_len(&rx[start..]) {
                Ok(Some(len)) => {
                    let handled = self.handle(now, &rx[start..start + len]);
                    start += len;
                    if let Err(e) = handled {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Error::Protocol(e)),
            }
        };
        rx.drain(..start);
        self.rx = rx;
        result
    }

    fn handle(&mut self, now: Instant, frame: &[u8]) -> Result<(), Error> {
        let packet = frame::decode(frame).map_err(Error::Protocol)?;
        match (self.state, packet) {
            (
                State::AwaitingConnack { .. },
                Incoming::Connack {
                    session_present,
                    code,
                },
            ) => {
                if code != ConnectReturnCode::Accepted {
                    return Err(Error::Refused(code));
                }
                self.state = State::Up {
                    ping_deadline: None,
                };
                if let Some(birth) = &self.opts.birth {
                    self.out.extend_from_slice(birth.bytes());
                }
                self.write_subscribe(now);
                self.push_event(Event::Connected { session_present });
                self.poll(now).map(|_| ())
            }
            (State::AwaitingConnack { .. }, _) => Err(Error::Unexpected("packet before CONNACK")),
            (State::Up { .. }, Incoming::Connack { .. }) => {
                Err(Error::Unexpected("second CONNACK"))
            }
            (State::Up { .. }, Incoming::Puback(pid)) => self.acknowledge(pid),
            (State::Up { .. }, Incoming::Pingresp) => {
                self.state = State::Up {
                    ping_deadline: None,
                };
                Ok(())
            }
            (State::Up { .. }, Incoming::Suback { pid, any_refused }) => {
                self.push_event(Event::Subscribed { pid, any_refused });
                Ok(())
            }
            (State::Up { .. }, Incoming::Unsuback(_)) => Ok(()),
            (
                State::Up { .. },
                Incoming::Publish {
                    topic,
                    payload,
                    pid,
                    ..
                },
            ) => {
                if let Some(pid) = pid {
                    self.write_packet(
                        &Packet::Puback(
                            Pid::try_from(pid).map_err(|_| Error::Unexpected("packet id 0"))?,
                        ),
                        now,
                    );
                }
                self.deliver(topic, payload);
                Ok(())
            }
            (State::Down, _) => Err(Error::Unexpected("packet without a connection")),
        }
    }

    /// Queues an event for the caller; one of the same kind already waiting is replaced, so a broker that
    /// repeats itself (SUBACKs, retained messages, another client flooding a topic we subscribe to) cannot
    /// grow the list between two calls to [`Session::take_events`].
    fn push_event(&mut self, event: Event) {
        let same = |old: &Event| {
            matches!(
                (old, &event),
                (Event::Connected { .. }, Event::Connected { .. })
                    | (Event::Subscribed { .. }, Event::Subscribed { .. })
            )
        };
        match self.events.iter_mut().find(|old| same(old)) {
            Some(slot) => *slot = event,
            None => self.events.push(event),
        }
    }

    /// A PUBLISH from the broker: kept as the latest message of the subscription it matches (reusing the
    /// waiting event's buffers), or counted and dropped when it matches none.
    fn deliver(&mut self, topic: &str, payload: &[u8]) {
        let Some(filter) = self.subscription_of(topic) else {
            self.unsolicited += 1;
            self.unsolicited_topic.clear();
            let mut end = topic.len().min(UNSOLICITED_TOPIC_SHOWN);
            while !topic.is_char_boundary(end) {
                end -= 1;
            }
            self.unsolicited_topic.push_str(&topic[..end]);
            return;
        };
        let subscriptions = &self.opts.subscriptions;
        let waiting = self.events.iter_mut().find_map(|e| match e {
            Event::Message {
                topic: t,
                payload: p,
            } if subscriptions.iter().position(|f| topic_matches(f, t)) == Some(filter) => {
                Some((t, p))
            }
            _ => None,
        });
        match waiting {
            Some((t, p)) => {
                t.clear();
                t.push_str(topic);
                p.clear();
                p.extend_from_slice(payload);
            }
            None => self.events.push(Event::Message {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
            }),
        }
    }

    /// The index of the first subscription `topic` matches.
    fn subscription_of(&self, topic: &str) -> Option<usize> {
        self.opts
            .subscriptions
            .iter()
            .position(|f| topic_matches(f, topic))
    }

    fn acknowledge(&mut self, pid: u16) -> Result<(), Error> {
        // Brokers acknowledge in order, so the match is nearly always at the front.
        let at = self
            .inflight
            .iter()
            .position(|f| f.pid == pid)
            .ok_or(Error::Unexpected("PUBACK for a packet id not in flight"))?;
        if let Some(f) = self.inflight.remove(at) {
            self.release_pid(f.pid);
        }
        Ok(())
    }

    /// Checks deadlines, moves queued messages into the outbound buffer as the window allows, sends a
    /// PINGREQ when the link has been quiet for the keep-alive. Returns when to call again.
    pub fn poll(&mut self, now: Instant) -> Result<Option<Instant>, Error> {
        let ping_deadline = match self.state {
            State::Down => return Ok(None),
            State::AwaitingConnack { deadline } if now >= deadline => {
                return Err(Error::Timeout("CONNACK"))
            }
            State::AwaitingConnack { deadline } => return Ok(Some(deadline)),
            State::Up { ping_deadline } => ping_deadline,
        };
        if ping_deadline.is_some_and(|d| now >= d) {
            return Err(Error::Timeout("PINGRESP"));
        }
        let ack_deadline = self
            .inflight
            .front()
            .map(|f| f.sent_at + self.opts.ack_timeout);
        if ack_deadline.is_some_and(|d| now >= d) {
            return Err(Error::Timeout("PUBACK"));
        }
        self.fill(now);

        let mut next = [
            ping_deadline,
            self.inflight
                .front()
                .map(|f| f.sent_at + self.opts.ack_timeout),
        ];
        let mut ping_due = None;
        if self.opts.keep_alive > 0 && ping_deadline.is_none() {
            let keep_alive = Duration::from_secs(u64::from(self.opts.keep_alive));
            let due = self.last_sent.unwrap_or(now) + keep_alive;
            if now >= due {
                self.write_packet(&Packet::Pingreq, now);
                // The broker must answer well within the keep-alive; allow it half as long again.
                let deadline = now + keep_alive + keep_alive / 2;
                self.state = State::Up {
                    ping_deadline: Some(deadline),
                };
                next[0] = Some(deadline);
            } else {
                ping_due = Some(due);
            }
        }
        Ok(next.into_iter().chain([ping_due]).flatten().min())
    }

    /// QoS 1 messages may go out now. Once the window has filled it stays shut until half of it has been
    /// acknowledged. Refilling after every PUBACK batch meant one small write, and one broker wake-up, per
    /// handful of messages: 30 to 45 ms of mostly kernel CPU per 9,000-message tick on loopback, against
    /// about 7 ms when the same messages go out in large batches (measured, 1,000 containers).
    fn window_open(&self) -> bool {
        let n = self.inflight.len();
        n < self.opts.max_inflight && (!self.window_shut || n <= self.opts.max_inflight / 2)
    }

    fn fill(&mut self, now: Instant) {
        if self.inflight.len() <= self.opts.max_inflight / 2 {
            self.window_shut = false;
        }
        while self.out.len() - self.out_pos < OUTBOUND_HIGH_WATER {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.is_qos1() && !self.window_open() {
                break;
            }
            let Some(mut message) = self.queue.pop_front() else {
                break;
            };
            if message.is_qos1() {
                let pid = self.allocate_pid();
                message.set_pid(pid);
                self.out.extend_from_slice(message.bytes());
                self.inflight.push_back(Inflight {
                    pid,
                    sent_at: now,
                    message,
                });
                self.window_shut |= self.inflight.len() >= self.opts.max_inflight;
            } else {
                self.out.extend_from_slice(message.bytes());
            }
            self.last_sent = Some(now);
        }
    }

    /// Queues `farewell` (the retained `offline` message, since a clean DISCONNECT discards the will) and
    /// a DISCONNECT; the caller writes them out and closes the transport.
    pub fn disconnect(&mut self, now: Instant, farewell: Option<&Message>) {
        if self.is_up() {
            if let Some(m) = farewell {
                self.out.extend_from_slice(m.bytes());
            }
            self.write_packet(&Packet::Disconnect, now);
            self.state = State::Down;
        }
    }

    /// Whether incoming bytes matter now, or can wait for the caller's next turn: during the handshake,
    /// while a PINGRESP is due, and while queued QoS 1 messages wait for the window to reopen.
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Down => false,
            State::AwaitingConnack { .. } => true,
            State::Up { ping_deadline } => {
                ping_deadline.is_some() || (self.window_shut && !self.queue.is_empty())
            }
        }
    }

    /// True when [`Session::poll`] would move queued messages out now.
    pub fn can_send_more(&self) -> bool {
        self.is_up()
            && self
                .queue
                .front()
                .is_some_and(|m| !m.is_qos1() || self.window_open())
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

    fn write_connect(&mut self) {
        let o = &self.opts;
        let will = o.will.as_ref().map(|w| LastWill {
            topic: &w.topic,
            message: &w.payload,
            qos: QoS::AtLeastOnce,
            retain: w.retain,
        });
        let connect = Connect {
            protocol: Protocol::MQTT311,
            keep_alive: o.keep_alive,
            client_id: &o.client_id,
            clean_session: true,
            last_will: will,
            username: o.username.as_deref(),
            password: o.password.as_deref(),
        };
        // Every string was length-checked when the config was read; this bound covers all fields.
        let size = 32
            + o.client_id.len()
            + o.username.as_ref().map_or(0, String::len)
            + o.password.as_ref().map_or(0, Vec::len)
            + o.will
                .as_ref()
                .map_or(0, |w| w.topic.len() + w.payload.len());
        let mut buf = vec![0u8; size];
        if let Ok(n) = mqttrs::encode_slice(&Packet::Connect(connect), &mut buf) {
            self.out.extend_from_slice(&buf[..n]);
        }
    }

    /// One SUBSCRIBE for all filters. Its packet id is taken from the PUBLISH id space but never
    /// recorded in flight: SUBACK is reported as an event, not matched.
    fn write_subscribe(&mut self, now: Instant) {
        let mut topics = heapless::Vec::<SubscribeTopic, 5>::new();
        for filter in &self.opts.subscriptions {
            // heapless' `From<&str>` panics past its capacity; push_str reports it instead.
            let mut path = heapless::String::<256>::new();
            if path.push_str(filter).is_err() {
                continue;
            }
            let _ = topics.push(SubscribeTopic {
                topic_path: path,
                qos: QoS::AtLeastOnce,
            });
        }
        if topics.is_empty() {
            return;
        }
        let pid = self.allocate_pid();
        self.release_pid(pid);
        let packet = Packet::Subscribe(Subscribe::new(
            Pid::try_from(pid).unwrap_or_default(),
            topics,
        ));
        let mut buf = [0u8; 5 * 260 + 8];
        if let Ok(n) = mqttrs::encode_slice(&packet, &mut buf) {
            self.out.extend_from_slice(&buf[..n]);
            self.last_sent = Some(now);
        }
    }

    fn write_packet(&mut self, packet: &Packet, now: Instant) {
        let mut buf = [0u8; 4];
        if let Ok(n) = mqttrs::encode_slice(packet, &mut buf) {
            self.out.extend_from_slice(&buf[..n]);
            self.last_sent = Some(now);
        }
    }
}

/// MQTT topic filter matching (MQTT 3.1.1 section 4.7): `+` is one level, a final `#` any number of
/// levels including none; wildcards at the first level do not match topics starting with `$`.
fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            client_id: "agent-1".into(),
            keep_alive: 60,
            username: None,
            password: None,
            will: None,
            birth: None,
            subscriptions: Vec::new(),
            max_inflight: 3,
            max_queued: 5,
            connack_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(30),
        }
    }

    fn msg(topic: &str, qos: QoS) -> Message {
        Message::publish(topic, b"p", qos, false).unwrap()
    }

    /// Splits the outbound bytes into packets and returns (first byte, packet id if QoS 1 PUBLISH, topic).
    fn sent(s: &mut Session) -> Vec<(u8, Option<u16>, String)> {
        let bytes = s.outbound().to_vec();
        s.consumed(bytes.len());
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let n = frame::frame_len(&bytes[at..]).unwrap().unwrap();
            let p = &bytes[at..at + n];
            let (pid, topic) = match mqttrs::decode_slice(p).unwrap().unwrap() {
                Packet::Publish(p) => (
                    match p.qospid {
                        mqttrs::QosPid::AtLeastOnce(pid) => Some(pid.get()),
                        _ => None,
                    },
                    p.topic_name.to_owned(),
                ),
                other => (None, format!("{:?}", other.get_type())),
            };
            out.push((p[0], pid, topic));
            at += n;
        }
        out
    }

    fn up(t0: Instant) -> Session {
        let mut s = Session::new(opts());
        s.connected(t0);
        let connect = sent(&mut s);
        assert_eq!(connect.len(), 1);
        assert_eq!(connect[0].0, 0x10);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        assert_eq!(
            s.take_events(),
            vec![Event::Connected {
                session_present: false
            }]
        );
        assert!(s.is_up());
        s
    }

    #[test]
    fn connect_packet_carries_client_id_keepalive_credentials_and_will() {
        let mut o = opts();
        o.username = Some("user".into());
        o.password = Some(b"secret".to_vec());
        o.will = Some(Will {
            topic: "a/availability".into(),
            payload: b"offline".to_vec(),
            retain: true,
        });
        let mut s = Session::new(o);
        s.connected(Instant::now());
        let bytes = s.outbound().to_vec();
        match mqttrs::decode_slice(&bytes).unwrap().unwrap() {
            Packet::Connect(c) => {
                assert_eq!(c.client_id, "agent-1");
                assert_eq!(c.keep_alive, 60);
                assert!(c.clean_session);
                assert_eq!(c.username, Some("user"));
                assert_eq!(c.password, Some(&b"secret"[..]));
                let w = c.last_will.unwrap();
                assert_eq!(
                    (w.topic, w.message, w.retain),
                    ("a/availability", &b"offline"[..], true)
                );
            }
            other => panic!("not a CONNECT: {other:?}"),
        }
    }

    #[test]
    fn birth_after_connack_and_farewell_before_disconnect() {
        let t0 = Instant::now();
        let mut o = opts();
        o.birth =
            Some(Message::publish("a/availability", b"online", QoS::AtMostOnce, true).unwrap());
        let mut s = Session::new(o);
        s.enqueue(msg("t/0", QoS::AtLeastOnce));
        s.connected(t0);
        sent(&mut s);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let order: Vec<_> = sent(&mut s).into_iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(
            order,
            vec![
                (0x31, "a/availability".to_string()),
                (0x32, "t/0".to_string())
            ]
        );
        let offline =
            Message::publish("a/availability", b"offline", QoS::AtMostOnce, true).unwrap();
        s.disconnect(t0, Some(&offline));
        let order: Vec<_> = sent(&mut s).into_iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(
            order,
            vec![
                (0x31, "a/availability".to_string()),
                (0xe0, "Disconnect".to_string())
            ]
        );
        assert!(!s.is_up());
    }

    #[test]
    fn subscribes_after_every_connack() {
        let t0 = Instant::now();
        let mut o = opts();
        o.subscriptions = vec!["homeassistant/status".into()];
        let mut s = Session::new(o);
        for _ in 0..2 {
            s.connected(t0);
            sent(&mut s);
            s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
            let bytes = s.outbound().to_vec();
            s.consumed(bytes.len());
            let pid = match mqttrs::decode_slice(&bytes).unwrap().unwrap() {
                Packet::Subscribe(sub) => {
                    assert_eq!(sub.topics.len(), 1);
                    assert_eq!(sub.topics[0].topic_path.as_str(), "homeassistant/status");
                    assert_eq!(sub.topics[0].qos, QoS::AtLeastOnce);
                    sub.pid.get()
                }
                other => panic!("expected SUBSCRIBE, got {other:?}"),
            };
            s.receive(t0, &[0x90, 0x03, (pid >> 8) as u8, pid as u8, 0x01])
                .unwrap();
            let events = s.take_events();
            assert_eq!(
                events.last(),
                Some(&Event::Subscribed {
                    pid,
                    any_refused: false
                })
            );
            s.disconnected();
        }
    }

    #[test]
    fn overlong_subscription_is_skipped_not_a_panic() {
        let t0 = Instant::now();
        let mut o = opts();
        o.subscriptions = vec!["x".repeat(300)];
        let mut s = Session::new(o);
        s.connected(t0);
        sent(&mut s);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        assert!(s.outbound().is_empty(), "nothing subscribed");
    }

    #[test]
    fn refusals_and_silence_are_errors() {
        let t0 = Instant::now();
        let mut s = Session::new(opts());
        s.connected(t0);
        assert_eq!(
            s.receive(t0, &[0x20, 0x02, 0x00, 0x05]),
            Err(Error::Refused(ConnectReturnCode::NotAuthorized))
        );
        let mut s = Session::new(opts());
        s.connected(t0);
        assert_eq!(s.poll(t0), Ok(Some(t0 + Duration::from_secs(10))));
        assert_eq!(
            s.poll(t0 + Duration::from_secs(10)),
            Err(Error::Timeout("CONNACK"))
        );
        let mut s = Session::new(opts());
        s.connected(t0);
        assert_eq!(
            s.receive(t0, &[0x40, 0x02, 0x00, 0x01]),
            Err(Error::Unexpected("packet before CONNACK"))
        );
    }

    #[test]
    fn qos1_window_ids_and_acks() {
        let t0 = Instant::now();
        let mut s = up(t0);
        for i in 0..5 {
            s.enqueue(msg(&format!("t/{i}"), QoS::AtLeastOnce));
        }
        s.poll(t0).unwrap();
        let first = sent(&mut s);
        assert_eq!(
            first
                .iter()
                .map(|p| (p.1, p.2.as_str()))
                .collect::<Vec<_>>(),
            vec![(Some(1), "t/0"), (Some(2), "t/1"), (Some(3), "t/2")]
        );
        assert_eq!((s.inflight(), s.queued()), (3, 2));
        // Acks may come out of order. A full window reopens only once half of it is acknowledged, so
        // messages leave in batches rather than one per PUBACK.
        s.receive(t0, &[0x40, 0x02, 0x00, 0x02]).unwrap();
        s.poll(t0).unwrap();
        assert!(
            sent(&mut s).is_empty(),
            "2 of 3 still in flight: the window stays shut"
        );
        assert!(!s.can_send_more());
        s.receive(t0, &[0x40, 0x02, 0x00, 0x01]).unwrap();
        assert!(s.can_send_more());
        s.poll(t0).unwrap();
        assert_eq!(
            sent(&mut s).iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![Some(4), Some(5)]
        );
        s.receive(
            t0,
            &[
                0x40, 0x02, 0x00, 0x03, 0x40, 0x02, 0x00, 0x04, 0x40, 0x02, 0x00, 0x05,
            ],
        )
        .unwrap();
        assert!(s.is_idle());
    }

    #[test]
    fn qos0_is_not_windowed_and_needs_no_ack() {
        let t0 = Instant::now();
        let mut s = up(t0);
        for i in 0..5 {
            s.enqueue(msg(&format!("t/{i}"), QoS::AtMostOnce));
        }
        s.poll(t0).unwrap();
        assert_eq!(sent(&mut s).len(), 5);
        assert!(s.is_idle());
    }

    #[test]
    fn unsolicited_puback_is_a_protocol_error() {
        let t0 = Instant::now();
        let mut s = up(t0);
        assert!(matches!(
            s.receive(t0, &[0x40, 0x02, 0x00, 0x09]),
            Err(Error::Unexpected(_))
        ));
    }

    #[test]
    fn packets_may_arrive_split_anywhere() {
        let t0 = Instant::now();
        let mut s = Session::new(opts());
        s.connected(t0);
        s.receive(t0, &[0x20]).unwrap();
        s.receive(t0, &[0x02, 0x00]).unwrap();
        assert!(!s.is_up());
        s.receive(t0, &[0x00, 0xd0]).unwrap();
        assert!(s.is_up());
        s.receive(t0, &[0x00]).unwrap();
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        let t0 = Instant::now();
        for bad in [
            &[0x40, 0x00][..],
            &[0x20, 0x00],
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0x32, 0x03, 0x00, 0x01, b'a'],
        ] {
            let mut s = up(t0);
            assert!(
                matches!(s.receive(t0, bad), Err(Error::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn keepalive_pings_and_times_out() {
        let t0 = Instant::now();
        let mut s = up(t0);
        let due = s.poll(t0).unwrap().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(60));
        assert_eq!(s.poll(due).unwrap(), Some(due + Duration::from_secs(90)));
        assert_eq!(sent(&mut s)[0].0, 0xc0);
        s.receive(due, &[0xd0, 0x00]).unwrap();
        assert_eq!(s.poll(due).unwrap(), Some(due + Duration::from_secs(60)));
        let later = due + Duration::from_secs(60);
        let deadline = s.poll(later).unwrap().unwrap();
        assert_eq!(s.poll(deadline), Err(Error::Timeout("PINGRESP")));
    }

    #[test]
    fn missing_puback_times_out() {
        let t0 = Instant::now();
        let mut s = up(t0);
        s.enqueue(msg("t", QoS::AtLeastOnce));
        s.poll(t0).unwrap();
        assert_eq!(s.poll(t0 + Duration::from_secs(29)).map(|_| ()), Ok(()));
        assert_eq!(
            s.poll(t0 + Duration::from_secs(30)),
            Err(Error::Timeout("PUBACK"))
        );
    }

    #[test]
    fn disconnect_requeues_inflight_first_with_dup() {
        let t0 = Instant::now();
        let mut s = up(t0);
        for i in 0..4 {
            s.enqueue(msg(&format!("t/{i}"), QoS::AtLeastOnce));
        }
        s.poll(t0).unwrap();
        sent(&mut s);
        s.receive(t0, &[0x40, 0x02, 0x00, 0x01]).unwrap();
        s.disconnected();
        assert_eq!((s.queued(), s.inflight()), (3, 0));
        let mut s2 = s;
        s2.connected(t0);
        sent(&mut s2);
        s2.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let resent = sent(&mut s2);
        let view: Vec<_> = resent.iter().map(|p| (p.0, p.2.as_str())).collect();
        assert_eq!(view, vec![(0x3a, "t/1"), (0x3a, "t/2"), (0x32, "t/3")]);
    }

    #[test]
    fn room_is_bounded_by_the_queue_as_well_as_the_window() {
        let t0 = Instant::now();
        let mut o = opts();
        o.max_inflight = 100;
        o.max_queued = 5;
        let mut s = Session::new(o);
        s.connected(t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let mut fed = 0;
        while s.has_room() {
            s.enqueue(msg("t", QoS::AtLeastOnce));
            fed += 1;
        }
        assert_eq!(
            (fed, s.take_dropped()),
            (5, 0),
            "feeding stops before the queue drops anything"
        );
    }

    #[test]
    fn full_queue_drops_oldest_and_counts() {
        let mut s = Session::new(opts());
        for i in 0..8 {
            s.enqueue(msg(&format!("t/{i}"), QoS::AtLeastOnce));
        }
        assert_eq!(s.queued(), 5);
        assert_eq!(s.take_dropped(), 3);
        assert_eq!(s.take_dropped(), 0);
        let t0 = Instant::now();
        s.connected(t0);
        sent(&mut s);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        assert_eq!(sent(&mut s)[0].2, "t/3");
    }

    #[test]
    fn incoming_qos1_publish_is_acknowledged() {
        let t0 = Instant::now();
        let mut o = opts();
        o.subscriptions = vec!["s".into()];
        let mut s = Session::new(o);
        s.connected(t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        s.take_events();
        sent(&mut s);
        s.receive(
            t0,
            &[0x32, 0x08, 0x00, 0x01, b's', 0x00, 0x07, b'o', b'n', b'!'],
        )
        .unwrap();
        assert_eq!(s.outbound(), &[0x40, 0x02, 0x00, 0x07]);
        assert_eq!(
            s.take_events(),
            vec![Event::Message {
                topic: "s".into(),
                payload: b"on!".to_vec()
            }]
        );
    }

    /// A PUBLISH from the broker: QoS 0 when `pid` is None.
    fn incoming(topic: &str, payload: &[u8], pid: Option<u16>) -> Vec<u8> {
        let len = 2 + topic.len() + pid.map_or(0, |_| 2) + payload.len();
        let mut p = vec![if pid.is_some() { 0x32 } else { 0x30 }, len as u8];
        p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        p.extend_from_slice(topic.as_bytes());
        if let Some(id) = pid {
            p.extend_from_slice(&id.to_be_bytes());
        }
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn topic_filters_match_as_mqtt_says() {
        for (filter, topic, want) in [
            ("homeassistant/status", "homeassistant/status", true),
            ("homeassistant/status", "homeassistant/status/x", false),
            ("homeassistant/status", "homeassistant", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "x/y", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
        ] {
            assert_eq!(topic_matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn a_flood_on_a_subscribed_topic_keeps_only_the_latest_message() {
        let t0 = Instant::now();
        let mut o = opts();
        o.subscriptions = vec!["ha/status".into()];
        let mut s = Session::new(o);
        s.connected(t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        s.take_events();
        let mut bytes = Vec::new();
        for i in 0..10_000 {
            bytes.extend(incoming(
                "ha/status",
                if i % 2 == 0 { b"online" } else { b"offline" },
                None,
            ));
            bytes.extend([0x90, 0x03, 0x00, 0x01, 0x01]); // SUBACKs too
        }
        bytes.extend(incoming("ha/status", b"online", None));
        for chunk in bytes.chunks(1000) {
            s.receive(t0, chunk).unwrap();
        }
        assert_eq!(
            s.take_events(),
            vec![
                Event::Message {
                    topic: "ha/status".into(),
                    payload: b"online".to_vec()
                },
                Event::Subscribed {
                    pid: 1,
                    any_refused: false
                }
            ]
        );
        assert_eq!(s.take_unsolicited(), None);
    }

    #[test]
    fn publishes_we_never_subscribed_to_are_counted_acknowledged_and_dropped() {
        let t0 = Instant::now();
        let mut o = opts();
        o.subscriptions = vec!["ha/status".into()];
        let mut s = Session::new(o);
        s.connected(t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        s.take_events();
        sent(&mut s);
        s.receive(t0, &incoming("other/topic", b"x", None)).unwrap();
        s.receive(t0, &incoming("not/ours", b"x", Some(9))).unwrap();
        assert!(s.take_events().is_empty());
        assert_eq!(s.take_unsolicited(), Some((2, "not/ours".to_string())));
        assert_eq!(s.take_unsolicited(), None);
        assert_eq!(
            s.outbound(),
            &[0x40, 0x02, 0x00, 0x09],
            "QoS 1 still acknowledged"
        );
    }

    #[test]
    fn owed_acknowledgements_stop_input_at_the_limit() {
        let t0 = Instant::now();
        let mut s = up(t0);
        let one = incoming("t", b"", Some(1));
        let mut fed = 0;
        while s.accepts_input() {
            s.receive(t0, &one).unwrap();
            fed += 1;
            assert!(fed < 1_000_000, "never stopped accepting");
        }
        assert_eq!(s.outbound().len(), INPUT_OUT_LIMIT);
        assert_eq!(fed, INPUT_OUT_LIMIT / 4);
        s.consumed(4);
        assert!(s.accepts_input(), "written acknowledgements make room");
    }

    #[test]
    fn the_receive_buffer_holds_at_most_one_partial_packet() {
        let t0 = Instant::now();
        let mut s = up(t0);
        let mut bytes = Vec::new();
        while bytes.len() < 4 << 20 {
            bytes.extend(incoming("t", &[b'x'; 100], None));
        }
        for chunk in bytes.chunks(16 * 1024) {
            s.receive(t0, chunk).unwrap();
            assert!(s.rx.len() < 110, "{} bytes left over", s.rx.len());
            assert!(s.rx.capacity() <= 64 * 1024, "{}", s.rx.capacity());
        }
        let packets = bytes.len() / 105;
        assert_eq!(s.take_unsolicited().map(|u| u.0), Some(packets as u64));
    }

    #[test]
    fn packet_ids_skip_those_still_in_flight_after_wrapping() {
        let t0 = Instant::now();
        let mut s = up(t0);
        s.enqueue(msg("stuck", QoS::AtLeastOnce));
        s.poll(t0).unwrap();
        sent(&mut s);
        for _ in 0..65_535 {
            s.enqueue(msg("t", QoS::AtLeastOnce));
            s.poll(t0).unwrap();
            let p = sent(&mut s);
            assert_ne!(p[0].1, Some(1), "id 1 is still in flight");
            let pid = p[0].1.unwrap();
            s.receive(t0, &[0x40, 0x02, (pid >> 8) as u8, pid as u8])
                .unwrap();
        }
    }
}
