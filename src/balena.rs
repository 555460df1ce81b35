//! balena's container naming, read back into the service name.
//!
//! The supervisor names containers `{service}_{imageId}_{releaseId}_{commit}` from v12.10 (commit = 32 hex
//! digits) and `{service}_{imageId}_{releaseId}` before (balena-supervisor `src/compose/service.ts`). Service
//! names may themselves contain `_`, so only exactly that suffix is removed; any other name is kept whole.

/// The service a container belongs to, made safe to stand as one MQTT topic level.
pub fn service_name(container_name: &str) -> String {
    let name = container_name.trim_start_matches('/');
    let service = strip_supervisor_suffix(name);
    // A name that is nothing but a suffix would leave no service; keep the whole name then.
    topic_level(if service.is_empty() { name } else { service })
}

fn strip_supervisor_suffix(name: &str) -> &str {
    let without_commit = match name.rsplit_once('_') {
        Some((rest, last)) if is_commit(last) => rest,
        _ => name,
    };
    let Some((rest, release)) = without_commit.rsplit_once('_') else {
        return name;
    };
    match rest.rsplit_once('_') {
        Some((service, image)) if is_id(image) && is_id(release) => service,
        _ => name,
    }
}

fn is_commit(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
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
        // A commit that is not 32 hex digits is not a supervisor suffix.
        assert_eq!(
            service_name("svc_1_2_0123456789abcdef"),
            "svc_1_2_0123456789abcdef"
        );
        assert_eq!(
            service_name("svc_x_2_0123456789abcdef0123456789abcdef"),
            "svc_x_2_0123456789abcdef0123456789abcdef"
        );
        assert_eq!(service_name("_1_2"), "_1_2");
    }

    #[test]
    fn topic_unsafe_characters_become_underscores() {
        assert_eq!(service_name("a+b#c/d\0e_1_2"), "a_b_c_d_e");
        assert_eq!(topic_level("ok-name.1"), "ok-name.1");
    }
}
