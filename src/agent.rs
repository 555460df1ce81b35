//! The main loop: the one place that touches the broker socket, the CLI child, the stats file, the engine
//! socket (through `engine`) and the clock.
//!
//! Each turn: start a collection if a tick is due, feed the tick's records to the session as it has room,
//! (re)connect when the backoff allows, let the session check its deadlines and fill the outbound buffer,
//! write what the socket takes, then sleep in one `poll` on the socket, the signal pipe and whatever the
//! source waits on (the CLI's pipes, the engine's sockets) until the earliest deadline. The source is one
//! [`Source`] whatever the mode: the loop routes what it hands over.
//! Everything that decides anything lives in the pure modules this drives.

use crate::config::{Collector, Mode, Mqtt};
use crate::mqtt::backoff::Seconds;
use crate::mqtt::failover::{self, Failover};
use crate::mqtt::link::{Link, LinkError};
use crate::mqtt::reconnect::Reconnect;
use crate::mqtt::resolve::{self, Resolver};
use crate::mqtt::transport::TlsClient;
use crate::mqtt::{Event, Message, Options, Session, Will};
use crate::publish::discovery::{self, Discovery};
use crate::publish::exception::{Exceptions, Report};
use crate::publish::tick::{Publishing, Scratch, Tick};
use crate::schedule::Schedule;
use crate::source::cli::CliSource;
use crate::source::device::Device;
use crate::source::engine::{self, EngineSource};
use crate::source::file::{self, FileSource};
use crate::source::filter::Filter;
use crate::source::{self, Collected, Output, Source};
use crate::spool::{self, Spool};
use crate::{debug, error, info, signal, warn};
use mqttrs::QoS;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The broker's name must resolve within this long (a lookup that takes longer is abandoned).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNACK_TIMEOUT: Duration = Duration::from_secs(10);
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A broker that takes none of our bytes, and acknowledges nothing, for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop (SIGTERM/SIGINT) may spend flushing, and then saying goodbye: both are deadlines the
/// socket's waits are bounded by, so the stop keeps to its 2 s whatever the broker does.
const STOP_FLUSH: Duration = Duration::from_millis(1500);
const STOP_GOODBYE: Duration = Duration::from_millis(300);
/// QoS 1 messages awaiting PUBACK at once. Measured against mosquitto on loopback (static musl build,
/// 1,000 containers = 9,000 messages a tick; 90,000 messages with --once): 512 left each half-window
/// refill waiting on mosquitto's Nagle-delayed PUBACKs and our delayed ACK (7.75 s for 90,000 messages);
/// 2,048 sends them in 0.6 s at 10.8 ms CPU and 1.6 MiB peak RSS per 9,000-message tick; 4,096 and more
/// cost RSS without being faster. (Forcing quick ACKs on every arrival instead cost 40-55 ms CPU per
/// tick; they are paced now, see [`ACK_PACE`].)
const MAX_INFLIGHT: usize = 2048;
/// With Home Assistant discovery on, while acknowledgements are expected and nothing waits on them, they
/// are read together this often rather than on every arrival (see `input_events`): Home Assistant's birth
/// is seen at most this late.
const ACK_COALESCE: Duration = Duration::from_millis(100);
/// While PUBACKs are awaited for progress (the window is shut with messages waiting, or a stop or --once
/// waits for the last ones), they are read this often rather than on every arrival, and each read is
/// acknowledged at once (`Link::read`). A stock mosquitto sends its PUBACKs under Nagle's algorithm: the
/// next batch waits for our ACK of the last, which the kernel delays by up to 40 ms while we send
/// nothing, so a window that waited half-empty stalled that long each time. Acknowledging every arrival
/// made a batch of a handful of PUBACKs and a wake-up each; one read a millisecond lets them gather.
/// 90,000 QoS 1 messages with --once: 0.95-2.07 s (median 1.67) before, 0.70-1.09 s (median 0.90) after,
/// at 84 against 93 ms CPU; a 9,000-message tick costs the same CPU within noise (8.2 against 8.6 ms).
const ACK_PACE: Duration = Duration::from_millis(1);
/// PUBLISHes on topics we never subscribed to are logged at most this often.
const UNSOLICITED_LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Settings {
    pub collector: Collector,
    pub mqtt: Mqtt,
    pub once: bool,
    /// `mqtts://`: the certificates, checked at start.
    pub tls: Option<TlsClient>,
}

