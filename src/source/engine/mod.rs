//! ENGINE mode: figures and lifecycles straight from the engine's API socket, without running the CLI.
//!
//! A state machine the loop drives ([`EngineSource`]): every request is a non-blocking connection of its
//! own in the loop's poll set, never waited on here (`conn.rs`, with the system calls). The HTTP framing
//! is in `http.rs`, the event stream's in `events.rs`, the JSON in `api.rs`, all pure. A collection
//! (`collection.rs`) is one `GET /containers/json?all=1`, then at once one
//! `GET /containers/{id}/stats?stream=false&one-shot=true` per running container (at most [`MAX_OPEN`]
//! connections open, the rest as those finish) and an inspect of each container whose state we do not
//! know yet; a container without a previous CPU sample is asked again a second later (a deadline, not a
//! sleep). On the kernel route (`kernel_route.rs`) the running containers' figures come from the
//! kernel's files instead, and the stats API is asked only for those it cannot read; while the event
//! stream has kept us in sync since a list, a collection asks the engine nothing. Between collections
//! the event stream (`watch.rs`, `GET /events`, containers only) says which container to inspect again,
//! and what changed is handed over at once. Anything that goes wrong with one container is a warning;
//! anything that stops the list fails the tick. Nothing the engine sends can panic us.

pub mod api;
mod collection;
mod conn;
pub mod events;
pub mod http;
mod kernel_route;
mod socket;
mod watch;

use super::{pollfd, Output, Source};
use crate::mqtt::backoff::Backoff;
use crate::source::filter::Filter;
use crate::stats::lifecycle::{Lifecycle, State};
use crate::stats::{ContainerStats, Figures};
use api::{CpuSample, Listed};
use collection::Run;
use conn::{write_some, Conn, EventConn};
pub use kernel_route::{figuring, Figuring};
use kernel_route::{Kernel, Track};
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use watch::EVENTS_MAX_DELAY;

/// Where the engine listens when neither `engine_socket` nor a `unix://` `DOCKER_HOST` says: balenaOS's
/// host, a container with the `io.balena.features.balena-socket` label, then plain Docker.
pub const SOCKET_CANDIDATES: [&str; 3] = [
    "/var/run/balena-engine.sock",
    "/host/run/balena-engine.sock",
    "/var/run/docker.sock",
];

/// Bounds on what we accept: a list of thousands of containers, and a stats or inspect answer (about 5
/// KB; an inspect with a long healthcheck log a few times that).
const MAX_LIST_BODY: usize = 8 * 1024 * 1024;
const MAX_STATS_BODY: usize = 1024 * 1024;
/// Connections to the engine open at once (each holds a descriptor), besides the event stream. The engine
/// answers every one-shot request waiting at its next sampling round (about a second), so each wave of
/// requests costs a round: with 64, 100 containers took 2.2 s (two waves), with 128 one wave.
pub const MAX_OPEN: usize = 128;
/// Containers we keep track of (and report) at most.
pub const MAX_CONTAINERS: usize = 4096;
const LIST_PATH: &str = "/containers/json?all=1";

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

/// What a request is for.
enum Purpose {
    List,
    /// A stats sample of the collection's container at this index.
    Stats(usize),
    /// An inspect; `for_run` when the collection waits for it (else an event asked).
    Inspect {
        id: String,
        for_run: bool,
    },
}

impl Purpose {
    /// Whether the collection under way waits for the answer.
    fn for_run(&self) -> bool {
        match self {
            Purpose::List | Purpose::Stats(_) => true,
            Purpose::Inspect { for_run, .. } => *for_run,
        }
    }
}

struct Request {
    path: String,
    purpose: Purpose,
    max_body: usize,
}

/// What we know of a container: who it is, its life and main process as last inspected, and where the
/// kernel keeps its counters.
struct Known {
    listed: Listed,
    life: Lifecycle,
    pid: Option<u32>,
    network: api::Network,
    track: Track,
}

