//! Just enough of a certificate to name its issuer in an error message and to find its public key, and
//! a date in words.
//!
//! rustls says "unknown issuer" without saying which; a user with a private CA needs the name to know
//! which bundle is missing. A few DER steps reach the issuer; anything unexpected gives `None`, never
//! a panic: the bytes come from the network.

/// One DER element at the start of `d`: its tag, its contents and what follows it.
fn element(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&first, d) = d.split_first()?;
    let (len, d) = if first < 0x80 {
        (usize::from(first), d)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || d.len() < n {
            return None;
        }
        let len = d[..n]
            .iter()
            .fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        (len, &d[n..])
    };
    if d.len() < len {
        return None;
    }
    Some((tag, &d[..len], &d[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// The fields of a DER certificate's TBSCertificate from the issuer on: past the version (absent from
/// X.509 v1 certificates), the serial number and the signature algorithm.
fn from_issuer(cert: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, cert, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = element(tbs)?;
    if tag != 0xa0 {
        rest = tbs;
    }
    let (_, _, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?;
    Some(rest)
}

/// The issuer of a DER certificate, e.g. `CN=Example Root CA, O=Example`.
pub fn issuer(cert: &[u8]) -> Option<String> {
    let (SEQUENCE, name, _) = element(from_issuer(cert)?)? else {
        return None;
    };
    let text = name_text(name);
    (!text.is_empty()).then_some(text)
}

/// A DER certificate's SubjectPublicKeyInfo, whole (the form rustls gives a private key's public half
/// in), of any X.509 version: rustls' own check that a key fits its certificate refuses v1 ones.
pub fn public_key_info(cert: &[u8]) -> Option<&[u8]> {
    // The issuer, the validity and the subject come first.
    let (_, _, rest) = element(from_issuer(cert)?)?;
    let (_, _, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?;
    let (SEQUENCE, _, after) = element(rest)? else {
        return None;
    };
    Some(&rest[..rest.len() - after.len()])
}

/// The common attributes of an X.501 name, in the certificate's order.
fn name_text(mut name: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((SET, set, rest)) = element(name) {
        name = rest;
        let mut set = set;
        while let Some((SEQUENCE, pair, rest)) = element(set) {
            set = rest;
            let Some((0x06, oid, rest)) = element(pair) else {
                continue;
            };
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0a] => "O",
                [0x55, 0x04, 0x0b] => "OU",
                [0x55, 0x04, 0x06] => "C",
                _ => continue,
            };
            // UTF8String, PrintableString, IA5String, TeletexString: shown as text, control bytes not.
            if let Some((0x0c | 0x13 | 0x16 | 0x14, value, _)) = element(rest) {
                let value: String = String::from_utf8_lossy(value)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                parts.push(format!("{label}={value}"));
            }
        }
    }
    parts.join(", ")
}

/// Seconds since 1970 as `2025-01-31 23:59:59 UTC`.
pub fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let s = secs % 86_400;
    // Howard Hinnant's days-to-civil, for dates from 1970 on.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_735_689_599), "2024-12-31 23:59:59 UTC");
        assert_eq!(utc(4_102_444_800), "2100-01-01 00:00:00 UTC");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn names_the_issuer_of_a_real_certificate() {
        let mut ca = rcgen::CertificateParams::new(Vec::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "Test Root CA");
        ca.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
        assert_eq!(
            issuer(leaf.der()).as_deref(),
            Some("CN=Test Root CA, O=Acme")
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn finds_the_public_key_of_a_real_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(public_key_info(cert.der()), Some(&key.public_key_der()[..]));
    }

    #[test]
    fn garbage_gives_none_and_never_panics() {
        assert_eq!(issuer(b""), None);
        assert_eq!(issuer(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(issuer(&[0x30, 0x80]), None);
        // Every prefix and every single-byte corruption of a small valid-looking structure.
        let base: Vec<u8> = vec![
            0x30, 0x1c, 0x30, 0x1a, 0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x01, 0x30, 0x00,
            0x30, 0x0e, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x03, b'a',
            b'b', b'c',
        ];
        assert_eq!(issuer(&base).as_deref(), Some("CN=abc"));
        assert_eq!(public_key_info(&base), None);
        for n in 0..base.len() {
            let _ = issuer(&base[..n]);
            let _ = public_key_info(&base[..n]);
            for v in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                let mut b = base.clone();
                b[n] = v;
                let _ = issuer(&b);
                let _ = public_key_info(&b);
            }
        }
    }
}
