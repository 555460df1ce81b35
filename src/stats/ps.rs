//! One `docker ps --all --no-trunc --format '{{json .}}'` line, read into a container's name and life.
//!
//! CLI mode's only view of stopped containers. `ps` says the state (`State`, the engine's word) and, in
//! its `Status` text, the last exit's code (`Exited (3) 5 minutes ago`, `Restarting (1) 3 seconds ago`)
//! and the healthcheck's verdict (`Up 2 hours (healthy)`, `Up 3 seconds (health: starting)`). Restart
//! count, OOM flag and start time are not in `ps`: they stay `None`. The text is the CLI's (docker/cli
//! `formatter/container.go` with moby's `State.String()`), and comes from outside: nothing here panics.

use super::lifecycle::{Health, Lifecycle, State};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize)]
struct RawPs<'a> {
    #[serde(rename = "Names", borrow)]
    names: Option<Cow<'a, str>>,
    #[serde(rename = "State", borrow)]
    state: Option<Cow<'a, str>>,
    #[serde(rename = "Status", borrow)]
    status: Option<Cow<'a, str>>,
}

/// The container's name (as `docker stats` prints it) and what `ps` says of its life.
pub fn parse_line(line: &str) -> Result<(String, Lifecycle), String> {
    // from_slice, as every other JSON body but the config's: each of serde_json's readers (str, slice)
    // is a copy of its parser in the binary.
    let raw: RawPs =
        serde_json::from_slice(line.as_bytes()).map_err(|e| format!("not a ps object: {e}"))?;
    let name = raw
        .names
        .as_deref()
        .and_then(own_name)
        .ok_or("no container Names")?
        .to_owned();
    let status = raw.status.as_deref().unwrap_or("").trim();
    // `State` is the engine's word; older CLIs print no `State`, so the Status text decides then.
    let state = match raw.state.as_deref().map(str::trim) {
        Some(word) if !word.is_empty() => State::parse(word)
            .or_else(|| state_from_status(status))
            .ok_or_else(|| format!("unknown State {:?}", clip(word)))?,
        _ => state_from_status(status)
            .ok_or_else(|| format!("no State and an unknown Status {:?}", clip(status)))?,
    };
    let exit_code = match state {
        State::Exited | State::Restarting => exit_code(status),
        _ => None,
    };
    Ok((
        name,
        Lifecycle {
            state,
            health: health(status),
            restart_count: None,
            exit_code,
            oom_killed: None,
            started_at_ms: None,
        },
    ))
}

/// `Names` lists a container's names joined by commas, links among them as `other/alias`: the one
/// without a `/` is its own (the one `docker stats` prints).
fn own_name(names: &str) -> Option<&str> {
    let mut all = names.split(',').map(str::trim).filter(|n| !n.is_empty());
    let first = all.clone().next()?;
    Some(all.find(|n| !n.contains('/')).unwrap_or(first))
}

/// moby's `State.String()`: `Up …` (with ` (Paused)` when paused), `Restarting (N) …`, `Exited (N) …`,
/// `Created`, `Dead`, `Removal In Progress`.
fn state_from_status(status: &str) -> Option<State> {
    let first = status.split(' ').next().unwrap_or("");
    Some(match first {
        "Up" if status.ends_with("(Paused)") => State::Paused,
        "Up" => State::Running,
        "Restarting" => State::Restarting,
        "Exited" => State::Exited,
        "Created" => State::Created,
        "Dead" => State::Dead,
        _ => return None,
    })
}

/// The number in `Exited (3) …` / `Restarting (1) …`.
fn exit_code(status: &str) -> Option<i64> {
    let open = status.find('(')?;
    let rest = &status[open + 1..];
    let close = rest.find(')')?;
    rest[..close].trim().parse().ok()
}

/// The healthcheck's verdict at the Status text's end; none when the container has no healthcheck.
fn health(status: &str) -> Option<Health> {
    let open = status.rfind('(')?;
    let inner = status[open + 1..].strip_suffix(')')?;
    match inner {
        "healthy" => Some(Health::Healthy),
        "unhealthy" => Some(Health::Unhealthy),
        "health: starting" => Some(Health::Starting),
        _ => None,
    }
}

