//! A test that cannot run on this machine (no Docker Engine, no qemu, no IPv6, a `make dist` binary not
//! built) says SKIPPED loudly and passes. Under CI it fails instead: CI installs all of it, so a skip
//! there means something broke, and a green run would hide it.

/// `CI` is set, and not to an empty string, `0` or `false` (CI services set it to `true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Says why the calling test does not run; the caller returns after it. Under CI, panics instead.
pub fn skipped(why: &str) {
    let test = match std::thread::current().name() {
        Some(name) if name != "main" => format!("{name}: "),
        _ => String::new(),
    };
    assert!(
        !in_ci(),
        "{test}{why}; not skipped because CI is set: CI has everything the tests need"
    );
    // Straight to the stderr file descriptor: the test harness captures eprintln! of passing tests,
    // and a skip must be visible in every `make test` log.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n#### SKIPPED: {test}{why} ####\n");
}

/// Whether `program` runs at all (`args` being something harmless such as `--version`); when it does
/// not, a SKIPPED line naming `install` (under CI, a failure).
pub fn have_program(program: &str, args: &[&str], install: &str) -> bool {
    let runs = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !runs {
        skipped(&format!("{program} is missing ({install})"));
    }
    runs
}