pub struct Agent {
    s: Settings,
    session: Session,
    link: Option<Link>,
    /// When to try the broker again (and the agent's random numbers).
    reconnect: Reconnect,
    /// Which of the broker's addresses the next connect tries.
    failover: Failover,
    /// Connections the broker closes right after accepting them (a client id in use twice).
    kicked: crate::mqtt::kicked::Kicked,
    reconnect_at: Instant,
    schedule: Schedule,
    source: Box<dyn Source>,
    tick: Option<Tick>,
    /// The tick in progress carries lifecycle changes between collections, not a collection.
    change_tick: bool,
    scratch: Scratch,
    offline: Option<Message>,
    discovery: Option<Discovery>,
    /// Waiting for every acknowledgement (--once after its collection, or stopping): read eagerly.
    draining: bool,
    /// The last read stopped at its budget with more perhaps waiting, or brought more than acknowledgements
    /// (a peer that talks to us may have more to say): poll for input, not only for a close.
    more_input: bool,
    /// Acknowledgements are being left to gather until then (see `input_events`).
    coalesce_until: Option<Instant>,
    /// Unsolicited PUBLISHes not yet logged, and when they were last logged.
    unsolicited: u64,
    unsolicited_topic: String,
    unsolicited_logged: Option<Instant>,
    // For --once: the collection has run, and whether anything was lost.
    collected: bool,
    failed: bool,
    /// The poll set, reused every turn.
    pollfds: Vec<libc::pollfd>,
    /// The broker's name being resolved off the loop, and the slot its thread answers in.
    resolver: Option<Resolver>,
    resolve_slot: resolve::Slot,
    /// The device pseudo-service's collector (`device_metrics`), and its tick while it waits for the
    /// tick in progress to end, or for the collection under way to become one (until the instant
    /// given).
    device: Option<Device>,
    device_tick: Option<(Tick, Instant)>,
    /// Messages that cannot be delivered now, on disk (`spool_dir`); never with --once.
    spool: Option<Spool>,
}

impl Agent {
    pub fn new(mut s: Settings, now: Instant) -> Agent {
        // ENGINE mode filters containers as it lists them (labels and all); stats text is filtered as it
        // is published. Moved, not copied: one of the two has them.
        let wanted = std::mem::take(&mut s.collector.containers);
        let (for_engine, for_text) = match s.collector.mode {
            Mode::Engine => (wanted, Filter::default()),
            _ => (Filter::default(), wanted),
        };
        let m = &s.mqtt;
        // A --once run (cron) says nothing about availability: an `offline` at its end, or a will, would
        // show every entity unavailable between runs.
        let availability = |payload: &[u8]| {
            Message::publish(&m.availability_topic, payload, QoS::AtMostOnce, true)
                .ok()
                .filter(|_| !s.once)
        };
        // First, before any thread is started: it forks the device's reader.
        let device = s
            .collector
            .device_metrics
            .then(|| Device::new((&s.collector).into()));
        let mut discovery = m.home_assistant.as_ref().map(|ha| {
            Discovery::new(discovery::Settings {
                prefix: ha.prefix.clone(),
                device_id: m.device_id.clone(),
                availability_topic: (!s.once).then(|| m.availability_topic.clone()),
                mode: m.payload_mode,
                // Three collections without news: a dead service shows unavailable, not its last values.
                // Not for --once runs, which cron spaces as it likes. A stats file is republished only
                // when rewritten, so FILE mode allows its writer until the file is called stale.
                // Reporting by exception, a resting figure's next message is its heartbeat: that
                // comes on top.
                expire_after: (!s.once).then(|| {
                    let three = s.collector.interval * 3 + quiet_for(&s.collector.report);
                    match s.collector.mode {
                        Mode::File => three.max(file::stale_after(s.collector.interval)),
                        _ => three,
                    }
                }),
                remove_after: ha.remove_after,
                resend_values: !s.once && !m.retain,
                form: ha.form,
            })
        });
        if let (Some(d), Some(dev)) = (&mut discovery, &device) {
            d.device_service(dev.service());
        }
        let opts = Options {
            client_id: m.client_id.clone(),
            keep_alive: m.keep_alive,
            username: m.username.clone(),
            password: m.password.as_ref().map(|p| p.as_bytes().to_vec()),
            will: (!s.once).then(|| Will {
                topic: m.availability_topic.clone(),
                payload: b"offline".to_vec(),
                retain: true,
            }),
            birth: availability(b"online"),
            subscriptions: discovery.iter().map(Discovery::status_topic).collect(),
            max_inflight: MAX_INFLIGHT,
            max_queued: m.max_buffered_messages,
            max_queued_bytes: m.max_buffered_bytes,
            connack_timeout: CONNACK_TIMEOUT,
            ack_timeout: ACK_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        };
        // Devices started in the same second (a fleet after a power cut) still differ by id.
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ failover::start_index(&m.device_id, usize::MAX).rotate_left(17) as u64;
        let spool = (m.spool_dir.as_deref())
            .filter(|_| !s.once)
            .and_then(|d| open_spool(d, m.spool_max_bytes));
        Agent {
            spool,
            session: Session::new(opts),
            link: None,
            reconnect: Reconnect::new(m.reconnect_max_delay, m.keep_alive, seed),
            failover: Failover::new(m.brokers.len(), &m.device_id),
            kicked: Default::default(),
            reconnect_at: now,
            schedule: Schedule::new(now, s.collector.interval),
            source: build_source(&s, for_engine),
            tick: None,
            change_tick: false,
            scratch: Scratch::new(
                (s.collector.report.on_change)
                    .then(|| Exceptions::new(&s.collector.report, m.payload_mode)),
                for_text,
            ),
            offline: availability(b"offline"),
            discovery,
            draining: false,
            more_input: false,
            coalesce_until: None,
            unsolicited: 0,
            unsolicited_topic: String::new(),
            unsolicited_logged: None,
            collected: false,
            failed: false,
            pollfds: Vec::new(),
            resolver: None,
            resolve_slot: resolve::slot(),
            device,
            device_tick: None,
            s,
        }
    }