/// Keeps errors about hostile input short.
fn clip(text: &str) -> &str {
    match text.char_indices().nth(40) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(line: &str) -> Lifecycle {
        parse_line(line).expect("parses").1
    }

    #[test]
    fn a_real_docker_ps_line() {
        let line = r#"{"Command":"\"/bin/sh -c 'exit 3'\"","CreatedAt":"2026-11-25 14:00:00 +0000 UTC","ID":"0123456789abcdef","Image":"busybox","Labels":"io.balena.service-name=main","LocalVolumes":"0","Mounts":"","Names":"main_1_2_abc","Networks":"bridge","Ports":"","RunningFor":"5 minutes ago","Size":"0B","State":"exited","Status":"Exited (3) 5 minutes ago"}"#;
        let (name, l) = parse_line(line).unwrap();
        assert_eq!(name, "main_1_2_abc");
        assert_eq!(
            l,
            Lifecycle {
                state: State::Exited,
                health: None,
                restart_count: None,
                exit_code: Some(3),
                oom_killed: None,
                started_at_ms: None,
            }
        );
    }

    #[test]
    fn running_with_and_without_a_healthcheck() {
        let l = life(r#"{"Names":"a","State":"running","Status":"Up 2 hours"}"#);
        assert_eq!(
            (l.state, l.health, l.exit_code),
            (State::Running, None, None)
        );
        let l = life(r#"{"Names":"a","State":"running","Status":"Up 2 hours (healthy)"}"#);
        assert_eq!(l.health, Some(Health::Healthy));
        let l = life(r#"{"Names":"a","State":"running","Status":"Up 1 second (unhealthy)"}"#);
        assert_eq!(l.health, Some(Health::Unhealthy));
        let l =
            life(r#"{"Names":"a","State":"running","Status":"Up 3 seconds (health: starting)"}"#);
        assert_eq!(l.health, Some(Health::Starting));
    }

    #[test]
    fn restarting_paused_created_dead() {
        let l =
            life(r#"{"Names":"a","State":"restarting","Status":"Restarting (1) 3 seconds ago"}"#);
        assert_eq!((l.state, l.exit_code), (State::Restarting, Some(1)));
        let l = life(r#"{"Names":"a","State":"paused","Status":"Up 4 minutes (Paused)"}"#);
        assert_eq!(
            (l.state, l.exit_code, l.health),
            (State::Paused, None, None)
        );
        assert_eq!(
            life(r#"{"Names":"a","State":"created","Status":"Created"}"#).state,
            State::Created
        );
        assert_eq!(
            life(r#"{"Names":"a","State":"dead","Status":"Dead"}"#).state,
            State::Dead
        );
        let l = life(r#"{"Names":"a","State":"exited","Status":"Exited (137) 2 days ago"}"#);
        assert_eq!(l.exit_code, Some(137));
    }

    #[test]
    fn without_state_the_status_text_decides() {
        let cases = [
            ("Up 2 hours", State::Running),
            ("Up 2 hours (Paused)", State::Paused),
            ("Exited (0) About a minute ago", State::Exited),
            ("Restarting (2) 1 second ago", State::Restarting),
            ("Created", State::Created),
            ("Dead", State::Dead),
        ];
        for (status, state) in cases {
            let line = format!(r#"{{"Names":"a","Status":"{status}"}}"#);
            assert_eq!(life(&line).state, state, "{status}");
        }
        assert_eq!(
            life(r#"{"Names":"a","Status":"Exited (0) About a minute ago"}"#).exit_code,
            Some(0)
        );
        // A State word we do not know (`removing`) falls back to the Status text too.
        let l = life(r#"{"Names":"a","State":"removing","Status":"Exited (5) 1 second ago"}"#);
        assert_eq!((l.state, l.exit_code), (State::Exited, Some(5)));
    }

    #[test]
    fn the_own_name_among_links() {
        let (name, _) =
            parse_line(r#"{"Names":"web/db,db_1","State":"running","Status":"Up 1 second"}"#)
                .unwrap();
        assert_eq!(name, "db_1");
    }

    #[test]
    fn lines_we_cannot_read_are_errors() {
        for bad in [
            "",
            "not json",
            "[1]",
            r#"{"State":"running"}"#,
            r#"{"Names":"","State":"running"}"#,
            r#"{"Names":" , ","State":"running"}"#,
            r#"{"Names":5}"#,
            r#"{"Names":"a","State":"floating","Status":"Floating"}"#,
            r#"{"Names":"a","Status":"Removal In Progress"}"#,
            r#"{"Names":"a"}"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
        let long = format!(r#"{{"Names":"a","State":"{}"}}"#, "x".repeat(10_000));
        assert!(parse_line(&long).unwrap_err().len() < 100);
    }

    #[test]
    fn odd_status_texts_give_no_code_rather_than_a_wrong_one() {
        for status in [
            "Exited",
            "Exited (",
            "Exited ()",
            "Exited (x) now",
            "Exited (99999999999999999999999) now",
            "Exited )3( now",
        ] {
            let line = format!(r#"{{"Names":"a","State":"exited","Status":"{status}"}}"#);
            assert_eq!(life(&line).exit_code, None, "{status}");
        }
        assert_eq!(
            life(r#"{"Names":"a","State":"exited","Status":"Exited (-1) now"}"#).exit_code,
            Some(-1)
        );
        // Non-ASCII around the brackets must not split a character.
        let l = life(r#"{"Names":"é","State":"running","Status":"Up é(héalthy)é"}"#);
        assert_eq!(l.health, None);
    }
}
