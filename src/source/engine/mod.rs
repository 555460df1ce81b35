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
use std::os::fd::AsRawFd;
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

        let started = Instant::now();
        let first = samples(socket, &listed.iter().collect::<Vec<_>>(), deadline);
        let mut out: Vec<(Listed, Figures)> = Vec::with_capacity(listed.len());
        let mut waiting: Vec<(usize, CpuSample)> = Vec::new();
        for (c, sample) in listed.into_iter().zip(first) {
            let Some(sample) = sample else {
                continue;
            };
            let mut figures = sample.figures;
            if let Some(now) = sample.cpu {
                // Against our own last sample; else the engine's (older engines ignore one-shot and
                // fill precpu_stats); else a second sample shortly.
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

        // The engine samples each container about once a second and a one-shot request answers with its
        // latest sample, so a second request can return the very sample the first one did (no time has
        // passed between them, no CPU % to compute), more often on a loaded machine. Ask again, up to
        // three times a second apart, for the containers still without a figure.
        let mut wake = started;
        for _ in 0..3 {
            if waiting.is_empty() || cancelled() {
                break;
            }
            wake += SECOND_SAMPLE_AFTER;
            if wake + Duration::from_millis(100) >= deadline {
                crate::warn!(
                    "engine {socket}: no time left for a second sample; CPU % left out this tick"
                );
                break;
            }
            // The one blocking sleep in the agent: short, bounded, and cut short by a stop request.
            while Instant::now() < wake && !cancelled() {
                std::thread::sleep(
                    Duration::from_millis(50).min(wake.saturating_duration_since(Instant::now())),
                );
            }
            if cancelled() {
                break;
            }
            let again: Vec<&Listed> = waiting.iter().map(|(i, _)| &out[*i].0).collect();
            let second = samples(socket, &again, deadline);
            let mut still = Vec::new();
            for ((i, before), sample) in waiting.into_iter().zip(second) {
                let Some(now) = sample.and_then(|s| s.cpu) else {
                    continue;
                };
                let (c, figures) = &mut out[i];
                match api::cpu_percent(&before, &now) {
                    Some(p) => {
                        figures.set(Metric::CpuPercent, Value::Percent(p));
                        self.previous.insert(c.id.clone(), now);
                    }
                    None => still.push((i, before)),
                }
            }
            waiting = still;
        }
        Ok(out
            .into_iter()
            .map(|(c, f)| api::container_stats(&c, f))
            .collect())
    }
}

/// Samples of `containers`, all asked at once: the engine answers a one-shot stats request at its next
/// internal sampling (up to a second away), so asking one after another would cost a second each. A
/// container whose sample failed gets a warning and `None`.
fn samples(socket: &str, containers: &[&Listed], deadline: Instant) -> Vec<Option<api::Sample>> {
    let paths: Vec<String> = containers
        .iter()
        .map(|c| format!("/containers/{}/stats?stream=false&one-shot=true", c.id))
        .collect();
    let answers = requests(socket, &paths, MAX_STATS_BODY, deadline);
    containers
        .iter()
        .zip(answers)
        .map(|(c, answer)| {
            let result = answer.and_then(|r| match r.status {
                200 => api::parse_stats(&r.body).map_err(|e| e.to_string()),
                404 => Err(format!(
                    "gone between list and stats ({})",
                    api::error_message(&r.body)
                )),
                s => Err(format!("answered {s}: {}", api::error_message(&r.body))),
            });
            result
                .map_err(|e| {
                    crate::warn!(
                        "engine: container {} ({}): {e}; left out this tick",
                        c.name,
                        api::short_id(&c.id)
                    )
                })
                .ok()
        })
        .collect()
}

/// One GET, see [`requests`].
fn request(
    socket: &str,
    path: &str,
    max_body: usize,
    deadline: Instant,
) -> Result<http::Response, String> {
    let mut answers = requests(socket, &[path.to_owned()], max_body, deadline);
    answers.pop().unwrap_or_else(|| Err("no answer".into()))
}

