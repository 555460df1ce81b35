//! The MQTT 3.1.1 client session as a pure state machine.
//!
//! Methods change state and fill an output buffer; none touches the network or reads a clock. The caller
//! owns the socket: it calls [`Session::connected`] once a transport is up, feeds received bytes to
//! [`Session::receive`], writes [`Session::outbound`] and reports progress with [`Session::consumed`] (or
//! [`Session::write_blocked`] when the socket takes nothing), calls [`Session::poll`] at the deadline it
//! returned, and [`Session::disconnected`] when the transport is gone. Any `Err` means the connection is
//! no longer usable: drop it.
//!
//! The link is judged by progress, not by the clock alone: a PUBACK is awaited from when the socket took
//! the PUBLISH's last byte, and every PUBACK that arrives restarts the wait, so a slow link on which
//! acknowledgements keep coming is kept; one that takes no bytes and acknowledges nothing for the write
//! timeout is dropped. Keep-alive watches both directions: PINGREQ goes out a little before the keep-alive
//! runs out since we last sent or last received anything, so a broker that went silent is noticed even
//! when we only publish at QoS 0.
//!
//! What waits to be sent and what awaits its PUBACK is the [`Outbox`]'s; the packets other than PUBLISH
//! are encoded in `control.rs`.
//!
//! Invariants (the outbox has its own):
//! - Nothing the broker sends is kept beyond a bound: `rx` holds at most one incomplete packet (64 KiB)
//!   plus the bytes of one `receive` call; `events` holds at most one event of each kind (the latest
//!   message per subscription); PUBLISHes on topics we never subscribed to are counted, not kept; and the
//!   caller stops reading while more than [`INPUT_OUT_LIMIT`] bytes wait to be written (see
//!   [`Session::accepts_input`]), so the PUBACKs we owe cannot pile up either.

use super::control;
use super::frame::{self, FrameError, Incoming};
use super::message::Message;
use super::outbox::Outbox;
pub use super::outbox::{Tag, DEFAULT_MAX_QUEUED_BYTES};
use mqttrs::ConnectReturnCode;
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

