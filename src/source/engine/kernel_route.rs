//! The kernel route: a running container's figures read from the kernel's own files (its cgroup's
//! counters, its network namespace's `/proc/<pid>/net/dev`) rather than asked of the engine's stats API,
//! which reads the same files for us at about twenty times the price. Its main process and network mode
//! come from the inspect; a container whose files cannot be read is asked of the stats API instead.

use super::collection::{stats_path, Entry};
use super::{api, EngineSource, Known, Purpose, MAX_STATS_BODY};
use crate::source::kernel::{self, Place, Roots};
use crate::stats::lifecycle::State;
use crate::stats::{Metric, Value};
use std::time::Instant;

/// A running container's counters in the kernel: found once per main process.
#[derive(Default)]
pub(super) struct Track {
    pub(super) place: Option<Place>,
    /// Its counter files, kept open while its main process lives.
    files: kernel::Files,
    /// Our previous CPU reading of it, for the next CPU %.
    pub(super) previous: Option<(u64, Instant)>,
    /// Its fallback to the stats API was said; said again only after the kernel's files worked.
    pub(super) warned: bool,
}

/// Where running containers' figures come from: the engine's stats API, or the kernel's own files, which
/// the engine would read for us at about twenty times the price.
pub enum Figuring {
    Api,
    Kernel {
        roots: Roots,
        /// `/proc/meminfo`'s total, read once.
        host_memory: Result<u64, String>,
        /// `auto`: if the first try reads no container's files, the API takes over for good.
        auto: bool,
    },
}

/// The kernel route's state.
pub(super) struct Kernel {
    roots: Roots,
    /// The host's memory: what the engine gives as an unlimited container's limit.
    host_memory: Result<u64, String>,
    auto: bool,
    /// Some container's files have been read: `auto` keeps the kernel from here on.
    pub(super) proven: bool,
}

impl Kernel {
    /// The kernel route's state when `figuring` takes it.
    pub(super) fn new(figuring: Figuring) -> Option<Kernel> {
        match figuring {
            Figuring::Api => None,
            Figuring::Kernel {
                roots,
                host_memory,
                auto,
            } => {
                kernel::keep_files_open();
                Some(Kernel {
                    roots,
                    host_memory,
                    auto,
                    proven: false,
                })
            }
        }
    }
}

impl Kernel {
    /// Where figures come from, for the line that says which socket is used.
    pub(super) fn describe(&self) -> String {
        format!(
            "figures from the kernel (cgroup_root {}, proc_root {}){}",
            self.roots.cgroup.display(),
            self.roots.proc.display(),
            if self.auto {
                ", or from the engine's stats API if the first tick can read no container's files"
            } else {
                ""
            }
        )
    }
}

/// The choice of `engine_figures`, with `auto` settled by whether the kernel's files are there at all (a
/// balena container sees the host's only with the sysfs and procfs labels).
pub fn figuring(
    choice: crate::config::EngineFigures,
    cgroup_root: &str,
    proc_root: &str,
) -> Figuring {
    use crate::config::EngineFigures;
    let roots = Roots {
        cgroup: cgroup_root.into(),
        proc: proc_root.into(),
    };
    if choice == EngineFigures::Api {
        return Figuring::Api;
    }
    let host_memory = kernel::host_memory(&roots);
    let auto = choice == EngineFigures::Auto;
    if auto {
        let usable = host_memory
            .clone()
            .and_then(|_| match roots.cgroup.is_dir() {
                true => Ok(()),
                false => Err(format!("{} is not a directory", roots.cgroup.display())),
            });
        if let Err(why) = usable {
            crate::info!("engine_figures auto: {why}; {API_INSTEAD}");
            return Figuring::Api;
        }
    }
    Figuring::Kernel {
        roots,
        host_memory,
        auto,
    }
}

const API_INSTEAD: &str = "figures come from the engine's stats API instead (on balena, give this \
                           service the labels io.balena.features.sysfs and io.balena.features.procfs; \
                           under Docker, mount the host's /proc and cgroup tree, -v /proc:/host/proc:ro \
                           -v /sys/fs/cgroup:/host/cgroup:ro, and set STATS_PROC_ROOT=/host/proc and \
                           STATS_CGROUP_ROOT=/host/cgroup)";

