//! ENGINE mode: figures and lifecycles straight from the engine's API socket, without running the CLI.
//!
//! A state machine the loop drives ([`EngineSource`]): every request is a non-blocking connection of its
//! own in the loop's poll set, never waited on here. The HTTP framing is in `http.rs`, the event stream's
//! in `events.rs`, the JSON in `api.rs`, all pure. A collection is one `GET /containers/json?all=1`, then
//! at once one `GET /containers/{id}/stats?stream=false&one-shot=true` per running container (at most
//! [`MAX_OPEN`] connections open, the rest as those finish) and an inspect of each container whose state
//! we do not know yet; a container without a previous CPU sample is asked again a second later (a
//! deadline, not a sleep). Between collections the event stream (`GET /events`, containers only) says
//! which container to inspect again, and what changed is handed over at once. Anything that goes wrong
//! with one container is a warning; anything that stops the list fails the tick. Nothing the engine
//! sends can panic us.

pub mod api;
pub mod events;
pub mod http;

use super::kernel::{self, Place, Roots};
use super::{pollfd, Output, Source};
use crate::mqtt::backoff::Backoff;
use crate::stats::lifecycle::{Lifecycle, State};
use crate::stats::{ContainerStats, Figures, Metric, Value};
use api::{CpuSample, Listed};
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
/// Rounds of asking again for a CPU sample, a second apart.
const SAMPLE_ROUNDS: u32 = 3;
/// The event stream is re-opened after a failure no sooner than this backoff says, at most this late.
const EVENTS_MAX_DELAY: Duration = Duration::from_secs(30);
const LIST_PATH: &str = "/containers/json?all=1";
/// `/events?filters={"type":["container"]}`.
const EVENTS_PATH: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D";
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

struct Request {
    path: String,
    purpose: Purpose,
    max_body: usize,
}

/// A request on its connection: the request bytes still to write, the answer so far.
struct Conn {
    req: Request,
    stream: UnixStream,
    wire: Vec<u8>,
    sent: usize,
    buf: Vec<u8>,
    until: Instant,
}

/// The event stream's connection.
struct EventConn {
    stream: UnixStream,
    wire: Vec<u8>,
    sent: usize,
    parser: events::EventStream,
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

/// A running container's counters in the kernel: found once per main process.
#[derive(Default)]
struct Track {
    place: Option<Place>,
    /// Its counter files, kept open while its main process lives.
    files: kernel::Files,
    /// Our previous CPU reading of it, for the next CPU %.
    previous: Option<(u64, Instant)>,
    /// Its fallback to the stats API was said; said again only after the kernel's files worked.
    warned: bool,
}

/// Where running containers' figures come from: the engine's stats API, or the kernel's own files, which
/// the engine would read for us at about twenty times the price.
pub enum Figuring {
    Api,
    Kernel {
        roots: Roots,
        /// `/proc/meminfo`'s total, read once.
        host_memory: Result<u64, String>,
        /// `auto`: if the first try reads no container's files, the API takes over for good.
        auto: bool,
    },
}

/// The kernel route's state.
struct Kernel {
    roots: Roots,
    /// The host's memory: what the engine gives as an unlimited container's limit.
    host_memory: Result<u64, String>,
    auto: bool,
    /// Some container's files have been read: `auto` keeps the kernel from here on.
    proven: bool,
}

/// The choice of `engine_figures`, with `auto` settled by whether the kernel's files are there at all (a
/// balena container sees the host's only with the sysfs and procfs labels).
pub fn figuring(
    choice: crate::config::EngineFigures,
    cgroup_root: &str,
    proc_root: &str,
) -> Figuring {
    use crate::config::EngineFigures;
    let roots = Roots {
        cgroup: cgroup_root.into(),
        proc: proc_root.into(),
    };
    if choice == EngineFigures::Api {
        return Figuring::Api;
    }
    let host_memory = kernel::host_memory(&roots);
    let auto = choice == EngineFigures::Auto;
    if auto {
        let usable = host_memory
            .clone()
            .and_then(|_| match roots.cgroup.is_dir() {
                true => Ok(()),
                false => Err(format!("{} is not a directory", roots.cgroup.display())),
            });
        if let Err(why) = usable {
            crate::info!("engine_figures auto: {why}; {API_INSTEAD}");
            return Figuring::Api;
        }
    }
    Figuring::Kernel {
        roots,
        host_memory,
        auto,
    }
}

const API_INSTEAD: &str = "figures come from the engine's stats API instead (on balena, give this \
                           service the labels io.balena.features.sysfs and io.balena.features.procfs)";

/// One container in the collection under way.
struct Entry {
    listed: Listed,
    figures: Option<Figures>,
    /// The first sample's CPU, while a CPU % still waits for a later one.
    cpu_before: Option<CpuSample>,
    /// Its kernel reading had no previous one to give a CPU %: read again next round (the previous is
    /// the container's [`Track`]'s).
    kernel_waits: bool,
}

impl Entry {
    fn new(listed: Listed) -> Entry {
        Entry {
            listed,
            figures: None,
            cpu_before: None,
            kernel_waits: false,
        }
    }
}

/// The collection under way.
struct Run {
    started: Instant,
    deadline: Instant,
    listed: bool,
    entries: Vec<Entry>,
    /// Containers that were known and are gone from the list: reported once as removed.
    removed: Vec<Listed>,
    /// Requests of this collection not answered yet, and of them the current round's stats.
    outstanding: usize,
    stats_left: usize,
    round: u32,
    next_round: Option<Instant>,
    /// The kernel's files are still to be read, once the list and its inspects are in.
    kernel_pending: bool,
    /// The event stream's connection (its number) that was already subscribed when the list was asked:
    /// while it stays up, the list plus its events is all we need to know.
    list_under: Option<u64>,
}

/// ENGINE mode as a [`Source`].
pub struct EngineSource {
    configured: Option<String>,
    socket: String,
    timeout: Duration,
    /// Follow the event stream (not for `--once`: there is no later collection to hand changes to).
    follow: bool,
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
}

impl EngineSource {
    pub fn new(
        configured: Option<String>,
        timeout: Duration,
        follow: bool,
        figuring: Figuring,
    ) -> EngineSource {
        let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let kernel = match figuring {
            Figuring::Api => None,
            Figuring::Kernel {
                roots,
                host_memory,
                auto,
            } => {
                kernel::keep_files_open();
                Some(Kernel {
                    roots,
                    host_memory,
                    auto,
                    proven: false,
                })
            }
        };
        EngineSource {
            configured,
            socket: String::new(),
            timeout,
            follow,
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
        }
    }

