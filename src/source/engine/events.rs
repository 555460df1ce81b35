//! The engine's event stream (`GET /events`, filtered to containers), read as it comes: one HTTP response
//! that never ends, its body chunked, one JSON object per line.
//!
//! Pure: bytes in, events out. Every buffer is bounded: the head by [`http::MAX_HEAD`], a chunk-size line
//! by a few bytes, an event line by [`MAX_EVENT_LINE`] (a longer one is skipped whole).

use super::http;
use serde::Deserialize;
use serde_json::Value;

/// An event line longer than this is skipped (real ones are well under 2 KB, labels included).
pub const MAX_EVENT_LINE: usize = 64 * 1024;

/// One container event: which container, what happened to it, and its `Actor.Attributes` (the
/// container's labels, its name and the like), for the container filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub action: String,
    pub attributes: Value,
}

impl Event {
    /// The actions that change what we report (state, health, restarts, exit, OOM); not `exec_*` (every
    /// healthcheck run makes three), `attach`, `resize` and the like.
    pub fn matters(&self) -> bool {
        let verb = self.action.split(':').next().unwrap_or("").trim();
        matches!(
            verb,
            "create"
                | "start"
                | "restart"
                | "die"
                | "oom"
                | "kill"
                | "stop"
                | "pause"
                | "unpause"
                | "destroy"
                | "health_status"
                | "rename"
                | "update"
        )
    }
}

enum Body {
    /// Before the end of the head: the head's bytes so far.
    Head(Vec<u8>),
    /// Chunked: reading a chunk-size line.
    Size(Vec<u8>),
    /// Chunked: this many data bytes left in the chunk.
    Data(usize),
    /// Chunked: the line break after a chunk's data.
    Crlf,
    /// Not chunked: the body runs to the connection's end.
    Raw,
}

pub struct EventStream {
    body: Body,
    line: Vec<u8>,
    /// The current line went past [`MAX_EVENT_LINE`]: skip to its end.
    skipping: bool,
    /// An event was skipped since [`EventStream::take_lost`] last asked: what we know may be stale.
    lost: bool,
}

impl Default for EventStream {
    fn default() -> Self {
        EventStream {
            body: Body::Head(Vec::new()),
            line: Vec::new(),
            skipping: false,
            lost: false,
        }
    }
}

impl EventStream {
    /// The engine has answered the request: from here on it sends every event (it subscribes us before
    /// it answers), so a container list asked for now misses nothing.
    pub fn subscribed(&self) -> bool {
        !matches!(self.body, Body::Head(_))
    }

    /// Bytes held between feeds (the head, a chunk-size line, an event line), for the fuzzer's bounds.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        let pending = match &self.body {
            Body::Head(b) | Body::Size(b) => b.len(),
            _ => 0,
        };
        pending + self.line.len()
    }

    /// Whether an event was skipped (too long to read) since the last call.
    pub fn take_lost(&mut self) -> bool {
        std::mem::take(&mut self.lost)
    }

    /// Takes the bytes that came; the events they completed go to `out`. An error ends the stream (a
    /// refusal, a framing the stream cannot be read past).
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<Event>) -> Result<(), String> {
        while !bytes.is_empty() {
            match &mut self.body {
                Body::Head(head) => {
                    let before = head.len();
                    head.extend_from_slice(bytes);
                    let Some(end) = find(head, b"\r\n\r\n") else {
                        if head.len() > http::MAX_HEAD {
                            return Err(format!("head over {} bytes", http::MAX_HEAD));
                        }
                        return Ok(());
                    };
                    let chunked = read_head(&head[..end])?;
                    bytes = &bytes[end + 4 - before..];
                    self.body = if chunked {
                        Body::Size(Vec::new())
                    } else {
                        Body::Raw
                    };
                }
                Body::Size(line) => {
                    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(bytes);
                        if line.len() > 64 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(());
                    };
                    line.extend_from_slice(&bytes[..nl]);
                    bytes = &bytes[nl + 1..];
                    let text = String::from_utf8_lossy(line);
                    let hex = text.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| format!("bad chunk size {hex:?}"))?;
                    if size == 0 {
                        return Err("the engine ended the stream".into());
                    }
                    self.body = Body::Data(size);
                }
                Body::Data(left) => {
                    let n = (*left).min(bytes.len());
                    let (data, rest) = bytes.split_at(n);
                    *left -= n;
                    if *left == 0 {
                        self.body = Body::Crlf;
                    }
                    bytes = rest;
                    self.lines(data, out);
                }
                Body::Crlf => {
                    match bytes.iter().position(|&b| b == b'\n') {
                        Some(nl) => {
                            bytes = &bytes[nl + 1..];
                            self.body = Body::Size(Vec::new());
                        }
                        None => return Ok(()),
                    };
                }
                Body::Raw => {
                    self.lines(bytes, out);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn lines(&mut self, mut data: &[u8], out: &mut Vec<Event>) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let part = &data[..nl.unwrap_or(data.len())];
            if !self.skipping {
                if self.line.len() + part.len() > MAX_EVENT_LINE {
                    crate::warn!("engine events: a line over {MAX_EVENT_LINE} bytes skipped");
                    self.skipping = true;
                    self.lost = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            let Some(nl) = nl else {
                return;
            };
            data = &data[nl + 1..];
            if !self.skipping {
                out.extend(parse_event(&self.line));
            }
            self.line.clear();
            self.skipping = false;
        }
    }
}

/// The status must be 200; says whether the body is chunked.
fn read_head(head: &[u8]) -> Result<bool, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .ok_or_else(|| format!("not an HTTP answer: {:?}", clip(status)))?;
    if code != "200" {
        return Err(format!("answered {}", clip(status)));
    }
    Ok(lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    }))
}

