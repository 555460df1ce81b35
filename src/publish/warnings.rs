//! A tick's complaints about its input, summarised by kind.
//!
//! A garbage stats file used to produce one WARN line per bad line (65,000 a tick for 16 MiB), and a slow
//! log reader then held up the schedule. Here each kind of problem is counted and only its first
//! occurrence kept, so a tick logs at most [`MAX_KINDS`] + 1 lines whatever its input holds.

use std::fmt::Write;

/// Distinct kinds reported by name; further kinds are only counted.
const MAX_KINDS: usize = 24;
/// The first occurrence's text is kept this long at most.
const MAX_DETAIL: usize = 200;

/// What went wrong, coarsely enough that a file full of garbage falls into a handful of kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole record skipped; the label names why (`not valid UTF-8`, `not a stats object` ...).
    Record(&'static str),
    /// One field unreadable: that metric is left out, the record's other figures still go out.
    Field(&'static str),
    /// A message that could not be built (its topic broke MQTT's rules).
    Message,
}

struct Entry {
    kind: Kind,
    count: u64,
    /// Line (text sources) or container (ENGINE mode) of the first occurrence, and what was said of it.
    first_at: String,
    first: String,
}

#[derive(Default)]
pub struct Warnings {
    entries: Vec<Entry>,
    others: u64,
}

impl Warnings {
    /// Counts one problem; `at` says where (`line 3`, `line 3 (web)`, `web`), `detail` what.
    pub fn note(&mut self, kind: Kind, at: std::fmt::Arguments, detail: &dyn std::fmt::Display) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.kind == kind) {
            e.count += 1;
            return;
        }
        if self.entries.len() >= MAX_KINDS {
            self.others += 1;
            return;
        }
        self.entries.push(Entry {
            kind,
            count: 1,
            first_at: clipped(format_args!("{at}")),
            first: clipped(format_args!("{detail}")),
        });
    }

    /// One line per kind, then one for the uncounted rest; clears the summary.
    pub fn take_lines(&mut self, source: &str) -> Vec<String> {
        let mut lines: Vec<String> = self.entries.drain(..).map(|e| e.line(source)).collect();
        if self.others > 0 {
            lines.push(format!(
                "{} more problems of other kinds in {source}",
                thousands(self.others)
            ));
            self.others = 0;
        }
        lines
    }
}

impl Entry {
    fn line(&self, source: &str) -> String {
        let consequence = match self.kind {
            Kind::Record(_) => "skipped",
            Kind::Field(_) => "that metric is left out",
            Kind::Message => "not published",
        };
        if self.count == 1 {
            return format!("{source} {}: {}; {consequence}", self.first_at, self.first);
        }
        let what = match self.kind {
            Kind::Record(_) => "records skipped",
            Kind::Field(_) => "figures left out",
            Kind::Message => "messages not published",
        };
        format!(
            "{} {what} in {source}: first at {}: {}",
            thousands(self.count),
            self.first_at,
            self.first
        )
    }
}

fn clipped(args: std::fmt::Arguments) -> String {
    let mut s = String::new();
    let _ = s.write_fmt(args);
    if s.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// `4117` -> `4,117`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_occurrence_reads_as_before_many_are_summarised() {
        let mut w = Warnings::default();
        w.note(
            Kind::Record("not valid UTF-8"),
            format_args!("line 3"),
            &"not valid UTF-8",
        );
        for n in 4..4121 {
            w.note(
                Kind::Record("not valid UTF-8"),
                format_args!("line {n}"),
                &"not valid UTF-8",
            );
        }
        w.note(
            Kind::Field("PIDs"),
            format_args!("line 9 (web)"),
            &"PIDs \"-3\": not a number",
        );
        assert_eq!(
            w.take_lines("stats file /x"),
            vec![
                "4,118 records skipped in stats file /x: first at line 3: not valid UTF-8",
                "stats file /x line 9 (web): PIDs \"-3\": not a number; that metric is left out",
            ]
        );
        assert!(w.take_lines("stats file /x").is_empty(), "taking clears");
    }

    #[test]
    fn kinds_are_bounded_and_details_clipped() {
        const LABELS: [&str; 30] = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q",
            "r", "s", "t", "u", "v", "w", "x", "y", "z", "0", "1", "2", "3",
        ];
        let mut w = Warnings::default();
        let long = "é".repeat(1000);
        for label in LABELS {
            w.note(Kind::Field(label), format_args!("line 1"), &long);
        }
        let lines = w.take_lines("src");
        assert_eq!(lines.len(), MAX_KINDS + 1);
        assert_eq!(lines[MAX_KINDS], "6 more problems of other kinds in src");
        assert!(
            lines.iter().all(|l| l.len() < MAX_DETAIL + 100),
            "{lines:?}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(65_000), "65,000");
        assert_eq!(thousands(16_777_216), "16,777,216");
    }
}