/// ENGINE mode as a [`Source`].
pub struct EngineSource {
    configured: Option<String>,
    socket: String,
    timeout: Duration,
    /// Follow the event stream (not for `--once`: there is no later collection to hand changes to).
    follow: bool,
    /// The containers wanted: the others are never inspected, sampled or reported.
    containers: Filter,
    /// Our own previous CPU sample of each container, by full id (the API's figures).
    previous: HashMap<String, CpuSample>,
    kernel: Option<Kernel>,
    /// What we know is the engine's truth: listed under a subscribed event stream, which has kept it
    /// current since. A tick then asks the engine nothing (kernel route).
    synced: bool,
    /// Event stream connections made so far: which one a list was asked under.
    events_gen: u64,
    known: HashMap<String, Known>,
    /// Inspects under way for events, by id: true when another event came meanwhile.
    inspecting: HashMap<String, bool>,
    /// Containers the engine sent an `oom` event for since they last started. Its inspect answer can
    /// still say `OOMKilled: false` then (the engine records the OOM and the exit in a race; seen on a
    /// loaded machine), so the event is taken as the truth.
    oom_seen: Vec<String>,
    run: Option<Run>,
    queue: VecDeque<Request>,
    open: Vec<Conn>,
    events: Option<EventConn>,
    events_at: Instant,
    events_backoff: Backoff,
    events_warned: bool,
    changes: Vec<ContainerStats>,
    out: VecDeque<Output>,
    notices: socket::SocketNotices,
}

impl EngineSource {
    pub fn new(
        configured: Option<String>,
        timeout: Duration,
        follow: bool,
        figuring: Figuring,
        containers: Filter,
    ) -> EngineSource {
        let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let kernel = Kernel::new(figuring);
        EngineSource {
            configured,
            socket: String::new(),
            timeout,
            follow,
            containers,
            previous: HashMap::new(),
            kernel,
            synced: false,
            events_gen: 0,
            known: HashMap::new(),
            inspecting: HashMap::new(),
            oom_seen: Vec::new(),
            run: None,
            queue: VecDeque::new(),
            open: Vec::new(),
            events: None,
            events_at: Instant::now(),
            events_backoff: Backoff::new(EVENTS_MAX_DELAY, seed),
            events_warned: false,
            changes: Vec::new(),
            out: VecDeque::new(),
            notices: socket::SocketNotices::default(),
        }
    }

    /// The socket to use, resolved afresh each collection (so a socket mounted late is found), with what
    /// there is to say about it; `false` when it is not there and the collection has failed.
    fn resolve(&mut self, now: Instant) -> bool {
        let docker_host = std::env::var("DOCKER_HOST").ok();
        let route = match &self.kernel {
            Some(k) => k.describe(),
            None => "figures from the engine's stats API".into(),
        };
        let r = self.notices.resolve(
            self.configured.as_deref(),
            docker_host.as_deref(),
            &|p| std::path::Path::new(p).exists(),
            &route,
            now,
        );
        for (warning, line) in r.notes {
            if warning {
                crate::warn!("{line}");
            } else {
                crate::info!("{line}");
            }
        }
        self.socket = r.socket;
        match r.missing {
            Some(error) => {
                self.out.push_back(Output::Failed {
                    error,
                    expected: false,
                });
                false
            }
            None => true,
        }
    }

    /// A request's answer (or why there is none), to the collection or the lifecycle it was for.
    fn answered(&mut self, now: Instant, req: Request, result: Result<http::Response, String>) {
        let socket = &self.socket;
        let path = strip_query(&req.path);
        match req.purpose {
            Purpose::List => self.listed(
                now,
                result.map_err(|e| format!("engine {socket}: GET {path}: {e}")),
            ),
            Purpose::Stats(i) => self.sampled(now, i, result),
            Purpose::Inspect { id, for_run } => self.inspected(id, for_run, result),
        }
    }
}

impl Source for EngineSource {
    fn start(&mut self, now: Instant) {
        // In sync the list is what the events have made of it: no request at all.
        let synced = self.synced && self.kernel.is_some();
        if !synced && !self.resolve(now) {
            return;
        }
        self.run = Some(Run {
            started: now,
            deadline: now + self.timeout,
            listed: synced,
            entries: Vec::new(),
            removed: Vec::new(),
            round: 0,
            next_round: None,
            kernel_pending: self.kernel.is_some(),
            list_under: self.subscribed(),
        });
        if synced {
            self.entries_from_known();
        } else {
            self.ask(LIST_PATH.to_owned(), Purpose::List, MAX_LIST_BODY);
        }
        self.open_queued(now);
        self.events_due(now);
        self.kernel_phase(now);
        self.finish_if_done(now);
    }

    fn busy(&self) -> bool {
        self.run.is_some()
    }

