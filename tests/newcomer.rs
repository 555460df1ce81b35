//! What a newcomer sees: the help, and the messages that tell them what to set. Each message is checked
//! by its text, as the user reads it.

mod common;
use common::*;
use std::process::{Command, Stdio};

#[test]
fn help_names_the_variable_families_the_default_mode_and_where_to_read_more() {
    let out = Command::new(BIN)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for wanted in [
        "STATS_<KEY>",
        "MQTT_<KEY>",
        "MQTT_BROKER_URL",
        "STATS_MODE",
        "Unset: CLI when cli_path is found, else ENGINE",
        "BALENA_DEVICE_UUID",
        "LOG_LEVEL",
        "README.md",
    ] {
        assert!(help.contains(wanted), "--help lacks {wanted:?}:\n{help}");
    }
}
