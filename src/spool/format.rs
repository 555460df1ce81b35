//! The spool's bytes on disk, without I/O: a segment is an 8-byte header (magic and format version)
//! followed by records, each `length (u32 LE) | CRC-32 of the body (u32 LE) | body`, the body being one
//! PUBLISH packet as the agent encoded it. A record is only ever appended, so power lost during a write
//! leaves at most the last record cut short; the checksum catches that and any other damage.

use crate::mqtt::frame::MAX_INCOMING_PACKET;

/// Magic (6 bytes) and format version (1 byte), then a reserved byte.
const MAGIC: &[u8; 6] = b"bmtspl";
pub const VERSION: u8 = 1;
pub const HEADER: [u8; 8] = [b'b', b'm', b't', b's', b'p', b'l', VERSION, 0];
pub const RECORD_HEAD: usize = 8;
/// The largest packet the frame checks read back; no figure comes near it. A larger length is damage.
pub const MAX_BODY: usize = MAX_INCOMING_PACKET;

#[derive(Debug, PartialEq)]
pub enum Head {
    Ours,
    /// Written by a newer agent: its version.
    Newer(u8),
    /// Not a spool segment (or cut before its header ended).
    Foreign,
}

/// What the first bytes of a segment file say it is.
pub fn head(bytes: &[u8]) -> Head {
    match bytes.get(..HEADER.len()).unwrap_or_default() {
        [m @ .., v, _] if m == MAGIC && *v == VERSION => Head::Ours,
        [m @ .., v, _] if m == MAGIC && *v > VERSION => Head::Newer(*v),
        _ => Head::Foreign,
    }
}

#[derive(Debug, PartialEq)]
pub enum Step {
    /// A whole record whose body is `buf[RECORD_HEAD..end]`.
    Record(usize),
    /// The record is not all there yet: this many bytes would complete it (or at least its head).
    More(usize),
    /// A length out of bounds or a checksum that does not match: the segment's readable part ends here.
    Bad,
}

/// The record at the start of `buf`.
pub fn step(buf: &[u8]) -> Step {
    let Some(h) = buf.get(..RECORD_HEAD) else {
        return Step::More(RECORD_HEAD);
    };
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len == 0 || len > MAX_BODY {
        return Step::Bad;
    }
    let end = RECORD_HEAD + len;
    match buf.get(RECORD_HEAD..end) {
        None => Step::More(end),
        Some(body) if crc32(body) == sum => Step::Record(end),
        Some(_) => Step::Bad,
    }
}

/// Appends `body` as one record.
pub fn record(body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(body).to_le_bytes());
    out.extend_from_slice(body);
}

/// CRC-32 (IEEE, as zlib), bit by bit: a table would cost 1 KiB of the binary for speed the spool, which
/// writes one batch a tick, does not need.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg());
        }
    }
    !c
}

/// Appends a segment's file name: its sequence number in 16 hex digits, so names sort as they were made.
pub fn push_name(seq: u64, out: &mut String) {
    for i in (0..16).rev() {
        out.push(char::from(
            b"0123456789abcdef"[(seq >> (i * 4)) as usize & 15],
        ));
    }
    out.push_str(".spool");
}

/// The sequence number of a segment's file name; `None` for any other name.
pub fn seq_of(name: &[u8]) -> Option<u64> {
    let (hex, ext) = name.split_at_checked(16)?;
    if ext != b".spool" {
        return None;
    }
    hex.iter().try_fold(0u64, |n, &c| {
        Some(n << 4 | u64::from(char::from(c).to_digit(16)?))
    })
}

/// A segment's file name.
#[cfg(test)]
pub fn name(seq: u64) -> String {
    let mut s = String::new();
    push_name(seq, &mut s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record of a segment body up to where it ends or breaks, and whether it broke.
    pub fn scan(mut buf: &[u8]) -> (Vec<&[u8]>, bool) {
        let mut out = Vec::new();
        loop {
            match step(buf) {
                Step::Record(end) => {
                    out.push(&buf[RECORD_HEAD..end]);
                    buf = &buf[end..];
                }
                Step::More(_) => return (out, !buf.is_empty()),
                Step::Bad => return (out, true),
            }
        }
    }

    #[test]
    fn crc32_is_zlibs() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn names_round_trip_and_sort() {
        assert_eq!(name(0x1f), "000000000000001f.spool");
        assert_eq!(seq_of(name(u64::MAX).as_bytes()), Some(u64::MAX));
        for bad in [
            "lock",
            "1f.spool",
            "000000000000001g.spool",
            "+00000000000001f.spool",
            "000000000000001f.spoolx",
        ] {
            assert_eq!(seq_of(bad.as_bytes()), None, "{bad}");
        }
        assert!(name(9) < name(10) && name(0xff) < name(0x100));
    }

    #[test]
    fn headers() {
        assert_eq!(head(&HEADER), Head::Ours);
        let mut newer = HEADER;
        newer[6] = 2;
        assert_eq!(head(&newer), Head::Newer(2));
        assert_eq!(head(&HEADER[..7]), Head::Foreign);
        assert_eq!(head(b"{\"a\":1}\n"), Head::Foreign);
    }

    #[test]
    fn records_round_trip_and_every_cut_or_flip_is_caught() {
        let bodies: [&[u8]; 3] = [b"a", b"\x32\x0a\x00\x03a/b\x00\x01{}", &[7; 300]];
        let mut seg = Vec::new();
        for b in bodies {
            record(b, &mut seg);
        }
        assert_eq!(scan(&seg), (bodies.to_vec(), false));
        // Cut anywhere: the whole records before the cut, and a break unless the cut is on a boundary.
        let ends = [9, 9 + 8 + bodies[1].len(), seg.len()];
        for cut in 0..seg.len() {
            let (got, broke) = scan(&seg[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(got, bodies[..whole].to_vec(), "cut at {cut}");
            assert_eq!(broke, !ends.contains(&cut) && cut != 0, "cut at {cut}");
        }
        // Any one bit flipped: never a wrong record, at most the ones before it.
        for at in 0..seg.len() {
            for bit in 0..8 {
                let mut bad = seg.clone();
                bad[at] ^= 1 << bit;
                let (got, _) = scan(&bad);
                assert!(
                    got.len() < 3 && got == bodies[..got.len()],
                    "flip {at}.{bit}"
                );
            }
        }
    }
}
