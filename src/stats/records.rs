//! Splits collected stats text into one record per container.
//!
//! Accepted: JSON lines (what `stats --format '{{json .}}'` prints), blank lines, CRLF, a line wrapped in one
//! pair of double quotes (what `--format "\"{{json .}}\""` prints: the quotes are literal, the inner quotes
//! are not escaped), and a whole-file JSON array of objects. Each record keeps the line it started on so
//! warnings can point at it.
//!
//! The split is a cursor over borrowed bytes, so a tick's text is held once and read a record at a time as
//! the publisher has room (see `agent.rs`).

/// Longest record we look at. A stats line is about 250 bytes; anything this long is not one.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    TooLong(usize),
    NotUtf8,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            RecordError::TooLong(n) => {
                write!(f, "{n} bytes long (limit {MAX_RECORD_BYTES}), skipped")
            }
            RecordError::NotUtf8 => f.write_str("not valid UTF-8, skipped"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// 1-based line the record starts on.
    pub line: usize,
    pub text: Result<&'a str, RecordError>,
}

/// Where the split has got to in one text.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    pos: usize,
    line: usize,
    mode: Option<Mode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Lines,
    Array,
}

impl Cursor {
    /// The next record of `text`, or `None` at the end. Always pass the same text to one cursor.
    pub fn next<'a>(&mut self, text: &'a [u8]) -> Option<Record<'a>> {
        let mode = *self.mode.get_or_insert_with(|| {
            self.line = 1;
            let first = text.iter().find(|b| !b.is_ascii_whitespace());
            if first == Some(&b'[') {
                Mode::Array
            } else {
                Mode::Lines
            }
        });
        match mode {
            Mode::Lines => self.next_line(text),
            Mode::Array => self.next_element(text),
        }
    }

    fn next_line<'a>(&mut self, text: &'a [u8]) -> Option<Record<'a>> {
        loop {
            if self.pos >= text.len() {
                return None;
            }
            let rest = &text[self.pos..];
            let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line_no = self.line;
            self.pos += len + 1;
            self.line += 1;
            let raw = trim_ascii(&rest[..len]);
            if raw.is_empty() {
                continue;
            }
            return Some(Record {
                line: line_no,
                text: checked(unquote(raw)),
            });
        }
    }

    /// Splits a JSON array at its top-level commas without building a JSON tree of the whole file.
    fn next_element<'a>(&mut self, text: &'a [u8]) -> Option<Record<'a>> {
        if self.pos == 0 {
            let open = text.iter().position(|&b| b == b'[')?;
            self.line += count_newlines(&text[..open]);
            self.pos = open + 1;
        }
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut start = None;
        let mut start_line = self.line;
        while self.pos < text.len() {
            let b = text[self.pos];
            self.pos += 1;
            if b == b'\n' {
                self.line += 1;
            }
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            if start.is_none() && !b.is_ascii_whitespace() && b != b',' {
                if b == b']' && depth == 0 {
                    self.pos = text.len();
                    return None;
                }
                start = Some(self.pos - 1);
                start_line = self.line;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => {
                    if let Some(s) = start {
                        let element = trim_ascii(&text[s..self.pos - 1]);
                        if b == b']' {
                            self.pos = text.len();
                        }
                        return Some(Record {
                            line: start_line,
                            text: checked(element),
                        });
                    }
                }
                _ => {}
            }
        }
        // Unterminated array: hand over what is left so the parser reports it.
        start.map(|s| Record {
            line: start_line,
            text: checked(trim_ascii(&text[s..])),
        })
    }
}

fn checked(bytes: &[u8]) -> Result<&str, RecordError> {
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLong(bytes.len()));
    }
    std::str::from_utf8(bytes).map_err(|_| RecordError::NotUtf8)
}

/// `"{...}"` -> `{...}`: one pair of literal quotes around an object.
fn unquote(line: &[u8]) -> &[u8] {
    match line {
        [b'"', inner @ .., b'"'] if inner.first() == Some(&b'{') => inner,
        _ => line,
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn count_newlines(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<(usize, Result<&str, RecordError>)> {
        all_bytes(text.as_bytes())
    }

    fn all_bytes(text: &[u8]) -> Vec<(usize, Result<&str, RecordError>)> {
        let mut c = Cursor::default();
        std::iter::from_fn(|| c.next(text))
            .map(|r| (r.line, r.text))
            .collect()
    }

    #[test]
    fn json_lines_with_blanks_and_crlf() {
        let text = "{\"a\":1}\r\n\r\n   \n{\"b\":2}\n{\"c\":3}";
        assert_eq!(
            all(text),
            vec![
                (1, Ok("{\"a\":1}")),
                (4, Ok("{\"b\":2}")),
                (5, Ok("{\"c\":3}"))
            ]
        );
    }

    #[test]
    fn quoted_lines_lose_one_pair_of_quotes() {
        let text = "\"{\"Name\":\"x\"}\"\n\"plain\"\n";
        assert_eq!(
            all(text),
            vec![(1, Ok("{\"Name\":\"x\"}")), (2, Ok("\"plain\""))]
        );
    }

    #[test]
    fn whole_file_array() {
        let text = "\n[\n  {\"Name\":\"a,]\\\"\"},\n  {\"Name\":\"b\", \"x\":[1,{}]}\n]\n";
        assert_eq!(
            all(text),
            vec![
                (3, Ok("{\"Name\":\"a,]\\\"\"}")),
                (4, Ok("{\"Name\":\"b\", \"x\":[1,{}]}"))
            ]
        );
        assert_eq!(all("[]"), vec![]);
        assert_eq!(all("[{\"a\":1},"), vec![(1, Ok("{\"a\":1}"))]);
        assert_eq!(all("[{\"a\":1"), vec![(1, Ok("{\"a\":1"))]);
    }

    #[test]
    fn hostile_lines_are_reported_not_split() {
        let long = "x".repeat(MAX_RECORD_BYTES + 1);
        let text = format!("{long}\n{{}}\n");
        assert_eq!(
            all(&text),
            vec![
                (1, Err(RecordError::TooLong(MAX_RECORD_BYTES + 1))),
                (2, Ok("{}"))
            ]
        );
        assert_eq!(
            all_bytes(b"\xff\xfe\n{}"),
            vec![(1, Err(RecordError::NotUtf8)), (2, Ok("{}"))]
        );
        assert_eq!(all(""), vec![]);
    }
}
