//! The broker link: the TCP socket and what travels over it, plain MQTT or TLS (`transport`). The loop's
//! side of the client: it opens the connection (`connect`), writes the session's bytes, reads the broker's
//! and says goodbye, never waiting on the socket; the session decides what the bytes mean. The agent's
//! loop owns the link and polls its descriptor with the rest.

use super::connect;
use super::session::{self, Session};
use super::transport::{TlsClient, Transport};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Bytes read from the broker per turn of the loop at most: a peer that keeps the socket full gets its
/// share, and collections, deadlines and signals get theirs (the next `poll` returns at once for the rest).
const READ_BUDGET: usize = 64 * 1024;

pub struct Link {
    stream: TcpStream,
    /// Plain MQTT or TLS over `stream`.
    transport: Transport,
    /// While the TCP connect is still in progress: when to give up on it.
    connecting_until: Option<Instant>,
}

pub enum LinkError {
    Io(std::io::Error),
    Closed,
    Session(session::Error),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "{e}"),
            LinkError::Closed => f.write_str("closed by the broker"),
            LinkError::Session(e) => write!(f, "{e}"),
        }
    }
}

impl Link {
    /// Starts connecting to `addr` (of broker address `broker`) at `now`, TLS when `tls` is given; the
    /// connect is given up after `timeout`.
    pub fn start(
        addr: SocketAddr,
        broker: usize,
        tls: Option<&TlsClient>,
        now: Instant,
        timeout: Duration,
    ) -> std::io::Result<Link> {
        let transport = Transport::new(tls, broker)?;
        let stream = connect::start(addr)?;
        Ok(Link {
            stream,
            transport,
            connecting_until: Some(now + timeout),
        })
    }

    /// While the TCP connect is still in progress: when to give up on it.
    pub fn connecting_until(&self) -> Option<Instant> {
        self.connecting_until
    }

    /// The TCP connect finished (the socket turned writable): whether it is up.
    pub fn connect_finished(&mut self) -> std::io::Result<()> {
        connect::outcome(&self.stream)?;
        let _ = self.stream.set_nodelay(true);
        self.connecting_until = None;
        Ok(())
    }

    /// For the log: " over TLS 1.3, <cipher suite>", or nothing for plain MQTT.
    pub fn describe(&self) -> String {
        self.transport.describe()
    }

    /// The socket's slot in the loop's `poll`: `input` as the loop wants it, output while MQTT bytes are
    /// `waiting` (and whatever the connect or TLS needs besides).
    pub fn pollfd(&self, input: libc::c_short, waiting: bool) -> libc::pollfd {
        // A connect in progress reports its outcome by turning writable.
        let out = if self.connecting_until.is_some() || self.transport.wants_writable(waiting) {
            libc::POLLOUT
        } else {
            0
        };
        // TLS may need the peer's bytes to go on (a handshake), whatever MQTT expects.
        let input = if self.transport.wants_readable() {
            input | libc::POLLIN
        } else {
            input
        };
        crate::source::pollfd(self.stream.as_raw_fd(), input | out)
    }

    /// Writes what the socket takes of the session's bytes; true when nothing is left waiting.
    pub fn write(&mut self, session: &mut Session, now: Instant) -> Result<bool, LinkError> {
        if self.connecting_until.is_some() {
            // Not before the TCP connect is done (a TLS ClientHello is waiting from the start).
            return Ok(true);
        }
        loop {
            let out = session.outbound();
            let sent = if out.is_empty() {
                // MQTT bytes all taken; TLS may still hold records for the socket.
                match self.transport.flush(&mut self.stream) {
                    Ok(true) => break Ok(true),
                    Ok(false) => Err(ErrorKind::WouldBlock.into()),
                    Err(e) => Err(e),
                }
            } else {
                self.transport.send(&mut self.stream, out)
            };
            match sent {
                Ok(0) => break Err(LinkError::Closed),
                Ok(n) => session.consumed(now, n),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    break match session.write_blocked(now) {
                        Ok(()) => Ok(false),
                        Err(e) => Err(LinkError::Session(e)),
                    };
                }
                Err(e) => break Err(LinkError::Io(e)),
            }
        }
    }

    /// Reads what the broker sent into the session, up to [`READ_BUDGET`] bytes, and only while the
    /// session accepts input (not while the PUBACKs we owe cannot be written). True when the budget ran
    /// out with more perhaps waiting. Not inlined into the loop's `wait`: there it cost the aarch64
    /// binary bytes (measured).
    #[inline(never)]
    pub fn read(&mut self, session: &mut Session, now: Instant) -> Result<bool, LinkError> {
        let mut buf = [0u8; 16 * 1024];
        let mut budget = READ_BUDGET;
        let result = loop {
            if budget == 0 {
                break Ok(true);
            }
            if !session.accepts_input() {
                break Ok(false);
            }
            match self.transport.recv(&mut self.stream, &mut buf) {
                Ok(0) => break Err(LinkError::Closed),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if let Err(e) = session.receive(now, &buf[..n]) {
                        break Err(LinkError::Session(e));
                    }
                    if n < buf.len() {
                        // TCP gave us all it had: skip the read that would say WouldBlock (one system
                        // call per wake-up); whatever comes next makes the socket readable again.
                        break Ok(false);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(LinkError::Io(e)),
            }
        };
        if budget < READ_BUDGET && session.inflight() > 0 {
            self.quick_ack();
        }
        result
    }

    /// Acknowledges at once what TCP received. While our window waits on PUBACKs and we send nothing,
    /// our delayed ACK (up to 40 ms) held back the broker's next PUBACKs behind Nagle's algorithm on its
    /// side (mosquitto's default): 90,000 QoS 1 messages took nearly twice as long. Linux leaves
    /// quick-ACK mode again on its own, so this is re-armed after every read while messages are in
    /// flight; the loop paces those reads (`ACK_PACE` in agent.rs) so that the PUBACKs come in batches.
    fn quick_ack(&self) {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on our socket with a live int of the size passed; failure only costs speed.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    /// Writes what the session still has (its goodbye) and, with TLS, the close_notify, then closes the
    /// connection, all by `until`. The socket stays non-blocking and each wait for room is a `poll`
    /// bounded by the time left: blocking writes with a timeout each let a TLS goodbye and its
    /// close_notify run a timeout apiece past the stop's budget.
    pub fn goodbye(mut self, session: &mut Session, until: Instant) {
        let mut closed = false;
        loop {
            match self.write(session, Instant::now()) {
                Ok(true) if closed => break,
                Ok(true) => {
                    self.transport.close();
                    closed = true;
                }
                Ok(false) if self.writable_by(until) => {}
                _ => break,
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Waits until the socket takes bytes again; false when `until` came first.
    fn writable_by(&self, until: Instant) -> bool {
        // A goodbye's deadline is never more than a second away; the cap keeps the cast honest.
        let ms = until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(1000) as i32;
        let mut fd = crate::source::pollfd(self.stream.as_raw_fd(), libc::POLLOUT);
        // SAFETY: one live pollfd, its count passed with it.
        ms > 0 && unsafe { libc::poll(&mut fd, 1, ms) > 0 }
    }
}
