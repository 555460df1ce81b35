//! Outgoing PUBLISH packets, encoded once when made.
//!
//! A message is kept as its encoded bytes from the moment it is made until it is acknowledged: the queue,
//! the in-flight window and a re-send after reconnecting all use the same bytes. The packet id is written
//! into its slot when the message is sent, and a re-send sets the DUP flag in place.
//!
//! PUBLISH is the one packet we write ourselves rather than through mqttrs: mqttrs writes a packet one
//! bounds-checked byte at a time, which was 23% of the agent's instructions per message (callgrind, 90,000
//! QoS 1 messages); here it is five slice copies. The tests check every form against mqttrs' own encoder
//! and decoder, so the bytes are the same.

use super::frame::frame_len;
use mqttrs::QoS;

/// The largest remaining length MQTT can express.
const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// Empty, longer than 65,535 bytes (mqttrs would silently truncate it), or holding a wildcard or NUL.
    BadTopic,
    TooLarge,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            EncodeError::BadTopic => "topic is empty, too long, or contains a wildcard",
            EncodeError::TooLarge => "message too large for MQTT",
        })
    }
}

/// A PUBLISH packet ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    bytes: Box<[u8]>,
    /// Where the packet id goes, for QoS 1; `None` for QoS 0.
    pid_at: Option<u32>,
}

