//! balena's container naming, read back into the service name.
//!
//! The supervisor names containers `{service}_{imageId}_{releaseId}_{commit}` from v12.10 and
//! `{service}_{imageId}_{releaseId}` before, and reads them back with one pattern (balena-supervisor
//! `src/compose/service.ts`): `^(.*)_(\d+)_(\d+)(?:_(.*))?$`. The commit is any text: 32 hex digits from the
//! cloud, `localrelease` for local mode (`balena push <device>`). We read names with the same rule, so a
//! name means to us what it means to the supervisor; any other name is kept whole.

/// The parts of a supervisor-made container name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorName<'a> {
    pub service: &'a str,
    pub image_id: u64,
    pub release_id: u64,
}

impl<'a> SupervisorName<'a> {
    /// The supervisor's pattern, greedy like its regex: the longest service that leaves
    /// `_<digits>_<digits>` and then the end or `_<anything>`.
    pub fn parse(name: &'a str) -> Option<SupervisorName<'a>> {
        let name = name.trim_start_matches('/');
        name.char_indices()
            .rev()
            .filter(|&(_, c)| c == '_')
            .find_map(|(i, _)| {
                let (image, rest) = leading_number(&name[i + 1..])?;
                let rest = rest.strip_prefix('_')?;
                let (release, rest) = leading_number(rest)?;
                (rest.is_empty() || rest.starts_with('_')).then_some(SupervisorName {
                    service: &name[..i],
                    image_id: image,
                    release_id: release,
                })
            })
    }
}

/// `123_x` -> (123, `_x`); huge numbers saturate (they only order releases).
fn leading_number(s: &str) -> Option<(u64, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let n = s[..end].parse().unwrap_or(u64::MAX);
    Some((n, &s[end..]))
}

/// The service a container belongs to, made safe to stand as one MQTT topic level.
pub fn service_name(container_name: &str) -> String {
    let name = container_name.trim_start_matches('/');
    let service = SupervisorName::parse(name).map_or(name, |n| n.service);
    // A name that is nothing but a suffix would leave no service; keep the whole name then.
    topic_level(if service.is_empty() { name } else { service })
}

/// Replaces what may not stand in one topic level (`+`, `#`, `/`, NUL) with `_`.
pub fn topic_level(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '+' | '#' | '/' | '\0' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_supervisor_names() {
        assert_eq!(
            service_name("main_1234567_2345678_0123456789abcdef0123456789abcdef"),
            "main"
        );
        assert_eq!(
            service_name("my_data_logger_5_6_ABCDEF0123456789abcdef0123456789"),
            "my_data_logger"
        );
    }

    #[test]
    fn old_supervisor_names() {
        assert_eq!(service_name("frontend_1543210_987654"), "frontend");
        assert_eq!(service_name("multi_word_service_1_2"), "multi_word_service");
    }

    #[test]
    fn other_names_are_kept_whole() {
        assert_eq!(service_name("balena_supervisor"), "balena_supervisor");
        assert_eq!(service_name("resin_supervisor"), "resin_supervisor");
        assert_eq!(service_name("proj_web_1"), "proj_web_1");
        assert_eq!(service_name("my-db"), "my-db");
        assert_eq!(service_name("/my-db"), "my-db");
        assert_eq!(
            service_name("svc_x_2_0123456789abcdef0123456789abcdef"),
            "svc_x_2_0123456789abcdef0123456789abcdef"
        );
        assert_eq!(service_name("svc_1_2x"), "svc_1_2x");
        assert_eq!(service_name("_1_2"), "_1_2");
    }

    #[test]
    fn the_commit_is_any_text_as_the_supervisor_reads_it() {
        // Local mode (`balena push <device>`).
        assert_eq!(service_name("main_1_1_localrelease"), "main");
        assert_eq!(service_name("svc_1_2_0123456789abcdef"), "svc");
        assert_eq!(
            SupervisorName::parse("/data_logger_5412322_2764432_fedcba98"),
            Some(SupervisorName {
                service: "data_logger",
                image_id: 5412322,
                release_id: 2764432
            })
        );
        // Greedy like the supervisor's pattern: the longest service that leaves the suffix.
        assert_eq!(service_name("a_1_2_3_4"), "a_1_2");
        assert_eq!(
            SupervisorName::parse("x_99999999999999999999999_1").map(|n| n.image_id),
            Some(u64::MAX)
        );
        assert_eq!(SupervisorName::parse("my-db"), None);
        assert_eq!(SupervisorName::parse("proj_web_1"), None);
    }

    #[test]
    fn topic_unsafe_characters_become_underscores() {
        assert_eq!(service_name("a+b#c/d\0e_1_2"), "a_b_c_d_e");
        assert_eq!(topic_level("ok-name.1"), "ok-name.1");
    }
}
