//! The packets we send besides PUBLISH (`message.rs`): the small fixed ones (PUBACK, PINGREQ,
//! DISCONNECT).

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
    use mqttrs::{Packet, Pid};

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
}