    fn fds(&self, out: &mut Vec<libc::pollfd>) {
        for c in &self.open {
            let write = if c.sent < c.wire.len() {
                libc::POLLOUT
            } else {
                0
            };
            out.push(pollfd(c.stream.as_raw_fd(), libc::POLLIN | write));
        }
        if let Some(ev) = &self.events {
            let write = if ev.sent < ev.wire.len() {
                libc::POLLOUT
            } else {
                0
            };
            out.push(pollfd(ev.stream.as_raw_fd(), libc::POLLIN | write));
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let run = self.run.as_ref();
        let events = (self.follow && self.events.is_none() && !self.socket.is_empty())
            .then_some(self.events_at);
        [
            run.map(|r| r.deadline),
            run.and_then(|r| r.next_round),
            self.open.iter().map(|c| c.until).min(),
            events,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn advance(&mut self, now: Instant, ready: &[libc::pollfd]) {
        // The slots are those `fds` gave: the open requests in order, then the event stream.
        let n = self.open.len();
        for (k, c) in self.open.iter_mut().enumerate() {
            let revents = ready.get(k).map_or(0, |f| f.revents);
            if revents != 0 {
                c.answer = c.progress();
            } else if now >= c.until {
                c.answer = Some(Err("timed out".to_owned()));
            }
        }
        let event_ready = self.events.is_some() && ready.get(n).is_some_and(|f| f.revents != 0);
        // One answer at a time, in order: those not taken yet still count as in flight.
        while let Some(i) = self.open.iter().position(|c| c.answer.is_some()) {
            let c = self.open.remove(i);
            if let Some(r) = c.answer {
                self.answered(now, c.req, r);
            }
        }
        if event_ready {
            if let Some(ev) = self.events.as_mut() {
                match write_some(&ev.stream, &ev.wire, &mut ev.sent) {
                    Ok(()) => self.read_events(now),
                    Err(e) => self.events_failed(now, &e),
                }
            }
        }
        self.next_round(now);
        self.expire_run(now);
        self.kernel_phase(now);
        self.open_queued(now);
        self.events_due(now);
        self.finish_if_done(now);
        if !self.changes.is_empty() {
            self.out
                .push_back(Output::Changes(std::mem::take(&mut self.changes)));
        }
    }

    fn take(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn stop(&mut self) {
        self.follow = false;
        self.run = None;
        self.queue.clear();
        self.open.clear();
        self.events = None;
    }
}

pub(super) fn state_only(state: State) -> Lifecycle {
    Lifecycle {
        state,
        health: None,
        restart_count: None,
        exit_code: None,
        oom_killed: None,
        started_at_ms: None,
    }
}

pub(super) fn lifecycle_only(listed: &Listed, life: Lifecycle) -> ContainerStats {
    let mut c = api::container_stats(listed, Figures::default());
    c.lifecycle = Some(life);
    c
}

pub(super) fn removed(listed: &Listed) -> ContainerStats {
    lifecycle_only(listed, state_only(State::Removed))
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::kernel::{self, Roots};
    use crate::stats::{Metric, Value};
    use std::io::{Read, Write};

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

    /// A fake engine on a real unix socket in a temp dir: answers `total` requests, one per connection,
    /// each by the first route whose text the request line contains (its answers used in turn, the last
    /// one repeated). Returns the request lines.
    fn serve(
        routes: Vec<(&'static str, Vec<Vec<u8>>)>,
        total: usize,
    ) -> (String, std::thread::JoinHandle<Vec<String>>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bmct-engine-unit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("engine.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let mut routes = routes;
            let mut requests = Vec::new();
            for _ in 0..total {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                let route = routes.iter_mut().find(|(p, _)| line.contains(p));
                let answer = match route {
                    Some((_, answers)) if answers.len() > 1 => answers.remove(0),
                    Some((_, answers)) => answers[0].clone(),
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
                };
                requests.push(line);
                let _ = s.write_all(&answer);
            }
            let _ = std::fs::remove_dir_all(&dir);
            requests
        });
        (path.display().to_string(), handle)
    }

    /// The loop's part: polls what the source waits on until it hands over a collection's outcome.
    fn collect(src: &mut EngineSource) -> Output {
        let start = Instant::now();
        src.start(start);
        loop {
            if let Some(out) = src.take() {
                return out;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "no outcome");
            let mut fds = Vec::new();
            src.fds(&mut fds);
            let ms = src.deadline().map_or(1000, |d| {
                d.saturating_duration_since(Instant::now()).as_millis() as i32 + 1
            });
            // SAFETY: a live vector of pollfd, its length passed with it.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            src.advance(Instant::now(), &fds);
        }
    }

    fn parsed(out: Output) -> Vec<ContainerStats> {
        match out {
            Output::Parsed { stats, .. } => stats,
            Output::Failed { error, .. } => panic!("failed: {error}"),
            _ => panic!("not a collection"),
        }
    }

    fn failed(out: Output) -> String {
        match out {
            Output::Failed { error, .. } => error,
            _ => panic!("did not fail"),
        }
    }

    fn source(socket: &str) -> EngineSource {
        EngineSource::new(
            Some(socket.to_owned()),
            Duration::from_secs(10),
            false,
            Figuring::Api,
            Filter::default(),
        )
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

    fn inspect(id: &str, name: &str, status: &str, exit: i64) -> Vec<u8> {
        ok(&format!(
            r#"{{"Id":"{id}","Name":"/{name}","RestartCount":1,"State":{{"Status":"{status}","ExitCode":{exit},
               "OOMKilled":false,"StartedAt":"2026-01-01T00:00:00Z"}},"Config":{{"Labels":{{}}}}}}"#
        ))
    }

    /// A running container's inspect, with its main process.
    fn inspect_running(id: &str, name: &str, pid: u32) -> Vec<u8> {
        ok(&format!(
            r#"{{"Id":"{id}","Name":"/{name}","State":{{"Status":"running","Pid":{pid},
               "StartedAt":"2026-01-01T00:00:00Z"}},"HostConfig":{{"NetworkMode":"bridge"}}}}"#
        ))
    }

    #[test]
    fn kernel_route_reads_the_cgroup_and_asks_the_api_only_for_what_it_cannot_read() {
        // The fixture tree copied from this project's CI machine (cgroup v1, hybrid): container `k` is
        // there with its main process 9734; container `f`'s process 4242 is not.
        const K: &str = "4b3ba0896e21bad17b1bdc8e053726c04b7e9d8b57ca8476dcf3ab77d138776d";
        const F: &str = "ffffffffffffffff";
        let tree =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cgroup/v1-hybrid");
        let list = format!(
            r#"[{{"Id":"{K}","Names":["/k"],"State":"running"}},{{"Id":"{F}","Names":["/f"],"State":"running"}}]"#
        );
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(&list)]),
                ("776d/json", vec![inspect_running(K, "k", 9734)]),
                ("ffffffffffffffff/json", vec![inspect_running(F, "f", 4242)]),
                (
                    "ffffffffffffffff/stats",
                    vec![ok(&stats(1_000, 10_000)), ok(&stats(1_500, 12_000))],
                ),
            ],
            // The list, two inspects, and f's two stats samples (no previous one): nothing for k.
            5,
        );
        let roots = Roots {
            cgroup: tree.join("cgroup"),
            proc: tree.join("proc"),
        };
        let kernel = Figuring::Kernel {
            host_memory: kernel::host_memory(&roots),
            roots,
            auto: false,
        };
        let mut e = EngineSource::new(
            Some(socket),
            Duration::from_secs(10),
            false,
            kernel,
            Filter::default(),
        );
        let got = parsed(collect(&mut e));
        let requests = server.join().unwrap();
        assert!(
            !requests.iter().any(|r| r.contains("776d/stats")),
            "{requests:?}"
        );
        let k = got.iter().find(|c| c.name == "k").unwrap();
        let count = |m| match k.figures.get(m) {
            Some(Value::Count(n)) => n,
            other => panic!("{m:?}: {other:?}"),
        };
        // memory.usage_in_bytes less total_inactive_file; eth0 but not lo.
        assert_eq!(count(Metric::MemoryUsage), 6_438_912 - 4_509_696);
        assert_eq!(count(Metric::MemoryLimit), 67_108_864);
        assert_eq!(count(Metric::Pids), 1);
        assert_eq!(count(Metric::NetworkReceived), 656);
        // The counter did not move in the fixture between the two readings a second apart.
        assert_eq!(k.figures.get(Metric::CpuPercent), Some(Value::Percent(0.0)));
        let f = got.iter().find(|c| c.name == "f").unwrap();
        assert_eq!(
            f.figures.get(Metric::Pids),
            Some(Value::Count(4)),
            "f from the API"
        );
        assert_eq!(
            f.figures.get(Metric::CpuPercent),
            Some(Value::Percent(50.0))
        );
        assert!(e.kernel.as_ref().is_some_and(|k| k.proven));
        let known = &e.known[F];
        assert!(known.track.warned && known.track.place.is_none());
        assert!(e.known[K].track.place.is_some() && e.known[K].track.previous.is_some());
    }

    #[test]
    fn collects_figures_and_lifecycles_from_a_fake_engine() {
        let list = r#"[{"Id":"aaaaaaaaaaaaaaaa","Names":["/web_1_2"],"Labels":{"io.balena.service-name":"web"},"State":"running"},
                       {"Id":"bbbbbbbbbbbbbbbb","Names":["/gone"],"State":"running"},
                       {"Id":"cccccccccccccccc","Names":["/junk"],"State":"running"},
                       {"Id":"dddddddddddddddd","Names":["/crashed"],"State":"exited"}]"#;
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(list)]),
                (
                    "aaaaaaaaaaaaaaaa/stats",
                    vec![chunked(&stats(1_000, 10_000)), ok(&stats(1_500, 12_000))],
                ),
                (
                    "bbbbbbbbbbbbbbbb/stats",
                    vec![answer(
                        "404 Not Found",
                        r#"{"message":"No such container: bbbbbbbbbbbb"}"#,
                    )],
                ),
                ("cccccccccccccccc/stats", vec![ok("{not json")]),
                (
                    "aaaaaaaaaaaaaaaa/json",
                    vec![inspect("aaaaaaaaaaaaaaaa", "web_1_2", "running", 0)],
                ),
                (
                    "bbbbbbbbbbbbbbbb/json",
                    vec![inspect("bbbbbbbbbbbbbbbb", "gone", "running", 0)],
                ),
                (
                    "cccccccccccccccc/json",
                    vec![inspect("cccccccccccccccc", "junk", "running", 0)],
                ),
                (
                    "dddddddddddddddd/json",
                    vec![inspect("dddddddddddddddd", "crashed", "exited", 3)],
                ),
            ],
            // The list, three stats and four inspects, then the one container asked again.
            9,
        );
        let mut e = source(&socket);
        let got = parsed(collect(&mut e));
        let requests = server.join().unwrap();
        assert_eq!(requests[0], "GET /containers/json?all=1 HTTP/1.1");
        assert!(requests.contains(
            &"GET /containers/aaaaaaaaaaaaaaaa/stats?stream=false&one-shot=true HTTP/1.1"
                .to_owned()
        ));
        assert_eq!(got.len(), 4);
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
        assert_eq!(s.lifecycle.as_ref().map(|l| l.state), Some(State::Running));
        // No figures for the two whose stats failed, but their state still.
        assert_eq!(got[1].figures, Figures::default());
        assert_eq!(got[2].figures, Figures::default());
        let crashed = got[3].lifecycle.as_ref().unwrap();
        assert_eq!((crashed.state, crashed.exit_code), (State::Exited, Some(3)));
        assert_eq!(
            e.previous.len(),
            1,
            "only sampled containers are remembered"
        );

        // The next collection: only one is left in the list, the others are reported once as removed.
        let list = r#"[{"Id":"aaaaaaaaaaaaaaaa","Names":["/web_1_2"],"State":"running"}]"#;
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(list)]),
                ("aaaaaaaaaaaaaaaa/stats", vec![ok(&stats(2_000, 14_000))]),
            ],
            2,
        );
        e.configured = Some(socket);
        let got = parsed(collect(&mut e));
        server.join().unwrap();
        let states: Vec<_> = got
            .iter()
            .map(|c| (c.name.as_str(), c.lifecycle.as_ref().map(|l| l.state)))
            .collect();
        assert_eq!(
            states,
            [
                ("crashed", Some(State::Removed)),
                ("gone", Some(State::Removed)),
                ("junk", Some(State::Removed)),
                ("web_1_2", Some(State::Running))
            ]
        );
        // Against our own previous sample: 500 of 2000 on 2 CPUs again, no second round needed.
        assert_eq!(
            got[3].figures.get(Metric::CpuPercent),
            Some(Value::Percent(50.0))
        );
        assert!(e.known.len() == 1, "removed containers are forgotten");
    }

    #[test]
    fn containers_the_filter_does_not_want_cost_no_request() {
        const MAIN: &str = "aaaaaaaaaaaaaaaa";
        const TMP: &str = "bbbbbbbbbbbbbbbb";
        let list = format!(
            r#"[{{"Id":"{MAIN}","Names":["/main_1_2"],"Labels":{{"io.balena.service-name":"main"}},"State":"running"}},
                {{"Id":"{TMP}","Names":["/builder-1"],"Labels":{{"io.balena.architecture":"x"}},"State":"running"}}]"#
        );
        // The unwanted one starts again, then the wanted one dies: only the latter is inspected.
        let event = |id: &str, action: &str, name: &str| {
            let e = format!(
                r#"{{"Type":"container","Action":"{action}","Actor":{{"ID":"{id}","Attributes":{{"name":"{name}"}}}}}}"#
            );
            format!("{:x}\r\n{e}\n\r\n", e.len() + 1)
        };
        let stream = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}{}",
            event(TMP, "start", "builder-1"),
            event(MAIN, "die", "main_1_2")
        );
        // The supervisor's label in the inspect answers too: they are judged again.
        let labelled = |status: &str| {
            ok(&format!(
                r#"{{"Id":"{MAIN}","Name":"/main_1_2","State":{{"Status":"{status}","ExitCode":3}},
                   "Config":{{"Labels":{{"io.balena.service-name":"main"}}}}}}"#
            ))
        };
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(&list)]),
                (
                    "/stats",
                    vec![ok(&stats(1_000, 10_000)), ok(&stats(1_500, 12_000))],
                ),
                ("/events", vec![stream.into_bytes()]),
                ("/json", vec![labelled("running"), labelled("exited")]),
            ],
            // The list, main's inspect and two stats samples; the event stream and main's inspect.
            6,
        );
        let mut e = source(&socket);
        e.containers = Filter::balena();
        let got = parsed(collect(&mut e));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "main_1_2");
        e.follow = true;
        let t = Instant::now();
        let change = loop {
            assert!(t.elapsed() < Duration::from_secs(10), "no change");
            let mut fds = Vec::new();
            e.fds(&mut fds);
            // SAFETY: a live vector of pollfd, its length passed with it.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            e.advance(Instant::now(), &fds);
            if let Some(Output::Changes(c)) = e.take() {
                break c;
            }
        };
        let requests = server.join().unwrap();
        assert_eq!(change.len(), 1);
        assert_eq!(change[0].name, "main_1_2");
        assert!(!requests.iter().any(|r| r.contains(TMP)), "{requests:?}");
        assert!(!e.known.contains_key(TMP));
    }

    #[test]
    fn a_repeated_engine_sample_is_asked_for_again() {
        let list = r#"[{"Id":"aaaaaaaaaaaaaaaa","Names":["/web"],"State":"running"}]"#;
        // The second answer is the engine's same sample again (no time passed): no CPU % from it.
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(list)]),
                (
                    "/stats",
                    vec![
                        ok(&stats(1_000, 10_000)),
                        ok(&stats(1_000, 10_000)),
                        ok(&stats(1_250, 11_000)),
                    ],
                ),
                (
                    "/json",
                    vec![inspect("aaaaaaaaaaaaaaaa", "web", "running", 0)],
                ),
            ],
            5,
        );
        let got = parsed(collect(&mut source(&socket)));
        assert_eq!(server.join().unwrap().len(), 5);
        // 250 of 1000 system ticks on 2 CPUs = 50 %.
        assert_eq!(
            got[0].figures.get(Metric::CpuPercent),
            Some(Value::Percent(50.0))
        );
    }

    #[test]
    fn socket_problems_are_errors_not_panics() {
        let e = failed(collect(&mut source("/nonexistent/engine.sock")));
        assert!(
            e.contains("engine_socket /nonexistent/engine.sock is not there"),
            "{e}"
        );
        let (socket, server) = serve(
            vec![(
                "/",
                vec![answer("500 Internal Server Error", r#"{"message":"boom"}"#)],
            )],
            1,
        );
        let e = failed(collect(&mut source(&socket)));
        server.join().unwrap();
        assert!(e.contains("answered 500: boom"), "{e}");
        let (socket, server) = serve(vec![("/", vec![b"garbage\r\n\r\n".to_vec()])], 1);
        let e = failed(collect(&mut source(&socket)));
        server.join().unwrap();
        assert!(e.contains("malformed HTTP"), "{e}");
    }

    #[test]
    fn events_hand_over_a_changed_lifecycle_at_once() {
        let event = r#"{"Type":"container","Action":"die","Actor":{"ID":"aaaaaaaaaaaaaaaa","Attributes":{"exitCode":"3"}}}"#;
        let stream = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\n\r\n",
            event.len() + 1
        );
        let list = r#"[{"Id":"aaaaaaaaaaaaaaaa","Names":["/web"],"State":"exited"}]"#;
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(list)]),
                ("/events", vec![stream.into_bytes()]),
                (
                    "/json",
                    vec![
                        inspect("aaaaaaaaaaaaaaaa", "web", "running", 0),
                        inspect("aaaaaaaaaaaaaaaa", "web", "exited", 3),
                    ],
                ),
            ],
            4,
        );
        let mut e = EngineSource::new(
            Some(socket),
            Duration::from_secs(10),
            false,
            Figuring::Api,
            Filter::default(),
        );
        let got = parsed(collect(&mut e));
        assert_eq!(got[0].lifecycle.as_ref().unwrap().state, State::Running);
        // Only now the event stream (the fake engine's answers go in order of the requests).
        e.follow = true;
        let t = Instant::now();
        let change = loop {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no change handed over"
            );
            let mut fds = Vec::new();
            e.fds(&mut fds);
            // SAFETY: a live vector of pollfd, its length passed with it.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            e.advance(Instant::now(), &fds);
            if let Some(Output::Changes(c)) = e.take() {
                break c;
            }
        };
        server.join().unwrap();
        let life = change[0].lifecycle.as_ref().unwrap();
        assert_eq!((life.state, life.exit_code), (State::Exited, Some(3)));
        assert!(change[0].figures == Figures::default());
    }

    #[test]
    fn a_container_being_removed_keeps_its_state_until_it_is_gone() {
        const A: &str = "aaaaaaaaaaaaaaaa";
        let removing = ok(&format!(
            r#"{{"Id":"{A}","Name":"/web","State":{{"Status":"removing","Running":false,"Pid":0,
               "ExitCode":137}}}}"#
        ));
        let event = format!(r#"{{"Type":"container","Action":"die","Actor":{{"ID":"{A}"}}}}"#);
        let stream = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{event}\n\r\n",
            event.len() + 1
        );
        let running = format!(r#"[{{"Id":"{A}","Names":["/web"],"State":"running"}}]"#);
        let being_removed = format!(r#"[{{"Id":"{A}","Names":["/web"],"State":"removing"}}]"#);
        let (socket, server) = serve(
            vec![
                ("/containers/json", vec![ok(&running), ok(&being_removed)]),
                (
                    "/stats",
                    vec![ok(&stats(1_000, 10_000)), ok(&stats(1_500, 12_000))],
                ),
                ("/events", vec![stream.into_bytes()]),
                (
                    "/json",
                    vec![inspect_running(A, "web", 4242), removing.clone(), removing],
                ),
            ],
            // A collection (list, inspect, two stats), the event stream and the event's inspect, then a
            // collection that lists it as being removed (list, inspect).
            8,
        );
        let mut e = source(&socket);
        parsed(collect(&mut e));
        e.follow = true;
        let t = Instant::now();
        // Until the event's inspect is answered.
        while !(e.inspecting.is_empty() && e.known[A].listed.state.is_none()) {
            assert!(t.elapsed() < Duration::from_secs(10), "no inspect answer");
            let mut fds = Vec::new();
            e.fds(&mut fds);
            // SAFETY: a live vector of pollfd, its length passed with it.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
            e.advance(Instant::now(), &fds);
            assert!(e.take().is_none(), "no change handed over");
        }
        let k = &e.known[A];
        assert_eq!((k.life.state, k.listed.state), (State::Running, None));
        // The fake engine has closed the stream; it is not to be asked again.
        e.follow = false;
        // A collection meanwhile: the state held, no figures, and no stats asked of it.
        let got = parsed(collect(&mut e));
        let requests = server.join().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lifecycle.as_ref().unwrap().state, State::Running);
        assert_eq!(got[0].figures, Figures::default());
        assert_eq!(requests.iter().filter(|r| r.contains("/stats")).count(), 2);
    }
}
