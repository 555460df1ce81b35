//! The packets we send besides PUBLISH (`message.rs`): CONNECT and SUBSCRIBE, encoded by mqttrs onto the
//! end of the outbound buffer, and the small fixed ones (PUBACK, PINGREQ, DISCONNECT).

use super::session::Options;
use mqttrs::{Connect, LastWill, Packet, Pid, Protocol, QoS, Subscribe, SubscribeTopic};

/// A clean-session CONNECT with the client id, keep-alive, credentials and will of `o`.
pub fn connect(o: &Options, out: &mut Vec<u8>) {
    let will = o.will.as_ref().map(|w| LastWill {
        topic: &w.topic,
        message: &w.payload,
        qos: QoS::AtLeastOnce,
        retain: w.retain,
    });
    let connect = Connect {
        protocol: Protocol::MQTT311,
        keep_alive: o.keep_alive,
        client_id: &o.client_id,
        clean_session: true,
        last_will: will,
        username: o.username.as_deref(),
        password: o.password.as_deref(),
    };
    // Every string was length-checked when the config was read; this bound covers all fields.
    let size = 32
        + o.client_id.len()
        + o.username.as_ref().map_or(0, String::len)
        + o.password.as_ref().map_or(0, Vec::len)
        + o.will
            .as_ref()
            .map_or(0, |w| w.topic.len() + w.payload.len());
    let mut buf = vec![0u8; size];
    if let Ok(n) = mqttrs::encode_slice(&Packet::Connect(connect), &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

/// One SUBSCRIBE at QoS 0 for all filters (at most five, none longer than 256 bytes; others are
/// skipped); nothing, and no packet id taken from `pid`, when none is left.
///
/// QoS 0, not 1: with QoS 1, RabbitMQ 3.10's MQTT plugin keeps the subscription in a queue on the node
/// the agent first subscribed through; when that node dies, a clean-session reconnect through another
/// node is closed by the broker at SUBSCRIBE, every time (tests/cluster.rs saw the agent go round all
/// nodes and never publish). What QoS 1 would add is a retry of Home Assistant's `online` birth across a
/// broken link; losing it costs nothing lasting: Home Assistant sends it again when it restarts, and every
/// (re)connect of ours already sends a fresh baseline.
pub fn subscribe(filters: &[String], pid: impl FnOnce() -> u16, out: &mut Vec<u8>) {
    let mut topics = heapless::Vec::<SubscribeTopic, 5>::new();
    for filter in filters {
        // heapless' `From<&str>` panics past its capacity; push_str reports it instead.
        let mut path = heapless::String::<256>::new();
        if path.push_str(filter).is_err() {
            continue;
        }
        let _ = topics.push(SubscribeTopic {
            topic_path: path,
            qos: QoS::AtMostOnce,
        });
    }
    if topics.is_empty() {
        return;
    }
    let packet = Packet::Subscribe(Subscribe::new(
        Pid::try_from(pid()).unwrap_or_default(),
        topics,
    ));
    let mut buf = [0u8; 5 * 260 + 8];
    if let Ok(n) = mqttrs::encode_slice(&packet, &mut buf) {
        out.extend_from_slice(&buf[..n]);
    }
}

/// PINGREQ, DISCONNECT and PUBACK are fixed bytes, written as such: through mqttrs' encoder they took
/// more aarch64 code than that (measured). The tests check them against mqttrs.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// The PUBACK for `pid`; `None` for 0, which is no packet id.
pub fn puback(pid: u16) -> Option<[u8; 4]> {
    let [hi, lo] = pid.to_be_bytes();
    (pid != 0).then_some([0x40, 0x02, hi, lo])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqttrs_bytes(packet: &Packet) -> Vec<u8> {
        let mut buf = [0u8; 8];
        let n = mqttrs::encode_slice(packet, &mut buf).unwrap();
        buf[..n].to_vec()
    }

    #[test]
    fn fixed_packets_are_the_bytes_mqttrs_writes() {
        assert_eq!(PINGREQ.to_vec(), mqttrs_bytes(&Packet::Pingreq));
        assert_eq!(DISCONNECT.to_vec(), mqttrs_bytes(&Packet::Disconnect));
        for pid in [1, 0x12, 0x1234, u16::MAX] {
            let packet = Packet::Puback(Pid::try_from(pid).unwrap());
            assert_eq!(puback(pid).unwrap().to_vec(), mqttrs_bytes(&packet));
        }
        assert_eq!(puback(0), None);
    }

    #[test]
    fn subscriptions_ask_for_qos_0() {
        let mut out = Vec::new();
        subscribe(&["homeassistant/status".into()], || 7, &mut out);
        let Ok(Some(Packet::Subscribe(sub))) = mqttrs::decode_slice(&out) else {
            panic!("{out:?}");
        };
        assert_eq!(sub.pid, Pid::try_from(7).unwrap());
        assert_eq!(sub.topics.len(), 1);
        assert_eq!(sub.topics[0].topic_path.as_str(), "homeassistant/status");
        // QoS 0: see `subscribe` (a QoS 1 subscription's queue dies with its RabbitMQ node).
        assert_eq!(sub.topics[0].qos, QoS::AtMostOnce);
    }
}