impl Message {
    pub fn publish(
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
    ) -> Result<Message, EncodeError> {
        // Bytes, not chars: the three forbidden characters are ASCII, and a char-wise scan of every topic
        // was 35% of the per-message cost (callgrind).
        if topic.is_empty()
            || topic.len() > usize::from(u16::MAX)
            || topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
        {
            return Err(EncodeError::BadTopic);
        }
        let qos1 = qos != QoS::AtMostOnce;
        let pid_len = if qos1 { 2 } else { 0 };
        let remaining = 2 + topic.len() + pid_len + payload.len();
        if remaining > MAX_REMAINING {
            return Err(EncodeError::TooLarge);
        }
        let mut bytes = Vec::with_capacity(1 + varint_len(remaining) + remaining);
        bytes.push(0x30 | if qos1 { 0x02 } else { 0 } | u8::from(retain));
        let mut n = remaining;
        loop {
            let digit = (n % 128) as u8;
            n /= 128;
            bytes.push(if n > 0 { digit | 0x80 } else { digit });
            if n == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        bytes.extend_from_slice(topic.as_bytes());
        let pid_at = qos1.then_some(bytes.len() as u32);
        if qos1 {
            // A placeholder: the real id is written when the message is sent.
            bytes.extend_from_slice(&[0, 1]);
        }
        bytes.extend_from_slice(payload);
        Ok(Message {
            bytes: bytes.into_boxed_slice(),
            pid_at,
        })
    }

    /// A PUBLISH as [`Message::publish`] wrote it, read back (the spool's records, DUP flag and all):
    /// `None` unless its lengths agree, so that no later use of it can index out of bounds.
    pub fn from_bytes(b: &[u8]) -> Option<Message> {
        let h = *b.first()?;
        if h >> 4 != 3 || h & 0x04 != 0 || frame_len(b) != Ok(Some(b.len())) {
            return None;
        }
        let at = 2 + b[1..].iter().position(|x| x & 0x80 == 0)?;
        let topic = usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
        let pid_at = at + 2 + topic;
        let qos1 = h & 0x02 != 0;
        if pid_at + 2 * usize::from(qos1) > b.len() {
            return None;
        }
        Some(Message {
            bytes: b.into(),
            pid_at: qos1.then_some(pid_at as u32),
        })
    }

    pub fn is_qos1(&self) -> bool {
        self.pid_at.is_some()
    }

    /// Writes the packet id into the packet (QoS 1 only).
    pub fn set_pid(&mut self, pid: u16) {
        if let Some(at) = self.pid_at {
            let at = at as usize;
            self.bytes[at..at + 2].copy_from_slice(&pid.to_be_bytes());
        }
    }

    /// Marks a QoS 1 packet as a re-delivery.
    pub fn set_dup(&mut self) {
        if self.is_qos1() {
            self.bytes[0] |= 0x08;
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::frame::{decode, frame_len, Incoming};

    #[test]
    fn qos1_publish_round_trips_with_its_pid_and_dup() {
        let mut m = Message::publish("a/b", b"{\"value\":1}", QoS::AtLeastOnce, false).unwrap();
        m.set_pid(0x0102);
        let b = m.bytes();
        assert_eq!(b[0], 0x32);
        assert_eq!(frame_len(b), Ok(Some(b.len())));
        assert_eq!(
            decode(b),
            Ok(Incoming::Publish {
                topic: "a/b",
                payload: b"{\"value\":1}",
                pid: Some(0x0102),
                retain: false
            })
        );
        m.set_dup();
        assert_eq!(m.bytes()[0], 0x3a);
    }

    #[test]
    fn read_back_as_written_or_not_at_all() {
        for (qos, retain) in [(QoS::AtMostOnce, true), (QoS::AtLeastOnce, false)] {
            let mut m = Message::publish("a/b", &[b'p'; 200], qos, retain).unwrap();
            m.set_dup();
            assert_eq!(Message::from_bytes(m.bytes()), Some(m.clone()));
            for cut in 0..m.bytes().len() {
                assert_eq!(Message::from_bytes(&m.bytes()[..cut]), None, "{cut}");
            }
        }
        // A topic length past the end, QoS 2, and another packet type.
        assert_eq!(Message::from_bytes(&[0x32, 0x03, 0x00, 0x09, b'a']), None);
        assert_eq!(
            Message::from_bytes(&[0x34, 0x04, 0x00, 0x01, b'a', 0]),
            None
        );
        assert_eq!(Message::from_bytes(&[0x40, 0x02, 0x00, 0x01]), None);
    }

    #[test]
    fn qos0_has_no_pid_and_ignores_dup() {
        let mut m = Message::publish("t", b"x", QoS::AtMostOnce, true).unwrap();
        m.set_pid(7);
        m.set_dup();
        assert_eq!(m.bytes(), &[0x31, 0x04, 0x00, 0x01, b't', b'x']);
        assert!(!m.is_qos1());
    }

    #[test]
    fn long_payloads_use_longer_lengths() {
        let payload = vec![b'x'; 200];
        let m = Message::publish("t", &payload, QoS::AtMostOnce, false).unwrap();
        assert_eq!(&m.bytes()[..3], &[0x30, 0xcb, 0x01]); // 203 = 0x4b | 0x80, 0x01
        assert_eq!(m.bytes().len(), 3 + 203);
    }

    /// Our PUBLISH bytes equal mqttrs' for every form and size class of the remaining length.
    #[test]
    fn same_bytes_as_mqttrs() {
        for payload_len in [0, 1, 100, 127, 200, 16_383, 16_384, 2_097_152] {
            for (qos, retain) in [
                (QoS::AtMostOnce, false),
                (QoS::AtLeastOnce, true),
                (QoS::AtLeastOnce, false),
            ] {
                let payload = vec![b'p'; payload_len];
                let mut ours = Message::publish("a/b/é", &payload, qos, retain).unwrap();
                ours.set_pid(0x1234);
                let qospid = match qos {
                    QoS::AtMostOnce => mqttrs::QosPid::AtMostOnce,
                    _ => mqttrs::QosPid::AtLeastOnce(mqttrs::Pid::try_from(0x1234).unwrap()),
                };
                let packet = mqttrs::Packet::Publish(mqttrs::Publish {
                    dup: false,
                    qospid,
                    retain,
                    topic_name: "a/b/é",
                    payload: &payload,
                });
                let mut theirs = vec![0u8; payload_len + 64];
                let n = mqttrs::encode_slice(&packet, &mut theirs).unwrap();
                assert_eq!(ours.bytes(), &theirs[..n], "{payload_len} {qos:?} {retain}");
            }
        }
    }

    #[test]
    fn bad_topics_are_refused_not_truncated() {
        let long = "x".repeat(65_536);
        assert_eq!(
            Message::publish(&long, b"", QoS::AtMostOnce, false),
            Err(EncodeError::BadTopic)
        );
        assert_eq!(
            Message::publish("", b"", QoS::AtMostOnce, false),
            Err(EncodeError::BadTopic)
        );
        assert_eq!(
            Message::publish("a/+", b"", QoS::AtMostOnce, false),
            Err(EncodeError::BadTopic)
        );
        assert_eq!(
            Message::publish("a/#", b"", QoS::AtMostOnce, false),
            Err(EncodeError::BadTopic)
        );
    }
}