    /// Runs until stopped (or, with `--once`, until done); returns the exit code.
    pub fn run(mut self) -> i32 {
        let start = Instant::now();
        let cli_time = if self.s.collector.mode != Mode::File {
            self.s.collector.cli_timeout
        } else {
            Duration::ZERO
        };
        let once_deadline = self
            .s
            .once
            .then(|| start + cli_time + self.s.mqtt.once_timeout);
        loop {
            let now = Instant::now();
            if signal::stop_requested() {
                info!("stopping");
                return self.stop(now + STOP_FLUSH);
            }
            if once_deadline.is_some_and(|d| now >= d) {
                // In CLI and ENGINE modes the collection's own bound comes first: say so, or a
                // once_timeout of 6 s that gives up after 16 s looks like a bug.
                error!(
                    "--once: gave up after {}s with messages undelivered (once_timeout_in_seconds {}{})",
                    (now - start).as_secs(),
                    self.s.mqtt.once_timeout.as_secs(),
                    match cli_time.as_secs() {
                        0 => String::new(),
                        t => format!(" + cli_timeout_in_seconds {t}, the collection's own bound"),
                    }
                );
                self.failed = true;
                return self.stop(now);
            }
            self.collect_if_due(now);
            self.connect_if_due(now);
            let session_deadline = self.pump(now);
            let settling = self.discovery.as_ref().is_some_and(Discovery::settling);
            let device_done =
                self.device.as_ref().is_none_or(|d| !d.busy()) && self.device_tick.is_none();
            if self.s.once
                && self.collected
                && self.tick.is_none()
                && device_done
                && self.session.is_idle()
                && !settling
            {
                return self.stop(now);
            }
            let wake = [
                session_deadline,
                (!(self.source.busy() || (self.s.once && self.collected)))
                    .then(|| self.schedule.next_due()),
                self.link.is_none().then_some(self.reconnect_at),
                self.link.as_ref().and_then(Link::connecting_until),
                self.resolver.as_ref().map(|r| r.until),
                self.source.deadline(),
                self.device.as_ref().and_then(Device::deadline),
                self.device_tick.as_ref().map(|(_, until)| *until),
                self.discovery.as_ref().and_then(Discovery::next_deadline),
                once_deadline,
            ];
            let wake = wake.into_iter().flatten().min();
            self.draining = self.s.once && self.collected;
            self.wait(now, wake);
        }
    }

    fn collect_if_due(&mut self, now: Instant) {
        self.publish_device(now);
        if (self.s.once && self.collected) || self.source.busy() || now < self.schedule.next_due() {
            return;
        }
        let skipped = self.schedule.fire(now);
        if skipped > 0 {
            warn!("collection overran its interval: {skipped} tick(s) skipped");
        }
        self.spool_tick();
        self.source.start(now);
        self.route(now);
        if let Some(d) = &mut self.device {
            d.start(now);
        }
        self.publish_device(now);
    }

    /// The device's figures once they are due: a tick of their own, which waits for the one in progress,
    /// and for a collection under way (the engine's answers take milliseconds) for at most
    /// [`DEVICE_WAIT`]: then both leave in one write, which at rest is one burst of segments and
    /// acknowledgements per heartbeat rather than two.
    fn publish_device(&mut self, now: Instant) {
        let Some(d) = &mut self.device else { return };
        let Some(records) = d.collect(now) else {
            return;
        };
        let tick = Tick::device(d.service().to_owned(), records, unix_millis());
        if self.tick.is_some() || self.source.busy() {
            self.device_tick = Some((tick, now + DEVICE_WAIT));
        } else {
            begin_device_tick(&mut self.scratch);
            self.tick = Some(tick);
            self.change_tick = false;
        }
    }

    /// Takes what the source has ready to its place: a tick, a failure, or nothing new.
    fn route(&mut self, now: Instant) {
        while let Some(out) = self.source.take() {
            match out {
                Output::Text { source, collected } => self.collection_done(source, collected),
                Output::Parsed { source, stats } => {
                    let tick = Tick::parsed(source, stats, unix_millis());
                    self.start_tick(tick, false);
                }
                Output::Changes(stats) => {
                    for c in &stats {
                        if let Some(l) = &c.lifecycle {
                            debug!("lifecycle change: {} {}", c.name, l.state.name());
                        }
                    }
                    let tick = Tick::parsed("engine events".into(), stats, unix_millis());
                    self.start_tick(tick, true);
                }
                Output::Unchanged { read_at } => {
                    self.collected = true;
                    debug!(
                        "stats file {} unchanged since the last tick: nothing published",
                        self.s.collector.file_path
                    );
                    if let Some(d) = &mut self.discovery {
                        d.still_present(read_at, now);
                    }
                }
                Output::Failed { error, expected } => {
                    self.collected = true;
                    // A stats file the host has not written (yet) is expected now and then: a warning. A
                    // CLI or engine that fails is an error.
                    if error.is_empty() {
                        debug!("tick skipped (the reason was said before)");
                    } else if expected {
                        warn!("{error}; tick skipped");
                    } else {
                        error!("{error}; tick skipped");
                    }
                    self.failed = true;
                }
            }
        }
    }

