//! ENGINE mode: figures straight from the engine's API socket, without running the CLI.
//!
//! The I/O lives here (a `UnixStream` per request, with timeouts and bounded reads); the HTTP framing is in
//! `http.rs` and the JSON-to-figures arithmetic in `api.rs`, both pure. A collection is one
//! `GET /containers/json` and one `GET /containers/{id}/stats?stream=false&one-shot=true` per running
//! container. Anything that goes wrong with one container is a warning and that container is left out of
//! the tick; anything that stops the list is an error for the tick. Nothing the engine sends can panic us.

pub mod api;
pub mod http;

use crate::stats::{ContainerStats, Figures, Metric, Value};
use api::{CpuSample, Listed};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Where the engine listens when neither `engine_socket` nor a `unix://` `DOCKER_HOST` says: balenaOS's
/// host, a container with the `io.balena.features.balena-socket` label, then plain Docker.
pub const SOCKET_CANDIDATES: [&str; 3] = [
    "/var/run/balena-engine.sock",
    "/host/run/balena-engine.sock",
    "/var/run/docker.sock",
];

/// One request may take this long at most (and never past the collection's deadline).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on what we accept: a list of thousands of containers, and a stats answer (about 5 KB).
const MAX_LIST_BODY: usize = 8 * 1024 * 1024;
const MAX_STATS_BODY: usize = 1024 * 1024;
/// How long we wait between two samples of a container we have no previous sample of (`--once`, the
/// first tick, a new container). About the docker CLI's own wait.
const SECOND_SAMPLE_AFTER: Duration = Duration::from_secs(1);

/// The socket to use: `configured` when set, else `DOCKER_HOST` when it is `unix://...`, else the first
/// of [`SOCKET_CANDIDATES`] that `exists`, else the first candidate (so the error names a real default).
pub fn resolve_socket(
    configured: Option<&str>,
    docker_host: Option<&str>,
    exists: &dyn Fn(&str) -> bool,
) -> String {
    if let Some(c) = configured.filter(|c| !c.is_empty()) {
        return c.strip_prefix("unix://").unwrap_or(c).to_owned();
    }
    if let Some(path) = docker_host
        .and_then(|h| h.strip_prefix("unix://"))
        .filter(|p| !p.is_empty())
    {
        return path.to_owned();
    }
    SOCKET_CANDIDATES
        .iter()
        .find(|c| exists(c))
        .unwrap_or(&SOCKET_CANDIDATES[0])
        .to_string()
}

/// The engine client with our own previous CPU sample of each container (keyed by full id; containers
/// that are gone are pruned every tick).
pub struct Engine {
    configured: Option<String>,
    previous: HashMap<String, CpuSample>,
}

impl Engine {
    pub fn new(configured: Option<String>) -> Engine {
        Engine {
            configured,
            previous: HashMap::new(),
        }
    }

    /// The socket this collection will use (resolved afresh each time, so a socket mounted late is found).
    pub fn socket(&self) -> String {
        let docker_host = std::env::var("DOCKER_HOST").ok();
        resolve_socket(self.configured.as_deref(), docker_host.as_deref(), &|p| {
            std::path::Path::new(p).exists()
        })
    }

