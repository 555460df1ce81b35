//! Which containers are reported: include and exclude rules by name glob and by label
//! (`container_name_include`, `container_name_exclude`, `container_label_include`,
//! `container_label_exclude`), and balenaOS's default, what the supervisor runs.
//!
//! Pure: a container's name, service and labels in, a yes or no out. An exclude rule that matches wins;
//! otherwise a container is reported when there is no include rule at all or any include rule matches
//! (name or label: the balenaOS default needs both kinds). The device pseudo-service is no container and
//! never comes here.

use crate::publish::balena::{service_name, SupervisorName};
use serde_json::{Map, Value};

/// The label balena's supervisor puts on every container it runs.
pub const SERVICE_LABEL: &str = "io.balena.service-name";
/// The supervisor's own container, by the name it has had over the years.
pub const SUPERVISOR_NAMES: [&str; 2] = ["balena_supervisor", "resin_supervisor"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// A glob on the container's name or on its service name (the topics' `{service_name}`).
    Name(String),
    /// `key` or `key=value`, both globs: a label whose key matches and, when a value is given, whose
    /// value matches it (`key=`: set to nothing).
    Label(String),
    /// What balena's supervisor runs, and the supervisor itself ([`SUPERVISOR_NAMES`]): labelled
    /// [`SERVICE_LABEL`]; where labels are unknown (CLI and FILE modes), named the way the supervisor
    /// names its containers.
    Supervised,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
    /// The includes are balenaOS's default, not the user's (said at start).
    pub balena_default: bool,
}

/// The container a rule is judged on. `labels` is `None` where the source has none (CLI, FILE modes).
pub struct Subject<'a> {
    pub name: &'a str,
    /// The service when the source says it (a label); otherwise read from the name.
    pub service: Option<&'a str>,
    pub labels: Option<&'a Map<String, Value>>,
}

impl Filter {
    /// balenaOS's default: the application's services and the supervisor.
    pub fn balena() -> Filter {
        Filter {
            include: vec![Rule::Supervised],
            exclude: Vec::new(),
            balena_default: true,
        }
    }

    pub fn keeps(&self, c: &Subject) -> bool {
        let any = |rules: &[Rule]| rules.iter().any(|r| r.matches(c));
        !any(&self.exclude) && (self.include.is_empty() || any(&self.include))
    }

    /// For stats text (CLI, FILE modes), which names containers and nothing more.
    pub fn keeps_name(&self, name: &str) -> bool {
        self.keeps(&Subject {
            name,
            service: None,
            labels: None,
        })
    }

    /// Leaves out the label rules, for a mode that knows no labels; whether there were any.
    pub fn drop_label_rules(&mut self) -> bool {
        let n = self.include.len() + self.exclude.len();
        let names = |r: &Rule| !matches!(r, Rule::Label(_));
        self.include.retain(names);
        self.exclude.retain(names);
        n != self.include.len() + self.exclude.len()
    }

    /// For the start line: `all`, or how many patterns of each kind (the keys' values are in the
    /// debug lines, where each key came from).
    pub fn describe(&self) -> String {
        if self.include.is_empty() && self.exclude.is_empty() {
            return "all".into();
        }
        let default = match self.balena_default {
            true => " (balenaOS default: what the supervisor runs)",
            false => "",
        };
        format!(
            "{} include and {} exclude patterns{default}",
            self.include.len(),
            self.exclude.len()
        )
    }
}