    fn collection_done(&mut self, source: String, collected: Collected) {
        self.collected = true;
        if collected.overflowed {
            let cap = source::MAX_STATS_BYTES;
            if collected.text.is_empty() {
                warn!("{source}: no line ends within the first {cap} bytes (the input cap): all of it was ignored");
            } else {
                warn!(
                    "{source} is over the input cap of {cap} bytes: its first {} bytes (whole lines) were read, the rest ignored",
                    collected.text.len()
                );
            }
        }
        let taken_at = collected.taken_at_ms.unwrap_or_else(unix_millis);
        self.start_tick(Tick::new(source, collected.text, taken_at), false);
    }

    fn start_tick(&mut self, tick: Tick, change: bool) {
        self.collected |= !change;
        // An unfinished previous tick goes to the queue (bounded) so the newer figures are not held up.
        self.feed(true);
        if let Some(x) = &mut self.scratch.exceptions {
            x.begin(Instant::now(), !change);
        }
        self.tick = Some(tick);
        self.change_tick = change;
        self.report_drops();
    }

    /// Messages the full buffer pushed out since the last report: one line per tick (and at the end).
    fn report_drops(&mut self) {
        let dropped = self.session.take_dropped();
        if dropped > 0 {
            warn!(
                "message buffer full ({} messages or {} KiB): {dropped} oldest messages dropped",
                self.s.mqtt.max_buffered_messages,
                self.s.mqtt.max_buffered_bytes / 1024
            );
            self.failed = true;
        }
    }

    /// Moves records from the tick into the session while it has room (all of them when `all`).
    fn feed(&mut self, all: bool) {
        let now = Instant::now();
        let Agent {
            tick,
            session,
            scratch,
            s,
            discovery,
            source,
            change_tick,
            device_tick,
            spool,
            ..
        } = self;
        let p = publishing(s);
        // While the spool is engaged, new figures go to its next batch, all of them, whatever the room.
        let mut spool = spool.as_mut().filter(|sp| sp.engaged);
        while all || spool.is_some() || session.has_room() {
            // The device's tick stops waiting for a collection that is over or late.
            if tick.is_none()
                && device_tick
                    .as_ref()
                    .is_some_and(|(_, until)| !source.busy() || now >= *until)
            {
                *tick = device_tick.take().map(|(t, _)| t);
                begin_device_tick(scratch);
            }
            let Some(t) = tick.as_mut() else { return };
            let d = discovery.as_mut().map(|d| {
                // Without room (an outage, a slow link) configs wait in discovery, not in the session.
                d.hold(!session.has_room());
                (d, now)
            });
            let mut sink = |m, tag| match (tag, spool.as_mut()) {
                (Some(tag), _) => session.enqueue_kept(m, tag),
                (None, Some(sp)) => sp.pending.push(m),
                (None, None) => session.enqueue(m),
            };
            if !t.step(&p, scratch, d, &mut sink) {
                for line in t.take_warnings() {
                    warn!("{line}");
                }
                let bad = if t.bad_records > 0 {
                    format!(", {} bad records skipped", t.bad_records)
                } else {
                    String::new()
                };
                if t.is_device() {
                    debug!("device: {} messages", t.messages);
                } else if t.is_resend() {
                    debug!(
                        "values of {} containers sent again for Home Assistant: {} messages",
                        t.containers, t.messages
                    );
                } else if *change_tick {
                    debug!(
                        "lifecycle changes: {} containers, {} messages",
                        t.containers, t.messages
                    );
                } else {
                    info!(
                        "tick: {} containers, {} messages{}",
                        t.containers, t.messages, bad
                    );
                }
                // The device's tick lists no container: it must not make the re-send forget them.
                if !*change_tick && !t.is_device() {
                    if let Some(d) = discovery.as_mut() {
                        d.end_collection();
                    }
                }
                match tick.take() {
                    Some(done) if !done.is_device() => source.recycle(done.into_text()),
                    _ => {}
                }
                // The device's tick waited for this one.
                *tick = device_tick.take().map(|(t, _)| t);
                *change_tick = false;
                if tick.is_some() {
                    begin_device_tick(scratch);
                }
            }
        }
    }

    /// Home Assistant configs that are due: re-announcements, removals, and changes that waited for an
    /// earlier config of the same sensor to be acknowledged. Kept: the buffer bound never drops them.
    fn announce(&mut self, now: Instant) {
        let Some(d) = self.discovery.as_mut() else {
            return;
        };
        for c in d.poll(now, self.session.room()) {
            if let Ok(m) = Message::publish(&c.topic, &c.payload, QoS::AtLeastOnce, true) {
                self.session.enqueue_kept(m, c.tag);
            }
        }
        // Services whose configs Home Assistant has had time to read: their values once more.
        let again = d.take_resend(now);
        if !again.is_empty() {
            self.start_tick(Tick::resent(again), true);
        }
    }

