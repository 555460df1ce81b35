//! The engine's requests as non-blocking connections, one per request, and the system calls under them:
//! a request waits in the queue until fewer than [`MAX_OPEN`] are open, is written as the socket takes it,
//! and its answer is read as it comes until [`http::parse`] says it is whole.

use super::{events, http, EngineSource, Purpose, Request, MAX_OPEN};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// One request may take this long at most (and never past the collection's deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request on its connection: the request bytes still to write, the answer so far.
pub(super) struct Conn {
    pub(super) req: Request,
    pub(super) stream: UnixStream,
    pub(super) wire: Vec<u8>,
    pub(super) sent: usize,
    buf: Vec<u8>,
    pub(super) until: Instant,
    /// The whole answer (or why there is none), until the source takes it.
    pub(super) answer: Option<Result<http::Response, String>>,
}

/// The event stream's connection.
pub(super) struct EventConn {
    pub(super) stream: UnixStream,
    pub(super) wire: Vec<u8>,
    pub(super) sent: usize,
    pub(super) parser: events::EventStream,
}

impl EngineSource {
    pub(super) fn ask(&mut self, path: String, purpose: Purpose, max_body: usize) {
        self.queue.push_back(Request {
            path,
            purpose,
            max_body,
        });
    }

    /// Opens connections for queued requests while fewer than [`MAX_OPEN`] are open.
    pub(super) fn open_queued(&mut self, now: Instant) {
        while self.open.len() < MAX_OPEN {
            let Some(req) = self.queue.pop_front() else {
                return;
            };
            let until = self
                .run
                .as_ref()
                .map_or(now + REQUEST_TIMEOUT, |r| r.deadline)
                .min(now + REQUEST_TIMEOUT);
            match connect(&self.socket) {
                Ok(stream) => self.open.push(Conn {
                    wire: http::get_request(&req.path),
                    req,
                    stream,
                    sent: 0,
                    buf: Vec::new(),
                    until,
                    answer: None,
                }),
                Err(e) => self.answered(now, req, Err(e)),
            }
        }
    }
}

impl Conn {
    /// Writes what is left of the request, then reads what is there; `None` while the answer is not
    /// whole yet.
    pub(super) fn progress(&mut self) -> Option<Result<http::Response, String>> {
        if let Err(e) = write_some(&self.stream, &self.wire, &mut self.sent) {
            return Some(Err(e));
        }
        if self.sent < self.wire.len() {
            return None;
        }
        // Bytes on the wire may exceed the body (chunk framing); past this the peer is not making sense.
        let max_wire = self.req.max_body.saturating_mul(2) + http::MAX_HEAD + 64 * 1024;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = match (&self.stream).read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Err(e.to_string())),
            };
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > max_wire {
                return Some(Err(format!("answer over {max_wire} bytes")));
            }
            match http::parse(&self.buf, n == 0, self.req.max_body) {
                Ok(None) if n == 0 => return Some(Err("closed without an answer".into())),
                Ok(None) => {}
                Ok(Some(r)) => return Some(Ok(r)),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

/// Writes what the socket takes of `wire[*sent..]`.
pub(super) fn write_some(stream: &UnixStream, wire: &[u8], sent: &mut usize) -> Result<(), String> {
    let mut s = stream;
    while *sent < wire.len() {
        match s.write(&wire[*sent..]) {
            Ok(0) => return Err("closed by the engine".into()),
            Ok(n) => *sent += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("cannot send: {e}")),
        }
    }
    Ok(())
}

/// A non-blocking connection to the engine's socket. A local stream socket connects at once or fails
/// (a full backlog says EAGAIN rather than waiting).
pub(super) fn connect(socket: &str) -> Result<UnixStream, String> {
    let fail = |e: std::io::Error| {
        let hint = match e.kind() {
            ErrorKind::NotFound => {
                " (no engine socket there: set engine_socket, or mount the socket with the label \
                 io.balena.features.balena-socket)"
            }
            ErrorKind::PermissionDenied => " (run as root or in the socket's group)",
            _ => "",
        };
        format!("engine {socket}: cannot connect: {e}{hint}")
    };
    // SAFETY: plain socket creation; the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = socket.as_bytes();
    if path.is_empty() || path.len() >= addr.sun_path.len() || path.contains(&0) {
        return Err(format!(
            "engine {socket}: cannot connect: not a usable socket path"
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len() + 1;
    // SAFETY: `addr` is a filled sockaddr_un and `len` within it.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(fail(std::io::Error::last_os_error()));
    }
    Ok(UnixStream::from(owned))
}
