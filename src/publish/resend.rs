//! A baseline Home Assistant hears: a service's values again once its configs have settled.
//!
//! Home Assistant subscribes to an entity's state topic only after it has read the entity's discovery
//! config: 160 to 210 ms later, with 2024.3.3 and 2025.4.4. The figures that go out with the configs (the
//! same tick) reach nobody, so a container that stops before the next tick, or a figure reported by
//! exception, stays unknown there. So once the broker has acknowledged every config of a service (it
//! forwards them to Home Assistant as it takes them) and [`SETTLE`] has passed, the service's latest
//! values go out once more, in either report mode: at start, for a new container or a new entity, and
//! after a Home Assistant birth (whose re-announcement goes the same way).
//!
//! Home Assistant sends its SUBSCRIBE only once discovery has been quiet for 0.1 s (it debounces its
//! subscriptions), so while configs keep coming (many services, a slow link) it subscribes to none: the
//! settle time counts from the last acknowledgement of all the services waiting, which go out together,
//! though none waits more than [`MAX_WAIT`] after its own.
//!
//! Pure: the tick moves each service's latest record in here once it is published (no copy), the
//! discovery bookkeeping says when a service's configs are all acknowledged, and the due records come out
//! as a tick's worth of records, each with the timestamp it was taken at. Only the services the last
//! collection listed are kept: a gone container's values are not sent again.

use crate::stats::lifecycle::State;
use crate::stats::ContainerStats;
use std::time::{Duration, Instant};

/// How long after the last acknowledgement of the configs the values go out again. Home Assistant
/// 2024.3.3 and 2025.4.4 subscribed 160 to 210 ms after a config arrived, on this machine; a Raspberry Pi
/// running Home Assistant, busy creating a fleet device's entities all at once, is several times slower.
/// Waiting longer costs nothing but the delay (the values carry the time they were taken), so the margin
/// is wide: 5 s.
pub const SETTLE: Duration = Duration::from_secs(5);

/// The longest a service's values wait after its own configs were acknowledged, however long others'
/// keep coming.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

struct Latest {
    service: String,
    timestamp_ms: u64,
    record: ContainerStats,
    /// When its values go out again, if they are to, and when its configs were acknowledged.
    due: Option<(Instant, Instant)>,
    /// Listed by the collection in progress.
    listed: bool,
}

#[derive(Default)]
pub struct Resend {
    /// Sorted by service.
    latest: Vec<Latest>,
}

impl Resend {
    /// The record just published for `service` is its latest. A record without figures (a change between
    /// collections) keeps the figures of the one before while the same container runs.
    pub fn keep(&mut self, service: &str, timestamp_ms: u64, mut record: ContainerStats) {
        match self.find(service) {
            Ok(i) => {
                let l = &mut self.latest[i];
                let running = record
                    .lifecycle
                    .as_ref()
                    .is_none_or(|life| life.state == State::Running);
                if record.figures.iter().next().is_none() && running && record.name == l.record.name
                {
                    record.figures = std::mem::take(&mut l.record.figures);
                }
                l.record = record;
                l.timestamp_ms = timestamp_ms;
                l.listed = true;
            }
            Err(i) => self.latest.insert(
                i,
                Latest {
                    service: service.to_owned(),
                    timestamp_ms,
                    record,
                    due: None,
                    listed: true,
                },
            ),
        }
    }

