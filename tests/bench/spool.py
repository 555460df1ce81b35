#!/usr/bin/env python3
"""Issue 21's benchmark: what the spool costs during an outage. The figure a user needs to judge flash
wear: bytes written to the disk per hour of outage; and the agent's memory with the spool and without.

How: the agent in CLI mode (tests/data/fake-balena.sh printing a generated stats file of BENCH_SPOOL_CONTAINERS
containers, default 8, 9 figures each, every figure every tick: the most it can write) against a broker
port nobody listens on, a tick a second (a short tick: the outage is simulated, not waited for), for
BENCH_SPOOL_TICKS ticks (default 60), once with `spool_dir` and once without. Measured at the end, before
the stop: the process's `write_bytes` (/proc/PID/io: bytes it made the kernel write to storage, counted in
dirtied pages) and the bytes appended to the spool's files (its log's `N messages written` batches summed as
the files' sizes), VmRSS and VmHWM (/proc/PID/status). Scaled to an hour of outage at the default
collection interval of 10 s (360 ticks): per tick x 360. The bytes per tick do not depend on the interval.

Alone: `make bench-spool`, or `python3 tests/bench/spool.py [BINARY]` (default BENCH_BIN, else the release
build of `make build`); writes target/bench/spool.md and spool.json. `make bench` runs it as a section of
its report. Nothing passes or fails on a figure.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

CONTAINERS = int(os.environ.get("BENCH_SPOOL_CONTAINERS", "8"))
TICKS = int(os.environ.get("BENCH_SPOOL_TICKS", "60"))
HOUR_TICKS = 360  # an hour at the default 10 s interval


def log(msg):
    print(f"bench spool: {msg}", file=sys.stderr, flush=True)


def io_write_bytes(pid):
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise bench.Failure("no write_bytes in /proc/PID/io")


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def run(binary, work, spool_dir):
    """One outage of TICKS ticks; the figures at its end."""
    name = "spool" if spool_dir else "memory"
    confdir = os.path.join(work, f"spool-bench-{name}")
    os.makedirs(confdir, exist_ok=True)
    stats = os.path.join(work, f"spool-stats-{CONTAINERS}.jsonl")
    bench.write_stats(stats, CONTAINERS)
    with open(os.path.join(confdir, "balena_stats_collector.config.json"), "w") as f:
        json.dump({"mode": "CLI", "cli_path": os.path.join(bench.ROOT, "tests", "data", "fake-balena.sh"),
                   "collection_interval_in_seconds": 1, "device_metrics": False}, f)
    mqtt = {"broker_url": f"tcp://127.0.0.1:{bench.free_port()}", "device_id": "bench", "qos": 1,
            "reconnect_max_delay_in_seconds": 60}
    if spool_dir:
        os.makedirs(spool_dir, exist_ok=True)
        mqtt["spool_dir"] = spool_dir
    with open(os.path.join(confdir, "mqtt.config.json"), "w") as f:
        json.dump(mqtt, f)
    env = dict(os.environ, FAKE_STATS=stats)
    agent = bench.Agent(binary, confdir, os.path.join(work, f"spool-bench-{name}.log"), env=env)
    try:
        agent.wait_ticks(TICKS, TICKS * 3 + 30)
        pid = agent.proc.pid
        res = {"ticks": len(agent.ticks), "messages": sum(m for _, m in agent.ticks),
               "write_bytes": io_write_bytes(pid), "rss_kib": status_kib(pid, "VmRSS"),
               "hwm_kib": status_kib(pid, "VmHWM")}
        if spool_dir:
            res["file_bytes"] = sum(os.path.getsize(os.path.join(spool_dir, n)) for n in os.listdir(spool_dir))
    finally:
        agent.stop()
    return res


def measure(binary, work):
    started = time.monotonic()
    spool_dir = os.path.join(work, "spool-bench-dir")
    with_spool = run(binary, work, spool_dir)
    without = run(binary, work, None)
    per_tick = with_spool["write_bytes"] / with_spool["ticks"]
    return {"containers": CONTAINERS, "ticks": TICKS, "with": with_spool, "without": without,
            "write_bytes_per_tick": per_tick, "write_bytes_per_hour": per_tick * HOUR_TICKS,
            "file_bytes_per_hour": with_spool["file_bytes"] / with_spool["ticks"] * HOUR_TICKS,
            "seconds": time.monotonic() - started}


def render(res):
    w, wo = res["with"], res["without"]
    per_msg = w["file_bytes"] / max(1, w["messages"])
    return [
        f"{res['containers']} containers, every figure every tick ({w['messages'] // w['ticks']} messages a tick, "
        f"QoS 1), broker away for {res['ticks']} ticks of 1 s (a short tick standing for the default 10 s: "
        f"scaled to an hour of outage as 360 ticks).",
        "",
        "| | with `spool_dir` | without |",
        "| --- | ---: | ---: |",
        f"| written to disk per hour of outage (`write_bytes`, whole pages) | "
        f"**{res['write_bytes_per_hour'] / 1e6:.2f} MB** | 0 |",
        f"| appended to the spool per hour of outage | {res['file_bytes_per_hour'] / 1e6:.2f} MB "
        f"({per_msg:.0f} B a message) | - |",
        f"| writes (and `fdatasync`s) per tick | 1 | - |",
        f"| RSS at the end of the outage | {bench.mib(w['rss_kib'] * 1024)} | {bench.mib(wo['rss_kib'] * 1024)} |",
        f"| peak RSS | {bench.mib(w['hwm_kib'] * 1024)} | {bench.mib(wo['hwm_kib'] * 1024)} |",
        "",
        f"({res['seconds']:.0f} s.)",
    ]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "BENCH_BIN", os.path.join(bench.ROOT, "target", "release", bench.NAME))
    os.makedirs(bench.OUT_DIR, exist_ok=True)
    import tempfile
    with tempfile.TemporaryDirectory(prefix="bmct-bench-spool-") as work:
        try:
            res = measure(binary, work)
        finally:
            bench.RES.cleanup()
    text = "\n".join(["# Spool: an outage's cost (issue 21)", ""] + render(res)) + "\n"
    with open(os.path.join(bench.OUT_DIR, "spool.md"), "w") as f:
        f.write(text)
    with open(os.path.join(bench.OUT_DIR, "spool.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bench.Failure as e:
        log(f"failed: {e}")
        sys.exit(1)
    except KeyboardInterrupt as e:
        log(f"interrupted: {e}")
        bench.RES.cleanup()
        sys.exit(130)
