//! Opening the broker connection without blocking the main loop.
//!
//! std's `TcpStream::connect_timeout` blocks: against a broker whose host is down (no answer at all, not
//! a refusal) the loop stood still for the whole timeout on every attempt, and ticks were skipped. Here
//! the socket is created non-blocking, `connect` returns at once, and the loop learns the outcome when
//! `poll` reports the socket writable.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

/// Starts connecting to `addr`; the stream is writable once the outcome is known (see [`outcome`]).
pub fn start(addr: SocketAddr) -> io::Result<TcpStream> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the descriptor is owned by the TcpStream from here on, which closes it.
    let stream = unsafe {
        let fd = libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        TcpStream::from_raw_fd(fd)
    };
    let result = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr_in is valid; the fields we need are set below.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            connect(
                &stream,
                (&sin as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&sin),
            )
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_scope_id = a.scope_id();
            connect(
                &stream,
                (&sin6 as *const libc::sockaddr_in6).cast(),
                std::mem::size_of_val(&sin6),
            )
        }
    };
    match result {
        Ok(()) => Ok(stream),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(stream),
        Err(e) => Err(e),
    }
}

fn connect(stream: &TcpStream, addr: *const libc::sockaddr, len: usize) -> io::Result<()> {
    // SAFETY: `addr` points at a live sockaddr of `len` bytes for the duration of the call.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), addr, len as libc::socklen_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Once `poll` reports the connecting socket writable (or in error): whether the connection is up.
pub fn outcome(stream: &TcpStream) -> io::Result<()> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    // Writable without a pending error but not connected cannot happen on Linux; check anyway.
    stream.peer_addr().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn wait_writable(stream: &TcpStream) {
        let mut fd = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, 5_000) };
        assert_eq!(n, 1, "the connect finished within 5 s");
    }

    #[test]
    fn connects_to_a_listener_without_blocking() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = start(listener.local_addr().unwrap()).unwrap();
        wait_writable(&stream);
        assert!(outcome(&stream).is_ok());
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
    }

    #[test]
    fn a_refusal_is_reported_as_the_outcome() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        match start(SocketAddr::from(([127, 0, 0, 1], port))) {
            Ok(stream) => {
                wait_writable(&stream);
                let e = outcome(&stream).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
        }
    }

    #[test]
    fn ipv6_loopback_works_when_the_machine_has_it() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return;
        };
        let stream = start(listener.local_addr().unwrap()).unwrap();
        wait_writable(&stream);
        assert!(outcome(&stream).is_ok());
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, stream.local_addr().unwrap());
    }
}
