//! `/proc/<pid>/net/dev`: bytes received and sent in the process's network namespace.
//!
//! Two header lines, then one line per interface: `name: rx_bytes rx_packets ... (8 receive fields)
//! tx_bytes ...`. Loopback is left out, as the engine counts only the container's network endpoints.

use super::counters::{fields, integer, lines};

/// (received, sent) summed over every interface but `lo`; `None` when an interface line is garbled.
pub fn totals(text: &[u8]) -> Option<(u64, u64)> {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in lines(text) {
        // Header lines have no colon; old kernels wrote `eth0:123` without a space, hence split on it.
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, rest) = (line[..colon].trim_ascii(), &line[colon + 1..]);
        if name == b"lo" {
            continue;
        }
        let mut fields = fields(rest);
        let r = integer(fields.next()?)?;
        let t = integer(fields.nth(7)?)?;
        rx = rx.saturating_add(r);
        tx = tx.saturating_add(t);
    }
    Some((rx, tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    #[test]
    fn sums_interfaces_but_loopback() {
        // As read on this machine, with a second interface added.
        let text = format!(
            "{HEADER}    lo:     999       9    0    0    0     0          0         0      999       9    0    0    0     0       0          0\n  eth0:    1392      16    0    0    0     0          0         0      656       8    0    0    0     0       0          0\n  eth1: 100 1 0 0 0 0 0 0 200 2 0 0 0 0 0 0\n"
        );
        assert_eq!(totals(text.as_bytes()), Some((1492, 856)));
    }

    #[test]
    fn only_loopback_is_zero() {
        let text = format!("{HEADER}    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n");
        assert_eq!(totals(text.as_bytes()), Some((0, 0)));
        assert_eq!(totals(HEADER.as_bytes()), Some((0, 0)));
    }

    #[test]
    fn old_kernels_without_a_space_after_the_colon() {
        assert_eq!(
            totals(b"eth0:1392 16 0 0 0 0 0 0 656 8 0 0 0 0 0 0\n"),
            Some((1392, 656))
        );
    }

    #[test]
    fn garbled_or_cut_interface_lines_are_none() {
        assert_eq!(totals(b"eth0: 1392 16 0 0\n"), None);
        assert_eq!(totals(b"eth0: x 16 0 0 0 0 0 0 656 8\n"), None);
        assert_eq!(totals(b"eth0:"), None);
    }
}
