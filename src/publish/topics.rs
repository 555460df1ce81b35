//! Topic names: `{root_topic_template}/{metric}`.
//!
//! The template is checked and split once at start, with the device id already filled in, so naming a
//! message is a few string appends. Every value put into a placeholder is made safe to stand as one topic
//! level, so a container name can never add levels or wildcards.

use crate::publish::balena::topic_level;

pub const DEFAULT_TEMPLATE: &str = "root/{device_id}/telemetry/system/{service_name}";
/// What `{unit}` stands for when the config has no `unit`: the level the default template has there.
pub const DEFAULT_UNIT: &str = "system";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    ServiceName,
    ContainerName,
    ContainerId,
}

/// What a placeholder is filled from, for one container.
pub struct Names<'a> {
    pub service_name: &'a str,
    pub container_name: &'a str,
    pub container_id: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

impl TopicTemplate {
    /// Splits `template` into literal text and placeholders. `device_id` must already be a valid level.
    #[cfg(test)]
    pub fn parse(template: &str, device_id: &str) -> Result<TopicTemplate, String> {
        TopicTemplate::parse_with_unit(template, device_id, DEFAULT_UNIT)
    }

    /// As `parse`, with `{unit}` (the original program's placeholder, a fixed level from its `unit` key)
    /// filled in like `{device_id}`. `unit` must already be a valid level.
    pub fn parse_with_unit(
        template: &str,
        device_id: &str,
        unit: &str,
    ) -> Result<TopicTemplate, String> {
        if template.is_empty() {
            return Err("must not be empty".into());
        }
        if let Some(c) = template.chars().find(|c| matches!(c, '+' | '#' | '\0')) {
            return Err(format!(
                "must not contain {c:?}: wildcards are not allowed in a topic name"
            ));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = template;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err("has a '}' without a '{'".into());
            }
            literal.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .ok_or("has a '{' that is never closed")?
                + open;
            let name = &rest[open + 1..close];
            let part = match name {
                "device_id" => {
                    literal.push_str(device_id);
                    None
                }
                "unit" => {
                    literal.push_str(unit);
                    None
                }
                "service_name" => Some(Part::ServiceName),
                "container_name" => Some(Part::ContainerName),
                "container_id" => Some(Part::ContainerId),
                other => {
                    return Err(format!(
                        "has an unknown placeholder {{{other}}} (known: {{device_id}}, {{unit}}, \
                         {{service_name}}, {{container_name}}, {{container_id}})"
                    ))
                }
            };
            if let Some(part) = part {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
            }
            rest = &rest[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(TopicTemplate { parts })
    }

    /// True when the template names the container; without that every container shares one topic.
    pub fn is_per_container(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Literal(_)))
    }

    /// Appends the root topic for one container to `out`.
    pub fn render_root(&self, names: &Names, out: &mut String) {
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::ServiceName => push_level(out, names.service_name),
                Part::ContainerName => push_level(out, names.container_name),
                Part::ContainerId => push_level(out, names.container_id),
            }
        }
    }

    /// The template cut before the first container placeholder's level, plus `/availability`:
    /// `root/{device_id}/telemetry/system/{service_name}` -> `root/<id>/telemetry/system/availability`.
    pub fn default_availability_topic(&self) -> String {
        let mut prefix = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => prefix.push_str(s),
                _ => {
                    // Drop the partial level the placeholder sits in.
                    prefix.truncate(prefix.rfind('/').unwrap_or(0));
                    break;
                }
            }
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            "availability".to_owned()
        } else {
            format!("{prefix}/availability")
        }
    }
}

fn push_level(out: &mut String, value: &str) {
    if value.bytes().any(|b| matches!(b, b'+' | b'#' | b'/' | 0)) {
        out.push_str(&topic_level(value));
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names<'static> {
        Names {
            service_name: "main",
            container_name: "main_1_2_0123456789abcdef0123456789abcdef",
            container_id: "0123456789ab",
        }
    }

    fn render(template: &str) -> String {
        let t = TopicTemplate::parse(template, "dev42").unwrap();
        let mut out = String::new();
        t.render_root(&names(), &mut out);
        out
    }

    #[test]
    fn default_template() {
        assert_eq!(render(DEFAULT_TEMPLATE), "root/dev42/telemetry/system/main");
    }

    #[test]
    fn every_placeholder() {
        assert_eq!(
            render("{device_id}/{container_name}/{container_id}/x-{service_name}-y"),
            "dev42/main_1_2_0123456789abcdef0123456789abcdef/0123456789ab/x-main-y"
        );
        assert_eq!(render("fixed/topic"), "fixed/topic");
        assert!(!TopicTemplate::parse("fixed/{device_id}", "d")
            .unwrap()
            .is_per_container());
        assert!(TopicTemplate::parse("a/{container_id}", "d")
            .unwrap()
            .is_per_container());
    }

    #[test]
    fn the_original_programs_unit_placeholder() {
        let t = TopicTemplate::parse_with_unit(
            "isb/{device_id}/telemetry/{unit}/{service_name}",
            "dev42",
            "my-unit",
        )
        .unwrap();
        let mut out = String::new();
        t.render_root(&names(), &mut out);
        assert_eq!(out, "isb/dev42/telemetry/my-unit/main");
        assert_eq!(
            t.default_availability_topic(),
            "isb/dev42/telemetry/my-unit/availability"
        );
        assert_eq!(render("a/{unit}/{service_name}"), "a/system/main");
    }

    #[test]
    fn values_cannot_add_levels_or_wildcards() {
        let t = TopicTemplate::parse("a/{container_name}", "d").unwrap();
        let mut out = String::new();
        t.render_root(
            &Names {
                service_name: "s",
                container_name: "x/y+#",
                container_id: "",
            },
            &mut out,
        );
        assert_eq!(out, "a/x_y__");
    }

    #[test]
    fn bad_templates_are_errors() {
        let err = |t: &str| TopicTemplate::parse(t, "d").unwrap_err();
        assert!(err("root/{device}/x").contains("unknown placeholder {device}"));
        assert!(err("root/+/x").contains("'+'"));
        assert!(err("root/#").contains("'#'"));
        assert!(err("root/{service_name").contains("never closed"));
        assert!(err("root/service_name}").contains("without a '{'"));
        assert!(err("").contains("empty"));
    }

    #[test]
    fn availability_topic_is_cut_before_the_container_level() {
        let avail = |t: &str| {
            TopicTemplate::parse(t, "dev42")
                .unwrap()
                .default_availability_topic()
        };
        assert_eq!(
            avail(DEFAULT_TEMPLATE),
            "root/dev42/telemetry/system/availability"
        );
        assert_eq!(avail("a/b/svc-{service_name}/x"), "a/b/availability");
        assert_eq!(avail("{container_id}/x"), "availability");
        assert_eq!(avail("fixed/{device_id}"), "fixed/dev42/availability");
    }
}