impl EngineSource {
    /// Once the list and its inspects are in: every running container's figures from the kernel's files.
    /// One that cannot be read is asked of the stats API instead, for this tick, with a warning.
    pub(super) fn kernel_phase(&mut self, now: Instant) {
        let outstanding = self.in_flight().all;
        let (Some(k), Some(run)) = (self.kernel.as_mut(), self.run.as_mut()) else {
            return;
        };
        if !run.kernel_pending || !run.listed || outstanding > 0 {
            return;
        }
        run.kernel_pending = false;
        let mut failed = Vec::new();
        let mut unknown = Vec::new();
        for (i, e) in run.entries.iter_mut().enumerate() {
            if e.listed.state != Some(State::Running) {
                continue;
            }
            let known = self.known.get_mut(&e.listed.id);
            let known = known.filter(|c| c.pid.is_some() && c.network != api::Network::Shared);
            let Some(known) = known else {
                // Its inspect failed or is late, or it counts another container's network as its own:
                // only the engine can say, and that says nothing of the kernel's files.
                unknown.push(i);
                continue;
            };
            match first_kernel_sample(k, known, e, now) {
                Ok(()) => {
                    k.proven = true;
                    known.track.warned = false;
                }
                Err(why) => {
                    // Said once, until its files read again.
                    let say = !std::mem::replace(&mut known.track.warned, true);
                    failed.push((i, why, say));
                }
            }
        }
        if k.auto && !k.proven {
            if let Some((_, why, _)) = failed.first() {
                crate::info!(
                    "engine_figures auto: the kernel's files cannot be read ({why}); {API_INSTEAD}"
                );
                self.kernel = None;
                self.synced = false;
            }
        } else {
            for (i, why, _) in failed.iter().filter(|f| f.2) {
                let e = &run.entries[*i];
                crate::warn!(
                    "engine: container {} ({}): kernel figures unreadable ({why}); asking the engine's stats API until they are readable again",
                    e.listed.name,
                    api::short_id(&e.listed.id)
                );
            }
        }
        let asks: Vec<(String, usize)> = failed
            .into_iter()
            .map(|(i, _, _)| i)
            .chain(unknown)
            .map(|i| (stats_path(&run.entries[i].listed.id), i))
            .collect();
        for (path, i) in asks {
            self.ask(path, Purpose::Stats(i), MAX_STATS_BODY);
        }
        self.open_queued(now);
        self.round_done(now);
    }
}

/// Reads a container's counters, finding where they are first when we do not know yet. A failed read
/// forgets the place and closes the files: the container may have restarted with a new main process.
fn read_kernel(k: &Kernel, c: &mut Known, id: &str) -> Result<kernel::Reading, String> {
    let pid = c.pid.ok_or("the engine gave no main process")?;
    let place = match c.track.place.take() {
        Some(p) => p,
        None => kernel::locate(&k.roots, pid, id)?,
    };
    match kernel::read(&k.roots, &place, pid, &mut c.track.files) {
        Ok(mut reading) => {
            c.track.place = Some(place);
            if c.network == api::Network::Host {
                // The host's interfaces, which the engine does not count as the container's.
                (reading.rx_bytes, reading.tx_bytes) = (0, 0);
            }
            Ok(reading)
        }
        Err(e) => {
            c.track.files = kernel::Files::default();
            Err(e)
        }
    }
}

/// This tick's reading: the figures, with a CPU % against our previous reading when there is one (else
/// the entry waits for a second).
fn first_kernel_sample(
    k: &Kernel,
    c: &mut Known,
    e: &mut Entry,
    now: Instant,
) -> Result<(), String> {
    let host = *k
        .host_memory
        .as_ref()
        .map_err(|e| format!("host memory: {e}"))?;
    let r = read_kernel(k, c, &e.listed.id)?;
    let cpu = c
        .track
        .previous
        .and_then(|before| kernel::cpu_percent(before, (r.cpu_ns, now)));
    c.track.previous = Some((r.cpu_ns, now));
    e.kernel_waits = cpu.is_none();
    e.figures = Some(kernel::figures(&r, host, cpu));
    Ok(())
}

/// A later reading for an entry that had no CPU % yet, against the first. A failure leaves the figures
/// without one; a counter that did not move on (no time passed) waits for another round.
pub(super) fn second_kernel_sample(k: &Kernel, c: &mut Known, e: &mut Entry, now: Instant) {
    let Some(before) = c.track.previous else {
        return;
    };
    let Ok(r) = read_kernel(k, c, &e.listed.id) else {
        return;
    };
    match kernel::cpu_percent(before, (r.cpu_ns, now)) {
        Some(p) => {
            if let Some(f) = e.figures.as_mut() {
                f.set(Metric::CpuPercent, Value::Percent(p));
            }
            c.track.previous = Some((r.cpu_ns, now));
        }
        None => e.kernel_waits = true,
    }
}
