//! balena's hand-over updates: for a while the old and the new container of one service run side by side,
//! and publishing both made their figures alternate on the same topics.
//!
//! The newer one is the one with the higher release id (then image id) in its supervisor name. A tick's
//! records arrive one at a time, in no particular order, so the newest release of each service is
//! remembered from the previous tick as well as from this one: from the second tick of a hand-over on,
//! only the newer container is published. Names the supervisor did not make are never held back.

use crate::publish::balena::SupervisorName;
use std::collections::HashMap;

type Release = (u64, u64);

#[derive(Default)]
pub struct Handover {
    /// Newest release per service seen in the previous tick, and so far in this one.
    previous: HashMap<String, Release>,
    current: HashMap<String, Release>,
    /// Services whose hand-over was already logged, until it ends.
    reported: HashMap<String, Release>,
}

/// Whether a container's figures go out.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Publish,
    /// An older release of a service whose newer release also runs; `first` for the log's one line.
    Older {
        newer_release: u64,
        first: bool,
    },
}

impl Handover {
    pub fn judge(&mut self, service: &str, container_name: &str) -> Verdict {
        let Some(release) = release_of(container_name) else {
            return Verdict::Publish;
        };
        let newest = self
            .newest_known(service)
            .map_or(release, |r| r.max(release));
        match self.current.get_mut(service) {
            Some(r) => *r = (*r).max(release),
            None => {
                self.current.insert(service.to_owned(), release);
            }
        }
        if release >= newest {
            return Verdict::Publish;
        }
        let first = self.reported.insert(service.to_owned(), newest) != Some(newest);
        Verdict::Older {
            newer_release: newest.0,
            first,
        }
    }

    /// Like [`Handover::judge`], for a record without figures (an engine event's change between
    /// collections, a stopped container): judged against what the collections saw without counting as
    /// one, so a tick of such records neither ends a hand-over (and logs it again) nor starts one.
    pub fn peek(&self, service: &str, container_name: &str) -> Verdict {
        let Some(release) = release_of(container_name) else {
            return Verdict::Publish;
        };
        match self.newest_known(service) {
            Some(newest) if release < newest => Verdict::Older {
                newer_release: newest.0,
                first: false,
            },
            _ => Verdict::Publish,
        }
    }

    /// The newest release of `service` seen in the previous tick or so far in this one.
    fn newest_known(&self, service: &str) -> Option<Release> {
        [self.previous.get(service), self.current.get(service)]
            .into_iter()
            .flatten()
            .copied()
            .max()
    }

    /// A tick is over: what it saw is the previous tick's now; hand-overs that ended are forgotten.
    pub fn end_tick(&mut self) {
        self.previous = std::mem::take(&mut self.current);
        let previous = &self.previous;
        self.reported
            .retain(|service, newest| previous.get(service) == Some(newest));
    }
}

/// A supervisor-made name's release, newest ordering first; `None` for names the supervisor did not make.
fn release_of(container_name: &str) -> Option<Release> {
    SupervisorName::parse(container_name).map(|n| (n.release_id, n.image_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newer_release_is_published_from_the_second_tick_on() {
        let mut h = Handover::default();
        // Tick 1: the old container first, then the new one: both go out once.
        assert_eq!(h.judge("main", "main_10_100_aaaa"), Verdict::Publish);
        assert_eq!(h.judge("main", "main_11_101_bbbb"), Verdict::Publish);
        h.end_tick();
        // Tick 2, either order: only the newer one, logged once.
        assert_eq!(
            h.judge("main", "main_10_100_aaaa"),
            Verdict::Older {
                newer_release: 101,
                first: true
            }
        );
        assert_eq!(h.judge("main", "main_11_101_bbbb"), Verdict::Publish);
        h.end_tick();
        assert_eq!(h.judge("main", "main_11_101_bbbb"), Verdict::Publish);
        assert_eq!(
            h.judge("main", "main_10_100_aaaa"),
            Verdict::Older {
                newer_release: 101,
                first: false
            }
        );
        h.end_tick();
        // The old one is gone: the hand-over is over and forgotten.
        assert_eq!(h.judge("main", "main_11_101_bbbb"), Verdict::Publish);
        h.end_tick();
        h.end_tick();
        assert!(h.reported.is_empty() && h.previous.is_empty());
    }

    #[test]
    fn records_without_figures_are_judged_but_do_not_count_as_a_tick() {
        let mut h = Handover::default();
        h.judge("main", "main_10_100_aaaa");
        h.judge("main", "main_11_101_bbbb");
        h.end_tick();
        // An event about the old one (it stopped) between collections: held back, nothing remembered.
        let older = Verdict::Older {
            newer_release: 101,
            first: false,
        };
        assert_eq!(h.peek("main", "main_10_100_aaaa"), older);
        assert_eq!(h.peek("main", "main_11_101_bbbb"), Verdict::Publish);
        assert_eq!(h.peek("other", "other_1_1_x"), Verdict::Publish);
        assert!(h.current.is_empty());
    }

    #[test]
    fn other_names_and_other_services_are_never_held_back() {
        let mut h = Handover::default();
        assert_eq!(h.judge("db", "db"), Verdict::Publish);
        assert_eq!(h.judge("db", "db"), Verdict::Publish);
        assert_eq!(h.judge("web", "web_1_5"), Verdict::Publish);
        assert_eq!(h.judge("api", "api_1_4"), Verdict::Publish);
        h.end_tick();
        assert_eq!(h.judge("web", "web_1_5"), Verdict::Publish);
        assert_eq!(h.judge("api", "api_1_4"), Verdict::Publish);
    }
}
