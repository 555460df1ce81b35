//! The agent running in the background with its log read line by line as it is written (each line's
//! arrival noted), so that a test waits for what the agent says instead of for a fixed time. Killed on
//! drop, also when an assertion fails.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Running {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    /// The agent on `config` as [`super::agent`] makes it (debug log).
    pub fn start(config: &Path) -> Running {
        Running::spawn(&mut super::agent(config))
    }

    /// Spawns `cmd` (an [`super::agent`] with the test's own environment) and reads its stderr. Read as
    /// it comes: a chatty agent must never block on a full pipe.
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        Running {
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The log so far, one line each.
    pub fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// The first line (and its arrival) that `pred` accepts, waiting up to `limit`.
    pub fn wait_line(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let until = Instant::now() + limit;
        loop {
            if let Some(l) = self.lines.lock().unwrap().iter().find(|(_, l)| pred(l)) {
                return Some(l.clone());
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` until `pred` accepts the log so far.
    pub fn wait_for(&self, pred: impl Fn(&[String]) -> bool, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if pred(&self.lines()) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` until `n` lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if self.count(needle) >= n {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for a line containing `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        self.wait_count(needle, 1, limit)
    }

    /// Whether the agent is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal`; how long the agent then took to exit (SIGKILLed after `limit`) and its exit code.
    /// The log is complete afterwards: the reader has seen the pipe close.
    pub fn signal(&mut self, signal: i32, limit: Duration) -> (Duration, Option<i32>) {
        let mut child = self.child.take().expect("running");
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid, which we have not waited for yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let code = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.code();
            }
            if t0.elapsed() >= limit {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = t0.elapsed();
        self.finish_log();
        (took, code)
    }

    /// Waits for the reader to see the pipe close, so the log is complete. Bounded: a grandchild that
    /// inherited the pipe could hold it open.
    fn finish_log(&mut self) {
        let Some(r) = self.reader.take() else { return };
        let until = Instant::now() + Duration::from_secs(10);
        while !r.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }

    /// SIGTERM; see [`Running::signal`].
    pub fn terminate(&mut self, limit: Duration) -> (Duration, Option<i32>) {
        self.signal(libc::SIGTERM, limit)
    }

    /// SIGKILL at once (an agent running away with memory); the log is complete afterwards.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL, Duration::from_secs(10));
    }

    /// SIGTERM to an agent that must still be running; it must exit 0 and never have panicked. The log.
    pub fn stop(mut self) -> String {
        assert!(
            self.running(),
            "the agent is still running:\n{}",
            self.log()
        );
        let (_, code) = self.terminate(Duration::from_secs(20));
        let log = self.log();
        assert_eq!(code, Some(0), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