    fn connect_if_due(&mut self, now: Instant) {
        if self.link.is_some() || self.resolver.is_some() || now < self.reconnect_at {
            return;
        }
        let broker = &self.s.mqtt.brokers[self.failover.current()];
        let (host, port) = (broker.host.as_str(), broker.port);
        if let Some(addrs) = Resolver::literal(host, port) {
            return self.connect_to(now, &addrs);
        }
        // Name resolution runs on a thread, one at a time: one abandoned at its deadline may still be
        // waiting on a DNS server, and the next waits for it rather than piling threads up.
        if resolve::busy(&self.resolve_slot) {
            self.reconnect_at = now + Duration::from_millis(500);
            return;
        }
        match Resolver::start(host, port, now + RESOLVE_TIMEOUT, &self.resolve_slot) {
            Ok(r) => self.resolver = Some(r),
            Err(e) => self.connect_failed(now, &e),
        }
    }

    /// The resolver thread answered, or its time ran out.
    fn resolved(&mut self, now: Instant) {
        let Some(r) = &self.resolver else {
            return;
        };
        match r.take() {
            Some(Ok(addrs)) => {
                self.resolver = None;
                self.connect_to(now, &addrs);
            }
            Some(Err(e)) => {
                self.resolver = None;
                self.connect_failed(now, &e);
            }
            None if now >= r.until => {
                self.resolver = None;
                let why = format!(
                    "the name did not resolve within {}s",
                    RESOLVE_TIMEOUT.as_secs()
                );
                self.connect_failed(now, &why);
            }
            None => {}
        }
    }

    fn connect_to(&mut self, now: Instant, addrs: &[SocketAddr]) {
        if addrs.is_empty() {
            return self.connect_failed(now, "the name has no address");
        }
        // One address per attempt, the next one each time the list comes round: a name with an IPv6 and
        // an IPv4 address reaches a broker that listens on only one of them.
        let addr = addrs[self.failover.round() % addrs.len()];
        self.reconnect.attempt(now);
        let broker = self.failover.current();
        match Link::start(addr, broker, self.s.tls.as_ref(), now, CONNECT_TIMEOUT) {
            Ok(link) => {
                debug!("connecting to {addr}");
                self.link = Some(link);
            }
            Err(e) => self.connect_failed(now, &e.to_string()),
        }
    }

