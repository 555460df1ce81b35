//! Incoming bytes -> checked packets.
//!
//! mqttrs 0.4.1's decoder trusts lengths: `40 00`, `20 00`, a QoS 1 PUBLISH without a packet id, or a topic
//! length running past the packet index out of bounds, and with `panic = "abort"` that would end the agent.
//! So every packet is framed here from its fixed header, capped in size, and checked field by field for the
//! lengths mqttrs will read before mqttrs sees exactly that packet's bytes.

use mqttrs::{ConnectReturnCode, Packet, QoS, QosPid, SubscribeReturnCodes};

/// The largest packet a broker may send us. We receive only acknowledgements and small PUBLISHes on
/// topics we subscribe to, so this bounds the read buffer without limiting anything real.
pub const MAX_INCOMING_PACKET: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A remaining length that runs over four bytes.
    MalformedLength,
    TooLarge(usize),
    /// A packet type a broker must never send a client, or one we never asked for (QoS 2 flow).
    Unexpected(&'static str),
    /// The fixed header or the body does not match the packet type.
    Malformed(&'static str),
    /// mqttrs refused a packet we had checked (bad UTF-8, bad return code, zero packet id, ...).
    Decode(String),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            FrameError::MalformedLength => f.write_str("malformed remaining length"),
            FrameError::TooLarge(n) => write!(
                f,
                "packet of {n} bytes exceeds the {MAX_INCOMING_PACKET} byte limit"
            ),
            FrameError::Unexpected(what) => write!(f, "unexpected {what} packet from the broker"),
            FrameError::Malformed(what) => write!(f, "malformed {what} packet"),
            FrameError::Decode(e) => write!(f, "undecodable packet: {e}"),
        }
    }
}

/// A packet from the broker, checked and decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming<'a> {
    Connack {
        session_present: bool,
        code: ConnectReturnCode,
    },
    Puback(u16),
    Suback {
        pid: u16,
        any_refused: bool,
    },
    Unsuback(u16),
    Pingresp,
    Publish {
        topic: &'a str,
        payload: &'a [u8],
        pid: Option<u16>,
        retain: bool,
    },
}

/// Total length of the first packet in `buf` once it is all there; `None` while more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + (i + 1) + remaining;
            if total > MAX_INCOMING_PACKET {
                return Err(FrameError::TooLarge(total));
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    Err(FrameError::MalformedLength)
}

/// Checks and decodes exactly one packet, as delimited by [`frame_len`].
pub fn decode(frame: &[u8]) -> Result<Incoming<'_>, FrameError> {
    let header = frame[0];
    let body_at = 1 + frame[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(4, |p| p + 1);
    let body = &frame[body_at.min(frame.len())..];
    check(header, body)?;
    let packet = mqttrs::decode_slice(frame)
        .map_err(|e| FrameError::Decode(format!("{e:?}")))?
        .ok_or(FrameError::Malformed("truncated"))?;
    Ok(match packet {
        Packet::Connack(c) => Incoming::Connack {
            session_present: c.session_present,
            code: c.code,
        },
        Packet::Puback(pid) => Incoming::Puback(pid.get()),
        Packet::Suback(s) => Incoming::Suback {
            pid: s.pid.get(),
            any_refused: s.return_codes.contains(&SubscribeReturnCodes::Failure),
        },
        Packet::Unsuback(pid) => Incoming::Unsuback(pid.get()),
        Packet::Pingresp => Incoming::Pingresp,
        Packet::Publish(p) => Incoming::Publish {
            topic: p.topic_name,
            payload: p.payload,
            pid: match p.qospid {
                QosPid::AtMostOnce => None,
                QosPid::AtLeastOnce(pid) | QosPid::ExactlyOnce(pid) => Some(pid.get()),
            },
            retain: p.retain,
        },
        _ => return Err(FrameError::Unexpected("client-side")),
    })
}

/// Everything mqttrs would read past the end of, for the packets a client can receive.
fn check(header: u8, body: &[u8]) -> Result<(), FrameError> {
    let flags = header & 0x0f;
    let exact = |name, len: usize| {
        if flags != 0 || body.len() != len {
            Err(FrameError::Malformed(name))
        } else {
            Ok(())
        }
    };
    match header >> 4 {
        2 => exact("CONNACK", 2),
        4 => exact("PUBACK", 2),
        11 => exact("UNSUBACK", 2),
        13 => exact("PINGRESP", 0),
        // mqttrs without std keeps at most 5 return codes; it reports more as an error, not a panic.
        9 if flags == 0 && body.len() >= 3 => Ok(()),
        9 => Err(FrameError::Malformed("SUBACK")),
        3 => check_publish(flags, body),
        5..=7 => Err(FrameError::Unexpected("QoS 2")),
        1 => Err(FrameError::Unexpected("CONNECT")),
        8 => Err(FrameError::Unexpected("SUBSCRIBE")),
        10 => Err(FrameError::Unexpected("UNSUBSCRIBE")),
        12 => Err(FrameError::Unexpected("PINGREQ")),
        14 => Err(FrameError::Unexpected("DISCONNECT")),
        _ => Err(FrameError::Unexpected("reserved type")),
    }
}

