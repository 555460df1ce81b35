//! The event watch: the engine's event stream (`GET /events`, containers only) kept open between
//! collections, re-opened after a failure with a backoff, and an inspect of each container an event names;
//! what an inspect finds changed is handed over at once, a container gone once as removed.

use super::conn::{connect, EventConn};
use super::{
    api, events, http, lifecycle_only, removed, EngineSource, Known, Purpose, MAX_CONTAINERS,
    MAX_STATS_BODY,
};
use crate::source::filter::{Filter, Subject};
use crate::stats::lifecycle::{Lifecycle, State};
use serde_json::Value as Json;
use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

/// The event stream is re-opened after a failure no sooner than this backoff says, at most this late.
pub(super) const EVENTS_MAX_DELAY: Duration = Duration::from_secs(30);
/// `/events?filters={"type":["container"]}`.
const EVENTS_PATH: &str = "/events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D";

impl EngineSource {
    pub(super) fn inspected(
        &mut self,
        id: String,
        for_run: bool,
        result: Result<http::Response, String>,
    ) {
        let again = if for_run {
            false
        } else {
            self.inspecting.remove(&id).unwrap_or(false)
        };
        match result {
            Ok(r) if r.status == 200 => match api::parse_inspect(&r.body) {
                // Not wanted (an event without a name to judge it by asked for it, or it was
                // renamed): forgotten, never reported.
                Ok(Some(c)) if !api::wanted(&self.containers, &c.listed, &c.labels) => {
                    self.known.remove(&id);
                }
                Ok(Some(api::Inspected {
                    listed,
                    life,
                    pid,
                    network,
                    ..
                })) => {
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
                // Being removed: its life as we knew it holds until `destroy` says removed. Its state
                // is none of ours (its main process is over), so it is not read as running meanwhile.
                Ok(None) => {
                    if let Some(k) = self.known.get_mut(&id) {
                        k.listed.state = None;
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

    pub(super) fn inspect_for_event(&mut self, id: String) {
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
    pub(super) fn subscribed(&self) -> Option<u64> {
        let ev = self.events.as_ref()?;
        ev.parser.subscribed().then_some(self.events_gen)
    }

    pub(super) fn events_due(&mut self, now: Instant) {
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

    pub(super) fn events_failed(&mut self, now: Instant, why: &str) {
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

    pub(super) fn read_events(&mut self, now: Instant) {
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
            // A container we do not know of yet is judged by the event's name and labels, so one the
            // filter does not want costs no inspect.
            if !self.known.contains_key(&e.id) && !event_wanted(&self.containers, e.attributes) {
                continue;
            }
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

/// Whether the filter wants the container of an event, by its `Actor.Attributes`: its labels, with
/// `name` and the like among them. Without a name there is nothing to judge: the inspect decides.
fn event_wanted(containers: &Filter, attributes: Json) -> bool {
    let labels = api::labels_of(attributes);
    let Some(name) = labels.get("name").and_then(Json::as_str) else {
        return true;
    };
    containers.keeps(&Subject {
        name,
        service: api::service_of(&labels).as_deref(),
        labels: Some(&labels),
    })
}

pub(super) fn inspect_path(id: &str) -> String {
    format!("/containers/{id}/json")
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
}
