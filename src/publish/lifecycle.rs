//! A container's life as topics: `{root}/state`, `health`, `restart_count`, `exit_code`, `oom_killed`,
//! `uptime_in_seconds`, each in the usual payload form, or as keys of the per-service payload.
//!
//! What goes out follows what is true now: `health` only for a container with a healthcheck, `exit_code`
//! only while it is not running (a running container's last exit code describes a run that is over),
//! `uptime_in_seconds` only while it runs. A value the source does not know is not published.

use crate::publish::payload::Field;
use crate::stats::lifecycle::{Lifecycle, State};

/// The lifecycle topics, in publishing order. The name is the last topic level (or the per-service key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    State,
    Health,
    RestartCount,
    ExitCode,
    OomKilled,
    Uptime,
}

impl Topic {
    pub const ALL: [Topic; 6] = [
        Topic::State,
        Topic::Health,
        Topic::RestartCount,
        Topic::ExitCode,
        Topic::OomKilled,
        Topic::Uptime,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Topic::State => "state",
            Topic::Health => "health",
            Topic::RestartCount => "restart_count",
            Topic::ExitCode => "exit_code",
            Topic::OomKilled => "oom_killed",
            Topic::Uptime => "uptime_in_seconds",
        }
    }
}

/// At most one value per topic, in `Topic::ALL`'s order; a fixed array so the hot path allocates nothing.
pub type Values = [Option<(Topic, Field<'static>)>; 6];

/// What to publish of `life` for a tick taken at `timestamp_ms` (Unix milliseconds).
pub fn values(life: &Lifecycle, timestamp_ms: u64) -> Values {
    let running = matches!(life.state, State::Running | State::Paused);
    // A created container never ran, so its exit code (0) says nothing.
    let exited = !running && life.state != State::Created;
    let uptime = life
        .started_at_ms
        .filter(|_| running)
        .map(|start| timestamp_ms.saturating_sub(start) / 1000);
    [
        Some((Topic::State, Field::Text(life.state.name()))),
        life.health.map(|h| (Topic::Health, Field::Text(h.name()))),
        life.restart_count
            .map(|n| (Topic::RestartCount, Field::Count(n))),
        life.exit_code
            .filter(|_| exited)
            .map(|c| (Topic::ExitCode, Field::Signed(c))),
        life.oom_killed.map(|b| (Topic::OomKilled, Field::Flag(b))),
        uptime.map(|s| (Topic::Uptime, Field::Count(s))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::lifecycle::Health;

    fn life(state: State) -> Lifecycle {
        Lifecycle {
            state,
            health: Some(Health::Healthy),
            restart_count: Some(2),
            exit_code: Some(3),
            oom_killed: Some(true),
            started_at_ms: Some(1_000_000),
        }
    }

    fn named(v: &Values) -> Vec<(&'static str, Field<'static>)> {
        v.iter().flatten().map(|(t, f)| (t.name(), *f)).collect()
    }

    #[test]
    fn running_publishes_uptime_and_no_exit_code() {
        let v = values(&life(State::Running), 1_061_999);
        assert_eq!(
            named(&v),
            [
                ("state", Field::Text("running")),
                ("health", Field::Text("healthy")),
                ("restart_count", Field::Count(2)),
                ("oom_killed", Field::Flag(true)),
                ("uptime_in_seconds", Field::Count(61)),
            ]
        );
    }

    #[test]
    fn exited_publishes_the_exit_code_and_no_uptime() {
        let v = values(&life(State::Exited), 2_000_000);
        assert_eq!(
            named(&v),
            [
                ("state", Field::Text("exited")),
                ("health", Field::Text("healthy")),
                ("restart_count", Field::Count(2)),
                ("exit_code", Field::Signed(3)),
                ("oom_killed", Field::Flag(true)),
            ]
        );
        for state in [State::Dead, State::Restarting, State::Removed] {
            assert!(named(&values(&life(state), 0)).contains(&("exit_code", Field::Signed(3))));
        }
        for state in [State::Created, State::Paused] {
            assert!(!named(&values(&life(state), 0))
                .iter()
                .any(|(n, _)| *n == "exit_code"));
        }
    }

    #[test]
    fn what_the_source_does_not_know_is_not_published() {
        let bare = Lifecycle {
            state: State::Running,
            health: None,
            restart_count: None,
            exit_code: None,
            oom_killed: None,
            started_at_ms: None,
        };
        assert_eq!(
            named(&values(&bare, 5)),
            [("state", Field::Text("running"))]
        );
        // A start time after the tick (clocks apart) gives 0, not a wrapped-around number.
        let future = Lifecycle {
            started_at_ms: Some(10_000),
            ..bare
        };
        assert_eq!(
            named(&values(&future, 5))[1],
            ("uptime_in_seconds", Field::Count(0))
        );
    }
}
