//! Which of `broker_url`'s addresses to try next. Pure: attempts and their outcomes in, an index out.
//!
//! A device starts at an address chosen from its device id by a stable hash, so a fleet spreads over a
//! cluster's nodes and one device always starts at the same node (paho C goes back to the top of its
//! list at every reconnect, and a fleet piles onto the first node). It moves to the next address when an
//! attempt fails or a live connection is lost, and stays wherever a connection works: no flapping back
//! to a "primary".

pub struct Failover {
    len: usize,
    start: usize,
    /// Moves since the start: the address is `(start + moves) % len`, and `moves / len` how many times
    /// the list was gone round (which of a name's IP addresses to try, see [`Failover::round`]).
    moves: usize,
    /// The address of the last connection that came up, to tell a failover from a reconnect.
    last_up: Option<usize>,
}

impl Failover {
    pub fn new(len: usize, device_id: &str) -> Failover {
        let len = len.max(1);
        Failover {
            len,
            start: start_index(device_id, len),
            moves: 0,
            last_up: None,
        }
    }

    /// The address to try now.
    pub fn current(&self) -> usize {
        (self.start + self.moves) % self.len
    }

    /// How many times every address has been tried: a name that resolves to several IP addresses (IPv6
    /// and IPv4) gets the next one each round.
    pub fn round(&self) -> usize {
        self.moves / self.len
    }

    /// An attempt on the current address failed: the next one.
    pub fn failed(&mut self) {
        self.moves = self.moves.wrapping_add(1);
    }

    /// A live connection was lost: the next address, when there is another (one address keeps its round,
    /// as before there were several).
    pub fn lost(&mut self) {
        if self.len > 1 {
            self.failed();
        }
    }

    /// A connection came up on the current address: the address it was on before, when that is another
    /// one (a failover: the new node has none of our retained messages).
    pub fn up(&mut self) -> Option<usize> {
        let now = self.current();
        self.last_up.replace(now).filter(|&before| before != now)
    }
}

/// FNV-1a of the device id: stable across builds and platforms (std's hasher promises neither).
pub fn start_index(device_id: &str, len: usize) -> usize {
    let hash = device_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % len.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_spreads_and_one_device_always_starts_at_the_same_address() {
        let mut per_node = [0; 3];
        for i in 0..3000 {
            let id = format!("device-{i}");
            let at = start_index(&id, 3);
            assert_eq!(Failover::new(3, &id).current(), at);
            assert_eq!(start_index(&id, 3), at, "stable");
            per_node[at] += 1;
        }
        assert!(per_node.iter().all(|&n| n > 900), "{per_node:?}");
        // Fixed values: a release that changed them would move every device of a fleet at once.
        assert_eq!(start_index("", 3), 0xcbf2_9ce4_8422_2325 % 3);
        assert_eq!(start_index("anything", 1), 0);
    }

    #[test]
    fn moves_on_failure_and_loss_and_stays_where_it_works() {
        let mut f = Failover::new(3, "dev1");
        let first = f.current();
        assert_eq!(f.up(), None, "the first connection is no failover");
        f.lost();
        let second = f.current();
        assert_eq!(second, (first + 1) % 3);
        f.failed();
        assert_eq!(f.current(), (first + 2) % 3);
        assert_eq!(f.round(), 0);
        assert_eq!(f.up(), Some(first), "up on another node than before");
        // It stays: nothing moves it back while the connection works, and a reconnect to the same node
        // after a failed attempt elsewhere went round is no failover.
        assert_eq!(f.current(), (first + 2) % 3);
        f.failed();
        f.failed();
        f.failed();
        assert_eq!(f.round(), 1);
        assert_eq!(f.up(), None);
        // One address: a loss keeps it, and its IP round, as with one broker before.
        let mut one = Failover::new(1, "dev1");
        one.lost();
        assert_eq!((one.current(), one.round()), (0, 0));
        one.failed();
        assert_eq!((one.current(), one.round()), (0, 1));
    }
}
