//! The collector file's container filter keys: which containers are reported (`source::filter`), and
//! balenaOS's default when no include is given.

use super::keys::Fields;
use super::ConfigError;
use crate::source::filter::{Filter, Rule};

/// A pattern longer than any container name or label this is meant for is a mistake, and a bound on
/// the matcher's work.
const MAX_PATTERN: usize = 255;

pub(super) fn parse_filter(f: &Fields, on_balena: bool) -> Result<Filter, ConfigError> {
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let given = rules(f, "container_name_include", false, &mut include)?
        | rules(f, "container_label_include", true, &mut include)?;
    rules(f, "container_name_exclude", false, &mut exclude)?;
    rules(f, "container_label_exclude", true, &mut exclude)?;
    // Any include given replaces the default whole: what the user lists is what they want.
    let balena_default = on_balena && !given;
    if balena_default {
        include = Filter::balena().include;
    }
    Ok(Filter {
        include,
        exclude,
        balena_default,
    })
}

/// One key's patterns, added to `out`; whether the key is set (an empty list is, with no pattern). A
/// pattern is checked as written, so a typo is said rather than never matching: not empty, at most
/// [`MAX_PATTERN`] bytes, for a name only the characters docker allows in one and the wildcards, for a
/// label a key (`=` not first) and no space or control character.
fn rules(
    f: &Fields,
    key: &'static str,
    label: bool,
    out: &mut Vec<Rule>,
) -> Result<bool, ConfigError> {
    let Some(list) = f.list(key, "patterns")? else {
        return Ok(false);
    };
    for p in list {
        let good = |c: char| match label {
            true => !c.is_control() && c != ' ',
            false => c.is_ascii_alphanumeric() || "_.-*?".contains(c),
        };
        if p.is_empty() || p.len() > MAX_PATTERN || p.starts_with('=') || !p.chars().all(good) {
            let form = match label {
                true => "key or key=value, no spaces",
                false => "letters, digits, _ . - and the wildcards * ?",
            };
            return Err(f.error(
                key,
                format!("{p:?} is not a pattern: 1 to 255 characters, {form}"),
            ));
        }
        out.push(match label {
            true => Rule::Label(p.into()),
            false => Rule::Name(p.into()),
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;
    use crate::config::Env;

    fn name(g: &str) -> Rule {
        Rule::Name(g.into())
    }

    fn label(p: &str) -> Rule {
        Rule::Label(p.into())
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
        assert_eq!(f.include, [label("com.example.telemetry=on")]);
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
                label("io.balena.app-id"),
                label("tier=front*"),
            ]
        );
        assert_eq!(
            f.exclude,
            [name("tmp-*"), label("skip="), label("com.example.*=yes")]
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
            "environment variable STATS_CONTAINER_NAME_EXCLUDE: \"container_name_exclude\": \"\" is \
             not a pattern: 1 to 255 characters, letters, digits, _ . - and the wildcards * ?"
        );
    }
}