/// GETs over fresh connections, up to [`MAX_PARALLEL`] at a time, waited on together in one `poll` and
/// each read until its response is whole. Every wait is bounded by [`REQUEST_TIMEOUT`] and `deadline`;
/// every answer by `max_body`. One result per path, in order.
fn requests(
    socket: &str,
    paths: &[String],
    max_body: usize,
    deadline: Instant,
) -> Vec<Result<http::Response, String>> {
    let mut out: Vec<Option<Result<http::Response, String>>> = paths.iter().map(|_| None).collect();
    for batch in (0..paths.len()).collect::<Vec<_>>().chunks(MAX_PARALLEL) {
        let until = deadline.min(Instant::now() + REQUEST_TIMEOUT);
        let mut open: Vec<Open> = Vec::new();
        for &i in batch {
            match send(socket, &paths[i], until) {
                Ok(stream) => open.push(Open {
                    index: i,
                    stream,
                    buf: Vec::new(),
                }),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        while !open.is_empty() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for o in open.drain(..) {
                    out[o.index] = Some(Err(failure(socket, &paths[o.index], "timed out")));
                }
                break;
            }
            let mut fds: Vec<libc::pollfd> = open
                .iter()
                .map(|o| libc::pollfd {
                    fd: o.stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = left.as_millis().min(60_000) as i32 + 1;
            // SAFETY: `fds` is a live array of pollfd for sockets we own, its length passed with it.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if ready <= 0 {
                continue; // timeout or EINTR: the deadline check above decides
            }
            let mut k = 0;
            open.retain_mut(|o| {
                let woke = fds[k].revents != 0;
                k += 1;
                if !woke {
                    return true;
                }
                match o.read(max_body) {
                    None => true,
                    Some(r) => {
                        let path = &paths[o.index];
                        out[o.index] = Some(r.map_err(|e| failure(socket, path, &e)));
                        false
                    }
                }
            });
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err("not asked".into())))
        .collect()
}

/// Most requests in flight at once (each holds a descriptor).
const MAX_PARALLEL: usize = 32;

struct Open {
    index: usize,
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Open {
    /// Reads what is there; `None` while the response is not whole yet.
    fn read(&mut self, max_body: usize) -> Option<Result<http::Response, String>> {
        // Bytes on the wire may exceed the body (chunk framing); past this the peer is not making sense.
        let max_wire = max_body.saturating_mul(2) + http::MAX_HEAD + 64 * 1024;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => return Some(Err(e.to_string())),
            };
            self.buf.extend_from_slice(&chunk[..n]);
            if self.buf.len() > max_wire {
                return Some(Err(format!("answer over {max_wire} bytes")));
            }
            match http::parse(&self.buf, n == 0, max_body) {
                Ok(None) => {}
                Ok(Some(r)) => return Some(Ok(r)),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

fn failure(socket: &str, path: &str, what: &str) -> String {
    format!("engine {socket}: GET {}: {what}", strip_query(path))
}

/// Connects and sends the request (a few hundred bytes: the socket buffer takes it at once); the stream
/// comes back non-blocking, to be polled.
fn send(socket: &str, path: &str, until: Instant) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::NotFound => {
                " (no engine socket there: set engine_socket, or mount the socket with the label \
                 io.balena.features.balena-socket)"
            }
            ErrorKind::PermissionDenied => " (run as root or in the socket's group)",
            _ => "",
        };
        format!("engine {socket}: cannot connect: {e}{hint}")
    })?;
    let left = until
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| failure(socket, path, "timed out"))?;
    stream
        .set_write_timeout(Some(left))
        .and_then(|_| stream.write_all(&http::get_request(path)))
        .and_then(|_| stream.set_nonblocking(true))
        .map_err(|e| failure(socket, path, &format!("cannot send: {e}")))?;
    Ok(stream)
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
    fn a_repeated_engine_sample_is_asked_for_again() {
        let list = r#"[{"Id":"aaaaaaaaaaaaaaaa","Names":["/web"]}]"#;
        // The second answer is the engine's same sample again (no time passed): no CPU % from it.
        let (socket, server) = serve(vec![
            ok(list),
            ok(&stats(1_000, 10_000)),
            ok(&stats(1_000, 10_000)),
            ok(&stats(1_250, 11_000)),
        ]);
        let mut e = Engine::new(None);
        let got = e
            .collect(&socket, Instant::now() + Duration::from_secs(10), &|| false)
            .unwrap();
        assert_eq!(server.join().unwrap().len(), 4);
        // 250 of 1000 system ticks on 2 CPUs = 50 %.
        assert_eq!(
            got[0].figures.get(Metric::CpuPercent),
            Some(Value::Percent(50.0))
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
