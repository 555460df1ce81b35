//! What we say about the engine's socket: which one is used and why, once; a `DOCKER_HOST` we cannot
//! follow; and a socket that is not there, in full once and then as a reminder at most once a minute
//! (the tick is skipped every time, but a line every ten seconds says nothing new). Pure: the caller
//! gives what the environment and the file system say, and logs what comes back.

use super::{resolve_socket, SOCKET_CANDIDATES};
use std::time::{Duration, Instant};

/// A missing socket is said again no more often than this.
const REMINDER_EVERY: Duration = Duration::from_secs(60);

const HINT: &str = "on balena, give this service the label io.balena.features.balena-socket: '1'; \
                    under Docker, mount the socket (-v /var/run/docker.sock:/var/run/docker.sock); \
                    or set STATS_ENGINE_SOCKET";

/// The socket to use this collection, and what to say about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub socket: String,
    /// Lines for the log, each once: `(true, line)` a warning, `(false, line)` information.
    pub notes: Vec<(bool, String)>,
    /// The socket is not there: the collection fails with this (empty: said within the last minute,
    /// skip the tick without a line).
    pub missing: Option<String>,
}

#[derive(Default)]
pub struct SocketNotices {
    /// The socket last announced as in use.
    announced: Option<String>,
    docker_host_warned: bool,
    /// When a missing socket was last said, and whether it was ever said.
    missing_said: Option<Instant>,
}

impl SocketNotices {
    /// `route` says where figures come from, for the announcement.
    pub fn resolve(
        &mut self,
        configured: Option<&str>,
        docker_host: Option<&str>,
        exists: &dyn Fn(&str) -> bool,
        route: &str,
        now: Instant,
    ) -> Resolved {
        let socket = resolve_socket(configured, docker_host, exists);
        let configured = configured.filter(|c| !c.is_empty());
        let host = docker_host.filter(|h| !h.is_empty());
        let from_host = configured.is_none() && host.is_some_and(|h| h.starts_with("unix://"));
        let mut notes = Vec::new();
        if let Some(h) = host.filter(|h| configured.is_none() && !h.starts_with("unix://")) {
            if !self.docker_host_warned {
                self.docker_host_warned = true;
                notes.push((
                    true,
                    format!(
                        // The scheme only: the rest may name a user (ssh://user@host).
                        "DOCKER_HOST {} is not supported: the agent talks to the engine over a unix \
                         socket only, so it uses {socket} (set DOCKER_HOST=unix:///path or \
                         STATS_ENGINE_SOCKET)",
                        h.find("://").map_or("without a scheme", |end| &h[..end + 3])
                    ),
                ));
            }
        }
        if !exists(&socket) {
            self.announced = None;
            let missing = self.missing_text(configured.is_some(), from_host, &socket, now);
            return Resolved {
                socket,
                notes,
                missing: Some(missing),
            };
        }
        self.missing_said = None;
        if self.announced.as_deref() != Some(socket.as_str()) {
            let why = if configured.is_some() {
                "engine_socket"
            } else if from_host {
                "DOCKER_HOST"
            } else {
                "found"
            };
            notes.push((false, format!("engine: socket {socket} ({why}); {route}")));
            self.announced = Some(socket.clone());
        }
        Resolved {
            socket,
            notes,
            missing: None,
        }
    }

    fn missing_text(
        &mut self,
        configured: bool,
        from_host: bool,
        socket: &str,
        now: Instant,
    ) -> String {
        let first = self.missing_said.is_none();
        if self
            .missing_said
            .is_some_and(|t| now.saturating_duration_since(t) < REMINDER_EVERY)
        {
            return String::new();
        }
        self.missing_said = Some(now);
        let tried = if configured {
            format!("engine_socket {socket} is not there")
        } else if from_host {
            format!("DOCKER_HOST names {socket}, which is not there")
        } else {
            format!(
                "no engine socket found: tried {}",
                SOCKET_CANDIDATES.join(", ")
            )
        };
        if first {
            format!("engine: {tried} ({HINT})")
        } else {
            format!("engine: still {tried} (said at most once a minute)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn a_missing_socket_is_said_in_full_once_then_reminded_once_a_minute() {
        let mut n = SocketNotices::default();
        let t0 = Instant::now();
        let r = n.resolve(None, None, &none, "figures", t0);
        let first = r.missing.unwrap();
        for path in SOCKET_CANDIDATES {
            assert!(first.contains(path), "{first}");
        }
        assert!(
            first.contains("io.balena.features.balena-socket"),
            "{first}"
        );
        assert!(
            first.contains("-v /var/run/docker.sock:/var/run/docker.sock"),
            "{first}"
        );
        let quiet = n.resolve(None, None, &none, "figures", t0 + Duration::from_secs(10));
        assert_eq!(quiet.missing.as_deref(), Some(""));
        let again = n.resolve(None, None, &none, "figures", t0 + Duration::from_secs(61));
        let again = again.missing.unwrap();
        assert!(
            again.starts_with("engine: still no engine socket found"),
            "{again}"
        );
        // Found at last: announced once, and a later loss is said in full again.
        let here = |p: &str| p == "/var/run/docker.sock";
        let r = n.resolve(
            None,
            None,
            &here,
            "figures from the kernel",
            t0 + Duration::from_secs(70),
        );
        assert_eq!(
            r.notes,
            [(
                false,
                "engine: socket /var/run/docker.sock (found); figures from the kernel".into()
            )]
        );
        let r = n.resolve(None, None, &here, "x", t0 + Duration::from_secs(80));
        assert!(r.notes.is_empty() && r.missing.is_none());
        let r = n.resolve(None, None, &none, "x", t0 + Duration::from_secs(90));
        assert!(r
            .missing
            .unwrap()
            .contains("io.balena.features.balena-socket"));
    }

    #[test]
    fn a_tcp_docker_host_is_said_once_and_the_unix_socket_used() {
        let mut n = SocketNotices::default();
        let here = |p: &str| p == "/var/run/docker.sock";
        let t = Instant::now();
        let r = n.resolve(None, Some("tcp://127.0.0.1:2375"), &here, "r", t);
        assert_eq!(r.socket, "/var/run/docker.sock");
        assert!(r.notes[0].0, "a warning");
        assert!(
            r.notes[0]
                .1
                .starts_with("DOCKER_HOST tcp:// is not supported"),
            "{:?}",
            r.notes
        );
        let r = n.resolve(None, Some("tcp://127.0.0.1:2375"), &here, "r", t);
        assert!(r.notes.is_empty());
    }

    #[test]
    fn a_configured_or_docker_host_socket_is_named_as_such() {
        let mut n = SocketNotices::default();
        let t = Instant::now();
        let r = n.resolve(Some("/x.sock"), None, &none, "r", t);
        assert!(r
            .missing
            .unwrap()
            .starts_with("engine: engine_socket /x.sock is not there"));
        let mut n = SocketNotices::default();
        let r = n.resolve(None, Some("unix:///y.sock"), &none, "r", t);
        assert!(r
            .missing
            .unwrap()
            .starts_with("engine: DOCKER_HOST names /y.sock, which is not there"));
        let mut n = SocketNotices::default();
        let r = n.resolve(None, Some("unix:///y.sock"), &|_| true, "r", t);
        assert_eq!(
            r.notes,
            [(false, "engine: socket /y.sock (DOCKER_HOST); r".into())]
        );
    }
}