/// No `Debug`: it holds the password, which nothing may print.
#[derive(Clone)]
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
    /// How many messages the queue holds at most, and how many bytes ([`Outbox`] says what counts): past
    /// either, the oldest are dropped and counted.
    pub max_queued: usize,
    pub max_queued_bytes: usize,
    pub connack_timeout: Duration,
    /// How long a PUBACK may take once the PUBLISH has left, and since the last PUBACK.
    pub ack_timeout: Duration,
    /// How long the socket may take none of our bytes while no PUBACK arrives either.
    pub write_timeout: Duration,
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
        /// Sent because we subscribed, from the broker's store: news from the past, not of now.
        retained: bool,
    },
    Subscribed {
        pid: u16,
        any_refused: bool,
    },
    /// The broker acknowledged the kept message of this tag (QoS 0: the message was written).
    Delivered(Tag),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    Protocol(FrameError),
    /// The broker refused the CONNECT.
    Refused(ConnectReturnCode),
    /// A packet that is well formed but wrong in this state.
    Unexpected(&'static str),
    Timeout(&'static str),
    /// The peer answered the CONNECT with something that is no MQTT at all (an HTTP server, say): the
    /// start of what it sent, made printable.
    NotMqtt(String),
    /// The socket took none of our bytes, and no PUBACK came, for this long.
    Stalled(Duration),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Refused(code) => write!(f, "connection refused: {}", refusal_text(*code)),
            Error::Unexpected(what) => write!(f, "protocol error: {what}"),
            Error::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Error::NotMqtt(sent) => write!(f, "not an MQTT broker (it sent '{sent}')"),
            Error::Stalled(t) => write!(
                f,
                "the broker took no data for {}s and acknowledged nothing",
                t.as_secs()
            ),
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
    AwaitingConnack {
        deadline: Instant,
    },
    /// `ping_sent`: when the PINGREQ still awaiting its PINGRESP was queued.
    Up {
        ping_sent: Option<Instant>,
    },
}

pub struct Session {
    opts: Options,
    state: State,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    out_pos: usize,
    rx: Vec<u8>,
    /// Bytes of this connection's outbound stream the socket has taken.
    written: u64,
    outbox: Outbox,
    /// When the socket last took bytes, when the broker last sent a packet, and its last PUBACK.
    last_sent: Option<Instant>,
    last_received: Option<Instant>,
    last_ack: Option<Instant>,
    /// Since when the socket has been taking none of the waiting bytes.
    blocked_since: Option<Instant>,
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
            outbox: Outbox::new(opts.max_inflight, opts.max_queued, opts.max_queued_bytes),
            opts,
            state: State::Down,
            out: Vec::new(),
            out_pos: 0,
            rx: Vec::new(),
            written: 0,
            last_sent: None,
            last_received: None,
            last_ack: None,
            blocked_since: None,
            events: Vec::new(),
            unsolicited: 0,
            unsolicited_topic: String::new(),
        }
    }

    /// When the broker last sent us anything on this connection.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_received
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// A transport is open: start the handshake.
    pub fn connected(&mut self, now: Instant) {
        self.reset_transport();
        control::connect(&self.opts, &mut self.out);
        self.last_sent = Some(now);
        self.state = State::AwaitingConnack {
            deadline: now + self.opts.connack_timeout,
        };
    }

    /// The transport is gone. Unacknowledged messages go back to the front of the queue, marked DUP.
    pub fn disconnected(&mut self) {
        self.reset_transport();
        self.state = State::Down;
        self.outbox.requeue_inflight();
    }

    fn reset_transport(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        self.rx.clear();
        self.written = 0;
        self.last_received = None;
        self.last_ack = None;
        self.blocked_since = None;
    }

    /// Queues a message; when the queue is full the oldest one is dropped and counted.
    pub fn enqueue(&mut self, message: Message) {
        self.outbox.push(message);
    }

    /// Queues a message the queue bound never drops (Home Assistant configs): it goes out before the
    /// ordinary queue, and its PUBACK is reported as [`Event::Delivered`] with `tag`. The caller bounds how
    /// many it keeps here.
    pub fn enqueue_kept(&mut self, message: Message, tag: Tag) {
        self.outbox.push_kept(message, tag);
    }

    /// Takes the ordinary queue (what waits to be sent, less the kept messages), oldest first: the
    /// in-flight ones too once disconnected.
    pub fn take_queue(&mut self, into: &mut Vec<Message>) {
        self.outbox.take_queue(into);
    }

    /// Messages dropped for want of room since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        self.outbox.take_dropped()
    }

    pub fn queued(&self) -> usize {
        self.outbox.queued()
    }

    pub fn inflight(&self) -> usize {
        self.outbox.inflight()
    }

    /// Nothing left to send or to wait for.
    pub fn is_idle(&self) -> bool {
        self.outbox.is_empty() && self.outbound().is_empty()
    }

    /// True when queueing more would only make it wait: lets the caller feed messages as room opens.
    pub fn has_room(&self) -> bool {
        self.room() > 0
    }

    /// How many more messages may be queued before [`Session::has_room`] turns false.
    pub fn room(&self) -> usize {
        if !self.is_up() {
            return 0;
        }
        self.outbox.room()
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

    /// `n` bytes of [`Session::outbound`] were written at `now`. In-flight PUBLISHes taken whole from
    /// here on are stamped: their PUBACK is awaited from now. O(1) amortised per message.
    pub fn consumed(&mut self, now: Instant, n: usize) {
        let n = n.min(self.out.len() - self.out_pos);
        if n == 0 {
            return;
        }
        self.out_pos += n;
        self.written += n as u64;
        self.last_sent = Some(now);
        self.blocked_since = None;
        self.outbox.stamp(self.written, now);
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
    }

    /// The socket would take none of [`Session::outbound`] at `now`. An error once it has taken nothing,
    /// and no PUBACK has come either, for the write timeout: a broker that acknowledges is still reading,
    /// however slowly its side of the connection drains.
    pub fn write_blocked(&mut self, now: Instant) -> Result<(), Error> {
        self.blocked_since.get_or_insert(now);
        match self.stall_deadline() {
            Some(d) if now >= d => Err(Error::Stalled(self.opts.write_timeout)),
            _ => Ok(()),
        }
    }

    fn stall_deadline(&self) -> Option<Instant> {
        let since = self.blocked_since?;
        let since = self.last_ack.map_or(since, |a| a.max(since));
        Some(since + self.opts.write_timeout)
    }

    /// The PUBACK deadline: the oldest in-flight message the socket has taken, counted from when it was
    /// taken or from the last PUBACK, whichever is later.
    fn ack_deadline(&self) -> Option<Instant> {
        let taken = self.outbox.oldest_taken()?;
        let since = self.last_ack.map_or(taken, |a| a.max(taken));
        Some(since + self.opts.ack_timeout)
    }

    /// Bytes from the broker.
    pub fn receive(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Error> {
        // Taken out for the loop so packets can be handled in place, without a copy each.
        let mut rx = std::mem::take(&mut self.rx);
        rx.extend_from_slice(bytes);
        if let State::AwaitingConnack { .. } = self.state {
            if let Some(sent) = foreign_reply(&rx) {
                return Err(Error::NotMqtt(sent));
            }
        }
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
        self.last_received = Some(now);
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
                self.state = State::Up { ping_sent: None };
                if let Some(birth) = &self.opts.birth {
                    self.out.extend_from_slice(birth.bytes());
                }
                control::subscribe(
                    &self.opts.subscriptions,
                    || self.outbox.spare_pid(),
                    &mut self.out,
                );
                self.push_event(Event::Connected { session_present });
                self.poll(now).map(|_| ())
            }
            (State::AwaitingConnack { .. }, _) => Err(Error::Unexpected("packet before CONNACK")),
            (State::Up { .. }, Incoming::Connack { .. }) => {
                Err(Error::Unexpected("second CONNACK"))
            }
            (State::Up { .. }, Incoming::Puback(pid)) => self.acknowledge(now, pid),
            (State::Up { .. }, Incoming::Pingresp) => {
                self.state = State::Up { ping_sent: None };
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
                    retain,
                },
            ) => {
                if let Some(pid) = pid {
                    let puback = control::puback(pid).ok_or(Error::Unexpected("packet id 0"))?;
                    self.out.extend_from_slice(&puback);
                }
                self.deliver(topic, payload, retain);
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
    fn deliver(&mut self, topic: &str, payload: &[u8], retain: bool) {
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
                retained: r,
            } if subscriptions.iter().position(|f| topic_matches(f, t)) == Some(filter) => {
                Some((t, p, r))
            }
            _ => None,
        });
        match waiting {
            Some((t, p, r)) => {
                t.clear();
                t.push_str(topic);
                p.clear();
                p.extend_from_slice(payload);
                *r = retain;
            }
            None => self.events.push(Event::Message {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
                retained: retain,
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

    fn acknowledge(&mut self, now: Instant, pid: u16) -> Result<(), Error> {
        let tag = self
            .outbox
            .acknowledge(pid)
            .map_err(|_| Error::Unexpected("PUBACK for a packet id not in flight"))?;
        if let Some(tag) = tag {
            self.events.push(Event::Delivered(tag));
        }
        self.last_ack = Some(now);
        Ok(())
    }

    /// Checks deadlines, moves queued messages into the outbound buffer as the window allows, sends a
    /// PINGREQ when the link has been quiet either way for nearly the keep-alive. Returns when to call
    /// again.
    pub fn poll(&mut self, now: Instant) -> Result<Option<Instant>, Error> {
        let ping_sent = match self.state {
            State::Down => return Ok(None),
            State::AwaitingConnack { deadline } if now >= deadline => {
                return Err(Error::Timeout("CONNACK"))
            }
            State::AwaitingConnack { deadline } => return Ok(Some(deadline)),
            State::Up { ping_sent } => ping_sent,
        };
        let mut pong_deadline = ping_sent.and_then(|p| self.pong_deadline(p));
        if pong_deadline.is_some_and(|d| now >= d) {
            return Err(Error::Timeout("PINGRESP"));
        }
        if self.ack_deadline().is_some_and(|d| now >= d) {
            return Err(Error::Timeout("PUBACK"));
        }
        self.fill();

        let mut ping_due = None;
        if ping_sent.is_none() {
            if let Some(due) = self.ping_due() {
                if now >= due {
                    self.out.extend_from_slice(&control::PINGREQ);
                    self.state = State::Up {
                        ping_sent: Some(now),
                    };
                    pong_deadline = self.pong_deadline(now);
                } else {
                    ping_due = Some(due);
                }
            }
        }
        let stall = self
            .stall_deadline()
            .filter(|_| !self.outbound().is_empty());
        Ok([pong_deadline, self.ack_deadline(), ping_due, stall]
            .into_iter()
            .flatten()
            .min())
    }

    fn keep_alive(&self) -> Option<Duration> {
        (self.opts.keep_alive > 0).then(|| Duration::from_secs(u64::from(self.opts.keep_alive)))
    }

    /// A little before the keep-alive runs out since we last sent or last received anything: the broker
    /// must hear from us within the keep-alive (MQTT-3.1.2-23), and a broker we have not heard from for
    /// that long is asked whether it is still there. Every packet either way moves it on, so a link busy
    /// both ways (QoS 1: PUBLISHes out, PUBACKs in) never pings. Pinging only when nothing was *sent*
    /// (all MQTT requires) would save the pings of a QoS 0 link busy one way, but then nothing would
    /// ever be expected back and a broker gone silent (hung, or a NAT that forgot the flow while TCP on
    /// our side still takes the bytes) would go unnoticed for good: a PINGREQ per keep-alive (4 MQTT
    /// bytes, about 160 on the wire) is the price of noticing it.
    fn ping_due(&self) -> Option<Instant> {
        let k = self.keep_alive()?;
        let quiet_since = match (self.last_sent, self.last_received) {
            (Some(s), Some(r)) => s.min(r),
            (s, r) => s.or(r)?,
        };
        // A tenth of the keep-alive early, at most 5 s: room for a late wake-up and a slow write.
        Some(quiet_since + k - (k / 10).min(Duration::from_secs(5)))
    }

    /// A broker that has sent nothing for half the keep-alive since our PINGREQ, and nothing for 1.5
    /// times the keep-alive in all, is gone; any packet it sends meanwhile (a PUBACK on a slow link whose
    /// PINGREQ waits behind our data) shows it is not.
    fn pong_deadline(&self, ping_sent: Instant) -> Option<Instant> {
        let k = self.keep_alive()?;
        let heard = self.last_received.unwrap_or(ping_sent);
        Some((ping_sent + k / 2).max(heard + k + k / 2))
    }

    /// Moves queued messages into the outbound buffer, up to [`OUTBOUND_HIGH_WATER`], as the window
    /// allows.
    fn fill(&mut self) {
        let events = &mut self.events;
        self.outbox.fill(
            &mut self.out,
            self.out_pos + OUTBOUND_HIGH_WATER,
            self.written - self.out_pos as u64,
            |tag| events.push(Event::Delivered(tag)),
        );
    }

    /// Queues `farewell` (the retained `offline` message, since a clean DISCONNECT discards the will) and
    /// a DISCONNECT; the caller writes them out and closes the transport.
    pub fn disconnect(&mut self, farewell: Option<&Message>) {
        if self.is_up() {
            if let Some(m) = farewell {
                self.out.extend_from_slice(m.bytes());
            }
            self.out.extend_from_slice(&control::DISCONNECT);
            self.state = State::Down;
        }
    }

    /// Whether incoming bytes matter now, or can wait for the caller's next turn: during the handshake,
    /// while a PINGRESP is due, and while queued QoS 1 messages wait for the window to reopen.
    pub fn wants_input(&self) -> bool {
        match self.state {
            State::Down => false,
            State::AwaitingConnack { .. } => true,
            State::Up { ping_sent } => ping_sent.is_some() || self.outbox.waits_for_window(),
        }
    }

    /// True when [`Session::poll`] would move queued messages out now.
    pub fn can_send_more(&self) -> bool {
        self.is_up() && self.outbox.can_send_more()
    }
}

/// What a peer that is no MQTT broker sent instead of a CONNACK, made printable; `None` while it may
/// still be MQTT. A broker's first packet is a CONNACK (`20 02`), and no packet a broker sends starts with
/// four printable bytes: text there (an HTTP or SMTP banner, an error page) means another protocol. So
/// does a TLS record (`15 03` or `16 03`): a TLS port.
fn foreign_reply(rx: &[u8]) -> Option<String> {
    let text = |b: &u8| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let foreign = match rx {
        [0x15 | 0x16, 0x03, ..] => true,
        [a, b, c, d, ..] => [a, b, c, d].into_iter().all(text),
        _ => false,
    };
    if !foreign {
        return None;
    }
    // The first line, at most 40 bytes; anything unprintable as \xNN.
    let line = rx
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or(rx);
    let mut shown = String::new();
    for b in line.iter().take(40) {
        if (b.is_ascii_graphic() && *b != b'\'' && *b != b'\\') || *b == b' ' {
            shown.push(char::from(*b));
        } else {
            shown.push_str(&format!("\\x{b:02x}"));
        }
    }
    if line.len() > 40 {
        shown.push_str("...");
    }
    Some(shown)
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
    use mqttrs::{Packet, QoS};

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
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            connack_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
        }
    }

    fn msg(topic: &str, qos: QoS) -> Message {
        Message::publish(topic, b"p", qos, false).unwrap()
    }

    /// Splits the outbound bytes into packets and returns (first byte, packet id if QoS 1 PUBLISH, topic).
    fn sent(s: &mut Session, now: Instant) -> Vec<(u8, Option<u16>, String)> {
        let bytes = s.outbound().to_vec();
        s.consumed(now, bytes.len());
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
        let connect = sent(&mut s, t0);
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
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let order: Vec<_> = sent(&mut s, t0).into_iter().map(|p| (p.0, p.2)).collect();
        assert_eq!(
            order,
            vec![
                (0x31, "a/availability".to_string()),
                (0x32, "t/0".to_string())
            ]
        );
        let offline =
            Message::publish("a/availability", b"offline", QoS::AtMostOnce, true).unwrap();
        s.disconnect(Some(&offline));
        let order: Vec<_> = sent(&mut s, t0).into_iter().map(|p| (p.0, p.2)).collect();
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
            sent(&mut s, t0);
            s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
            let bytes = s.outbound().to_vec();
            s.consumed(t0, bytes.len());
            let pid = match mqttrs::decode_slice(&bytes).unwrap().unwrap() {
                Packet::Subscribe(sub) => {
                    assert_eq!(sub.topics.len(), 1);
                    assert_eq!(sub.topics[0].topic_path.as_str(), "homeassistant/status");
                    assert_eq!(sub.topics[0].qos, QoS::AtMostOnce);
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
        sent(&mut s, t0);
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
        let first = sent(&mut s, t0);
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
            sent(&mut s, t0).is_empty(),
            "2 of 3 still in flight: the window stays shut"
        );
        assert!(!s.can_send_more());
        s.receive(t0, &[0x40, 0x02, 0x00, 0x01]).unwrap();
        assert!(s.can_send_more());
        s.poll(t0).unwrap();
        assert_eq!(
            sent(&mut s, t0).iter().map(|p| p.1).collect::<Vec<_>>(),
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
        assert_eq!(sent(&mut s, t0).len(), 5);
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
    fn keepalive_pings_before_it_runs_out_and_times_out() {
        let t0 = Instant::now();
        let mut s = up(t0);
        let due = s.poll(t0).unwrap().unwrap();
        // A little before the keep-alive, never after it (MQTT-3.1.2-23).
        assert_eq!(due, t0 + Duration::from_secs(55));
        let deadline = s.poll(due).unwrap().unwrap();
        assert_eq!(sent(&mut s, due)[0].0, 0xc0);
        assert_eq!(deadline, t0 + Duration::from_secs(90), "1.5 x keep-alive");
        let answered = due + Duration::from_secs(1);
        s.receive(answered, &[0xd0, 0x00]).unwrap();
        assert_eq!(
            s.poll(answered).unwrap(),
            Some(due + Duration::from_secs(55))
        );
        let ping = due + Duration::from_secs(55);
        let deadline = s.poll(ping).unwrap().unwrap();
        assert_eq!(deadline, answered + Duration::from_secs(90));
        assert!(s.poll(deadline - Duration::from_millis(1)).is_ok());
        assert_eq!(s.poll(deadline), Err(Error::Timeout("PINGRESP")));
    }

    #[test]
    fn a_broker_gone_silent_is_noticed_while_we_publish_at_qos0() {
        let t0 = Instant::now();
        let mut s = up(t0);
        let mut noticed = None;
        for second in 1..=300 {
            let now = t0 + Duration::from_secs(second);
            s.enqueue(msg("t", QoS::AtMostOnce));
            match s.poll(now) {
                Ok(_) => {
                    sent(&mut s, now);
                }
                Err(e) => {
                    noticed = Some((second, e));
                    break;
                }
            }
        }
        // Sending every second, it still asks after 55 s of hearing nothing, and gives up at 1.5 x 60 s.
        assert_eq!(noticed, Some((90, Error::Timeout("PINGRESP"))));
    }

    #[test]
    fn a_ticks_messages_leave_in_one_write() {
        // The loop queues a whole tick, polls once and writes the outbound buffer in one call: with
        // TCP_NODELAY each write is a burst of its own, so a tick must not leave message by message.
        let t0 = Instant::now();
        let mut o = opts();
        o.max_inflight = 2048;
        o.max_queued = 10_000;
        let mut s = Session::new(o);
        s.connected(t0);
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        for i in 0..90 {
            s.enqueue(msg(&format!("t/{i}"), QoS::AtLeastOnce));
        }
        s.poll(t0).unwrap();
        assert_eq!(sent(&mut s, t0).len(), 90, "all in one outbound buffer");
    }

    #[test]
    fn no_pingreq_while_packets_flow_both_ways() {
        // QoS 1 every 10 s, each PUBLISH acknowledged: for an hour every packet sent (and every PUBACK
        // received) moves the ping deadline on, so no PINGREQ ever leaves.
        let t0 = Instant::now();
        let mut s = up(t0);
        for tick in 1..=360u64 {
            let now = t0 + Duration::from_secs(10 * tick);
            s.enqueue(msg("t", QoS::AtLeastOnce));
            let due = s.poll(now).unwrap();
            let out = sent(&mut s, now);
            assert!(out.iter().all(|p| p.0 != 0xc0), "a PINGREQ at tick {tick}");
            let pid = out[0].1.unwrap();
            s.receive(now, &[0x40, 0x02, (pid >> 8) as u8, pid as u8])
                .unwrap();
            assert!(due.is_some());
        }
        // The ping deadline is the keep-alive (less its margin) after the last packet either way.
        let last = t0 + Duration::from_secs(3600);
        assert_eq!(s.poll(last).unwrap(), Some(last + Duration::from_secs(55)));
    }

    #[test]
    fn the_ping_deadline_moves_with_every_packet_sent() {
        // The broker keeps talking (it does, e.g. PUBACKs for what we sent before): only our own packets
        // are missing, and the ping is due the keep-alive (less its margin) after the last one we sent.
        let t0 = Instant::now();
        let mut s = up(t0);
        let t1 = t0 + Duration::from_secs(40);
        s.enqueue(msg("t", QoS::AtMostOnce));
        s.poll(t1).unwrap();
        assert_eq!(sent(&mut s, t1)[0].0, 0x30);
        for second in 41..=94 {
            let now = t0 + Duration::from_secs(second);
            s.receive(now, &incoming("other", b"x", None)).unwrap();
            assert_eq!(
                s.poll(now).unwrap(),
                Some(t1 + Duration::from_secs(55)),
                "{second}"
            );
            assert!(s.outbound().is_empty(), "{second}");
        }
        let due = t1 + Duration::from_secs(55);
        s.poll(due).unwrap();
        assert_eq!(s.outbound(), &control::PINGREQ, "nothing sent for 55 s");
    }

    #[test]
    fn a_pingreq_behind_a_slow_link_is_answered_by_any_packet() {
        let t0 = Instant::now();
        let mut o = opts();
        o.max_inflight = 100;
        o.max_queued = 100;
        let mut s = Session::new(o);
        s.connected(t0);
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        for _ in 0..100 {
            s.enqueue(msg("t", QoS::AtLeastOnce));
        }
        s.poll(t0).unwrap();
        sent(&mut s, t0);
        // Nothing more leaves; a PUBACK every 20 s keeps the PINGREQ's wait going.
        for pid in 1..=10u16 {
            let now = t0 + Duration::from_secs(20 * u64::from(pid));
            s.receive(now, &[0x40, 0x02, 0x00, pid as u8]).unwrap();
            s.poll(now).unwrap();
        }
        let last = t0 + Duration::from_secs(200);
        assert_eq!(
            s.poll(last + Duration::from_secs(30)),
            Err(Error::Timeout("PUBACK"))
        );
    }

    #[test]
    fn puback_wait_counts_from_when_the_socket_took_the_message() {
        let t0 = Instant::now();
        let mut s = up(t0);
        s.enqueue(msg("t", QoS::AtLeastOnce));
        s.poll(t0).unwrap();
        // The socket takes the PUBLISH only 20 s later (a slow link's backlog ahead of it).
        let taken = t0 + Duration::from_secs(20);
        assert_eq!(s.poll(taken).map(|_| ()), Ok(()));
        sent(&mut s, taken);
        assert_eq!(s.poll(taken + Duration::from_secs(29)).map(|_| ()), Ok(()));
        assert_eq!(
            s.poll(taken + Duration::from_secs(30)),
            Err(Error::Timeout("PUBACK"))
        );
    }

    #[test]
    fn acknowledgements_that_keep_coming_keep_a_slow_link() {
        let t0 = Instant::now();
        let mut o = opts();
        o.max_inflight = 100;
        o.max_queued = 100;
        let mut s = Session::new(o);
        s.connected(t0);
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        for _ in 0..50 {
            s.enqueue(msg("t", QoS::AtLeastOnce));
        }
        s.poll(t0).unwrap();
        sent(&mut s, t0);
        // One PUBACK every 10 s: the window takes 500 s to drain, and that is fine.
        for pid in 1..=49u16 {
            let now = t0 + Duration::from_secs(10 * u64::from(pid));
            s.poll(now).unwrap();
            s.receive(now, &[0x40, 0x02, 0x00, pid as u8]).unwrap();
        }
        let last = t0 + Duration::from_secs(490);
        assert!(s.poll(last + Duration::from_secs(29)).is_ok());
        assert_eq!(
            s.poll(last + Duration::from_secs(30)),
            Err(Error::Timeout("PUBACK"))
        );
    }

    #[test]
    fn a_blocked_socket_is_a_stall_unless_acknowledgements_arrive() {
        let t0 = Instant::now();
        let mut s = up(t0);
        s.enqueue(msg("t/0", QoS::AtLeastOnce));
        s.enqueue(msg("t/1", QoS::AtLeastOnce));
        s.poll(t0).unwrap();
        assert_eq!(s.write_blocked(t0), Ok(()));
        assert_eq!(
            s.write_blocked(t0 + Duration::from_secs(9)),
            Ok(()),
            "not yet"
        );
        assert_eq!(
            s.write_blocked(t0 + Duration::from_secs(10)),
            Err(Error::Stalled(Duration::from_secs(10)))
        );

        let mut s = up(t0);
        s.enqueue(msg("t/0", QoS::AtLeastOnce));
        s.enqueue(msg("t/1", QoS::AtLeastOnce));
        s.poll(t0).unwrap();
        let len = msg("t/0", QoS::AtLeastOnce).bytes().len();
        s.consumed(t0, len);
        assert_eq!(s.write_blocked(t0), Ok(()));
        let acked = t0 + Duration::from_secs(8);
        s.receive(acked, &[0x40, 0x02, 0x00, 0x01]).unwrap();
        assert_eq!(s.write_blocked(t0 + Duration::from_secs(10)), Ok(()));
        assert_eq!(
            s.poll(t0 + Duration::from_secs(10)).unwrap(),
            Some(acked + Duration::from_secs(10)),
            "wakes for the stall deadline"
        );
        assert_eq!(
            s.write_blocked(acked + Duration::from_secs(10)),
            Err(Error::Stalled(Duration::from_secs(10)))
        );
        assert_eq!(
            Error::Stalled(Duration::from_secs(10)).to_string(),
            "the broker took no data for 10s and acknowledged nothing"
        );
    }

    #[test]
    fn kept_messages_are_never_dropped_and_report_their_delivery() {
        let t0 = Instant::now();
        let mut s = Session::new(opts());
        s.enqueue_kept(msg("config", QoS::AtLeastOnce), 42);
        for i in 0..8 {
            s.enqueue(msg(&format!("t/{i}"), QoS::AtLeastOnce));
        }
        assert_eq!(s.take_dropped(), 3, "only ordinary messages are dropped");
        assert_eq!(s.queued(), 6);
        s.connected(t0);
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        s.take_events();
        let first: Vec<_> = sent(&mut s, t0).into_iter().map(|p| p.2).collect();
        assert_eq!(first, vec!["config", "t/3", "t/4"], "kept ones go first");
        // Lost with the connection: back at the front of the kept queue, and still never dropped.
        s.disconnected();
        for i in 0..20 {
            s.enqueue(msg(&format!("u/{i}"), QoS::AtLeastOnce));
        }
        s.connected(t0);
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let again = sent(&mut s, t0);
        assert_eq!((again[0].0, again[0].2.as_str()), (0x3a, "config"), "DUP");
        let pid = again[0].1.unwrap();
        s.take_events();
        s.receive(t0, &[0x40, 0x02, 0x00, pid as u8]).unwrap();
        assert_eq!(s.take_events(), vec![Event::Delivered(42)]);
        s.receive(t0, &[0x40, 0x02, 0x00, again[1].1.unwrap() as u8])
            .unwrap();
        assert!(
            s.take_events().is_empty(),
            "ordinary messages are not reported"
        );
    }

    #[test]
    fn a_peer_that_is_no_mqtt_broker_is_named() {
        let t0 = Instant::now();
        let mut s = Session::new(opts());
        s.connected(t0);
        assert_eq!(s.receive(t0, b"HT"), Ok(()), "two bytes say nothing yet");
        let e = s
            .receive(t0, b"TP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .unwrap_err();
        assert_eq!(e, Error::NotMqtt("HTTP/1.1 400 Bad Request".into()));
        assert_eq!(
            e.to_string(),
            "not an MQTT broker (it sent 'HTTP/1.1 400 Bad Request')"
        );
        let mut s = Session::new(opts());
        s.connected(t0);
        assert_eq!(
            s.receive(t0, &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]),
            Err(Error::NotMqtt("\\x15\\x03\\x03\\x00\\x02\\x02F".into())),
            "a TLS alert"
        );
        let mut s = Session::new(opts());
        s.connected(t0);
        let long = format!("{}'\\\x01", "x".repeat(50));
        let Err(Error::NotMqtt(shown)) = s.receive(t0, long.as_bytes()) else {
            panic!("text is not MQTT");
        };
        assert_eq!(
            shown,
            format!("{}...", "x".repeat(40)),
            "short and printable"
        );
        assert_eq!(
            foreign_reply(b"it's \\ \x01 odd"),
            Some("it\\x27s \\x5c \\x01 odd".into())
        );
        // Broken MQTT is still reported as such.
        let mut s = Session::new(opts());
        s.connected(t0);
        assert!(matches!(
            s.receive(t0, &[0x20, 0x00]),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn missing_puback_times_out() {
        let t0 = Instant::now();
        let mut s = up(t0);
        s.enqueue(msg("t", QoS::AtLeastOnce));
        s.poll(t0).unwrap();
        sent(&mut s, t0);
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
        sent(&mut s, t0);
        s.receive(t0, &[0x40, 0x02, 0x00, 0x01]).unwrap();
        s.disconnected();
        assert_eq!((s.queued(), s.inflight()), (3, 0));
        let mut s2 = s;
        s2.connected(t0);
        sent(&mut s2, t0);
        s2.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let resent = sent(&mut s2, t0);
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
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        assert_eq!(sent(&mut s, t0)[0].2, "t/3");
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too_dropping_the_oldest() {
        let big = |i: usize| {
            let payload = [b'x'; 1000];
            Message::publish(&format!("t/{i:06}"), &payload, QoS::AtLeastOnce, false).unwrap()
        };
        let cost = big(0).bytes().len() + std::mem::size_of::<Message>();
        let mut o = opts();
        o.max_queued = 1_000;
        o.max_queued_bytes = 10 * cost;
        let mut s = Session::new(o);
        for i in 0..25 {
            s.enqueue(big(i));
        }
        assert_eq!((s.queued(), s.take_dropped()), (10, 15));
        // Kept messages are not counted against it, nor dropped.
        s.enqueue_kept(big(99), 1);
        assert_eq!((s.queued(), s.take_dropped()), (11, 0));
        let t0 = Instant::now();
        s.connected(t0);
        sent(&mut s, t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        let first: Vec<_> = sent(&mut s, t0).into_iter().map(|p| p.2).collect();
        assert_eq!(
            first,
            ["t/000099", "t/000015", "t/000016"],
            "the oldest went"
        );
        // The default holds 16 MiB: with a bound of ten million messages it is the one that bites.
        let mut o = opts();
        o.max_queued = 10_000_000;
        let mut s = Session::new(o);
        let n = DEFAULT_MAX_QUEUED_BYTES / cost;
        for i in 0..n + 100 {
            s.enqueue(big(i));
        }
        assert_eq!((s.queued(), s.take_dropped()), (n, 100));
    }

    #[test]
    fn incoming_qos1_publish_is_acknowledged() {
        let t0 = Instant::now();
        let mut s = subscribed_to("s", t0);
        sent(&mut s, t0);
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
                payload: b"on!".to_vec(),
                retained: false,
            }]
        );
    }

    #[test]
    fn a_retained_publish_says_so() {
        let t0 = Instant::now();
        let mut s = subscribed_to("s", t0);
        let mut retained = incoming("s", b"old", None);
        retained[0] |= 0x01;
        s.receive(t0, &retained).unwrap();
        assert_eq!(
            s.take_events(),
            vec![Event::Message {
                topic: "s".into(),
                payload: b"old".to_vec(),
                retained: true,
            }]
        );
        // The latest kept replaces the retained one, flag and all.
        s.receive(t0, &retained).unwrap();
        s.receive(t0, &incoming("s", b"new", None)).unwrap();
        assert_eq!(
            s.take_events(),
            vec![Event::Message {
                topic: "s".into(),
                payload: b"new".to_vec(),
                retained: false,
            }]
        );
    }

    /// A session up at `t0` (CONNACK taken, its events drained) with one subscription, `filter`.
    fn subscribed_to(filter: &str, t0: Instant) -> Session {
        let mut o = opts();
        o.subscriptions = vec![filter.into()];
        let mut s = Session::new(o);
        s.connected(t0);
        s.receive(t0, &[0x20, 0x02, 0x00, 0x00]).unwrap();
        s.take_events();
        s
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
        let mut s = subscribed_to("ha/status", t0);
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
                    payload: b"online".to_vec(),
                    retained: false,
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
        let mut s = subscribed_to("ha/status", t0);
        sent(&mut s, t0);
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
        s.consumed(t0, 4);
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
        sent(&mut s, t0);
        for _ in 0..65_535 {
            s.enqueue(msg("t", QoS::AtLeastOnce));
            s.poll(t0).unwrap();
            let p = sent(&mut s, t0);
            assert_ne!(p[0].1, Some(1), "id 1 is still in flight");
            let pid = p[0].1.unwrap();
            s.receive(t0, &[0x40, 0x02, (pid >> 8) as u8, pid as u8])
                .unwrap();
        }
    }
}
