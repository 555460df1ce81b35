//! Just enough HTTP/1.1 to talk to the engine's API socket: one GET request out, one response in.
//!
//! Pure: the caller reads bytes from the socket and asks [`parse`] after each read whether the response is
//! whole yet. Bodies come with `Content-Length`, chunked, or (with `Connection: close`) end at end of
//! file. Every size is bounded, so a confused or hostile peer costs at most `max_body` bytes of memory and
//! never a panic.

/// Largest status line plus headers we accept.
pub const MAX_HEAD: usize = 16 * 1024;

/// The request line and headers of a GET on `path`. `Connection: close` so the engine frees the
/// connection as soon as it has answered.
pub fn get_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: engine\r\nUser-Agent: balena-multi-container-telemetry\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The head is not HTTP/1.x or a header is unreadable.
    Malformed(&'static str),
    HeadTooLarge,
    BodyTooLarge(usize),
    /// The peer closed the connection before the response was whole.
    Truncated,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Error::Malformed(what) => write!(f, "malformed HTTP response: {what}"),
            Error::HeadTooLarge => write!(f, "HTTP response head over {MAX_HEAD} bytes"),
            Error::BodyTooLarge(max) => write!(f, "HTTP response body over {max} bytes"),
            Error::Truncated => f.write_str("connection closed before the response was complete"),
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads a response out of `buf`, everything received so far. `Ok(None)`: not whole yet, read more;
/// `eof` says the peer has closed, so nothing more will come.
pub fn parse(buf: &[u8], eof: bool, max_body: usize) -> Result<Option<Response>, Error> {
    let Some(head_len) = find(buf, b"\r\n\r\n").map(|i| i + 4) else {
        if buf.len() > MAX_HEAD {
            return Err(Error::HeadTooLarge);
        }
        return if eof { Err(Error::Truncated) } else { Ok(None) };
    };
    if head_len > MAX_HEAD {
        return Err(Error::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_len - 4])
        .map_err(|_| Error::Malformed("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    let mut framing = Framing::UntilClose;
    let mut length = None;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(Error::Malformed("header without ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
            {
                framing = Framing::Chunked;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| Error::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    // Chunked wins over a Content-Length (RFC 9112 6.3).
    if let (Some(n), Framing::UntilClose) = (length, &framing) {
        framing = Framing::Length(n);
    }
    // 1xx, 204 and 304 have no body whatever the headers say.
    if status < 200 || status == 204 || status == 304 {
        framing = Framing::Length(0);
    }
    let rest = &buf[head_len..];
    let body = match framing {
        Framing::Length(n) => {
            if n > max_body {
                return Err(Error::BodyTooLarge(max_body));
            }
            if rest.len() < n {
                return if eof { Err(Error::Truncated) } else { Ok(None) };
            }
            rest[..n].to_vec()
        }
        Framing::Chunked => match dechunk(rest, max_body)? {
            Some(body) => body,
            None if eof => return Err(Error::Truncated),
            None => return Ok(None),
        },
        Framing::UntilClose => {
            if rest.len() > max_body {
                return Err(Error::BodyTooLarge(max_body));
            }
            if !eof {
                return Ok(None);
            }
            rest.to_vec()
        }
    };
    Ok(Some(Response { status, body }))
}

fn parse_status_line(line: &str) -> Result<u16, Error> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(Error::Malformed("not an HTTP/1.x status line"));
    }
    let code = parts.next().unwrap_or("");
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Malformed("bad status code"));
    }
    code.parse()
        .map_err(|_| Error::Malformed("bad status code"))
}

/// The body of a chunked message, or `None` when not all of it is here yet.
fn dechunk(mut rest: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, Error> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(rest, b"\r\n") else {
            // A size line is a few hex digits and maybe an extension; refuse to wait forever on one.
            return if rest.len() > 1024 {
                Err(Error::Malformed("chunk size line too long"))
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| Error::Malformed("chunk size"))?;
        let hex = line.split(';').next().unwrap_or("").trim();
        if hex.is_empty() || hex.len() > 15 {
            return Err(Error::Malformed("bad chunk size"));
        }
        let size =
            usize::from_str_radix(hex, 16).map_err(|_| Error::Malformed("bad chunk size"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            // Trailer fields, if any, then an empty line.
            loop {
                let Some(eol) = find(rest, b"\r\n") else {
                    return if rest.len() > MAX_HEAD {
                        Err(Error::HeadTooLarge)
                    } else {
                        Ok(None)
                    };
                };
                if eol == 0 {
                    return Ok(Some(body));
                }
                rest = &rest[eol + 2..];
            }
        }
        // Checked: on 32-bit targets a 15-digit size could wrap these sums.
        if body.len().checked_add(size).is_none_or(|n| n > max_body) {
            return Err(Error::BodyTooLarge(max_body));
        }
        let Some(end) = size.checked_add(2) else {
            return Err(Error::BodyTooLarge(max_body));
        };
        if rest.len() < end {
            return Ok(None);
        }
        if &rest[size..end] != b"\r\n" {
            return Err(Error::Malformed("chunk not followed by CRLF"));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[end..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(text: &[u8]) -> Result<Option<Response>, Error> {
        parse(text, false, 1024)
    }

    #[test]
    fn request_is_a_closing_get() {
        let r = String::from_utf8(get_request("/containers/json")).unwrap();
        assert!(r.starts_with("GET /containers/json HTTP/1.1\r\nHost: engine\r\n"));
        assert!(r.contains("\r\nConnection: close\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn content_length_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(
            whole(r),
            Ok(Some(Response {
                status: 200,
                body: b"[]".to_vec()
            }))
        );
    }

    #[test]
    fn every_prefix_asks_for_more_and_the_whole_is_parsed() {
        let full: &[u8] =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-T: y\r\n\r\n";
        for n in 0..full.len() {
            assert_eq!(whole(&full[..n]), Ok(None), "prefix of {n} bytes");
            assert_eq!(parse(&full[..n], true, 1024), Err(Error::Truncated));
        }
        let r = whole(full).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"a\":1}"[..]));
    }

    #[test]
    fn body_until_close_without_length() {
        let r = b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\":\"gone\"}";
        assert_eq!(whole(r), Ok(None));
        let got = parse(r, true, 1024).unwrap().unwrap();
        assert_eq!(got.status, 404);
        assert_eq!(got.body, b"{\"message\":\"gone\"}");
    }

    #[test]
    fn no_body_statuses() {
        let r = whole(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(
            whole(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n"),
            Err(Error::BodyTooLarge(1024))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n";
        assert_eq!(whole(chunked), Err(Error::BodyTooLarge(1024)));
        let huge = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n";
        assert!(matches!(whole(huge), Err(Error::Malformed(_))));
        let mut long_head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long_head.resize(MAX_HEAD + 10, b'a');
        assert_eq!(whole(&long_head), Err(Error::HeadTooLarge));
        let mut close_body = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        close_body.resize(close_body.len() + 1025, b'x');
        assert_eq!(whole(&close_body), Err(Error::BodyTooLarge(1024)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: &[&[u8]] = &[
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 20x OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ];
        for c in cases {
            assert!(
                matches!(whole(c), Err(Error::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    #[test]
    fn pieces_of_arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: every prefix of a few mangled responses, at every eof setting.
        let base: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for flip in 0..base.len() {
            let mut m = base.to_vec();
            m[flip] ^= 0x5a;
            for n in 0..=m.len() {
                let _ = parse(&m[..n], n == m.len(), 8);
            }
        }
    }
}
