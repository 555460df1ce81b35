//! A container's life as its source reports it: the figures that say whether a service is up, not how
//! busy it is. ENGINE mode reads them from the engine (inspect and its event stream), CLI mode from
//! `ps --all`; FILE mode has none.

/// Docker's `State.Status` words, and `Removed` for a container that is gone (reported once). Docker's
/// `removing` is not one: a container being removed is on its way to `Removed`, and ENGINE mode holds its
/// previous state until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
    Removed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Restarting => "restarting",
            State::Exited => "exited",
            State::Dead => "dead",
            State::Removed => "removed",
        }
    }

    /// Docker's word (`State.Status`, `ps`'s `State`); `None` for anything else.
    pub fn parse(word: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == word)
    }

    pub const ALL: [State; 7] = [
        State::Created,
        State::Running,
        State::Paused,
        State::Restarting,
        State::Exited,
        State::Dead,
        State::Removed,
    ];
}

/// A healthcheck's verdict (`State.Health.Status`); absent when the container has no healthcheck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    pub const ALL: [Health; 3] = [Health::Starting, Health::Healthy, Health::Unhealthy];

    // ENGINE mode's inspect reads it once the sources work of issue 11 lands; until then only tests do.
    #[allow(dead_code)]
    pub fn parse(word: &str) -> Option<Health> {
        Health::ALL.into_iter().find(|h| h.name() == word)
    }
}

/// What a source knows of one container's life; a field is `None` where the source does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub state: State,
    pub health: Option<Health>,
    pub restart_count: Option<u64>,
    /// The last exit's code; published only while the container is not running.
    pub exit_code: Option<i64>,
    pub oom_killed: Option<bool>,
    /// When the container last started, Unix milliseconds; uptime is published only while running.
    pub started_at_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_words_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.name()), Some(s));
        }
        assert_eq!(State::parse("running"), Some(State::Running));
        assert_eq!(State::parse("Running"), None);
        assert_eq!(Health::parse("unhealthy"), Some(Health::Unhealthy));
        assert_eq!(Health::parse("none"), None);
    }
}
