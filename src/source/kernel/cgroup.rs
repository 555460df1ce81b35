//! `/proc/<pid>/cgroup`: which cgroup a process is in, per v1 controller and on the unified (v2) hierarchy.
//!
//! Each line is `hierarchy-id:controller-list:path`. v1 hierarchies list their controllers (`4:memory:`,
//! or co-mounted `3:cpu,cpuacct:`); the unified hierarchy is `0::`. Paths are relative to the reader's
//! cgroup namespace root, so a process outside it shows `..` components.

/// One v1 hierarchy a controller we read is on: its controller list as written (the mount directory
/// of a co-mounted hierarchy is named for it) and the process's path there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line<'a> {
    pub controllers: &'a [u8],
    pub path: &'a [u8],
}

/// What the file says about the controllers we read; anything else in it is ignored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Membership<'a> {
    pub cpuacct: Option<Line<'a>>,
    pub memory: Option<Line<'a>>,
    pub blkio: Option<Line<'a>>,
    pub pids: Option<Line<'a>>,
    /// The `0::` line's path.
    pub unified: Option<&'a [u8]>,
}

/// Reads the file's lines; a line that is not `id:list:path` is skipped, never an error, since the
/// caller fails anyway when what it needs is missing.
pub fn parse(text: &[u8]) -> Membership<'_> {
    let mut m = Membership::default();
    for line in super::counters::lines(text) {
        let mut parts = line.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == b"0" && controllers.is_empty() {
            m.unified = Some(path);
            continue;
        }
        let found = Line { controllers, path };
        for c in controllers.split(|&b| b == b',') {
            let slot = match c {
                b"cpuacct" => &mut m.cpuacct,
                b"memory" => &mut m.memory,
                b"blkio" => &mut m.blkio,
                b"pids" => &mut m.pids,
                _ => continue,
            };
            *slot = Some(found);
        }
    }
    m
}

/// Why a cgroup path cannot be this container's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not absolute, or has `..`: the process is outside our cgroup namespace.
    Outside,
    /// Does not name the container's id: another process has the pid, or the pid was read in another
    /// pid namespace than the engine's.
    NotTheContainer,
}

/// Checks that `path` lies inside our cgroup namespace and names the container `id` (its full id).
pub fn check(path: &[u8], id: &[u8]) -> Result<(), PathError> {
    if path.first() != Some(&b'/') || path.split(|&b| b == b'/').any(|c| c == b"..") {
        return Err(PathError::Outside);
    }
    if id.is_empty() || !path.windows(id.len()).any(|w| w == id) {
        return Err(PathError::NotTheContainer);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3337ac70ff74f1c13ccac9ae73cb316543c6b810fcf2dfa84ea80c19f3178a83";

    // As read on this machine (Docker 20.10, cgroupfs driver, v1 with the unified hierarchy mounted).
    fn hybrid() -> String {
        [
            "9:name=systemd:/docker/ID",
            "8:pids:/docker/ID",
            "7:blkio:/docker/ID",
            "6:freezer:/docker/ID",
            "5:devices:/docker/ID",
            "4:memory:/docker/ID",
            "3:cpuset:/docker/ID",
            "2:cpuacct:/docker/ID",
            "1:cpu:/docker/ID",
            "0::/docker/ID",
            "",
        ]
        .join("\n")
        .replace("ID", ID)
    }

    fn line<'a>(controllers: &'a str, path: &'a [u8]) -> Option<Line<'a>> {
        Some(Line {
            controllers: controllers.as_bytes(),
            path,
        })
    }

    #[test]
    fn separate_v1_hierarchies_each_give_their_line() {
        let text = hybrid();
        let m = parse(text.as_bytes());
        let path = format!("/docker/{ID}");
        let p = path.as_bytes();
        assert_eq!(m.cpuacct, line("cpuacct", p));
        assert_eq!(m.memory, line("memory", p));
        assert_eq!(m.blkio, line("blkio", p));
        assert_eq!(m.pids, line("pids", p));
        assert_eq!(m.unified, Some(p));
    }

    #[test]
    fn comounted_controllers_keep_the_list_as_written() {
        let text = "4:cpu,cpuacct:/kubepods/x\n3:blkio:/kubepods/x\n";
        let m = parse(text.as_bytes());
        assert_eq!(m.cpuacct, line("cpu,cpuacct", b"/kubepods/x"));
        assert_eq!(m.blkio, line("blkio", b"/kubepods/x"));
        assert_eq!((m.memory, m.pids, m.unified), (None, None, None));
    }

    #[test]
    fn pure_v2_has_only_the_unified_line() {
        let m = parse(b"0::/system.slice/docker-abc.scope\n");
        assert_eq!(m.unified, Some(&b"/system.slice/docker-abc.scope"[..]));
        assert_eq!(m.memory, None);
    }

    #[test]
    fn a_path_with_colons_is_kept_whole() {
        let m = parse(b"4:memory:/a:b/c\n");
        assert_eq!(m.memory, line("memory", b"/a:b/c"));
    }

    #[test]
    fn garbage_and_truncation_give_what_is_whole() {
        for text in [
            &b""[..],
            b"\n\n",
            b"4",
            b"4:memory",
            b"\xff:\xfe:\xfd",
            b"::::::",
        ] {
            let m = parse(text);
            assert_eq!(m.memory, None, "{text:?}");
        }
        // Cut inside the last line: the lines before it still count.
        let text = hybrid();
        let cut = &text.as_bytes()[..text.find("0::").unwrap() + 2];
        let m = parse(cut);
        assert!(m.memory.is_some() && m.unified.is_none());
    }

    #[test]
    fn a_path_must_name_the_container_and_stay_inside_our_namespace() {
        let id = ID.as_bytes();
        let ok = format!("/docker/{ID}");
        assert_eq!(check(ok.as_bytes(), id), Ok(()));
        let scope = format!("/system.slice/docker-{ID}.scope");
        assert_eq!(check(scope.as_bytes(), id), Ok(()));
        let other = format!("/docker/{}", &ID[..63]);
        assert_eq!(check(other.as_bytes(), id), Err(PathError::NotTheContainer));
        assert_eq!(check(b"/", id), Err(PathError::NotTheContainer));
        let outside = format!("/../../system.slice/docker-{ID}.scope");
        assert_eq!(check(outside.as_bytes(), id), Err(PathError::Outside));
        assert_eq!(check(ID.as_bytes(), id), Err(PathError::Outside));
        assert_eq!(check(b"/x", b""), Err(PathError::NotTheContainer));
    }
}