    /// The TCP connect finished (the socket turned writable) or ran out of time.
    fn connect_finished(&mut self, now: Instant, timed_out: bool) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let outcome = if timed_out {
            Err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))
        } else {
            link.connect_finished().map_err(|e| e.to_string())
        };
        match outcome {
            Ok(()) => {
                debug!("TCP connection to {} open", self.broker());
                self.session.connected(now);
            }
            Err(e) => {
                self.link = None;
                self.connect_failed(now, &e);
            }
        }
    }

    fn connect_failed(&mut self, now: Instant, why: &str) {
        let broker = self.failover.current();
        self.failover.failed();
        self.reconnect_at = self.reconnect.failed(now);
        warn!(
            "broker {} unreachable: {why}; retrying in {}s{}",
            self.s.mqtt.brokers[broker],
            Seconds(self.reconnect_at - now),
            self.next_broker()
        );
    }

    /// The broker address the link is on, or the next attempt goes to.
    fn broker(&self) -> &crate::config::Address {
        &self.s.mqtt.brokers[self.failover.current()]
    }

    /// For the log, with several addresses: where the next attempt goes.
    fn next_broker(&self) -> String {
        if self.s.mqtt.brokers.len() > 1 {
            format!(" at {}", self.broker())
        } else {
            String::new()
        }
    }

    /// Feeds, polls the session and writes until the socket is full or nothing is left to move.
    fn pump(&mut self, now: Instant) -> Option<Instant> {
        self.announce(now);
        loop {
            self.replay();
            self.feed(false);
            let deadline = match self.session.poll(now) {
                Ok(d) => d,
                Err(e) => {
                    self.link_failed(now, LinkError::Session(e));
                    return None;
                }
            };
            let all_written = self.write(now);
            let replaying = self.spool.as_ref().is_some_and(|sp| sp.unread() > 0);
            let more = self.session.can_send_more()
                || ((self.tick.is_some() || replaying) && self.session.has_room());
            if !all_written || !more || self.link.is_none() {
                return deadline;
            }
        }
    }

    /// Writes what the socket takes; true when nothing is left waiting.
    fn write(&mut self, now: Instant) -> bool {
        let Some(link) = self.link.as_mut() else {
            return true;
        };
        link.write(&mut self.session, now).unwrap_or_else(|e| {
            self.link_failed(now, e);
            true
        })
    }

    /// Reads what the broker sent (see [`Link::read`]) and acts on what it brought.
    fn read(&mut self, now: Instant) {
        self.more_input = false;
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let result = link.read(&mut self.session, now);
        self.more_input = matches!(result, Ok(true));
        self.note_unsolicited(now);
        let events = self.session.take_events();
        self.more_input |= !events.is_empty();
        for event in events {
            match event {
                Event::Connected { .. } => {
                    let failed_over = self.failover.up();
                    info!(
                        "connected to broker {}{}{}",
                        self.broker(),
                        self.link.as_ref().map_or(String::new(), Link::describe),
                        failed_over.map_or(String::new(), |i| format!(
                            " (failover from {})",
                            self.s.mqtt.brokers[i]
                        ))
                    );
                    self.reconnect.up(now);
                    self.kicked.connected(now);
                    // Whatever was written before the link went is uncertain: send every figure again.
                    self.fresh_baseline();
                    // Another node keeps none of the configs retained on the last one (the birth, our
                    // retained `online`, went out with the CONNECT's answer).
                    if let (Some(_), Some(d)) = (failed_over, self.discovery.as_mut()) {
                        d.announce_again(now);
                    }
                }
                // A retained Home Assistant birth (someone published `online` with the retain flag)
                // is the past: at a connect we announce anyway, and re-announcing for it would send
                // every config twice on every connect. HA's own births reach a live subscription
                // with the flag cleared (MQTT 3.1.1, 3.3.1-9).
                Event::Message {
                    topic, retained, ..
                } if retained => {
                    debug!("retained message on {topic}, ignored");
                }
                Event::Message { topic, payload, .. } => {
                    debug!("message on {topic}");
                    let jitter = self.reconnect.rng.next();
                    // Home Assistant starts with no values: give it every figure once.
                    if let Some(d) = self.discovery.as_ref() {
                        if d.is_birth(&topic, &payload) {
                            self.fresh_baseline();
                        }
                    }
                    if let Some(d) = self.discovery.as_mut() {
                        d.on_message(now, &topic, &payload, jitter);
                    }
                }
                Event::Subscribed { .. } => {}
                Event::Delivered(tag) if tag & spool::TAG != 0 => {
                    if let Some(sp) = self.spool.as_mut() {
                        sp.acked(tag);
                    }
                }
                Event::Delivered(tag) => {
                    if let Some(d) = self.discovery.as_mut() {
                        d.delivered(now, tag);
                    }
                }
            }
        }
        if let Err(e) = result {
            self.link_failed(now, e);
        }
    }

    /// Reporting by exception: the next tick publishes every figure.
    fn fresh_baseline(&mut self) {
        if let Some(x) = &mut self.scratch.exceptions {
            x.reset();
        }
    }

    /// PUBLISHes on topics we never subscribed to: one line when the first comes, then one a minute at
    /// most with the count since.
    fn note_unsolicited(&mut self, now: Instant) {
        if let Some((n, topic)) = self.session.take_unsolicited() {
            self.more_input = true;
            self.unsolicited += n;
            self.unsolicited_topic = topic;
        }
        let due = self
            .unsolicited_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= UNSOLICITED_LOG_EVERY);
        if self.unsolicited > 0 && due {
            warn!(
                "{} PUBLISHes on topics we never subscribed to ignored (last: {:?}); logged once a minute at most",
                self.unsolicited, self.unsolicited_topic
            );
            self.unsolicited = 0;
            self.unsolicited_logged = Some(now);
        }
    }

    fn link_failed(&mut self, now: Instant, e: LinkError) {
        let was_up = self.session.is_up();
        let heard = self.session.last_heard();
        self.link = None;
        // Unacknowledged messages go back to the queue, to go again on whichever node comes next.
        self.session.disconnected();
        let node = if self.s.mqtt.brokers.len() > 1 {
            format!(" {}", self.broker())
        } else {
            String::new()
        };
        self.reconnect_at = if was_up {
            self.failover.lost();
            self.reconnect.lost(now, heard)
        } else {
            self.failover.failed();
            self.reconnect.failed(now)
        };
        let (what, lost) = if was_up {
            ("connection to broker", " lost")
        } else {
            ("could not connect to broker", "")
        };
        warn!(
            "{what}{node}{lost}: {e}; retrying in {}s{}",
            Seconds(self.reconnect_at - now),
            self.next_broker()
        );
        if was_up {
            if let Some(why) = self.kicked.lost(now, &self.s.mqtt.client_id) {
                warn!("{why}");
            }
        }
    }

    /// Sleeps in one `poll` on the socket, the signal pipe and the source's descriptors until one is
    /// ready or `wake`, then tells each what happened.
    fn wait(&mut self, now: Instant, wake: Option<Instant>) {
        let mut fds = std::mem::take(&mut self.pollfds);
        fds.clear();
        let connecting = self.link.as_ref().and_then(Link::connecting_until);
        let input = self.input_events(now);
        let wake = [wake, self.coalesce_until].into_iter().flatten().min();
        let broker = match &self.link {
            Some(link) => link.pollfd(input, !self.session.outbound().is_empty()),
            None => source::pollfd(-1, 0),
        };
        fds.push(broker);
        // A stop request is an event like any other: the signal handler writes to this pipe, so a signal
        // that came while the loop was busy elsewhere still wakes this poll at once.
        fds.push(source::pollfd(signal::wake_fd(), libc::POLLIN));
        fds.push(source::pollfd(
            self.resolver.as_ref().map_or(-1, Resolver::fd),
            libc::POLLIN,
        ));
        self.source.fds(&mut fds);
        // Round up so we never wake just before a deadline and spin; a minute at most as a safety net.
        let timeout_ms = wake.map_or(60_000, |w| {
            let d = w.saturating_duration_since(now);
            d.as_millis().min(60_000) as i32 + i32::from(d.subsec_nanos() % 1_000_000 != 0)
        });
        // SAFETY: `fds` is a live vector of pollfd, its length passed with it; negative fds are ignored.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        let now = Instant::now();
        if fds[1].revents != 0 {
            signal::drain(); // the loop sees the request's flag; a flush after it must not spin here
        }
        if let Some(until) = connecting {
            if fds[0].revents != 0 || now >= until {
                self.connect_finished(now, fds[0].revents == 0);
            }
        } else {
            if fds[0].revents & libc::POLLOUT != 0 {
                self.write(now);
            }
            // Whatever woke us (a deadline, the source, a signal), take what the broker sent meanwhile, so
            // deadlines are checked against every acknowledgement that has arrived.
            self.read(now);
        }
        self.resolved(now);
        // Ready or not (a deadline may have passed), the source looks at its descriptors and the time.
        self.source.advance(now, &fds[3..]);
        self.pollfds = fds;
        self.route(now);
    }

    /// What to poll the broker's socket for, besides output. Input is always watched, so a broker's close
    /// or Home Assistant's birth is seen at once, not at the next tick; but waking for every batch of
    /// PUBACKs of a tick that fits the window cost more than the rest of the tick at 8 containers (0.82
    /// against 0.36 ms CPU at QoS 0, measured). So while acknowledgements are all that is expected and
    /// nothing waits on them, the socket is watched only for the broker's close (POLLRDHUP; an error or
    /// reset is always reported), and the acknowledgements are read at the next wake-up that comes anyway
    /// (the tick, a deadline: always before a deadline is checked). With discovery on, that next wake-up
    /// is at most [`ACK_COALESCE`] away, so a Home Assistant birth waiting behind them is seen promptly;
    /// while progress waits on them, at most [`ACK_PACE`] away.
    fn input_events(&mut self, now: Instant) -> libc::c_short {
        let s = &self.session;
        if !s.accepts_input() {
            // The PUBACKs we owe wait for the socket to take them: read nothing more (the write-stall
            // timeout ends a broker that never reads).
            self.coalesce_until = None;
            return 0;
        }
        if self.link.is_none() || self.more_input || s.inflight() == 0 {
            self.coalesce_until = None;
            return libc::POLLIN;
        }
        // Every wake reads what has come (see `wait`), so a window that ran out starts the next one.
        let every = if s.wants_input() || self.draining {
            Some(ACK_PACE)
        } else {
            self.discovery.as_ref().map(|_| ACK_COALESCE)
        };
        self.coalesce_until = every.map(|every| match self.coalesce_until {
            Some(t) if t > now => t.min(now + every),
            _ => now + every,
        });
        libc::POLLRDHUP
    }

    /// Stops collecting, flushes until `flush_until`, says goodbye for [`STOP_GOODBYE`] after that and
    /// returns the exit code.
    fn stop(mut self, flush_until: Instant) -> i32 {
        self.draining = true;
        self.source.stop();
        loop {
            let now = Instant::now();
            if now >= flush_until
                || self.link.is_none()
                || (self.tick.is_none() && self.session.is_idle())
            {
                break;
            }
            let deadline = self.pump(now).map_or(flush_until, |d| d.min(flush_until));
            self.wait(now, Some(deadline));
        }
        self.report_drops();
        let idle = self.session.is_idle();
        if let Some(link) = self.link.take() {
            self.session.disconnect(self.offline.as_ref());
            // The goodbye has its share of the budget from when the flush ended, or should have.
            link.goodbye(
                &mut self.session,
                Instant::now().min(flush_until) + STOP_GOODBYE,
            );
        }
        if self.spool_rest() {
            return 0;
        }
        // Figures still waiting as text were never encoded: count them too, or a --once that gave up
        // before connecting reported "0 messages undelivered". After the goodbye: counting a large
        // tick takes a while, which the broker need not wait for.
        let mut in_tick = 0;
        while let Some(mut t) =
            (self.tick.take()).or_else(|| self.device_tick.take().map(|(t, _)| t))
        {
            in_tick += t.count_rest(&publishing(&self.s), &mut self.scratch);
        }
        let undelivered = in_tick > 0 || !idle;
        if undelivered {
            let pending = self.session.queued() + self.session.inflight() + in_tick;
            warn!("stopped with {pending} messages undelivered: they are lost");
        }
        if self.s.once && (self.failed || undelivered) {
            1
        } else {
            0
        }
    }
}