impl Rule {
    fn matches(&self, c: &Subject) -> bool {
        match self {
            Rule::Name(g) => {
                glob(g, c.name)
                    || match c.service {
                        Some(s) => glob(g, s),
                        None => glob(g, &service_name(c.name)),
                    }
            }
            Rule::Label(p) => c.labels.is_some_and(|labels| {
                let (k, v) = p
                    .split_once('=')
                    .map_or((p.as_str(), None), |(k, v)| (k, Some(v)));
                labels.iter().any(|(key, value)| {
                    glob(k, key) && v.is_none_or(|v| value.as_str().is_some_and(|t| glob(v, t)))
                })
            }),
            Rule::Supervised => {
                SUPERVISOR_NAMES.contains(&c.name)
                    || match c.labels {
                        Some(labels) => labels.contains_key(SERVICE_LABEL),
                        None => SupervisorName::parse(c.name).is_some(),
                    }
            }
        }
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (none too) and `?` for
/// one. Iterative, with one remembered star: at most `pattern.len() * text.len()` steps, no recursion.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut i, mut j) = (0, 0);
    // The last star seen, and the text position its run ends at so far.
    let mut star: Option<(usize, usize)> = None;
    while j < t.len() {
        match p.get(i) {
            Some(b'*') => {
                star = Some((i, j));
                i += 1;
                continue;
            }
            Some(b'?') => {
                (i, j) = (i + 1, next_char(t, j));
                continue;
            }
            Some(&b) if b == t[j] => {
                (i, j) = (i + 1, j + 1);
                continue;
            }
            _ => {}
        }
        // A mismatch: let the last star take one more character, or fail without one.
        let Some((si, sj)) = star else {
            return false;
        };
        let sj = next_char(t, sj);
        star = Some((si, sj));
        (i, j) = (si + 1, sj);
    }
    p[i..].iter().all(|&b| b == b'*')
}

/// The index after the UTF-8 character at `j`, so `?` and a star's run take whole characters.
fn next_char(t: &[u8], mut j: usize) -> usize {
    j += 1;
    while t.get(j).is_some_and(|b| b & 0xC0 == 0x80) {
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t) in [
            ("web", "web"),
            ("*", ""),
            ("*", "anything"),
            ("w*", "web"),
            ("*b", "web"),
            ("w?b", "web"),
            ("*_*_*", "main_1_2"),
            ("a*b*c", "aXbYbZc"),
            ("a*a*a*a*b", "aaaaaaaab"),
            ("**", "x"),
            ("?", "é"),
            ("é*", "été"),
            ("builder-*", "builder-1234"),
        ] {
            assert!(glob(p, t), "{p} should match {t}");
        }
        for (p, t) in [
            ("web", "webs"),
            ("web", "we"),
            ("", "x"),
            ("?", ""),
            ("??", "é"),
            ("w*x", "web"),
            ("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            ("*b", "bab_"),
            ("Web", "web"),
        ] {
            assert!(!glob(p, t), "{p} should not match {t}");
        }
    }

    #[test]
    fn a_hostile_glob_stays_quick() {
        // The classic exponential case for a recursive matcher: here pattern length times text length.
        let p = "*a".repeat(100) + "b";
        let t = "a".repeat(64 * 1024);
        assert!(!glob(&p, &t));
    }

    fn labels(pairs: &[(&str, &str)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    }

    fn keeps(f: &Filter, name: &str, l: Option<&Map<String, Value>>) -> bool {
        f.keeps(&Subject {
            name,
            service: None,
            labels: l,
        })
    }

    #[test]
    fn exclude_wins_and_no_include_means_all() {
        let f = Filter::default();
        assert!(keeps(&f, "anything", None));
        let f = Filter {
            include: vec![Rule::Name("main".into()), Rule::Label("app=tele*".into())],
            exclude: vec![Rule::Name("*-tmp".into())],
            balena_default: false,
        };
        let app = labels(&[("app", "telemetry"), ("x", "y")]);
        let other = labels(&[("app", "web")]);
        // The service read from the name: main_1_2_<commit> is service main.
        assert!(keeps(&f, "main_1_2_abc", Some(&other)));
        assert!(keeps(&f, "whatever", Some(&app)), "a label include");
        assert!(!keeps(&f, "whatever", Some(&other)));
        assert!(!keeps(&f, "whatever", None));
        assert!(!keeps(&f, "main-tmp", Some(&app)), "exclude wins");
        // The service a label names counts like the name.
        let s = Subject {
            name: "proj_x_1",
            service: Some("main"),
            labels: None,
        };
        assert!(f.keeps(&s));
        let key_only = Filter {
            exclude: vec![Rule::Label("com.example.*".into())],
            ..Filter::default()
        };
        let tagged = labels(&[("com.example.skip", "")]);
        assert!(!keeps(&key_only, "a", Some(&tagged)));
        assert!(keeps(&key_only, "a", Some(&other)));
        assert!(
            keeps(&key_only, "a", None),
            "no labels known: no label rule"
        );
    }

    #[test]
    fn the_balena_default_is_the_supervisors_containers() {
        let f = Filter::balena();
        let supervised = labels(&[(SERVICE_LABEL, "main"), ("io.balena.app-id", "1")]);
        // A balenalib image's own labels are io.balena.* too, on any container run from it.
        let balenalib = labels(&[("io.balena.architecture", "aarch64")]);
        assert!(keeps(&f, "main_1_2_abc", Some(&supervised)));
        assert!(keeps(&f, "balena_supervisor", Some(&labels(&[]))));
        assert!(keeps(&f, "resin_supervisor", None));
        assert!(!keeps(&f, "builder-1234", Some(&balenalib)));
        assert!(
            !keeps(&f, "main_1_2_abc", Some(&labels(&[]))),
            "labels rule"
        );
        // Without labels (CLI, FILE): the names the supervisor gives.
        assert!(keeps(&f, "main_1_2_abc", None));
        assert!(keeps(&f, "main_1_2", None));
        assert!(!keeps(&f, "quirky_hopper", None));
        assert_eq!(
            f.describe(),
            "1 include and 0 exclude patterns (balenaOS default: what the supervisor runs)"
        );
    }

    #[test]
    fn label_rules_go_where_labels_are_unknown() {
        let mut f = Filter {
            include: vec![Rule::Label("a".into()), Rule::Name("x".into())],
            exclude: vec![Rule::Label("b".into())],
            balena_default: false,
        };
        assert_eq!(f.describe(), "2 include and 1 exclude patterns");
        assert!(f.drop_label_rules());
        assert_eq!(f.include, [Rule::Name("x".into())]);
        assert!(f.exclude.is_empty());
        assert!(!f.drop_label_rules());
        assert_eq!(Filter::default().describe(), "all");
    }
}