fn clip(s: &str) -> &str {
    s.char_indices().nth(80).map_or(s, |(i, _)| &s[..i])
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One event line; `None` for anything that is not a container event with an id we can use.
fn parse_event(line: &[u8]) -> Option<Event> {
    #[derive(Deserialize)]
    struct Actor {
        #[serde(rename = "ID")]
        id: Option<String>,
        #[serde(rename = "Attributes", default)]
        attributes: Value,
    }
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "Type")]
        kind: Option<String>,
        #[serde(rename = "Action")]
        action: Option<String>,
        status: Option<String>,
        id: Option<String>,
        #[serde(rename = "Actor")]
        actor: Option<Actor>,
    }
    let raw: Raw = serde_json::from_slice(line).ok()?;
    if raw.kind.as_deref().is_some_and(|k| k != "container") {
        return None;
    }
    let (id, attributes) = match raw.actor {
        Some(a) => (a.id, a.attributes),
        None => (None, Value::Null),
    };
    let id = id.or(raw.id)?;
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let action = raw.action.or(raw.status)?;
    ok.then_some(Event {
        id,
        action,
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(s: &str) -> String {
        format!("{:x}\r\n{s}\r\n", s.len())
    }

    const DIE: &str = r#"{"status":"die","id":"abc123","from":"img","Type":"container","Action":"die","Actor":{"ID":"abc123","Attributes":{"exitCode":"3","name":"web"}},"scope":"local","time":1,"timeNano":1}"#;

    #[test]
    fn events_come_out_of_chunks_whatever_the_split() {
        let health = DIE
            .replace("\"die\"", "\"health_status: healthy\"")
            .replace("abc123", "def456");
        let exec = DIE.replace("\"die\"", "\"exec_start: sh -c true\"");
        let body = format!("{}\n{}\n{}\n", DIE, health, exec);
        // The engine's own framing: one chunk per event; here also cut mid-line.
        let (a, b) = body.split_at(100);
        let wire = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}{}",
            chunk(a),
            chunk(b)
        );
        for step in [1, 7, wire.len()] {
            let mut s = EventStream::default();
            let mut got = Vec::new();
            for piece in wire.as_bytes().chunks(step) {
                s.feed(piece, &mut got).unwrap();
            }
            assert_eq!(got.len(), 3, "split {step}");
            assert_eq!(
                (got[0].id.as_str(), got[0].action.as_str()),
                ("abc123", "die")
            );
            let name = got[0].attributes.get("name");
            assert_eq!(name.and_then(Value::as_str), Some("web"));
            assert_eq!(got[1].action, "health_status: healthy");
            assert!(got[0].matters() && got[1].matters() && !got[2].matters());
        }
    }

    #[test]
    fn refusals_endings_and_junk_are_errors_or_skipped_never_panics() {
        let mut s = EventStream::default();
        let e = s
            .feed(
                b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(e.contains("500"), "{e}");
        let mut s = EventStream::default();
        let mut got = Vec::new();
        assert!(!s.subscribed());
        let wire = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{}{}",
            chunk("not json\n{\"Type\":\"network\",\"Action\":\"connect\",\"Actor\":{\"ID\":\"ab\"}}\n"),
            chunk(&format!("{}\n", DIE.replace("abc123", "../etc")))
        );
        s.feed(wire.as_bytes(), &mut got).unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert!(
            s.subscribed() && !s.take_lost(),
            "junk that is not ours is not a lost event"
        );
        // An overlong line is skipped, the next one still read; the skip is told once.
        let long = format!("{}\n{DIE}\n", "x".repeat(MAX_EVENT_LINE + 10));
        s.feed(chunk(&long).as_bytes(), &mut got).unwrap();
        assert_eq!(got.len(), 1);
        assert!(s.take_lost() && !s.take_lost());
        assert!(s.feed(b"0\r\n\r\n", &mut got).is_err());
        let mut s = EventStream::default();
        assert!(s
            .feed(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                &mut got
            )
            .is_err());
        let mut s = EventStream::default();
        assert!(s.feed(&[b'a'; http::MAX_HEAD + 10], &mut got).is_err());
    }
}