impl Agent {
    /// Once a tick: what has waited in memory since the last one (the broker is away, or slower than
    /// the figures come) goes to the spool in one batch, and so does everything after it until the
    /// spool has been replayed; then figures go through memory again. In normal operation nothing
    /// waits a whole tick, so nothing is written.
    fn spool_tick(&mut self) {
        let Some(sp) = self.spool.as_mut() else {
            return;
        };
        let was = sp.engaged;
        let mut batch = Vec::new();
        self.session.take_queue(&mut batch);
        if !was && batch.is_empty() && self.tick.is_none() {
            return;
        }
        batch.append(&mut sp.pending);
        sp.pending = batch;
        sp.engaged = true;
        self.feed(true);
        let Some(sp) = self.spool.as_mut() else {
            return;
        };
        if was && self.session.is_up() && sp.unread() == 0 {
            sp.engaged = false;
            debug!("spool {}: caught up", sp.dir);
            for m in std::mem::take(&mut sp.pending) {
                self.session.enqueue(m);
            }
            return;
        }
        self.flush_spool();
    }

    /// Writes the spool's batch; on a failure, its messages go back to memory, and so does the agent.
    fn flush_spool(&mut self) -> bool {
        let Some(sp) = self.spool.as_mut() else {
            return false;
        };
        let r = sp.flush();
        let lost = sp.take_lost();
        if lost > 0 {
            warn!(
                "spool {}: full (spool_max_bytes {}): {lost} oldest messages dropped",
                sp.dir, self.s.mqtt.spool_max_bytes
            );
        }
        match r {
            Ok(n) => {
                if n > 0 {
                    debug!("spool {}: {n} messages written", sp.dir);
                }
                true
            }
            Err(e) => {
                warn!("{e}: messages are kept in memory only from now on");
                for m in std::mem::take(&mut sp.pending) {
                    self.session.enqueue(m);
                }
                self.spool = None;
                false
            }
        }
    }