fn check_publish(flags: u8, body: &[u8]) -> Result<(), FrameError> {
    let qos = (flags >> 1) & 0b11;
    if qos == 3 {
        return Err(FrameError::Malformed("PUBLISH (QoS 3)"));
    }
    if qos == QoS::ExactlyOnce as u8 {
        return Err(FrameError::Unexpected("QoS 2"));
    }
    let [hi, lo, ..] = body else {
        return Err(FrameError::Malformed("PUBLISH (no topic)"));
    };
    let topic_end = 2 + (usize::from(*hi) << 8 | usize::from(*lo));
    let pid_len = if qos == 0 { 0 } else { 2 };
    if topic_end + pid_len > body.len() {
        return Err(FrameError::Malformed(
            "PUBLISH (topic or packet id past the end)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Incoming<'_>, FrameError> {
        match frame_len(bytes)? {
            Some(n) => decode(&bytes[..n]),
            None => Err(FrameError::Malformed("incomplete in test")),
        }
    }

    #[test]
    fn frames_need_the_whole_packet() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x20]), Ok(None));
        assert_eq!(frame_len(&[0x20, 0x02, 0x00]), Ok(None));
        assert_eq!(frame_len(&[0x20, 0x02, 0x00, 0x00, 0xd0]), Ok(Some(4)));
        assert_eq!(frame_len(&[0x30, 0x80]), Ok(None));
        assert_eq!(frame_len(&[0x30, 0x80, 0x01]), Ok(None)); // 128 bytes announced
    }

    #[test]
    fn oversized_and_overlong_lengths_are_refused() {
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0x7f]),
            Err(FrameError::TooLarge(268_435_460))
        );
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(FrameError::MalformedLength)
        );
        assert_eq!(
            frame_len(&[0x30, 0x80, 0x80, 0x04]),
            Err(FrameError::TooLarge(65_540))
        );
    }

    #[test]
    fn acknowledgements() {
        assert_eq!(
            one(&[0x20, 0x02, 0x00, 0x00]),
            Ok(Incoming::Connack {
                session_present: false,
                code: ConnectReturnCode::Accepted
            })
        );
        assert_eq!(
            one(&[0x20, 0x02, 0x01, 0x04]),
            Ok(Incoming::Connack {
                session_present: true,
                code: ConnectReturnCode::BadUsernamePassword
            })
        );
        assert_eq!(one(&[0x40, 0x02, 0x12, 0x34]), Ok(Incoming::Puback(0x1234)));
        assert_eq!(one(&[0xd0, 0x00]), Ok(Incoming::Pingresp));
        assert_eq!(one(&[0xb0, 0x02, 0x00, 0x07]), Ok(Incoming::Unsuback(7)));
        assert_eq!(
            one(&[0x90, 0x04, 0x00, 0x07, 0x01, 0x80]),
            Ok(Incoming::Suback {
                pid: 7,
                any_refused: true
            })
        );
    }

    #[test]
    fn packets_that_crash_mqttrs_are_refused_first() {
        assert_eq!(one(&[0x40, 0x00]), Err(FrameError::Malformed("PUBACK")));
        assert_eq!(one(&[0x20, 0x00]), Err(FrameError::Malformed("CONNACK")));
        assert_eq!(
            one(&[0x20, 0x01, 0x00]),
            Err(FrameError::Malformed("CONNACK"))
        );
        assert_eq!(
            one(&[0x90, 0x02, 0x00, 0x01]),
            Err(FrameError::Malformed("SUBACK"))
        );
        // QoS 1 PUBLISH with a topic but no packet id.
        assert!(matches!(
            one(&[0x32, 0x03, 0x00, 0x01, b'a']),
            Err(FrameError::Malformed(_))
        ));
        // Topic length runs past the packet.
        assert!(matches!(
            one(&[0x30, 0x04, 0x00, 0x09, b'a', b'b']),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            one(&[0x30, 0x01, 0x00]),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(one(&[0x30, 0x00]), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn values_mqttrs_rejects_are_errors_not_panics() {
        assert!(matches!(
            one(&[0x20, 0x02, 0x00, 0x09]),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            one(&[0x40, 0x02, 0x00, 0x00]),
            Err(FrameError::Decode(_))
        ));
        assert!(matches!(
            one(&[0x30, 0x04, 0x00, 0x02, 0xff, 0xfe]),
            Err(FrameError::Decode(_))
        ));
        let six_codes = [0x90, 0x08, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        assert!(matches!(one(&six_codes), Err(FrameError::Decode(_))));
    }

    #[test]
    fn packets_a_broker_must_not_send() {
        assert_eq!(
            one(&[0x50, 0x02, 0x00, 0x01]),
            Err(FrameError::Unexpected("QoS 2"))
        );
        assert_eq!(one(&[0xc0, 0x00]), Err(FrameError::Unexpected("PINGREQ")));
        assert_eq!(
            one(&[0xe0, 0x00]),
            Err(FrameError::Unexpected("DISCONNECT"))
        );
        assert_eq!(
            one(&[0x00, 0x00]),
            Err(FrameError::Unexpected("reserved type"))
        );
        assert_eq!(
            one(&[0xf0, 0x00]),
            Err(FrameError::Unexpected("reserved type"))
        );
        assert_eq!(one(&[0x10, 0x00]), Err(FrameError::Unexpected("CONNECT")));
        assert_eq!(
            one(&[0x36, 0x00]),
            Err(FrameError::Malformed("PUBLISH (QoS 3)"))
        );
    }

    #[test]
    fn publishes() {
        let qos0 = [0x31, 0x05, 0x00, 0x01, b't', b'h', b'i'];
        assert_eq!(
            one(&qos0),
            Ok(Incoming::Publish {
                topic: "t",
                payload: b"hi",
                pid: None,
                retain: true
            })
        );
        let qos1 = [0x32, 0x06, 0x00, 0x01, b't', 0x00, 0x05, b'x'];
        assert_eq!(
            one(&qos1),
            Ok(Incoming::Publish {
                topic: "t",
                payload: b"x",
                pid: Some(5),
                retain: false
            })
        );
    }
}
