//! The start summary: the effective settings in one line for the log.

use super::{Collector, EngineFigures, Mode, Mqtt, PayloadMode};
use mqttrs::QoS;

/// The effective settings in one line, secrets masked.
pub fn summary(c: &Collector, m: &Mqtt) -> String {
    let mode = match c.mode {
        Mode::Cli => "CLI",
        Mode::File => "FILE",
        Mode::Engine => "ENGINE",
    };
    let mut s = format!("{mode} mode, every {}s", c.interval.as_secs());
    match c.mode {
        Mode::Cli => {
            s += &format!(
                ", cli_path {:?}, cli_timeout {}s",
                c.cli_path,
                c.cli_timeout.as_secs()
            )
        }
        Mode::File => s += &format!(", file_path {:?}", c.file_path),
        Mode::Engine => {
            let figures = match c.engine_figures {
                EngineFigures::Auto => "auto",
                EngineFigures::Cgroup => "cgroup",
                EngineFigures::Api => "api",
            };
            s += &format!(
                ", engine_socket {}, timeout {}s, engine_figures {figures}, cgroup_root {:?}, proc_root {:?}",
                c.engine_socket
                    .as_deref()
                    .unwrap_or("(DOCKER_HOST or the usual places)"),
                c.cli_timeout.as_secs(),
                c.cgroup_root,
                c.proc_root
            )
        }
    }
    s += ", containers: ";
    s += &c.containers.describe();
    // What the device's figures read is said in the device's own start line.
    if c.device_metrics {
        s += &format!(", device figures as {:?}", c.device_service_name);
    } else {
        s += ", device figures off";
    }
    let r = &c.report;
    if r.on_change {
        let d = &r.deadbands;
        let decimal = |h: u64| format!("{}.{:02}", h / 100, h % 100);
        s += &format!(
            ", report on_change (heartbeat {}s; deadbands: cpu {} points, memory {} %, network {} B, block I/O {} B, temperature {} °C, storage {} B)",
            r.heartbeat.as_secs(),
            decimal(d.cpu),
            decimal(d.memory),
            d.network,
            d.block_io,
            decimal(d.temperature),
            d.storage
        );
    } else {
        s += ", report every_tick";
    }
    s += &format!(
        "; {}{}, device_id {:?}{}, root topic {:?}, client_id {:?}, qos {}, retain {}, keep_alive {}s, \
         username {}, password {}, availability_topic {:?}, payload_mode {}, buffer {} messages / {} KiB, spool {}, \
         reconnect_max_delay {}s, once_timeout {}s, home_assistant {}",
        brokers(m),
        if m.tls.is_some() { " over TLS" } else { "" },
        m.device_id,
        match m.device_id_is_host_name {
            // Docker names a container's host after its short id, which a re-created container changes.
            true if m.device_id.len() == 12
                && m.device_id.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                " (the host name, which looks like a container id that changes when the container is \
                 re-created: set device_id, or give the container a hostname)"
            }
            true => " (the host name: set BALENA_DEVICE_UUID or device_id to choose)",
            false => "",
        },
        {
            let mut root = String::new();
            let names = crate::publish::topics::Names {
                service_name: "{service_name}",
                container_name: "{container_name}",
                container_id: "{container_id}",
            };
            m.template.render_root(&names, &mut root);
            root
        },
        m.client_id,
        match m.qos {
            QoS::AtMostOnce => 0,
            _ => 1,
        },
        m.retain,
        m.keep_alive,
        m.username.as_deref().map_or("(none)".into(), |u| format!("{u:?}")),
        if m.password.is_some() { "***" } else { "(none)" },
        m.availability_topic,
        match m.payload_mode {
            PayloadMode::PerMetric => "per_metric",
            PayloadMode::PerService => "per_service",
        },
        m.max_buffered_messages,
        m.max_buffered_bytes / 1024,
        m.spool_dir.as_deref().unwrap_or("off"),
        m.reconnect_max_delay.as_secs(),
        m.once_timeout.as_secs(),
        match &m.home_assistant {
            None => "off".to_owned(),
            Some(h) => format!(
                "on (prefix {:?}{})",
                h.prefix,
                match h.form {
                    crate::publish::discovery::Form::Entity => "",
                    crate::publish::discovery::Form::Device => ", device form",
                }
            ),
        },
    );
    s
}

/// `broker h:p`, or with several addresses `brokers a:1, b:2 (starting at b:2, chosen by device_id)`.
fn brokers(m: &Mqtt) -> String {
    let b = &m.brokers;
    let list: Vec<String> = b.iter().map(ToString::to_string).collect();
    if b.len() == 1 {
        return format!("broker {}", list[0]);
    }
    let start = crate::mqtt::failover::start_index(&m.device_id, b.len());
    format!(
        "brokers {} (starting at {}, chosen by device_id)",
        list.join(", "),
        list[start]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::*;

    #[test]
    fn summary_masks_the_password() {
        let m = mqtt_env(
            Some(r#"{"username": "bob", "password": "s3cret"}"#),
            &vars(&[("MQTT_QOS", "0")]),
        )
        .unwrap();
        let s = summary(&collector(None).unwrap(), &m);
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("password ***"), "{s}");
        assert!(s.contains("username \"bob\""), "{s}");
        assert!(s.contains("qos 0"), "{s}");
        assert!(s.contains(", report every_tick;"), "{s}");
        let c = collector(Some(
            r#"{"report": "on_change", "report_cpu_deadband_in_percentage_points": 0.5}"#,
        ))
        .unwrap();
        let s = summary(&c, &m);
        assert!(
            s.contains(", report on_change (heartbeat 900s; deadbands: cpu 0.50 points, memory 2.00 %, network 1048576 B, block I/O 1048576 B, temperature 1.00 °C, storage 16777216 B);"),
            "{s}"
        );
        assert!(
            s.contains(r#"root topic "root/my-device/telemetry/system/{service_name}""#),
            "{s}"
        );
        assert!(s.contains("; broker localhost:1883, device_id"), "{s}");
        let m =
            mqtt(r#"{"broker_url": "tcp://u:s3cret@a:1,tcp://b:2", "device_id": "d"}"#).unwrap();
        let s = summary(&collector(None).unwrap(), &m);
        let start = crate::mqtt::failover::start_index("d", 2);
        let at = ["a:1", "b:2"][start];
        assert!(
            s.contains(&format!(
                "; brokers a:1, b:2 (starting at {at}, chosen by device_id), device_id"
            )),
            "{s}"
        );
        assert!(!s.contains("s3cret"), "{s}");
    }
}