    /// One collection. Blocks the caller: a few milliseconds per container, plus one bounded
    /// [`SECOND_SAMPLE_AFTER`] sleep when some container has no previous sample (the agent's loop accepts
    /// that; the sleep ends early when `cancelled` says the agent is stopping). Nothing runs past
    /// `deadline`.
    pub fn collect(
        &mut self,
        socket: &str,
        deadline: Instant,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<ContainerStats>, String> {
        let list = request(socket, "/containers/json", MAX_LIST_BODY, deadline)?;
        if list.status != 200 {
            return Err(format!(
                "engine {socket}: GET /containers/json answered {}: {}",
                list.status,
                api::error_message(&list.body)
            ));
        }
        let listed = api::parse_list(&list.body).map_err(|e| format!("engine {socket}: {e}"))?;
        self.previous
            .retain(|id, _| listed.iter().any(|c| &c.id == id));

        let mut out: Vec<(Listed, Figures)> = Vec::with_capacity(listed.len());
        let mut waiting: Vec<(usize, CpuSample)> = Vec::new();
        for c in listed {
            let Some(sample) = sample(socket, &c, deadline) else {
                continue;
            };
            let mut figures = sample.figures;
            if let Some(now) = sample.cpu {
                // Against our own last sample; else the engine's (older engines fill precpu_stats);
                // else a second sample shortly.
                let pct = self
                    .previous
                    .get(&c.id)
                    .and_then(|before| api::cpu_percent(before, &now))
                    .or_else(|| sample.precpu.and_then(|p| api::cpu_percent(&p, &now)));
                match pct {
                    Some(p) => figures.set(Metric::CpuPercent, Value::Percent(p)),
                    None => waiting.push((out.len(), now)),
                }
                self.previous.insert(c.id.clone(), now);
            }
            out.push((c, figures));
        }

        if !waiting.is_empty() && !cancelled() {
            let wake = Instant::now() + SECOND_SAMPLE_AFTER;
            if wake + Duration::from_millis(100) < deadline {
                // The one blocking sleep in the agent: short, bounded, and cut short by a stop request.
                while Instant::now() < wake && !cancelled() {
                    std::thread::sleep(Duration::from_millis(50).min(wake - Instant::now()));
                }
                for (i, before) in waiting {
                    if cancelled() {
                        break;
                    }
                    let (c, figures) = &mut out[i];
                    let Some(now) = sample(socket, c, deadline).and_then(|s| s.cpu) else {
                        continue;
                    };
                    if let Some(p) = api::cpu_percent(&before, &now) {
                        figures.set(Metric::CpuPercent, Value::Percent(p));
                    }
                    self.previous.insert(c.id.clone(), now);
                }
            } else {
                crate::warn!(
                    "engine {socket}: no time left for a second sample; CPU % left out this tick"
                );
            }
        }
        Ok(out
            .into_iter()
            .map(|(c, f)| api::container_stats(&c, f))
            .collect())
    }
}

/// One container's sample, or a warning and `None`.
fn sample(socket: &str, c: &Listed, deadline: Instant) -> Option<api::Sample> {
    let path = format!("/containers/{}/stats?stream=false&one-shot=true", c.id);
    let result = request(socket, &path, MAX_STATS_BODY, deadline).and_then(|r| match r.status {
        200 => api::parse_stats(&r.body).map_err(|e| e.to_string()),
        404 => Err(format!(
            "gone between list and stats ({})",
            api::error_message(&r.body)
        )),
        s => Err(format!("answered {s}: {}", api::error_message(&r.body))),
    });
    match result {
        Ok(s) => Some(s),
        Err(e) => {
            crate::warn!(
                "engine: container {} ({}): {e}; left out this tick",
                c.name,
                api::short_id(&c.id)
            );
            None
        }
    }
}

/// One GET over a fresh connection, read until the response is whole, with every wait bounded.
fn request(
    socket: &str,
    path: &str,
    max_body: usize,
    deadline: Instant,
) -> Result<http::Response, String> {
    let fail = |what: String| format!("engine {socket}: GET {}: {what}", strip_query(path));
    let until = deadline.min(Instant::now() + REQUEST_TIMEOUT);
    let left = || {
        until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| fail("timed out".into()))
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::NotFound => {
                " (no engine socket there: set engine_socket, or mount the \
                                    socket with the label io.balena.features.balena-socket)"
            }
            ErrorKind::PermissionDenied => " (run as root or in the socket's group)",
            _ => "",
        };
        format!("engine {socket}: cannot connect: {e}{hint}")
    })?;
    stream
        .set_write_timeout(Some(left()?))
        .and_then(|_| stream.write_all(&http::get_request(path)))
        .map_err(|e| fail(format!("cannot send: {e}")))?;
    // Bytes on the wire may exceed the body (chunk framing); past this the peer is not making sense.
    let max_wire = max_body.saturating_mul(2) + http::MAX_HEAD + 64 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| fail(e.to_string()))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(fail("timed out".into()))
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > max_wire {
            return Err(fail(format!("answer over {max_wire} bytes")));
        }
        if let Some(r) = http::parse(&buf, n == 0, max_body).map_err(|e| fail(e.to_string()))? {
            return Ok(r);
        }
    }
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_resolution_order() {
        let none = |_: &str| false;
        let all = |_: &str| true;
        let only = |want: &'static str| move |p: &str| p == want;
        assert_eq!(
            resolve_socket(Some("/x.sock"), Some("unix:///y.sock"), &all),
            "/x.sock"
        );
        assert_eq!(
            resolve_socket(Some("unix:///x.sock"), None, &none),
            "/x.sock"
        );
        assert_eq!(
            resolve_socket(None, Some("unix:///host/run/balena-engine.sock"), &none),
            "/host/run/balena-engine.sock"
        );
        assert_eq!(
            resolve_socket(Some(""), Some("tcp://10.0.0.1:2375"), &all),
            "/var/run/balena-engine.sock"
        );
        assert_eq!(
            resolve_socket(None, Some("unix://"), &only("/var/run/docker.sock")),
            "/var/run/docker.sock"
        );
        assert_eq!(
            resolve_socket(None, None, &only("/host/run/balena-engine.sock")),
            "/host/run/balena-engine.sock"
        );
        assert_eq!(
            resolve_socket(None, None, &none),
            "/var/run/balena-engine.sock"
        );
    }

    /// A fake engine on a real unix socket in a temp dir: serves canned answers, one per connection.
    fn serve(answers: Vec<Vec<u8>>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bmct-engine-unit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                requests.push(
                    String::from_utf8_lossy(&req)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned(),
                );
                let _ = s.write_all(&answer);
            }
            let _ = std::fs::remove_dir_all(&dir);
            requests
        });
        (path.display().to_string(), handle)
    }

    fn answer(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn ok(body: &str) -> Vec<u8> {
        answer("200 OK", body)
    }

    fn chunked(body: &str) -> Vec<u8> {
        let (a, b) = body.split_at(body.len() / 2);
        format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .into_bytes()
    }

    fn stats(total: u64, system: u64) -> String {
        format!(
            r#"{{"read":"2026-01-01T00:00:00Z","cpu_stats":{{"cpu_usage":{{"total_usage":{total}}},
            "system_cpu_usage":{system},"online_cpus":2}},"memory_stats":{{"usage":100,"limit":1000}},
            "pids_stats":{{"current":4}}}}"#
        )
    }

    #[test]
    fn collects_from_a_fake_engine_with_a_second_sample_and_skips_a_vanished_container() {
        let list = r#"[{"Id":"aaaaaaaaaaaaaaaa","Names":["/web_1_2"],"Labels":{"io.balena.service-name":"web"}},
                       {"Id":"bbbbbbbbbbbbbbbb","Names":["/gone"]},
                       {"Id":"cccccccccccccccc","Names":["/junk"]}]"#;
        let (socket, server) = serve(vec![
            ok(list),
            chunked(&stats(1_000, 10_000)),
            answer(
                "404 Not Found",
                r#"{"message":"No such container: bbbbbbbbbbbb"}"#,
            ),
            ok("{not json"),
            ok(&stats(1_500, 12_000)),
        ]);
        let mut e = Engine::new(None);
        let got = e
            .collect(&socket, Instant::now() + Duration::from_secs(10), &|| false)
            .unwrap();
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 5);
        assert_eq!(requests[0], "GET /containers/json HTTP/1.1");
        assert_eq!(
            requests[1],
            "GET /containers/aaaaaaaaaaaaaaaa/stats?stream=false&one-shot=true HTTP/1.1"
        );
        assert_eq!(got.len(), 1);
        let s = &got[0];
        assert_eq!(
            (s.name.as_str(), s.id.as_str(), s.service.as_deref()),
            ("web_1_2", "aaaaaaaaaaaa", Some("web"))
        );
        // 500 of 2000 system ticks on 2 CPUs = 50 %.
        assert_eq!(
            s.figures.get(Metric::CpuPercent),
            Some(Value::Percent(50.0))
        );
        assert_eq!(s.figures.get(Metric::Pids), Some(Value::Count(4)));
        assert_eq!(
            e.previous.len(),
            1,
            "vanished containers are not remembered"
        );
    }

    #[test]
    fn socket_problems_are_errors_not_panics() {
        let e = Engine::new(None)
            .collect(
                "/nonexistent/engine.sock",
                Instant::now() + Duration::from_secs(1),
                &|| false,
            )
            .unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        let (socket, server) = serve(vec![answer(
            "500 Internal Server Error",
            r#"{"message":"boom"}"#,
        )]);
        let e = Engine::new(None)
            .collect(&socket, Instant::now() + Duration::from_secs(5), &|| false)
            .unwrap_err();
        server.join().unwrap();
        assert!(e.contains("answered 500: boom"), "{e}");
        let (socket, server) = serve(vec![b"garbage\r\n\r\n".to_vec()]);
        let e = Engine::new(None)
            .collect(&socket, Instant::now() + Duration::from_secs(5), &|| false)
            .unwrap_err();
        server.join().unwrap();
        assert!(e.contains("malformed HTTP"), "{e}");
    }
}
