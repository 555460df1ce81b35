//! Connections the broker closes right after accepting them. Two devices left with one client id take
//! turns knocking each other off the broker (MQTT-3.1.4-2: the server disconnects the existing client),
//! and each only sees its connection drop: said once in words, so the user knows what to change. A
//! broker that refuses part of a session (a cluster node that cannot take a subscription, an ACL) does
//! the same, so the warning names both.

use std::time::{Duration, Instant};

/// A connection that lives less than this after its CONNACK counts as closed right away.
const SHORT: Duration = Duration::from_secs(10);
/// This many such connections in a row make the warning.
const IN_A_ROW: u32 = 3;

#[derive(Default)]
pub struct Kicked {
    connected_at: Option<Instant>,
    in_a_row: u32,
    said: bool,
}

impl Kicked {
    pub fn connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// A live connection was lost; the warning, once, when it makes the count.
    pub fn lost(&mut self, now: Instant, client_id: &str) -> Option<String> {
        let short = self
            .connected_at
            .take()
            .is_some_and(|at| now.saturating_duration_since(at) < SHORT);
        self.in_a_row = if short { self.in_a_row + 1 } else { 0 };
        if self.in_a_row < IN_A_ROW || self.said {
            return None;
        }
        self.said = true;
        Some(format!(
            "the broker closed the connection within {}s of accepting it {IN_A_ROW} times in a row: \
             another client may be using the same client id {client_id:?} (two devices with one \
             device_id do this: give each its own device_id or client_id), or the broker refuses \
             something of the session (its log says what)",
            SHORT.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_short_connections_in_a_row_are_said_once() {
        let mut k = Kicked::default();
        let t = Instant::now();
        let s = Duration::from_secs(1);
        for i in 0..2 {
            k.connected(t + s * (2 * i));
            assert_eq!(k.lost(t + s * (2 * i + 1), "c"), None);
        }
        // A long-lived connection in between starts the count again.
        k.connected(t + s * 4);
        assert_eq!(k.lost(t + s * 60, "c"), None);
        for i in 0..2 {
            k.connected(t + s * (61 + 2 * i));
            assert_eq!(k.lost(t + s * (62 + 2 * i), "c"), None);
        }
        k.connected(t + s * 70);
        let said = k.lost(t + s * 71, "balena-telemetry-x").unwrap();
        assert!(
            said.contains("another client may be using the same client id \"balena-telemetry-x\""),
            "{said}"
        );
        k.connected(t + s * 72);
        assert_eq!(k.lost(t + s * 73, "c"), None, "once");
    }
}