    /// The socket to use (resolved afresh each collection, so a socket mounted late is found).
    fn resolve(&self) -> String {
        let docker_host = std::env::var("DOCKER_HOST").ok();
        resolve_socket(self.configured.as_deref(), docker_host.as_deref(), &|p| {
            std::path::Path::new(p).exists()
        })
    }

    fn ask(&mut self, path: String, purpose: Purpose, max_body: usize) {
        self.queue.push_back(Request {
            path,
            purpose,
            max_body,
        });
    }

    /// Opens connections for queued requests while fewer than [`MAX_OPEN`] are open.
    fn open_queued(&mut self, now: Instant) {
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
                }),
                Err(e) => self.answered(now, req, Err(e)),
            }
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

    fn listed(&mut self, now: Instant, result: Result<http::Response, String>) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        run.outstanding -= 1;
        let socket = &self.socket;
        let parsed = result.and_then(|r| match r.status {
            200 => api::parse_list(&r.body).map_err(|e| format!("engine {socket}: {e}")),
            s => Err(format!(
                "engine {socket}: GET /containers/json answered {s}: {}",
                api::error_message(&r.body)
            )),
        });
        let mut listed = match parsed {
            Ok(l) => l,
            Err(error) => {
                self.fail(error);
                return;
            }
        };
        if listed.len() > MAX_CONTAINERS {
            crate::warn!(
                "engine {socket}: {} containers, only the first {MAX_CONTAINERS} reported",
                listed.len()
            );
            listed.truncate(MAX_CONTAINERS);
        }
        self.previous
            .retain(|id, _| listed.iter().any(|c| &c.id == id));
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|id| !listed.iter().any(|c| &c.id == *id))
            .cloned()
            .collect();
        // Stats are numbered by entry; a container whose state we do not know (yet) is inspected.
        let mut asks = Vec::new();
        let api = self.kernel.is_none();
        for (i, c) in listed.iter().enumerate() {
            if api && c.state == Some(State::Running) {
                asks.push((stats_path(&c.id), Purpose::Stats(i), MAX_STATS_BODY));
            }
            let stale = self
                .known
                .get(&c.id)
                .is_none_or(|k| Some(k.life.state) != c.state);
            if stale {
                let purpose = Purpose::Inspect {
                    id: c.id.clone(),
                    for_run: true,
                };
                asks.push((inspect_path(&c.id), purpose, MAX_STATS_BODY));
            }
        }
        let subscribed = self.subscribed();
        let Some(run) = self.run.as_mut() else {
            return;
        };
        run.listed = true;
        if run.list_under.is_some() && run.list_under == subscribed {
            self.synced = true;
        }
        for id in gone {
            if let Some(k) = self.known.remove(&id) {
                run.removed.push(k.listed);
            }
        }
        run.entries = listed.into_iter().map(Entry::new).collect();
        run.outstanding += asks.len();
        run.stats_left = asks
            .iter()
            .filter(|a| matches!(a.1, Purpose::Stats(_)))
            .count();
        for (path, purpose, max) in asks {
            self.ask(path, purpose, max);
        }
        self.open_queued(now);
        self.kernel_phase(now);
        self.round_done(now);
    }

    fn sampled(&mut self, now: Instant, i: usize, result: Result<http::Response, String>) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        run.outstanding -= 1;
        run.stats_left -= 1;
        let Some(entry) = run.entries.get_mut(i) else {
            return;
        };
        let sample = result.and_then(|r| match r.status {
            200 => api::parse_stats(&r.body).map_err(|e| e.to_string()),
            404 => Err(format!(
                "gone between list and stats ({})",
                api::error_message(&r.body)
            )),
            s => Err(format!("answered {s}: {}", api::error_message(&r.body))),
        });
        match sample {
            Err(e) => {
                if run.round == 0 {
                    crate::warn!(
                        "engine: container {} ({}): {e}; its figures left out this tick",
                        entry.listed.name,
                        api::short_id(&entry.listed.id)
                    );
                }
            }
            Ok(sample) => {
                let id = &entry.listed.id;
                match (entry.cpu_before.take(), sample.cpu) {
                    // A later round: against the first sample.
                    (Some(before), Some(cpu)) => match api::cpu_percent(&before, &cpu) {
                        Some(p) => {
                            if let Some(f) = entry.figures.as_mut() {
                                f.set(Metric::CpuPercent, Value::Percent(p));
                            }
                            self.previous.insert(id.clone(), cpu);
                        }
                        None => entry.cpu_before = Some(before),
                    },
                    (Some(before), None) => entry.cpu_before = Some(before),
                    (None, cpu) => {
                        let mut figures = sample.figures;
                        if let Some(cpu) = cpu {
                            // Against our own last sample; else the engine's (older engines ignore
                            // one-shot and fill precpu_stats); else a later sample.
                            let pct = self
                                .previous
                                .get(id)
                                .and_then(|before| api::cpu_percent(before, &cpu))
                                .or_else(|| sample.precpu.and_then(|p| api::cpu_percent(&p, &cpu)));
                            match pct {
                                Some(p) => figures.set(Metric::CpuPercent, Value::Percent(p)),
                                None => entry.cpu_before = Some(cpu),
                            }
                            self.previous.insert(id.clone(), cpu);
                        }
                        entry.figures = Some(figures);
                    }
                }
            }
        }
        self.round_done(now);
    }

    /// When a round's samples are all in: another round a second after the last for the containers
    /// still without a CPU %, if time allows. The engine samples each container about once a second and
    /// a one-shot request answers with its latest sample, so an early second request can return the very
    /// sample the first did.
    fn round_done(&mut self, _now: Instant) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if !run.listed || run.kernel_pending || run.stats_left > 0 || run.next_round.is_some() {
            return;
        }
        let waiting = run
            .entries
            .iter()
            .any(|e| e.cpu_before.is_some() || e.kernel_waits);
        if waiting && run.round < SAMPLE_ROUNDS {
            let at = run.started + SECOND_SAMPLE_AFTER * (run.round + 1);
            if at + Duration::from_millis(100) >= run.deadline {
                crate::warn!(
                    "engine {}: no time left for a second sample; CPU % left out this tick",
                    self.socket
                );
            } else {
                run.next_round = Some(at);
            }
        }
    }

    /// The next round's time has come: ask again for the containers still without a CPU %.
    fn next_round(&mut self, now: Instant) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if run.next_round.is_none_or(|t| now < t) {
            return;
        }
        run.next_round = None;
        run.round += 1;
        if let Some(k) = self.kernel.as_ref() {
            for e in run.entries.iter_mut().filter(|e| e.kernel_waits) {
                e.kernel_waits = false;
                if let Some(c) = self.known.get_mut(&e.listed.id) {
                    second_kernel_sample(k, c, e, now);
                }
            }
        }
        let again: Vec<(String, usize)> = run
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.cpu_before.is_some())
            .map(|(i, e)| (stats_path(&e.listed.id), i))
            .collect();
        run.stats_left += again.len();
        run.outstanding += again.len();
        for (path, i) in again {
            self.ask(path, Purpose::Stats(i), MAX_STATS_BODY);
        }
    }

    fn inspected(&mut self, id: String, for_run: bool, result: Result<http::Response, String>) {
        if for_run {
            if let Some(run) = self.run.as_mut() {
                run.outstanding -= 1;
            }
        }
        let again = if for_run {
            false
        } else {
            self.inspecting.remove(&id).unwrap_or(false)
        };
        match result {
            Ok(r) if r.status == 200 => match api::parse_inspect(&r.body) {
                Ok(api::Inspected {
                    listed,
                    life,
                    pid,
                    network,
                }) => {
                    let life = oom_from_events(life, self.oom_seen.contains(&id));
                    let old = self.known.remove(&id);
                    let changed = old.as_ref().is_none_or(|k| k.life != life);
                    if changed && !for_run {
                        self.changes.push(lifecycle_only(&listed, life.clone()));
                    }
                    // The same main process: its cgroup and our last reading of it still hold.
                    let track = old.filter(|k| k.pid == pid).map(|k| k.track);
                    if self.known.len() < MAX_CONTAINERS {
                        let track = track.unwrap_or_default();
                        let k = Known {
                            listed,
                            life,
                            pid,
                            network,
                            track,
                        };
                        self.known.insert(id.clone(), k);
                    }
                }
                Err(e) => crate::warn!("engine: container {}: {e}", api::short_id(&id)),
            },
            // Gone: reported once as removed, then forgotten.
            Ok(r) if r.status == 404 => {
                if let Some(k) = self.known.remove(&id) {
                    match self.run.as_mut().filter(|_| for_run) {
                        Some(run) => run.removed.push(k.listed),
                        None => self.changes.push(removed(&k.listed)),
                    }
                }
                return;
            }
            Ok(r) => crate::warn!(
                "engine: inspect of {} answered {}: {}",
                api::short_id(&id),
                r.status,
                api::error_message(&r.body)
            ),
            Err(e) => crate::warn!("engine: inspect of {}: {e}", api::short_id(&id)),
        }
        if again {
            self.inspect_for_event(id);
        }
    }

    fn inspect_for_event(&mut self, id: String) {
        if let Some(again) = self.inspecting.get_mut(&id) {
            *again = true;
            return;
        }
        if self.inspecting.len() >= MAX_CONTAINERS {
            return;
        }
        self.inspecting.insert(id.clone(), false);
        let path = inspect_path(&id);
        let purpose = Purpose::Inspect { id, for_run: false };
        self.ask(path, purpose, MAX_STATS_BODY);
    }

    /// The number of the event stream's connection if the engine has subscribed it.
    fn subscribed(&self) -> Option<u64> {
        let ev = self.events.as_ref()?;
        ev.parser.subscribed().then_some(self.events_gen)
    }

    /// The collection's containers when we are in sync: those the events have kept us told of.
    fn entries_from_known(&mut self) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let mut entries: Vec<Entry> = self
            .known
            .values()
            .map(|k| Entry::new(k.listed.clone()))
            .collect();
        entries.sort_by(|a, b| a.listed.name.cmp(&b.listed.name));
        run.entries = entries;
        let known = &self.known;
        self.previous.retain(|id, _| known.contains_key(id));
    }

    /// Once the list and its inspects are in: every running container's figures from the kernel's files.
    /// One that cannot be read is asked of the stats API instead, for this tick, with a warning.
    fn kernel_phase(&mut self, now: Instant) {
        let (Some(k), Some(run)) = (self.kernel.as_mut(), self.run.as_mut()) else {
            return;
        };
        if !run.kernel_pending || !run.listed || run.outstanding > 0 {
            return;
        }
        run.kernel_pending = false;
        let mut failed = Vec::new();
        let mut unknown = Vec::new();
        for (i, e) in run.entries.iter_mut().enumerate() {
            if e.listed.state != Some(State::Running) {
                continue;
            }
            let known = self.known.get_mut(&e.listed.id);
            let known = known.filter(|c| c.pid.is_some() && c.network != api::Network::Shared);
            let Some(known) = known else {
                // Its inspect failed or is late, or it counts another container's network as its own:
                // only the engine can say, and that says nothing of the kernel's files.
                unknown.push(i);
                continue;
            };
            match first_kernel_sample(k, known, e, now) {
                Ok(()) => {
                    k.proven = true;
                    known.track.warned = false;
                }
                Err(why) => {
                    // Said once, until its files read again.
                    let say = !std::mem::replace(&mut known.track.warned, true);
                    failed.push((i, why, say));
                }
            }
        }
        if k.auto && !k.proven {
            if let Some((_, why, _)) = failed.first() {
                crate::info!(
                    "engine_figures auto: the kernel's files cannot be read ({why}); {API_INSTEAD}"
                );
                self.kernel = None;
                self.synced = false;
            }
        } else {
            for (i, why, _) in failed.iter().filter(|f| f.2) {
                let e = &run.entries[*i];
                crate::warn!(
                    "engine: container {} ({}): kernel figures unreadable ({why}); asking the engine's stats API until they are readable again",
                    e.listed.name,
                    api::short_id(&e.listed.id)
                );
            }
        }
        let asks: Vec<(String, usize)> = failed
            .into_iter()
            .map(|(i, _, _)| i)
            .chain(unknown)
            .map(|i| (stats_path(&run.entries[i].listed.id), i))
            .collect();
        run.outstanding += asks.len();
        run.stats_left += asks.len();
        for (path, i) in asks {
            self.ask(path, Purpose::Stats(i), MAX_STATS_BODY);
        }
        self.open_queued(now);
        self.round_done(now);
    }

    fn fail(&mut self, error: String) {
        self.run = None;
        // The collection's own requests are dropped; those for events stay.
        self.queue
            .retain(|r| matches!(r.purpose, Purpose::Inspect { for_run: false, .. }));
        self.open
            .retain(|c| matches!(c.req.purpose, Purpose::Inspect { for_run: false, .. }));
        self.out.push_back(Output::Failed {
            error,
            expected: false,
        });
    }

    /// Every answer is in: the tick's containers, running ones with figures, the others by their
    /// lifecycle alone, removed ones once.
    fn finish_if_done(&mut self, now: Instant) {
        let done = self.run.as_ref().is_some_and(|r| {
            r.listed && !r.kernel_pending && r.outstanding == 0 && r.next_round.is_none()
        });
        if !done {
            return;
        }
        let Some(run) = self.run.take() else {
            return;
        };
        crate::debug!(
            "engine collection took {} ms",
            now.saturating_duration_since(run.started).as_millis()
        );
        let mut gone = run.removed;
        gone.sort_by(|a, b| a.name.cmp(&b.name));
        let mut stats: Vec<ContainerStats> = gone.iter().map(removed).collect();
        for e in run.entries {
            let life = self.known.get(&e.listed.id).map(|k| k.life.clone());
            let life = life.or_else(|| e.listed.state.map(state_only));
            let running = e.listed.state == Some(State::Running);
            let mut c = api::container_stats(&e.listed, e.figures.unwrap_or_default());
            c.lifecycle = life;
            if running || c.lifecycle.is_some() {
                stats.push(c);
            }
        }
        self.out.push_back(Output::Parsed {
            source: format!("engine {}", self.socket),
            stats,
        });
    }

    /// The collection ran out of time: what is answered is reported, the rest said.
    fn expire_run(&mut self, now: Instant) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if now < run.deadline {
            return;
        }
        if !run.listed {
            let e = format!("engine {}: GET /containers/json: timed out", self.socket);
            self.fail(e);
            return;
        }
        crate::warn!(
            "engine {}: {} requests unanswered after {}s; the tick goes out without them",
            self.socket,
            run.outstanding,
            self.timeout.as_secs()
        );
        run.outstanding = 0;
        run.stats_left = 0;
        run.next_round = None;
        self.queue
            .retain(|r| matches!(r.purpose, Purpose::Inspect { for_run: false, .. }));
        self.open
            .retain(|c| matches!(c.req.purpose, Purpose::Inspect { for_run: false, .. }));
        self.finish_if_done(now);
    }

    fn events_due(&mut self, now: Instant) {
        if !self.follow || self.events.is_some() || now < self.events_at || self.socket.is_empty() {
            return;
        }
        match connect(&self.socket) {
            Ok(stream) => {
                self.events_gen += 1;
                self.events = Some(EventConn {
                    stream,
                    wire: http::get_request(EVENTS_PATH),
                    sent: 0,
                    parser: events::EventStream::default(),
                })
            }
            Err(e) => self.events_failed(now, &e),
        }
    }

    fn events_failed(&mut self, now: Instant, why: &str) {
        self.events = None;
        self.synced = false;
        let delay = self.events_backoff.next_delay();
        self.events_at = now + delay;
        // Once per outage: a collection says the same more loudly if the engine is really gone.
        if !self.events_warned {
            crate::warn!(
                "engine {}: event stream: {why}; retrying in {}s (lifecycle changes wait for the next tick meanwhile)",
                self.socket,
                crate::mqtt::backoff::Seconds(delay)
            );
            self.events_warned = true;
        }
    }

    fn read_events(&mut self, now: Instant) {
        let Some(ev) = self.events.as_mut() else {
            return;
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // At most 256 KiB per wake-up: a flood of events gets its share, the rest of the loop its own.
        let mut result = Ok(());
        for _ in 0..16 {
            match ev.stream.read(&mut chunk) {
                Ok(0) => {
                    result = Err("closed by the engine".to_owned());
                    break;
                }
                Ok(n) => {
                    if let Err(e) = ev.parser.feed(&chunk[..n], &mut got) {
                        result = Err(e);
                        break;
                    }
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    result = Err(e.to_string());
                    break;
                }
            }
        }
        if !got.is_empty() {
            self.events_backoff.reset();
            self.events_warned = false;
        }
        if ev.parser.take_lost() {
            // An event we could not read may have changed anything: the next tick lists again.
            self.synced = false;
        }
        for e in got.into_iter().filter(events::Event::matters) {
            crate::debug!("engine event: {} {}", api::short_id(&e.id), e.action);
            match e.action.as_str() {
                "oom" if !self.oom_seen.contains(&e.id) => {
                    if self.oom_seen.len() >= MAX_CONTAINERS {
                        self.oom_seen.remove(0);
                    }
                    self.oom_seen.push(e.id.clone());
                }
                "start" => self.oom_seen.retain(|id| *id != e.id),
                _ => {}
            }
            self.inspect_for_event(e.id);
        }
        if let Err(e) = result {
            self.events_failed(now, &e);
        }
    }
}

