#!/usr/bin/env python3
"""ENGINE-mode collection time at 10, 40 and 100 running containers (issue 11), for one or more agent
binaries: make bench runs it for the binary it built (and for BENCH_ENGINE_BASELINE, an older build, when
set); alone: `python3 tests/bench/engine_scale.py BINARY [BINARY...]`.

The agent logs `engine collection took N ms` at debug level for every collection: from the tick firing to
the figures being handed to publishing. The first collection includes the wait for a second CPU sample
(no previous one); the later ones are steady state. Containers are FROM scratch (Debian's busybox-static),
`--network none`, named with this process's id, and removed on every way out.
"""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

COUNTS = [int(c) for c in os.environ.get("BENCH_ENGINE_SCALE", "10,40,100").split(",")]
TOOK_RE = re.compile(r"engine collection took (\d+) ms")
INTERVAL = 5


def docker(*args, check=True, input=None):
    r = subprocess.run(["docker", *args], capture_output=True, input=input)
    if check and r.returncode != 0:
        raise RuntimeError(f"docker {args[0]}: {r.stderr.decode().strip()}")
    return r.stdout.decode().strip()


class Containers:
    def __init__(self):
        self.run_id = f"{os.getpid()}"
        self.image = f"telemetry-scale-busybox:{self.run_id}"
        self.ids = []
        busybox = shutil.which("busybox") or "/bin/busybox"
        with tempfile.TemporaryDirectory() as root:
            os.makedirs(os.path.join(root, "bin"))
            shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
            tar = subprocess.run(["tar", "-C", root, "-c", "bin"], capture_output=True, check=True).stdout
        docker("import", "-", self.image, input=tar)

    def grow_to(self, n, parallel=1):
        """`parallel` docker runs at a time: the engine starts 200 containers in about half the time with 4."""
        def start(i):
            name = f"scalesvc{i}-{self.run_id}_{5400000 + i}_2764432"
            return docker("run", "-d", "--network", "none", "--name", name, "--label",
                          f"telemetry-scale={self.run_id}", self.image, "/bin/busybox", "sleep", "3600")
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            self.ids.extend(pool.map(start, range(len(self.ids), n)))

    def remove(self):
        # By label too: a `docker run` that failed after creating its container left no id here.
        labelled = docker("ps", "-aq", "--no-trunc", "--filter", f"label=telemetry-scale={self.run_id}", check=False)
        ids = list(dict.fromkeys(self.ids + [i for i in labelled.split() if i]))
        for i in range(0, len(ids), 50):
            docker("rm", "-f", *ids[i:i + 50], check=False)
        self.ids = []
        docker("rmi", "-f", self.image, check=False)


def collection_times(binary, work, port, collections=4):
    """Runs the agent in ENGINE mode until it has logged `collections` collection times; returns them."""
    conf = os.path.join(work, "conf")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "balena_stats_collector.config.json"), "w") as f:
        # The stats API route, whose collection time this measures (the kernel route, the default since
        # issue 12, is measured by kernel_figures.py); older binaries ignore the key with a warning.
        json.dump({"mode": "ENGINE", "collection_interval_in_seconds": INTERVAL,
                   "engine_socket": "/var/run/docker.sock", "engine_figures": "api"}, f)
    with open(os.path.join(conf, "mqtt.config.json"), "w") as f:
        json.dump({"broker_url": f"tcp://127.0.0.1:{port}", "device_id": "scale", "qos": 0}, f)
    env = dict(os.environ, LOG_LEVEL="debug")
    p = subprocess.Popen([binary, "--config-dir", conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env)
    took = []
    timer = threading.Timer(INTERVAL * (collections + 4) + 30, p.kill)
    timer.start()
    try:
        for line in p.stderr:
            m = TOOK_RE.search(line)
            if m:
                took.append(int(m.group(1)))
                if len(took) >= collections:
                    break
    finally:
        timer.cancel()
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return took


def measure(binaries, port):
    """{binary: {count: (first ms, steady median ms, steady max ms)}}."""
    out = {b: {} for b in binaries}
    c = Containers()
    try:
        with tempfile.TemporaryDirectory() as work:
            for n in COUNTS:
                c.grow_to(n)
                time.sleep(2)
                for b in binaries:
                    took = collection_times(b, work, port)
                    if len(took) < 2:
                        out[b][n] = None
                        continue
                    steady = took[1:]
                    out[b][n] = (took[0], statistics.median(steady), max(steady))
                    print(f"{os.path.basename(b)} at {n}: first {took[0]} ms, then {steady}", file=sys.stderr)
    finally:
        c.remove()
    return out


def render(res):
    lines = ["| binary | containers | first collection | steady median | steady max |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for b, rows in res.items():
        for n, r in rows.items():
            if r is None:
                lines.append(f"| {b} | {n} | failed | | |")
            else:
                lines.append(f"| {b} | {n} | {r[0]} ms | {r[1]:.0f} ms | {r[2]} ms |")
    return lines


if __name__ == "__main__":
    # A broker is not needed for the collection itself: the agent collects while it retries the connect.
    res = measure(sys.argv[1:], int(os.environ.get("BENCH_BROKER_PORT", "1")))
    print("\n".join(render(res)))
