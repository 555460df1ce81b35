//! The collector file's container filter keys: which containers are reported (`source::filter`), and
//! balenaOS's default when no include is given.

use super::keys::Fields;
use super::ConfigError;
use crate::source::filter::{Filter, Rule};

/// A pattern longer than any container name or label this is meant for is a mistake, and a bound on
/// the matcher's work.
const MAX_PATTERN: usize = 255;

pub(super) fn parse_filter(f: &Fields, on_balena: bool) -> Result<Filter, ConfigError> {
    let include = rules(f, "container_name_include", false)?;
    let label_include = rules(f, "container_label_include", true)?;
    let mut exclude = rules(f, "container_name_exclude", false)?.unwrap_or_default();
    exclude.extend(rules(f, "container_label_exclude", true)?.unwrap_or_default());
    // Any include given replaces the default whole: what the user lists is what they want.
    if include.is_none() && label_include.is_none() && on_balena {
        return Ok(Filter {
            exclude,
            ..Filter::balena()
        });
    }
    let mut include = include.unwrap_or_default();
    include.extend(label_include.unwrap_or_default());
    Ok(Filter {
        include,
        exclude,
        balena_default: false,
    })
}

/// One key's patterns; `None` when it is not set. A list may be empty (no rule).
fn rules(f: &Fields, key: &'static str, label: bool) -> Result<Option<Vec<Rule>>, ConfigError> {
    let Some(list) = f.list(key, "patterns")? else {
        return Ok(None);
    };
    let mut rules = Vec::new();
    for p in list {
        let rule = match label {
            _ if p.is_empty() => Err("an empty pattern (two commas in a row, or one at an end?)"),
            false => checked(p, true).map(|g| Rule::Name(g.into())),
            true => {
                let (k, v) = p.split_once('=').map_or((p, None), |(k, v)| (k, Some(v)));
                match checked(k, false) {
                    Ok("") => Err("no label key before ="),
                    Ok(k) => v
                        .map(|v| checked(v, false))
                        .transpose()
                        .map(|v| Rule::Label(k.into(), v.map(Into::into))),
                    Err(e) => Err(e),
                }
            }
        };
        rules.push(rule.map_err(|why| f.error(key, format!("{p:?}: {why}")))?);
    }
    Ok(Some(rules))
}

/// A glob as written: not overlong, and for a name only the characters docker allows in one, so a typo
/// is said rather than never matching. A label value may be empty (`key=`: the label set to nothing).
fn checked(p: &str, name: bool) -> Result<&str, &'static str> {
    let bad = |c: char| match name {
        true => !(c.is_ascii_alphanumeric() || "_.-*?".contains(c)),
        false => c.is_control() || c == ' ',
    };
    if p.len() > MAX_PATTERN {
        Err("longer than 255 bytes")
    } else if p.contains(bad) {
        Err(match name {
            true => "a name pattern has only letters, digits, _ . - and the wildcards * and ?",
            false => "no spaces or control characters",
        })
    } else {
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::Env;

    fn name(g: &str) -> Rule {
        Rule::Name(g.into())
    }

    fn label(k: &str, v: Option<&str>) -> Rule {
        Rule::Label(k.into(), v.map(Into::into))
    }

    fn on_balena(pairs: &[(&str, &str)]) -> Env {
        Env {
            balena: true,
            ..vars(pairs)
        }
    }

    #[test]
    fn everything_elsewhere_and_the_supervisors_own_on_balena() {
        assert_eq!(collector(None).unwrap().containers, Filter::default());
        let c = collector_env(None, &on_balena(&[])).unwrap();
        assert_eq!(c.containers, Filter::balena());
        // An exclude adds to the default; an include of either kind replaces it.
        let env = on_balena(&[("STATS_CONTAINER_NAME_EXCLUDE", "debug-*")]);
        let f = collector_env(None, &env).unwrap().containers;
        assert_eq!(f.include, Filter::balena().include);
        assert_eq!(f.exclude, [name("debug-*")]);
        assert!(f.balena_default);
        let env = on_balena(&[("STATS_CONTAINER_LABEL_INCLUDE", "com.example.telemetry=on")]);
        let f = collector_env(None, &env).unwrap().containers;
        assert_eq!(f.include, [label("com.example.telemetry", Some("on"))]);
        assert!(!f.balena_default);
        // `*` is how to have everything on balenaOS.
        let env = on_balena(&[("STATS_CONTAINER_NAME_INCLUDE", "*")]);
        let f = collector_env(None, &env).unwrap().containers;
        assert_eq!(f.include, [name("*")]);
    }

    #[test]
    fn lists_and_comma_texts() {
        let f = collector(Some(
            r#"{"container_name_include": ["main", "web_*, db?"],
                "container_name_exclude": "tmp-*",
                "container_label_include": ["io.balena.app-id", "tier=front*"],
                "container_label_exclude": "skip=, com.example.*=yes"}"#,
        ))
        .unwrap()
        .containers;
        assert_eq!(
            f.include,
            [
                name("main"),
                name("web_*"),
                name("db?"),
                label("io.balena.app-id", None),
                label("tier", Some("front*")),
            ]
        );
        assert_eq!(
            f.exclude,
            [
                name("tmp-*"),
                label("skip", Some("")),
                label("com.example.*", Some("yes"))
            ]
        );
        // An empty list is no rule, and still an include given: on balenaOS, no default.
        let c = collector_env(Some(r#"{"container_name_include": []}"#), &on_balena(&[])).unwrap();
        assert_eq!(c.containers, Filter::default());
    }

    #[test]
    fn bad_patterns_name_the_key() {
        for (text, key) in [
            (
                r#"{"container_name_include": ""}"#,
                "container_name_include",
            ),
            (
                r#"{"container_name_include": "a,,b"}"#,
                "container_name_include",
            ),
            (
                r#"{"container_name_exclude": "a,"}"#,
                "container_name_exclude",
            ),
            (
                r#"{"container_name_exclude": "[ab]*"}"#,
                "container_name_exclude",
            ),
            (
                r#"{"container_name_include": "my app"}"#,
                "container_name_include",
            ),
            (r#"{"container_name_include": 5}"#, "container_name_include"),
            (
                r#"{"container_name_include": ["a", 1]}"#,
                "container_name_include",
            ),
            (
                r#"{"container_label_include": "=x"}"#,
                "container_label_include",
            ),
            (
                r#"{"container_label_exclude": "a b"}"#,
                "container_label_exclude",
            ),
            (
                r#"{"container_label_exclude": [""]}"#,
                "container_label_exclude",
            ),
        ] {
            assert_eq!(key_of(collector(Some(text))), Some(key), "{text}");
        }
        let long = format!(r#"{{"container_name_include": "{}"}}"#, "a".repeat(256));
        assert_eq!(
            key_of(collector(Some(&long))),
            Some("container_name_include")
        );
        let e =
            collector_env(None, &vars(&[("STATS_CONTAINER_NAME_EXCLUDE", "a,,b")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable STATS_CONTAINER_NAME_EXCLUDE: \"container_name_exclude\": \"\": \
             an empty pattern (two commas in a row, or one at an end?)"
        );
    }
}