impl Source for EngineSource {
    fn start(&mut self, now: Instant) {
        // In sync the list is what the events have made of it: no request at all.
        let synced = self.synced && self.kernel.is_some();
        if !synced {
            self.socket = self.resolve();
        }
        self.run = Some(Run {
            started: now,
            deadline: now + self.timeout,
            listed: synced,
            entries: Vec::new(),
            removed: Vec::new(),
            outstanding: usize::from(!synced),
            stats_left: 0,
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
        let mut finished = Vec::new();
        let mut k = 0;
        self.open.retain_mut(|c| {
            let revents = ready.get(k).map_or(0, |f| f.revents);
            k += 1;
            let result = if revents != 0 {
                c.progress()
            } else if now >= c.until {
                Some(Err("timed out".to_owned()))
            } else {
                None
            };
            match result {
                None => true,
                Some(r) => {
                    finished.push((
                        Request {
                            path: std::mem::take(&mut c.req.path),
                            purpose: std::mem::replace(&mut c.req.purpose, Purpose::List),
                            max_body: c.req.max_body,
                        },
                        r,
                    ));
                    false
                }
            }
        });
        let event_ready = self.events.is_some() && ready.get(n).is_some_and(|f| f.revents != 0);
        for (req, r) in finished {
            self.answered(now, req, r);
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

impl Conn {
    /// Writes what is left of the request, then reads what is there; `None` while the answer is not
    /// whole yet.
    fn progress(&mut self) -> Option<Result<http::Response, String>> {
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
fn write_some(stream: &UnixStream, wire: &[u8], sent: &mut usize) -> Result<(), String> {
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
fn connect(socket: &str) -> Result<UnixStream, String> {
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

/// Reads a container's counters, finding where they are first when we do not know yet. A failed read
/// forgets the place and closes the files: the container may have restarted with a new main process.
fn read_kernel(k: &Kernel, c: &mut Known, id: &str) -> Result<kernel::Reading, String> {
    let pid = c.pid.ok_or("the engine gave no main process")?;
    let place = match c.track.place.take() {
        Some(p) => p,
        None => kernel::locate(&k.roots, pid, id)?,
    };
    match kernel::read(&k.roots, &place, pid, &mut c.track.files) {
        Ok(mut reading) => {
            c.track.place = Some(place);
            if c.network == api::Network::Host {
                // The host's interfaces, which the engine does not count as the container's.
                (reading.rx_bytes, reading.tx_bytes) = (0, 0);
            }
            Ok(reading)
        }
        Err(e) => {
            c.track.files = kernel::Files::default();
            Err(e)
        }
    }
}

/// This tick's reading: the figures, with a CPU % against our previous reading when there is one (else
/// the entry waits for a second).
fn first_kernel_sample(
    k: &Kernel,
    c: &mut Known,
    e: &mut Entry,
    now: Instant,
) -> Result<(), String> {
    let host = *k
        .host_memory
        .as_ref()
        .map_err(|e| format!("host memory: {e}"))?;
    let r = read_kernel(k, c, &e.listed.id)?;
    let cpu = c
        .track
        .previous
        .and_then(|before| kernel::cpu_percent(before, (r.cpu_ns, now)));
    c.track.previous = Some((r.cpu_ns, now));
    e.kernel_waits = cpu.is_none();
    e.figures = Some(kernel::figures(&r, host, cpu));
    Ok(())
}

/// A later reading for an entry that had no CPU % yet, against the first. A failure leaves the figures
/// without one; a counter that did not move on (no time passed) waits for another round.
fn second_kernel_sample(k: &Kernel, c: &mut Known, e: &mut Entry, now: Instant) {
    let Some(before) = c.track.previous else {
        return;
    };
    let Ok(r) = read_kernel(k, c, &e.listed.id) else {
        return;
    };
    match kernel::cpu_percent(before, (r.cpu_ns, now)) {
        Some(p) => {
            if let Some(f) = e.figures.as_mut() {
                f.set(Metric::CpuPercent, Value::Percent(p));
            }
            c.track.previous = Some((r.cpu_ns, now));
        }
        None => e.kernel_waits = true,
    }
}

fn stats_path(id: &str) -> String {
    format!("/containers/{id}/stats?stream=false&one-shot=true")
}

fn inspect_path(id: &str) -> String {
    format!("/containers/{id}/json")
}

fn state_only(state: State) -> Lifecycle {
    Lifecycle {
        state,
        health: None,
        restart_count: None,
        exit_code: None,
        oom_killed: None,
        started_at_ms: None,
    }
}

fn lifecycle_only(listed: &Listed, life: Lifecycle) -> ContainerStats {
    let mut c = api::container_stats(listed, Figures::default());
    c.lifecycle = Some(life);
    c
}

fn removed(listed: &Listed) -> ContainerStats {
    lifecycle_only(listed, state_only(State::Removed))
}

fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// A container the engine reported an `oom` event for, and that has not started again, was OOM-killed,
/// whatever its inspect answer says.
fn oom_from_events(mut life: Lifecycle, oom_event: bool) -> Lifecycle {
    if oom_event && life.state != State::Running {
        life.oom_killed = Some(true);
    }
    life
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_event_wins_over_an_inspect_that_missed_it() {
        let life = |state, oom| Lifecycle {
            state,
            health: None,
            restart_count: Some(0),
            exit_code: Some(137),
            oom_killed: Some(oom),
            started_at_ms: None,
        };
        assert_eq!(
            oom_from_events(life(State::Exited, false), true).oom_killed,
            Some(true)
        );
        assert_eq!(
            oom_from_events(life(State::Exited, false), false).oom_killed,
            Some(false)
        );
        // Started again since: the old OOM no longer describes it.
        assert_eq!(
            oom_from_events(life(State::Running, false), true).oom_killed,
            Some(false)
        );
    }

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
        let mut e = EngineSource::new(Some(socket), Duration::from_secs(10), false, kernel);
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
        assert!(e.contains("cannot connect"), "{e}");
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
        let mut e = EngineSource::new(Some(socket), Duration::from_secs(10), false, Figuring::Api);
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
}