    /// Every config of `service` handed out so far is acknowledged at `now`: its values, and those of
    /// every service waiting, go out again at `now + SETTLE` (each within `MAX_WAIT` of its own).
    pub fn announced(&mut self, now: Instant, service: &str) {
        let Ok(i) = self.find(service) else {
            return;
        };
        let l = &mut self.latest[i];
        l.due = Some((now, l.due.map_or(now, |(_, acked)| acked)));
        for l in &mut self.latest {
            if let Some((due, acked)) = &mut l.due {
                *due = (now + SETTLE).min(*acked + MAX_WAIT);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.latest.iter().filter_map(|l| l.due).map(|d| d.0).min()
    }

    /// The records due by `now`, each with its timestamp, in service order; they stay the latest.
    pub fn take_due(&mut self, now: Instant) -> Vec<(u64, ContainerStats)> {
        let mut out = Vec::new();
        for l in &mut self.latest {
            if l.due.is_some_and(|(d, _)| now >= d) {
                l.due = None;
                out.push((l.timestamp_ms, l.record.clone()));
            }
        }
        out
    }

    /// A collection has been published: the services it did not list are gone, and forgotten.
    pub fn end_collection(&mut self) {
        self.latest.retain(|l| l.listed);
        for l in &mut self.latest {
            l.listed = false;
        }
    }

    fn find(&self, service: &str) -> Result<usize, usize> {
        self.latest
            .binary_search_by(|l| l.service.as_str().cmp(service))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::lifecycle::Lifecycle;
    use crate::stats::{Metric, Value};

    fn record(name: &str, pids: Option<u64>, state: Option<State>) -> ContainerStats {
        let mut r = ContainerStats {
            part: None,
            name: name.into(),
            id: String::new(),
            service: None,
            figures: Default::default(),
            lifecycle: state.map(|state| Lifecycle {
                state,
                health: None,
                restart_count: None,
                exit_code: None,
                oom_killed: None,
                started_at_ms: None,
            }),
        };
        if let Some(n) = pids {
            r.figures.set(Metric::Pids, Value::Count(n));
        }
        r
    }

    #[test]
    fn values_go_out_again_a_settle_time_after_the_last_acknowledgement() {
        let t0 = Instant::now();
        let mut r = Resend::default();
        r.keep("web", 1_000, record("web_1", Some(3), None));
        r.keep("db", 1_000, record("db_1", Some(5), None));
        assert_eq!(r.next_deadline(), None, "nothing before an acknowledgement");
        r.announced(t0, "web");
        r.announced(t0 + Duration::from_millis(300), "web");
        r.announced(t0 + Duration::from_millis(400), "unknown");
        let due = t0 + Duration::from_millis(300) + SETTLE;
        assert_eq!(
            r.next_deadline(),
            Some(due),
            "the last acknowledgement counts"
        );
        assert!(r.take_due(due - Duration::from_millis(1)).is_empty());
        // A newer record came meanwhile: that is the one re-sent, with its own timestamp.
        r.keep("web", 2_000, record("web_1", Some(4), None));
        let out = r.take_due(due);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, 2_000);
        assert_eq!(out[0].1.figures.get(Metric::Pids), Some(Value::Count(4)));
        assert!(r.take_due(due + SETTLE).is_empty(), "once");
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn waiting_services_go_out_together_after_the_last_acknowledgement_within_the_longest_wait() {
        let t0 = Instant::now();
        let mut r = Resend::default();
        for s in ["a", "b", "c"] {
            r.keep(s, 1, record(s, Some(1), None));
        }
        r.announced(t0, "a");
        let b_acked = t0 + SETTLE - Duration::from_millis(1);
        r.announced(b_acked, "b");
        assert!(
            r.take_due(t0 + SETTLE).is_empty(),
            "a waits for b's settling"
        );
        let both = r.take_due(b_acked + SETTLE);
        let names: Vec<&str> = both.iter().map(|x| x.1.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        // Configs that keep coming postpone no one past the longest wait.
        r.announced(t0, "a");
        let mut t = t0;
        while t < t0 + MAX_WAIT {
            t += SETTLE / 2;
            r.announced(t, "c");
        }
        assert_eq!(r.next_deadline(), Some(t0 + MAX_WAIT));
        assert_eq!(r.take_due(t0 + MAX_WAIT)[0].1.name, "a");
    }

    #[test]
    fn a_change_between_collections_keeps_the_figures_of_a_running_container() {
        let t0 = Instant::now();
        let mut r = Resend::default();
        r.keep("web", 1, record("web_1", Some(3), Some(State::Running)));
        r.keep("web", 2, record("web_1", None, Some(State::Running)));
        r.announced(t0, "web");
        let out = r.take_due(t0 + SETTLE);
        assert_eq!(out[0].1.figures.get(Metric::Pids), Some(Value::Count(3)));
        // Stopped: no figures to re-send, only its life.
        r.keep("web", 3, record("web_1", None, Some(State::Exited)));
        r.announced(t0, "web");
        let out = r.take_due(t0 + SETTLE);
        assert_eq!(out[0].1.figures.iter().count(), 0);
        assert_eq!(out[0].1.lifecycle.as_ref().unwrap().state, State::Exited);
        // Another container of the service (an update): its own figures only.
        r.keep("web", 4, record("web_2", None, Some(State::Running)));
        r.announced(t0, "web");
        assert_eq!(r.take_due(t0 + SETTLE)[0].1.figures.iter().count(), 0);
    }

    #[test]
    fn services_a_collection_did_not_list_are_forgotten() {
        let t0 = Instant::now();
        let mut r = Resend::default();
        r.keep("a", 1, record("a", Some(1), None));
        r.keep("b", 1, record("b", Some(1), None));
        r.end_collection();
        r.keep("b", 2, record("b", Some(2), None));
        r.end_collection();
        r.announced(t0, "a");
        r.announced(t0, "b");
        let out = r.take_due(t0 + SETTLE);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.name, "b");
        r.end_collection();
        assert!(r.latest.is_empty());
    }
}
