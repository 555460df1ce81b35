#!/usr/bin/env python3
"""Issue 12's benchmark: what one collection cycle costs the whole machine, the agent plus the engine.

ENGINE mode with `engine_figures` = `cgroup` (figures from the kernel's cgroup files) and = `api` (the
engine's stats API), and the original program's route (CLI mode, `docker stats --no-stream --format
'{{json .}}'` spawned each tick), on real busybox containers (FROM scratch, `--network none`, started once
and reused; removed on every way out), 5 s interval, the agent configured by environment only (CONFIG_DIR
is an empty directory) against a real mosquitto on a free loopback port.

What is counted, per cycle (from one tick line of the agent to the next):
  agent       the agent process (/proc/PID/task/*/schedstat: on-CPU time, ns)
  children    the agent's reaped children, i.e. the docker CLI runs of the CLI route (cutime + cstime of
              /proc/PID/stat, 10 ms clock ticks)
  dockerd, containerd
              schedstat summed over their threads; with the agent's, "total" (issue 12's sum)
  shims       every containerd-shim* (one per running container, whoever's), shown apart: idle, each
              burns 1-2 ms per 5 s in bursts, which at 200 containers swamps everything else
Each figure is the median over the cycles measured (robust against another user of the shared engine
touching a cycle); the means over the whole window from /proc/PID/stat's utime + stime (which also keep
the time of threads that exited) are in the JSON. The engine's own idle cost is measured first at each
container count, over as many 5 s periods with no agent running, and is shown, then subtracted ("net").

Measured: at HEADLINE containers (default 40) the three routes; at every count of COUNTS (default
10,40,200) the `cgroup` and `api` routes, with the agent's peak RSS (VmHWM). Nothing passes or fails on a
figure; the exit code is non-zero only when a measurement could not be made.

Until the agent knows `engine_figures`, STATS_ENGINE_FIGURES is an unknown variable (a warning, noted in
the report) and both ENGINE rows are the API route.

make bench runs it (from bench.py, into target/bench/report.md); `make bench-kernel` runs it alone, as does
  python3 tests/bench/kernel_figures.py [--cycles N] [--scale-cycles N] [--counts 10,40,200] [BINARY]
  python3 tests/bench/kernel_figures.py --render target/bench/kernel_figures.json   (the report again)
writing target/bench/kernel_figures.md (the tables, to paste into the README) and kernel_figures.json (raw).
Environment: BENCH_KF_CYCLES (default 12, at the headline count), BENCH_KF_SCALE_CYCLES (default 6, at the
other counts), BENCH_KF_COUNTS, BENCH_KF_HEADLINE, BENCH_KF_ROUTES (default cgroup,api).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402
import engine_scale  # noqa: E402

INTERVAL = 5
CYCLES = int(os.environ.get("BENCH_KF_CYCLES", "12"))
SCALE_CYCLES = int(os.environ.get("BENCH_KF_SCALE_CYCLES", "6"))
COUNTS = [int(c) for c in os.environ.get("BENCH_KF_COUNTS", "10,40,200").split(",")]
HEADLINE = int(os.environ.get("BENCH_KF_HEADLINE", "40"))
ROUTES = os.environ.get("BENCH_KF_ROUTES", "cgroup,api").split(",")
# The engine, as issue 12 counts it. The shims (one Go process per container) are measured too, but kept
# out of the totals: each costs 1-2 ms of CPU per 5 s idle here, in bursts, so 200 of them swing by
# hundreds of ms from one cycle to the next, whatever the agent does.
ENGINE = ("dockerd", "containerd")
GROUPS = ("agent", "children") + ENGINE + ("shims",)
RSS_TARGET_MIB = 3


def log(msg):
    print(f"kernel_figures: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# /proc: the engine's processes and CPU samples.


def engine_pids():
    """{group: [pid]} for dockerd, containerd and every containerd-shim* (comm is cut to 15 characters)."""
    out = {g: [] for g in (*ENGINE, "shims")}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "dockerd":
            out["dockerd"].append(int(d))
        elif comm == "containerd":
            out["containerd"].append(int(d))
        elif comm.startswith("containerd-shim"):
            out["shims"].append(int(d))
    return out


def cpu_of(pid):
    """(own utime+stime s, reaped children's s, schedstat s or None), or None when the process is gone."""
    try:
        own, kids, _ = bench.proc_stat(pid)
    except (OSError, ValueError, IndexError):
        return None
    return own, kids, bench.proc_schedstat(pid)


class Window:
    """CPU samples of the agent (when there is one) and the engine's processes, one per cycle boundary."""

    def __init__(self, agent_pid=None):
        self.pids = engine_pids()
        if not self.pids["dockerd"] or not self.pids["containerd"]:
            raise bench.Failure(f"dockerd or containerd not found in /proc: {self.pids}")
        if agent_pid:
            self.pids["agent"] = [agent_pid]
        self.samples = []  # {group: {pid: cpu_of(pid)}}

    def take(self):
        self.samples.append({g: {p: cpu_of(p) for p in pids} for g, pids in self.pids.items()})

    def _delta(self, a, b, group, field):
        total = 0.0
        for pid, x in a[group].items():
            y = b[group].get(pid)
            if x is None or y is None or x[field] is None or y[field] is None:
                continue  # gone (or born) within the window: what it did is not comparable
            total += y[field] - x[field]
        return total * 1000

    def per_cycle(self):
        """{group: [ms per cycle]} and the totals per cycle."""
        out = {}
        for g in self.pids:
            if g == "agent":
                out["agent"] = [self._delta(a, b, g, 2) for a, b in zip(self.samples, self.samples[1:])]
                out["children"] = [self._delta(a, b, g, 1) for a, b in zip(self.samples, self.samples[1:])]
            else:
                out[g] = [self._delta(a, b, g, 2) for a, b in zip(self.samples, self.samples[1:])]
        out["total"] = [sum(v[i] for g, v in out.items() if g != "shims") for i in range(len(self.samples) - 1)]
        return out

    def summary(self):
        per = self.per_cycle()
        cycles = len(self.samples) - 1
        first, last = self.samples[0], self.samples[-1]
        mean = {g: self._delta(first, last, g, 0) / cycles for g in self.pids}
        if "agent" in self.pids:
            mean["children"] = self._delta(first, last, "agent", 1) / cycles
        mean["total"] = sum(v for g, v in mean.items() if g != "shims")
        return {
            "cycles": cycles,
            "median_ms": {g: statistics.median(v) for g, v in per.items()},
            "mean_stat_ms": mean,
            "per_cycle_ms": {g: [round(x, 3) for x in v] for g, v in per.items()},
            "processes": {g: len(p) for g, p in self.pids.items()},
        }


# ---------------------------------------------------------------------------------------------------------
# Runs: the idle engine, the agent on one route.


def idle_baseline(cycles):
    """The engine with no agent running: `cycles` periods of INTERVAL seconds."""
    w = Window()
    w.take()
    t0 = time.monotonic()
    for k in range(1, cycles + 1):
        time.sleep(max(0.0, t0 + k * INTERVAL - time.monotonic()))
        w.take()
    return w.summary()


def agent_env(route, broker, confdir):
    """Only what this run sets: a STATS_/MQTT_ variable of the caller's environment would change it."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STATS_", "MQTT_")) and k not in ("BALENA_DEVICE_UUID", "CONFIG_DIR")}
    env.update(CONFIG_DIR=confdir, STATS_COLLECTION_INTERVAL_IN_SECONDS=str(INTERVAL),
               MQTT_BROKER_URL=f"tcp://127.0.0.1:{broker.port}", MQTT_DEVICE_ID="kernelfigures")
    if route == "cli":
        env.update(STATS_MODE="CLI", STATS_CLI_PATH="docker")
    else:
        env.update(STATS_MODE="ENGINE", STATS_ENGINE_SOCKET="/var/run/docker.sock", STATS_ENGINE_FIGURES=route)
    return env


def agent_run(binary, broker, work, route, n, cycles):
    """The agent on `route` for `cycles` cycles, after two ticks of warm-up (connect, first CPU sample)."""
    confdir = os.path.join(work, "empty-config")
    os.makedirs(confdir, exist_ok=True)
    logpath = os.path.join(work, f"agent-{route}-{n}.log")
    agent = bench.Agent(binary, None, logpath, env=agent_env(route, broker, confdir))
    try:
        agent.wait_ticks(2, 90)
        w = Window(agent.proc.pid)
        w.take()
        for k in range(1, cycles + 1):
            agent.wait_ticks(2 + k, 3 * INTERVAL + 60)
            w.take()
        status = bench.proc_status(agent.proc.pid)
        counted = agent.ticks[2:2 + cycles]
        lines = list(agent.lines)
    finally:
        rc = agent.stop()
    row = w.summary()
    row.update(
        route=route,
        containers_seen=statistics.median(c for c, _ in counted),
        containers_seen_range=(min(c for c, _ in counted), max(c for c, _ in counted)),
        messages=statistics.median(m for _, m in counted),
        peak_rss=status.get("VmHWM"),
        threads=status.get("Threads"),
        skipped_ticks=sum("tick(s) skipped" in l for l in lines),
        figures_ignored=any("STATS_ENGINE_FIGURES ignored" in l for l in lines),
        settings=next((l for l in lines if l.startswith("INFO")), ""),
        warnings=[l for l in lines if l.startswith(("WARN", "ERROR"))][:5],
        exit=rc,
    )
    return row


def net(row, baseline):
    """The run's engine and total per cycle less the idle engine's (medians); the shims' likewise."""
    idle = sum(baseline["median_ms"][g] for g in ENGINE)
    engine = sum(row["median_ms"][g] for g in ENGINE)
    shims_idle = baseline["median_ms"]["shims"]
    return {"engine_raw": engine, "engine_idle": idle, "engine_net": engine - idle,
            "total_raw": row["median_ms"]["total"], "total_net": row["median_ms"]["total"] - idle,
            "shims_idle": shims_idle, "shims_net": row["median_ms"]["shims"] - shims_idle}


def noise_floor(baseline):
    """How far the idle engine alone wanders from cycle to cycle (half the range of its per-cycle ms): a
    net figure below it is noise, and no ratio may divide by it."""
    per = baseline.get("per_cycle_ms", {})
    rows = [per[g] for g in ENGINE if g in per]
    if not rows or not rows[0]:
        return 0.0
    totals = [sum(r[i] for r in rows) for i in range(len(rows[0]))]
    return (max(totals) - min(totals)) / 2


def ratio_text(num, den, noise):
    """`num / den` as `12.3x`; when `den` is at noise level, the bound that the noise floor gives (`>= Nx`),
    never a quotient of noise."""
    if den > noise and den > 0:
        return f"{num / den:.1f}x"
    if noise > 0:
        return f">= {num / noise:.0f}x (denominator {f2(den)} ms is within the idle noise, {f2(noise)} ms)"
    return "n/a"


def measure(binary, broker, work, counts=None, cycles=None, scale_cycles=None, headline=None, routes=None):
    counts = counts or COUNTS
    cycles, scale_cycles = cycles or CYCLES, scale_cycles or SCALE_CYCLES
    headline = headline or HEADLINE
    routes = routes or ROUTES
    res = {"interval_s": INTERVAL, "headline": headline, "counts": []}
    failures = 0
    c = engine_scale.Containers()
    try:
        for n in sorted(set(counts)):
            log(f"starting containers up to {n}")
            t0 = time.monotonic()
            c.grow_to(n, parallel=4)
            log(f"  {n} containers running after {time.monotonic() - t0:.0f} s")
            time.sleep(3)  # the starts' own work out of the engine before its idle cost is measured
            foreign = len(engine_scale.docker("ps", "-q").split()) - n
            k = cycles if n == headline else scale_cycles
            row = {"containers": n, "foreign_running": foreign, "cycles": k, "runs": {}}
            log(f"{n} containers (+{foreign} not ours): engine idle baseline, {k} x {INTERVAL} s")
            row["baseline"] = idle_baseline(k)
            log(f"  idle engine {fmt_groups(row['baseline'])}")
            for route in routes + (["cli"] if n == headline else []):
                log(f"{n} containers: route {route}, {k} cycles")
                try:
                    r = agent_run(binary, broker, work, route, n, k)
                    r["net"] = net(r, row["baseline"])
                    log(f"  {route}: {fmt_groups(r)}; net total {r['net']['total_net']:.2f} ms/cycle, "
                        f"peak RSS {bench.mib(r['peak_rss'])}{', engine_figures ignored' if r['figures_ignored'] else ''}")
                except bench.Failure as e:
                    failures += 1
                    r = {"route": route, "error": str(e)}
                    log(f"  {route} failed: {e}")
                row["runs"][route] = r
            res["counts"].append(row)
    finally:
        log("removing the containers")
        c.remove()
    res["failures"] = failures
    return res


def fmt_groups(s):
    med = s["median_ms"]
    return ", ".join(f"{g} {med[g]:.2f}" for g in (*GROUPS, "total") if g in med) + " ms/cycle (medians); " + \
        "per-cycle totals " + " ".join(f"{x:.1f}" for x in s["per_cycle_ms"]["total"])


# ---------------------------------------------------------------------------------------------------------
# Report.


def f2(v):
    return "n/a" if v is None else f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}"


