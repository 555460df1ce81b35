//! The collection round: the list, then every running container's stats sample and an inspect of each
//! whose state we do not know, a second round a second later for CPU % where there was no previous
//! sample, and the tick's containers handed over once every answer is in (or the time is up).

use super::kernel_route::second_kernel_sample;
use super::watch::inspect_path;
use super::{
    api, http, removed, state_only, EngineSource, Output, Purpose, MAX_CONTAINERS, MAX_STATS_BODY,
};
use crate::stats::lifecycle::State;
use crate::stats::{ContainerStats, Figures, Metric, Value};
use api::{CpuSample, Listed};
use std::time::{Duration, Instant};

/// Rounds of asking again for a CPU sample, a second apart.
const SAMPLE_ROUNDS: u32 = 3;
/// How long we wait between two samples of a container we have no previous sample of (`--once`, the
/// first tick, a new container). About the docker CLI's own wait.
const SECOND_SAMPLE_AFTER: Duration = Duration::from_secs(1);

/// One container in the collection under way.
pub(super) struct Entry {
    pub(super) listed: Listed,
    pub(super) figures: Option<Figures>,
    /// The first sample's CPU, while a CPU % still waits for a later one.
    cpu_before: Option<CpuSample>,
    /// Its kernel reading had no previous one to give a CPU %: read again next round (the previous is
    /// the container's [`Track`](super::kernel_route::Track)'s).
    pub(super) kernel_waits: bool,
}

impl Entry {
    pub(super) fn new(listed: Listed) -> Entry {
        Entry {
            listed,
            figures: None,
            cpu_before: None,
            kernel_waits: false,
        }
    }
}

/// How many of the collection's requests are not answered yet, and of them stats samples (the current
/// round's).
pub(super) struct InFlight {
    pub(super) all: usize,
    pub(super) stats: usize,
}

/// The collection under way.
pub(super) struct Run {
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) listed: bool,
    pub(super) entries: Vec<Entry>,
    /// Containers that were known and are gone from the list: reported once as removed.
    pub(super) removed: Vec<Listed>,
    pub(super) round: u32,
    pub(super) next_round: Option<Instant>,
    /// The kernel's files are still to be read, once the list and its inspects are in.
    pub(super) kernel_pending: bool,
    /// The event stream's connection (its number) that was already subscribed when the list was asked:
    /// while it stays up, the list plus its events is all we need to know.
    pub(super) list_under: Option<u64>,
}

impl EngineSource {
    pub(super) fn listed(&mut self, now: Instant, result: Result<http::Response, String>) {
        if self.run.is_none() {
            return;
        }
        let socket = &self.socket;
        let parsed = result.and_then(|r| match r.status {
            200 => api::parse_list(&r.body, &self.containers)
                .map_err(|e| format!("engine {socket}: {e}")),
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
        for (path, purpose, max) in asks {
            self.ask(path, purpose, max);
        }
        self.open_queued(now);
        self.kernel_phase(now);
        self.round_done(now);
    }

    pub(super) fn sampled(
        &mut self,
        now: Instant,
        i: usize,
        result: Result<http::Response, String>,
    ) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
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
    pub(super) fn round_done(&mut self, _now: Instant) {
        let stats_left = self.in_flight().stats;
        let Some(run) = self.run.as_mut() else {
            return;
        };
        if !run.listed || run.kernel_pending || stats_left > 0 || run.next_round.is_some() {
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
    pub(super) fn next_round(&mut self, now: Instant) {
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
        for (path, i) in again {
            self.ask(path, Purpose::Stats(i), MAX_STATS_BODY);
        }
    }

    /// The collection's containers when we are in sync: those the events have kept us told of.
    pub(super) fn entries_from_known(&mut self) {
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

    /// The collection's requests not answered yet, queued or open: counted from the requests themselves,
    /// so no count can drift from them.
    pub(super) fn in_flight(&self) -> InFlight {
        let requests = self.queue.iter().chain(self.open.iter().map(|c| &c.req));
        let mut n = InFlight { all: 0, stats: 0 };
        for r in requests.filter(|r| r.purpose.for_run()) {
            n.all += 1;
            n.stats += usize::from(matches!(r.purpose, Purpose::Stats(_)));
        }
        n
    }

    /// The collection's own requests are dropped; those for events stay.
    fn drop_run_requests(&mut self) {
        self.queue.retain(|r| !r.purpose.for_run());
        self.open.retain(|c| !c.req.purpose.for_run());
    }

    pub(super) fn fail(&mut self, error: String) {
        self.run = None;
        self.drop_run_requests();
        self.out.push_back(Output::Failed {
            error,
            expected: false,
        });
    }

    /// Every answer is in: the tick's containers, running ones with figures, the others by their
    /// lifecycle alone, removed ones once.
    pub(super) fn finish_if_done(&mut self, now: Instant) {
        let all = self.in_flight().all;
        let done = self
            .run
            .as_ref()
            .is_some_and(|r| r.listed && !r.kernel_pending && all == 0 && r.next_round.is_none());
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
    pub(super) fn expire_run(&mut self, now: Instant) {
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
        run.next_round = None;
        crate::warn!(
            "engine {}: {} requests unanswered after {}s; the tick goes out without them",
            self.socket,
            self.in_flight().all,
            self.timeout.as_secs()
        );
        self.drop_run_requests();
        self.finish_if_done(now);
    }
}

pub(super) fn stats_path(id: &str) -> String {
    format!("/containers/{id}/stats?stream=false&one-shot=true")
}
