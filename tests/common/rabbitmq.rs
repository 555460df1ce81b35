//! A real RabbitMQ cluster (Debian's rabbitmq-server 3.10 with its MQTT plugin) on loopback, through
//! tests/scripts/rabbitmq_cluster.py: started by `new`, a node killed (SIGKILL of its beam.smp) and
//! restarted by index, every node and its epmd stopped on drop, also when an assertion fails.

use super::TempDir;
use std::process::{Command, Stdio};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

pub struct Cluster {
    dir: TempDir,
    pub nodes: Vec<String>,
    pub mqtt_ports: Vec<u16>,
    pub pids: Vec<Option<u32>>,
    /// How long the script took to bring the cluster up, as it measured it.
    pub start_seconds: f64,
}

fn script(args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(super::repo().join("tests/scripts/rabbitmq_cluster.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "rabbitmq_cluster.py {args:?}: {:?}\n{err}",
        out.status
    );
    eprint!("{err}");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("one JSON line")
}

impl Cluster {
    /// Whether rabbitmq-server is installed; when not, a SKIPPED line (under CI, a failure).
    pub fn available() -> bool {
        let here = std::path::Path::new(SERVER).exists();
        if !here {
            super::skipped(&format!(
                "{SERVER} is missing (apt-get install rabbitmq-server; make test installs it as root)"
            ));
        }
        here
    }

    /// `nodes` nodes, clustered.
    pub fn new(nodes: usize) -> Cluster {
        let dir = TempDir::new("rabbitmq");
        let mut c = Cluster {
            dir,
            nodes: Vec::new(),
            mqtt_ports: Vec::new(),
            pids: Vec::new(),
            start_seconds: 0.0,
        };
        let state = script(&["start", &c.path(), &nodes.to_string()]);
        c.update(&state);
        c.start_seconds = state["start_seconds"].as_f64().unwrap_or(0.0);
        c
    }

    fn path(&self) -> String {
        self.dir.path().join("cluster").display().to_string()
    }

    fn update(&mut self, state: &serde_json::Value) {
        let strings = |k: &str| -> Vec<serde_json::Value> {
            state[k].as_array().cloned().unwrap_or_default()
        };
        self.nodes = strings("nodes")
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        self.mqtt_ports = strings("mqtt_ports")
            .iter()
            .map(|v| v.as_u64().unwrap() as u16)
            .collect();
        self.pids = strings("pids")
            .iter()
            .map(|v| v.as_u64().map(|p| p as u32))
            .collect();
    }

    pub fn url(&self, i: usize) -> String {
        format!("tcp://127.0.0.1:{}", self.mqtt_ports[i])
    }

    /// SIGKILL of node `i`'s beam.smp: a crash, no goodbye to its clients or peers.
    pub fn kill(&mut self, i: usize) {
        let state = script(&["kill", &self.path(), &i.to_string()]);
        self.update(&state);
    }

    /// Node `i` started again; returns once it has rejoined the cluster.
    pub fn restart(&mut self, i: usize) {
        let state = script(&["restart", &self.path(), &i.to_string()]);
        self.update(&state);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("python3")
            .arg(super::repo().join("tests/scripts/rabbitmq_cluster.py"))
            .args(["stop", &self.path()])
            .stdin(Stdio::null())
            .status();
    }
}