ROUTE_NAMES = {"cgroup": "ENGINE, `cgroup`", "api": "ENGINE, `api`", "auto": "ENGINE, `auto`",
               "cli": "CLI (`docker stats`, the original's route)"}


def render(res):
    L = []
    head = next((r for r in res["counts"] if r["containers"] == res["headline"]), None)
    ignored = any(run.get("figures_ignored") for r in res["counts"] for run in r["runs"].values())
    L.append(f"{res['interval_s']} s interval, busybox containers at rest. ms of CPU per collection cycle, each the "
             "median over the cycles measured (schedstat, ns; the CLI's children from the agent's cutime + cstime, "
             "10 ms ticks). Total = agent + its children + dockerd + containerd. \"Idle\": dockerd + containerd "
             "over as many cycles with no agent running, measured just before at the same container count; \"net\" "
             "subtracts it. The containerd-shims (one per container) are shown apart, raw / idle / net: idle, each "
             "burns 1-2 ms per cycle in bursts, so their net figure is noisy.")
    if ignored:
        L.append("")
        L.append("**This binary ignores `engine_figures`** (STATS_ENGINE_FIGURES was an unknown variable): every "
                 "ENGINE row is the engine's stats API.")
    if head:
        L.append("")
        L.append(f"### At {head['containers']} running containers ({head['cycles']} cycles each)")
        L.append("")
        L.append("| route | agent | agent's children | dockerd | containerd | total | idle | total net | "
                 "net / cgroup's | shims raw / idle / net |")
        L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        cg = head["runs"].get("cgroup")
        base = cg["net"]["total_net"] if cg and "error" not in cg else None
        noise = noise_floor(head["baseline"]) if "baseline" in head else 0.0
        for route, r in head["runs"].items():
            if "error" in r:
                L.append(f"| {ROUTE_NAMES.get(route, route)} | failed: {r['error']} | | | | | | | | |")
                continue
            m, n = r["median_ms"], r["net"]
            ratio = ratio_text(n["total_net"], base, noise) if base is not None else "n/a"
            L.append(f"| {ROUTE_NAMES.get(route, route)} | {f2(m['agent'])} | {f2(m['children'])} | "
                     f"{f2(m['dockerd'])} | {f2(m['containerd'])} | {f2(m['total'])} | {f2(n['engine_idle'])} | "
                     f"**{f2(n['total_net'])}** | {ratio} | {f2(m['shims'])} / {f2(n['shims_idle'])} / "
                     f"{f2(n['shims_net'])} |")
        cli = head["runs"].get("cli")
        if base is not None and cli and "error" not in cli:
            raw_ratio = ratio_text(cli["median_ms"]["total"], cg["median_ms"]["total"], 0.0)
            L.append("")
            L.append(f"The CLI route costs **{ratio_text(cli['net']['total_net'], base, noise)}** the `cgroup` "
                     f"route net ({raw_ratio} raw); the `cgroup` route's net total is **{f2(base)} ms** per cycle, "
                     f"the idle engine's noise {f2(noise)} ms (targets: at most 10 ms, and 20 times below the "
                     "CLI route).")
    L.append("")
    L.append("### Growth with the number of containers")
    L.append("")
    L.append("| route | containers (seen) | cycles | agent | engine | idle | engine net | total net | "
             "per container | shims net | agent peak RSS |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    routes = [r for r in ("cgroup", "api", "auto") if any(r in c["runs"] for c in res["counts"])]
    for route in routes:
        for row in res["counts"]:
            r = row["runs"].get(route)
            if r is None:
                continue
            if "error" in r:
                L.append(f"| {ROUTE_NAMES[route]} | {row['containers']} | failed: {r['error']} | | | | | | | | |")
                continue
            n = r["net"]
            per = f"{n['total_net'] * 1000 / r['containers_seen']:.0f} µs" if r["containers_seen"] else "n/a"
            L.append(f"| {ROUTE_NAMES[route]} | {row['containers']} ({r['containers_seen']:.0f}) | {r['cycles']} | "
                     f"{f2(r['median_ms']['agent'])} | {f2(n['engine_raw'])} | {f2(n['engine_idle'])} | "
                     f"{f2(n['engine_net'])} | {f2(n['total_net'])} | {per} | {f2(n['shims_net'])} | "
                     f"{bench.mib(r['peak_rss'])} |")
    big = max(res["counts"], key=lambda r: r["containers"]) if res["counts"] else None
    if big and "cgroup" in big["runs"] and "error" not in big["runs"]["cgroup"]:
        L.append("")
        L.append(f"Agent peak RSS at {big['containers']} containers, `cgroup`: "
                 f"**{bench.mib(big['runs']['cgroup']['peak_rss'])}** (issue 12's target: under {RSS_TARGET_MIB} MiB).")
    for row in res["counts"]:
        for route, r in row["runs"].items():
            warns = [w for w in r.get("warnings", []) if "STATS_ENGINE_FIGURES ignored" not in w]
            lo, hi = r.get("containers_seen_range") or (None, None)
            if warns or r.get("skipped_ticks") or lo != hi:
                # Another user of the engine starting or removing containers meanwhile: its work is in ours.
                seen = f"the agent saw {lo} to {hi} containers; " if lo != hi else ""
                L.append("")
                L.append(f"{row['containers']}, {route}: {seen}{r.get('skipped_ticks', 0)} tick(s) skipped; "
                         + "; ".join(f"`{w}`" for w in warns[:2]))
    L.append("")
    L.append("Per container: total net / the containers the agent saw (ours plus any other running on the engine). "
             "Raw per-cycle figures (ms), in order, total (agent + children + dockerd + containerd) | shims:")
    L.append("")
    for row in res["counts"]:
        runs = [("idle engine", row["baseline"])] + [(k, r) for k, r in row["runs"].items() if "error" not in r]
        for what, r in runs:
            pc = r["per_cycle_ms"]
            L.append(f"- {row['containers']}, {what}: " + " ".join(f"{x:.1f}" for x in pc["total"]) + " | "
                     + " ".join(f"{x:.0f}" for x in pc["shims"]))
    return L


def write(res, machine):
    """kernel_figures.md and .json in target/bench/; returns the Markdown's lines."""
    res["machine"] = machine
    m = machine
    md = ["# ENGINE figures from the kernel (issue 12)", "",
          f"{m['date']} on {m['cpu']} ({m['cores']} cores), {m['kernel']}; commit {m['commit']}; agent binary "
          f"`{m['binary']}`.", ""] + render(res)
    os.makedirs(bench.OUT_DIR, exist_ok=True)
    with open(os.path.join(bench.OUT_DIR, "kernel_figures.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(bench.OUT_DIR, "kernel_figures.json"), "w") as f:
        json.dump(res, f, indent=1)
    log(f"written {os.path.relpath(bench.OUT_DIR, bench.ROOT)}/kernel_figures.md, kernel_figures.json")
    return md


def targets(res):
    """Issue 12's three targets in bench.py's form (value against an upper limit), for reading."""
    out = []
    head = next((r for r in res.get("counts", []) if r["containers"] == res["headline"]), None)
    cg = head and head["runs"].get("cgroup")
    cli = head and head["runs"].get("cli")
    if cg and "error" not in cg:
        v = cg["net"]["total_net"]
        out.append({"what": f"ENGINE cgroup, {head['containers']} containers: agent + engine net CPU/cycle <= 10 ms",
                    "value": v, "limit": 10, "measured": bench.ms(v), "unit": "ms"})
        if cli and "error" not in cli and cli["net"]["total_net"] > 0:
            # At noise level the cgroup route's figure is bounded by the noise, not known: compare that bound.
            v = max(v, noise_floor(head.get("baseline", {}))) / cli["net"]["total_net"]
            out.append({"what": "ENGINE cgroup / CLI route, net CPU/cycle <= 1/20", "value": v, "limit": 0.05,
                        "measured": f"1/{1 / v:.1f}" if v > 0 else f"{v:.3f}", "unit": "x"})
    big = max(res.get("counts", []), key=lambda r: r["containers"], default=None)
    r = big and big["runs"].get("cgroup")
    if r and "error" not in r:
        out.append({"what": f"ENGINE cgroup: peak RSS at {big['containers']} containers < {RSS_TARGET_MIB} MiB",
                    "value": r["peak_rss"] / 2**20, "limit": RSS_TARGET_MIB, "measured": bench.mib(r["peak_rss"]),
                    "unit": "MiB"})
    return out


# ---------------------------------------------------------------------------------------------------------


def default_binary():
    shipped = os.path.join(bench.ROOT, "dist", "amd64", bench.NAME)
    glibc = os.path.join(bench.ROOT, "target", "release", bench.NAME)
    return shipped if os.path.exists(shipped) else glibc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", nargs="?", default=os.environ.get("BENCH_BIN") or default_binary())
    ap.add_argument("--cycles", type=int, default=CYCLES, help=f"cycles at the headline count (default {CYCLES})")
    ap.add_argument("--scale-cycles", type=int, default=SCALE_CYCLES,
                    help=f"cycles at the other counts (default {SCALE_CYCLES})")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)))
    ap.add_argument("--headline", type=int, default=HEADLINE)
    ap.add_argument("--routes", default=",".join(ROUTES), help="engine_figures values to measure")
    ap.add_argument("--render", metavar="JSON", help="only write the report again from a kernel_figures.json")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            res = json.load(f)
        print("\n".join(write(res, res["machine"])))
        return 0
    bench.signal.signal(bench.signal.SIGTERM, bench.on_signal)
    bench.signal.signal(bench.signal.SIGHUP, bench.on_signal)
    if not os.path.exists(args.binary):
        raise bench.Failure(f"{args.binary} missing: run make build (or make dist)")
    why = bench.engine_answers()
    if why:
        raise bench.Failure(f"not measured: {why}")
    os.makedirs(bench.OUT_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="telemetry-kf-")
    try:
        # A private copy, so a concurrent rebuild cannot swap the binary under a measurement.
        binary = os.path.join(work, bench.NAME)
        bench.shutil.copy2(args.binary, binary)
        broker = bench.Broker(work)
        log(f"mosquitto on 127.0.0.1:{broker.port}, binary {args.binary}, work dir {work}")
        res = measure(binary, broker, work, [int(c) for c in args.counts.split(",")], args.cycles,
                      args.scale_cycles, args.headline, args.routes.split(","))
        print("\n".join(write(res, bench.machine(args.binary))))
        return 1 if res["failures"] else 0
    finally:
        bench.RES.cleanup()
        bench.shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bench.Failure as e:
        log(f"failed: {e}")
        sys.exit(1)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); everything started was stopped and removed")
        sys.exit(130)