    /// Sends the next records of the spool while the session has room: before new figures, which wait
    /// in the spool's batch meanwhile.
    fn replay(&mut self) {
        let Some(sp) = self.spool.as_mut() else {
            return;
        };
        let mut room = self.session.room();
        while room > 0 {
            let Some((m, tag)) = sp.next() else {
                return;
            };
            self.session.enqueue_kept(m, tag);
            room -= 1;
        }
    }

    /// At a stop: what is still unacknowledged goes to the spool rather than being lost. True when it
    /// did, and said so.
    fn spool_rest(&mut self) -> bool {
        let Some(sp) = self.spool.as_mut() else {
            return false;
        };
        self.session.disconnected();
        let mut batch = Vec::new();
        self.session.take_queue(&mut batch);
        batch.append(&mut sp.pending);
        sp.pending = batch;
        sp.engaged = true;
        self.feed(true);
        if !self.flush_spool() {
            return false;
        }
        let Some(sp) = self.spool.as_ref() else {
            return false;
        };
        let n = sp.waiting();
        if n > 0 {
            warn!(
                "stopped with {n} messages undelivered: they are in the spool {}, sent at the next start",
                sp.dir
            );
        }
        true
    }
}

/// The spool at `dir`, or a warning and none.
fn open_spool(dir: &str, max: u64) -> Option<Spool> {
    match spool::open(dir, max) {
        Ok(sp) => {
            for w in &sp.found {
                warn!("{w}");
            }
            let n = sp.unread();
            if n > 0 {
                info!("spool {dir}: {n} messages from an earlier run go out first");
            }
            Some(sp)
        }
        Err(e) => {
            warn!("{e}");
            None
        }
    }
}

/// The source the mode asks for: the one place the loop looks at the mode.
fn build_source(s: &Settings, containers: Filter) -> Box<dyn Source> {
    let c = &s.collector;
    match c.mode {
        Mode::File => Box::new(FileSource::new(c.file_path.clone(), c.interval)),
        Mode::Cli => Box::new(CliSource::new(c.cli_path.clone(), c.cli_timeout)),
        // A --once run has no next collection for the event stream to hand changes between.
        Mode::Engine => Box::new(EngineSource::new(
            c.engine_socket.clone(),
            c.cli_timeout,
            !s.once,
            engine::figuring(c.engine_figures, &c.cgroup_root, &c.proc_root),
            containers,
        )),
    }
}

/// How long the device's tick waits for the containers' collection under way.
const DEVICE_WAIT: Duration = Duration::from_secs(1);

/// Reporting by exception, the device's tick is judged at its own time, and as a tick that lists no
/// container (it must not make the next collection forget them, nor end it and forget the device).
fn begin_device_tick(scratch: &mut Scratch) {
    if let Some(x) = &mut scratch.exceptions {
        x.begin(Instant::now(), false);
    }
}

/// How figures are named and sent, from the settings.
fn publishing(s: &Settings) -> Publishing<'_> {
    Publishing {
        template: &s.mqtt.template,
        qos: s.mqtt.qos,
        retain: s.mqtt.retain,
        mode: s.mqtt.payload_mode,
    }
}

/// How long a figure may go unpublished while nothing about it changes: its heartbeat when reporting by
/// exception.
fn quiet_for(report: &Report) -> Duration {
    if report.on_change {
        report.heartbeat
    } else {
        Duration::ZERO
    }
}

fn unix_millis() -> u64 {
    source::unix_ms(SystemTime::now())
}
