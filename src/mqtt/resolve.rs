//! The broker's name resolved off the loop: `getaddrinfo` has no timeout to give and may wait on a DNS
//! server for many seconds, so it runs on a thread of its own, one at a time, and says it is done by
//! writing a byte to a pipe the loop polls. A resolution that outlives its deadline is abandoned (its
//! thread finishes in the background and no other starts until it has).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub type Answer = Option<Result<Vec<SocketAddr>, String>>;
pub type Slot = Arc<Mutex<Answer>>;

pub struct Resolver {
    read: OwnedFd,
    answer: Arc<Mutex<Answer>>,
    pub until: Instant,
}

impl Resolver {
    /// A literal address needs no lookup: its answer at once.
    pub fn literal(host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.parse::<IpAddr>()
            .ok()
            .map(|ip| vec![SocketAddr::new(ip, port)])
    }

    /// Starts resolving `host:port` on a thread that leaves its answer in `running` (check [`busy`] first:
    /// an abandoned lookup may still hold it). Errors (no pipe, no thread) are values.
    pub fn start(
        host: &str,
        port: u16,
        until: Instant,
        running: &Slot,
    ) -> Result<Resolver, String> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 fills two descriptors we then own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(format!(
                "cannot resolve: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: both were just created by pipe2 and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let answer = Arc::clone(running);
        let target = (host.to_owned(), port);
        let shared = Arc::clone(&answer);
        std::thread::Builder::new()
            .name("resolve".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let result = target
                    .to_socket_addrs()
                    .map(Iterator::collect)
                    .map_err(|e| e.to_string());
                if let Ok(mut a) = shared.lock() {
                    *a = Some(result);
                }
                // SAFETY: one byte from a live buffer to the pipe we own; a closed read end is ignored.
                unsafe { libc::write(write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
            })
            .map_err(|e| format!("cannot resolve: {e}"))?;
        Ok(Resolver {
            read,
            answer,
            until,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The answer once the thread has given it.
    pub fn take(&self) -> Answer {
        self.answer.lock().ok().and_then(|mut a| a.take())
    }
}

/// Whether a lookup thread is still running: its shared slot has another owner.
pub fn busy(slot: &Slot) -> bool {
    Arc::strong_count(slot) > 1
}

pub fn slot() -> Slot {
    Arc::new(Mutex::new(None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn literal_addresses_need_no_lookup_and_names_resolve_on_a_thread() {
        assert_eq!(
            Resolver::literal("127.0.0.1", 1883),
            Some(vec!["127.0.0.1:1883".parse().unwrap()])
        );
        assert_eq!(
            Resolver::literal("[::1]", 8883),
            Some(vec!["[::1]:8883".parse().unwrap()])
        );
        assert_eq!(Resolver::literal("broker.local", 1883), None);
        let slot = slot();
        let r = Resolver::start("localhost", 1883, Instant::now(), &slot).unwrap();
        let mut fds = [libc::pollfd {
            fd: r.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, 10_000) };
        assert_eq!(ready, 1);
        let addrs = r.take().expect("answered").expect("localhost resolves");
        assert!(addrs
            .iter()
            .all(|a| a.port() == 1883 && a.ip().is_loopback()));
        drop(r);
        // The thread lets go of its share right after answering.
        let t = Instant::now();
        while busy(&slot) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!busy(&slot));
    }
}
