#!/usr/bin/env python3
"""make bench: the agent's footprint and publishing speed, measured in one run on this machine (issue 6).

Prints a Markdown table and writes it to target/bench/report.md, with the raw figures in report.json and a
hand-written SVG bar chart in report.svg. Bench only: nothing here passes or fails on a time; the exit code
is non-zero only when a measurement could not be made (the agent crashed, never ticked, ...).

What it starts (a mosquitto on a free loopback port, the agent, mosquitto_pub/_sub, docker containers and
an image for the CLI/ENGINE rows) is tracked and stopped on every way out, including Ctrl-C and SIGTERM.
Only loopback addresses are used; containers run with --network none. Its sections in other files:
qos1.py (issue 18: a QoS 1 burst against rumqttc, tests/bench/rumqttc-qos1, through a stock mosquitto and one
with set_tcp_nodelay; BENCH_QOS1_ROUNDS, BENCH_QOS1_CONTAINERS; alone: make bench-qos1), bytes.py (issue 19:
bytes on the wire per device per day through a counting proxy; alone: make bench-bytes), engine_scale.py and
kernel_figures.py (issues 11 and 12), spool.py (issue 21: disk bytes per hour of outage, RSS with and without
the spool; alone: make bench-spool), fleet.py (issue 20: 500 agents through a broker restart and a RabbitMQ
node killed, BENCH_FLEET_QUICK=1 for 100; alone: make bench-fleet).

Tunables (environment): BENCH_RUNS (publishing runs per program and QoS, default 3), BENCH_TICKS (ticks
measured at 1,000 and 10,000 containers, default 20 and 10; 8 containers uses 3x, default 30, because
/proc/PID/stat counts in 10 ms clock ticks), BENCH_ENGINE_CONTAINERS (default 10), BENCH_FLOOD_SECONDS (each flood scenario, default 60), BENCH_SKIP_CROSS=1
(report existing cross binaries without building them), BENCH_BIN (agent binary, default
target/release/balena-multi-container-telemetry).
"""

import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
NAME = "balena-multi-container-telemetry"
OUT_DIR = os.path.join(ROOT, "target", "bench")
TRIPLES = ["aarch64-unknown-linux-musl", "armv7-unknown-linux-musleabihf", "arm-unknown-linux-musleabi",
           "x86_64-unknown-linux-musl"]
METRICS_PER_CONTAINER = 9
TICK_RE = re.compile(r"tick: (\d+) containers, (\d+) messages")
CLK_TCK = os.sysconf("SC_CLK_TCK")

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TICKS = os.environ.get("BENCH_TICKS")
ENGINE_CONTAINERS = int(os.environ.get("BENCH_ENGINE_CONTAINERS", "10"))
FLOOD_SECONDS = float(os.environ.get("BENCH_FLOOD_SECONDS", "60"))


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------------------------------------
# Everything started is registered here and undone in reverse order by cleanup().


class Resources:
    def __init__(self):
        self.procs = []  # subprocess.Popen
        self.undo = []  # (description, argv) run at cleanup, e.g. docker rm -f

    def popen(self, argv, **kw):
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def cleanup(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    p.terminate()
                    p.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=3)
                except ProcessLookupError:
                    pass
        self.procs.clear()
        for what, argv in reversed(self.undo):
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                log(f"cleanup of {what} failed: {r.stderr.strip()}")
        self.undo.clear()


RES = Resources()


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------------------------------------
# Helpers: ports, the broker, /proc.


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, work, tls=None, name=None, settings=None):
        """`tls`: (ca, cert, key) file paths for a TLS listener instead of a plain one. `settings`: the lines
        after the listener instead of the bench's own (qos1.py's brokers with mosquitto's defaults); `name`
        tells the config and log files of several brokers apart."""
        self.port = free_port()
        self.tls = tls
        name = name or ("mosquitto-tls" if tls else "mosquitto")
        conf = os.path.join(work, name + ".conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\n")
            f.write(settings if settings is not None else
                    "allow_anonymous true\npersistence false\n"
                    # The calibration subscriber takes 90,000 messages in a burst: queue them, do not drop.
                    "max_queued_messages 0\nmax_queued_bytes 0\n")
            if tls:
                # `user root`: started as root, mosquitto would switch to its own user, which cannot read the
                # key in our private work directory (a no-op when not root).
                f.write(f"cafile {tls[0]}\ncertfile {tls[1]}\nkeyfile {tls[2]}\nuser root\n")
        self.log = open(os.path.join(work, name + ".log"), "w")
        self.proc = RES.popen(["mosquitto", "-c", conf], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"mosquitto exited with {self.proc.returncode}; see {conf}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise Failure("mosquitto did not listen within 10 s")


def make_certs(work):
    """A CA and a server certificate for 127.0.0.1 and localhost, made now with openssl (no committed key):
    (ca, cert, key) paths, or None when openssl is missing."""
    if not shutil.which("openssl"):
        return None
    d = os.path.join(work, "tls")
    os.makedirs(d, exist_ok=True)
    ca, ca_key, cert, key, csr, ext = (os.path.join(d, n) for n in
                                       ("ca.pem", "ca.key", "cert.pem", "key.pem", "req.csr", "ext.cnf"))
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-subj", "/CN=bench CA", "-days", "2"],
                 ["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
                 ["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                  "-days", "2", "-extfile", ext]):
        r = subprocess.run(argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"{' '.join(argv[:3])}: {r.stderr.strip()[-300:]}")
    return ca, cert, key


def proc_stat(pid):
    """(utime + stime, cutime + cstime) in seconds, threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): utime is field 14, stime 15, cutime 16, cstime 17, num_threads 20.
    own = (int(rest[11]) + int(rest[12])) / CLK_TCK
    children = (int(rest[13]) + int(rest[14])) / CLK_TCK
    return own, children, int(rest[17])


def proc_schedstat(pid):
    """On-CPU time in seconds, nanosecond resolution, summed over the process's threads."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS"):
                out[k] = int(v.split()[0]) * 1024
            elif k == "Threads":
                out[k] = int(v)
    return out


# ---------------------------------------------------------------------------------------------------------
# Stats files in docker's `{{json .}}` line format, balena-style names, varied values.


def bin_size(r, lo, hi):
    v = r.uniform(lo, hi)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{float(f'{v:.4g}'):g}{unit}"
        v /= 1024


def dec_size(r, lo, hi):
    v = r.uniform(lo, hi)
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{float(f'{v:.3g}'):g}{unit}"
        v /= 1000


SERVICES = ["main", "data_logger", "cpu-burner", "web", "db", "mqtt-bridge", "sensor_reader", "ui", "proxy"]


def container_name(r, i):
    if i == 0:
        return "balena_supervisor"
    svc = f"{SERVICES[i % len(SERVICES)]}-{i}"
    image, release = 5_400_000 + i, 2_764_432
    if i % 10 == 3:  # an older supervisor's names: no commit
        return f"{svc}_{image}_{release}"
    return f"{svc}_{image}_{release}_{r.getrandbits(128):032x}"


def stats_line(r, i):
    cid = f"{r.getrandbits(48):012x}"
    limit_gib = r.choice([0.5, 1, 2, 3.7, 7.676])
    used_mib = r.uniform(1, limit_gib * 1024 * 0.9)
    rec = {
        "BlockIO": f"{dec_size(r, 0, 5e9)} / {dec_size(r, 0, 5e9)}",
        "CPUPerc": f"{r.uniform(0, 400):.2f}%",
        "Container": cid,
        "ID": cid,
        "MemPerc": f"{used_mib / (limit_gib * 1024) * 100:.2f}%",
        "MemUsage": f"{bin_size(r, used_mib * 2**20, used_mib * 2**20)} / {bin_size(r, limit_gib * 2**30, limit_gib * 2**30)}",
        "Name": container_name(r, i),
        "NetIO": f"{dec_size(r, 0, 2e9)} / {dec_size(r, 0, 2e9)}",
        "PIDs": str(r.randint(1, 250)),
    }
    return json.dumps(rec, separators=(",", ":"))


def write_stats(path, containers):
    r = random.Random(containers)
    with open(path, "w") as f:
        for i in range(containers):
            f.write(stats_line(r, i) + "\n")


# ---------------------------------------------------------------------------------------------------------
# The agent.


def write_config(confdir, broker, collector, qos=1, once_timeout=None):
    os.makedirs(confdir, exist_ok=True)
    with open(os.path.join(confdir, "balena_stats_collector.config.json"), "w") as f:
        json.dump(collector, f)
    mqtt = {"broker_url": f"tcp://127.0.0.1:{broker.port}", "device_id": "bench", "qos": qos}
    if broker.tls:
        mqtt.update(broker_url=f"mqtts://127.0.0.1:{broker.port}", tls_ca_file=broker.tls[0])
    if once_timeout:
        mqtt["once_timeout_in_seconds"] = once_timeout
    with open(os.path.join(confdir, "mqtt.config.json"), "w") as f:
        json.dump(mqtt, f)


class Agent:
    """The agent running continuously, its stderr followed line by line for the tick lines."""

    def __init__(self, binary, confdir, logpath, env=None):
        """`confdir` None: no --config-dir (the configuration is in `env`, e.g. CONFIG_DIR and STATS_*)."""
        self.ticks = []  # (containers, messages)
        self.lines = []
        self.cv = threading.Condition()
        self.log = open(logpath, "w")
        env = dict(os.environ if env is None else env, LOG_LEVEL="info")
        argv = [binary] + (["--config-dir", confdir] if confdir else [])
        self.proc = RES.popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.PIPE, text=True,
                              env=env)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.write(line)
            m = TICK_RE.search(line)
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                if m:
                    self.ticks.append((int(m.group(1)), int(m.group(2))))
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_ticks(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while len(self.ticks) < n:
                left = deadline - time.monotonic()
                if self.proc.poll() is not None:
                    raise Failure(f"agent exited with {self.proc.returncode}: {self.tail()}")
                if left <= 0:
                    raise Failure(f"only {len(self.ticks)} of {n} ticks in {timeout:.0f} s: {self.tail()}")
                self.cv.wait(min(left, 0.5))

    def tail(self):
        errs = [l for l in self.lines if not l.startswith("INFO")]
        return " | ".join((errs or self.lines)[-3:]) or "(no output)"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(timeout=2)
        self.log.close()
        return self.proc.returncode


def keep_touching(path, stop):
    """FILE mode publishes a file once per version: bump its modification time five times a second so
    every tick reads, parses and publishes it, as it would a file the host rewrites each interval."""
    while not stop.wait(0.2):
        try:
            os.utime(path)
        except OSError:
            pass


def measure_ticks(binary, confdir, logpath, ticks, timeout_per_tick=10, touch=None):
    """CPU per tick between the 2nd tick line and `ticks` tick lines later, then peak RSS and threads."""
    stop_touching = threading.Event()
    if touch:
        threading.Thread(target=keep_touching, args=(touch, stop_touching), daemon=True).start()
    agent = Agent(binary, confdir, logpath)
    try:
        agent.wait_ticks(2, 60)  # the first tick also connects: measure from the end of the second
        pid = agent.proc.pid
        own0, kids0, _ = proc_stat(pid)
        sched0 = proc_schedstat(pid)
        t0 = time.monotonic()
        agent.wait_ticks(2 + ticks, 30 + ticks * timeout_per_tick)
        own1, kids1, _ = proc_stat(pid)
        sched1 = proc_schedstat(pid)
        wall = time.monotonic() - t0
        status = proc_status(pid)
        counted = agent.ticks[2 : 2 + ticks]
        skipped = sum("tick(s) skipped" in l for l in agent.lines)
        bad = [l for l in agent.lines if l.startswith(("WARN", "ERROR"))]
    finally:
        stop_touching.set()
        rc = agent.stop()
    return {
        "ticks": ticks,
        "wall_s": wall,
        "cpu_stat_ms": (own1 - own0) * 1000 / ticks,
        "cpu_sched_ms": (sched1 - sched0) * 1000 / ticks if sched0 is not None and sched1 is not None else None,
        "children_cpu_ms": (kids1 - kids0) * 1000 / ticks,
        "peak_rss": status.get("VmHWM"),
        "threads": status.get("Threads"),
        "containers": counted[-1][0],
        "messages": statistics.median(m for _, m in counted),
        "skipped_ticks": skipped,
        "warnings": bad[:3],
        "exit": rc,
    }


def timed_run(argv, stdin_path=None, env=None, timeout=600, broker=None):
    """Wall time and CPU (user + sys) of one process, from wait4's rusage; with `broker`, the broker's CPU
    over the same time."""
    b0 = proc_stat(broker.proc.pid)[0] if broker else 0
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        t0 = time.monotonic()
        p = RES.popen(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        deadline = t0 + timeout
        err = b""
        # stderr is small (a few log lines); read it after exit, waiting with wait4 for the rusage.
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                raise Failure(f"{argv[0]} did not finish within {timeout} s")
            time.sleep(0.002)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
    finally:
        if stdin_path:
            stdin.close()
    # (ru_maxrss is left out: it keeps the forking Python's peak across exec.)
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "exit": p.returncode, "stderr": err,
            "broker_cpu_s": proc_stat(broker.proc.pid)[0] - b0 if broker else None}


# ---------------------------------------------------------------------------------------------------------
# Binary sizes.


def elf_facts(path):
    """(stripped, static) from the ELF headers: no .symtab section, no PT_INTERP program header."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        return None, None
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        phoff, shoff = struct.unpack_from(end + "QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(end + "HHHHH", data, 0x36)
    else:
        phoff, shoff = struct.unpack_from(end + "II", data, 0x1C)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(end + "HHHHH", data, 0x2A)
    static = all(struct.unpack_from(end + "I", data, phoff + i * phentsize)[0] != 3 for i in range(phnum))

    def section(i):
        base = shoff + i * shentsize
        if is64:
            name, _type, _flags, _addr, off = struct.unpack_from(end + "IIQQQ", data, base)
        else:
            name, _type, _flags, _addr, off = struct.unpack_from(end + "IIIII", data, base)
        return name, off

    names = set()
    if shnum and shstrndx < shnum:
        _, stroff = section(shstrndx)
        for i in range(shnum):
            n, _ = section(i)
            names.add(data[stroff + n : data.index(b"\0", stroff + n)].decode(errors="replace"))
    return ".symtab" not in names, static


# dist/ is laid out by Docker platform (cross-compile/static.sh).
DIST_ARCH = {"aarch64-unknown-linux-musl": "arm64", "armv7-unknown-linux-musleabihf": "arm/v7",
             "arm-unknown-linux-musleabi": "arm/v6", "x86_64-unknown-linux-musl": "amd64"}


def binary_sizes():
    """The shipped binaries: what `make dist` (cross-compile/static.sh) left in dist/."""
    rows = []
    for triple in TRIPLES:
        path = os.path.join(ROOT, "dist", DIST_ARCH[triple], NAME)
        if os.path.exists(path):
            stripped, static = elf_facts(path)
            rows.append({"target": triple, "bytes": os.path.getsize(path), "stripped": stripped, "static": static})
        else:
            rows.append({"target": triple, "bytes": None, "note": f"not built ({path}; see make dist)"})
    return rows


# ---------------------------------------------------------------------------------------------------------
# Publishing: the agent's --once against mosquitto_pub -l.


def publishing(binary, broker, work, stats_path, containers):
    messages = containers * METRICS_PER_CONTAINER
    # Calibration (not timed): what the agent sends, as a subscriber sees it, so mosquitto_pub's lines and
    # topic have the same sizes; also checks every message arrives.
    conf = os.path.join(work, "once-cal")
    write_config(conf, broker, {"mode": "FILE", "file_path": stats_path, "collection_interval_in_seconds": 1},
                 qos=1, once_timeout=300)
    sub = RES.popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "root/bench/telemetry/system/+/+",
                     "-q", "1", "-F", "%l %t", "-C", str(messages), "-W", "120"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.5)
    cal = timed_run([binary, "--once", "--config-dir", conf])
    try:
        out, _ = sub.communicate(timeout=15)
    except subprocess.TimeoutExpired:  # some never arrived: take what did
        sub.terminate()
        out, _ = sub.communicate(timeout=5)
    sizes = [l.split(" ", 1) for l in out.splitlines() if " " in l]
    if cal["exit"] != 0 or not sizes:
        raise Failure(f"calibration --once exit {cal['exit']}, {len(sizes)} messages seen: {cal['stderr'][-300:]}")
    payload_len = round(statistics.mean(int(l) for l, _ in sizes))
    topic_len = round(statistics.mean(len(t) for _, t in sizes))
    delivered = len(sizes)

    lines = os.path.join(work, "mosquitto_pub.lines")
    with open(lines, "w") as f:
        base = '{"value":%d,"timestamp":1700000000000}'
        for i in range(messages):
            p = base % (i % 1000)
            f.write((p[:-1] + " " * max(0, payload_len - len(p)) + "}")[-payload_len:] + "\n")
    topic = ("bench/pub/" + "x" * topic_len)[:topic_len]

    results = {"messages": messages, "delivered_in_calibration": delivered, "payload_len": payload_len,
               "topic_len": topic_len, "qos": {}}
    for qos in (0, 1):
        conf = os.path.join(work, f"once-q{qos}")
        write_config(conf, broker, {"mode": "FILE", "file_path": stats_path, "collection_interval_in_seconds": 1},
                     qos=qos, once_timeout=300)
        # mosquitto_pub 2.0.11 -l at QoS 1 drops lines it has no in-flight room for (about 73% of 90,000
        # here, whatever -M says): count what it really delivers, untimed, so the ratio can be read per message.
        pub_argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", str(qos), "-t", topic, "-l"]
        pub_delivered = count_delivered(broker, topic, messages, pub_argv, stdin_path=lines)
        ours, theirs = [], []
        for run in range(RUNS):
            log(f"publishing QoS {qos}, run {run + 1}/{RUNS}")
            a = timed_run([binary, "--once", "--config-dir", conf], broker=broker)
            if a["exit"] != 0:
                raise Failure(f"agent --once QoS {qos} exited {a['exit']}: {a['stderr'][-300:]}")
            ours.append(a)
            b = timed_run(pub_argv, stdin_path=lines, broker=broker)
            if b["exit"] != 0:
                raise Failure(f"mosquitto_pub QoS {qos} exited {b['exit']}: {b['stderr'][-300:]}")
            theirs.append(b)
        mo = statistics.median(r["wall_s"] for r in ours)
        mt = statistics.median(r["wall_s"] for r in theirs)
        # A reference that does deliver every message: the same payload published `messages` times with
        # --repeat, which waits for each QoS 1 acknowledgement's room like the agent must.
        payload = lines_first(lines)
        rep_argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", str(qos), "-t", topic,
                    "-m", payload, "--repeat", str(messages)]
        log(f"mosquitto_pub --repeat, QoS {qos}, counted")
        rep_delivered = count_delivered(broker, topic, messages, rep_argv)
        reps = []
        for run in range(RUNS):
            log(f"mosquitto_pub --repeat, QoS {qos}, run {run + 1}/{RUNS}")
            reps.append(timed_run(rep_argv, broker=broker))
        mr = statistics.median(r["wall_s"] for r in reps)
        results["qos"][qos] = {
            "rep_wall_s": mr, "rep_delivered": rep_delivered, "ratio_repeat": mo / mr,
            "rep_cpu_s": statistics.median(r["cpu_s"] for r in reps),
            "ours_wall_s": mo, "pub_wall_s": mt, "ratio": mo / mt, "pub_delivered": pub_delivered,
            "ratio_per_message": (mo / messages) / (mt / max(pub_delivered, 1)),
            "ours_runs": [r["wall_s"] for r in ours], "pub_runs": [r["wall_s"] for r in theirs],
            "ours_cpu_s": statistics.median(r["cpu_s"] for r in ours),
            "pub_cpu_s": statistics.median(r["cpu_s"] for r in theirs),
            "ours_broker_cpu_s": statistics.median(r["broker_cpu_s"] for r in ours),
            "pub_broker_cpu_s": statistics.median(r["broker_cpu_s"] for r in theirs),
        }
    return results


def count_delivered(broker, topic, messages, argv, stdin_path=None):
    """Runs `argv` once, untimed, while a subscriber counts what reaches the broker on `topic`."""
    sub = RES.popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-q", "1",
                     "-C", str(messages), "-W", "120"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.5)
    timed_run(argv, stdin_path=stdin_path)
    try:
        out, _ = sub.communicate(timeout=30)
    except subprocess.TimeoutExpired:  # some never arrived: count what did
        sub.terminate()
        out, _ = sub.communicate(timeout=5)
    return len(out.splitlines())


def lines_first(path):
    with open(path) as f:
        return f.readline().rstrip("\n")


# ---------------------------------------------------------------------------------------------------------
# Real containers: CLI mode (docker stats) and ENGINE mode (the engine's socket).


def engine_answers():
    if not shutil.which("docker"):
        return "no docker CLI"
    r = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                       timeout=20)
    return None if r.returncode == 0 else "no engine answers: " + (r.stderr.strip().splitlines() or ["?"])[-1]


def start_containers(work, n):
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise Failure("no /bin/busybox (Debian: apt-get install busybox-static)")
    run_id = f"{os.getpid()}{int(time.time()) % 100000}"
    image = f"telemetry-bench-busybox:{run_id}"
    root = os.path.join(work, "image")
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy(busybox, os.path.join(root, "bin", "busybox"))
    # docker import of a one-file tarball: FROM scratch without a registry or a builder.
    tar = subprocess.run(["tar", "-C", root, "-c", "bin"], capture_output=True, check=True).stdout
    r = subprocess.run(["docker", "import", "-", image], input=tar, capture_output=True)
    if r.returncode != 0:
        raise Failure(f"docker import failed: {r.stderr.decode().strip()}")
    RES.undo.append((f"image {image}", ["docker", "rmi", "-f", image]))
    ids = []
    for i in range(n):
        name = f"benchsvc{i}-{run_id}_{5400000 + i}_2764432_{random.getrandbits(128):032x}"
        r = subprocess.run(["docker", "run", "-d", "--network", "none", "--name", name,
                            "--label", f"telemetry-bench={run_id}", image, "/bin/busybox", "sleep", "3600"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Failure(f"docker run failed: {r.stderr.strip()}")
        cid = r.stdout.strip()
        ids.append(cid)
        RES.undo.append((f"container {name}", ["docker", "rm", "-f", cid]))
    return ids


def engine_supported(binary, work, broker):
    """Runs the binary once with mode ENGINE: exit 2 (a config error) means this build has no ENGINE mode."""
    conf = os.path.join(work, "engine-probe")
    write_config(conf, broker, {"mode": "ENGINE", "collection_interval_in_seconds": 1}, once_timeout=10)
    r = timed_run([binary, "--once", "--config-dir", conf], timeout=60)
    if r["exit"] == 2:
        first = (r["stderr"].strip().splitlines() or ["exit 2"])[-1]
        return False, f"binary refuses mode ENGINE ({first})"
    return True, f"--once exit {r['exit']}"


# ---------------------------------------------------------------------------------------------------------
# Report.


def mib(n):
    return f"{n / 2**20:.2f} MiB" if n is not None else "n/a"


def ms(v):
    if v is None:
        return "n/a"
    return f"{v:.3f} ms" if v < 1 else f"{v:.2f} ms" if v < 100 else f"{v:.1f} ms"


def stat_ms(row):
    """/proc/PID/stat CPU per tick; below one clock tick over the whole run it reads 0, so say the bound."""
    if row["cpu_stat_ms"]:
        return ms(row["cpu_stat_ms"])
    return f"< {1000 / CLK_TCK / row['ticks']:.2f} ms"


# ---------------------------------------------------------------------------------------------------------
# Floods (issue 10): a peer that keeps the agent's socket full. Peak RSS, worst tick lateness and the time a
# SIGTERM takes, with the flood still running.


def mqtt_publish(topic, payload):
    """One QoS 0 PUBLISH packet (short: the remaining length fits one byte)."""
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + payload
    assert len(body) < 128
    return bytes([0x30, len(body)]) + body


def read_packet(sock_file):
    """One MQTT packet from a buffered socket file; None at end of stream."""
    head = sock_file.read(1)
    if not head:
        return None
    length, shift = 0, 0
    while True:
        b = sock_file.read(1)
        if not b:
            return None
        head += b
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = sock_file.read(length)
    return None if len(body) < length else head + body


class Flood:
    """Writes `packet` over and over on `sock` (under `lock`, shared with anyone else writing there) until
    stopped; counts what went out."""

    def __init__(self, sock, packet, lock=None):
        self.sock, self.lock, self.sent, self.stopped = sock, lock or threading.Lock(), 0, False
        self.buf = packet * (65536 // len(packet))
        self.per_buf = 65536 // len(packet)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stopped:
                with self.lock:
                    self.sock.sendall(self.buf)
                self.sent += self.per_buf
        except OSError:
            pass

    def stop(self):
        self.stopped = True


def mosquitto_flooder(broker, n):
    """A raw MQTT client publishing Home Assistant's birth, `online` on homeassistant/status, without end."""
    s = socket.create_connection(("127.0.0.1", broker.port))
    cid = f"bench-flooder-{n}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x00" + struct.pack(">H", len(cid)) + cid
    s.sendall(bytes([0x10, len(var)]) + var)
    if s.recv(4) != b"\x20\x02\x00\x00":
        raise Failure("flooder: mosquitto refused the connection")
    return s, Flood(s, mqtt_publish("homeassistant/status", b"online"))


class FloodingBroker:
    """Just enough broker for the agent (CONNACK, PUBACK, SUBACK, PINGRESP) that also floods it with QoS 0
    PUBLISHes on a topic it never subscribed to."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.floods = []
        self.go = threading.Event()  # the flood starts once this is set
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        f = conn.makefile("rb", buffering=65536)
        if read_packet(f) is None:
            return
        lock = threading.Lock()
        conn.sendall(b"\x20\x02\x00\x00")
        junk = mqtt_publish("not/ours", b"junk")
        threading.Thread(target=lambda: self.go.wait() and self.floods.append(Flood(conn, junk, lock)),
                         daemon=True).start()
        while True:
            try:
                p = read_packet(f)
            except OSError:
                return
            if p is None:
                return
            kind, reply = p[0] >> 4, b""
            if kind == 3 and p[0] & 0x06 == 0x02:  # QoS 1 PUBLISH: body starts with the remaining length
                n = 2 if p[1] < 128 else 3 if p[2] < 128 else 4
                tlen = struct.unpack(">H", p[n:n + 2])[0]
                reply = b"\x40\x02" + p[n + 2 + tlen:n + 4 + tlen]
            elif kind == 8:
                reply = bytes([0x90, 0x03, p[2], p[3], 0x01])
            elif kind == 12:
                reply = b"\xd0\x00"
            if reply:
                try:
                    with lock:
                        conn.sendall(reply)
                except OSError:
                    return

    def stop(self):
        for fl in self.floods:
            fl.stop()
        self.listener.close()


class TimedAgent(Agent):
    """The agent, with the arrival time of each tick line."""

    def __init__(self, *a):
        self.tick_times = []
        super().__init__(*a)

    def _read(self):
        for line in self.proc.stderr:
            t = time.monotonic()
            self.log.write(line)
            with self.cv:
                self.lines.append(line.rstrip("\n"))
                m = TICK_RE.search(line)
                if m:
                    self.ticks.append((int(m.group(1)), int(m.group(2))))
                    self.tick_times.append(t)
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()


def flood_run(binary, work, key, name, broker_port, start_flood, discovery):
    """Runs the agent (FILE, 8 containers, 1 s interval, QoS 1) for FLOOD_SECONDS under a flood."""
    stats = os.path.join(work, "stats-8.jsonl")
    if not os.path.exists(stats):
        write_stats(stats, 8)
    conf = os.path.join(work, f"flood-{key}")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "balena_stats_collector.config.json"), "w") as f:
        json.dump({"mode": "FILE", "file_path": stats, "collection_interval_in_seconds": 1}, f)
    with open(os.path.join(conf, "mqtt.config.json"), "w") as f:
        json.dump({"broker_url": f"tcp://127.0.0.1:{broker_port}", "device_id": "bench", "qos": 1,
                   "home_assistant_discovery": discovery, "reconnect_max_delay_in_seconds": 1}, f)
    agent = TimedAgent(binary, conf, os.path.join(work, f"agent-flood-{key}.log"))
    stopper = None
    try:
        agent.wait_ticks(3, 30)
        calm = proc_status(agent.proc.pid).get("VmHWM")
        first = len(agent.tick_times)
        stopper = start_flood()
        t0 = time.monotonic()
        peak = 0
        while time.monotonic() - t0 < FLOOD_SECONDS:
            if agent.proc.poll() is not None:
                raise Failure(f"agent exited under the flood: {agent.tail()}")
            peak = max(peak, proc_status(agent.proc.pid).get("VmRSS", 0))
            time.sleep(0.2)
        hwm = proc_status(agent.proc.pid).get("VmHWM")
        sent = stopper()  # counts so far; the flood goes on until the agent has stopped
        with agent.cv:
            times = list(agent.tick_times)
        t1 = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise Failure("the agent did not stop within 30 s of SIGTERM under a flood")
        stop_s = time.monotonic() - t1
    finally:
        rc = agent.stop()
        if stopper:
            stopper(end=True)
    # A tick's lateness: its line's arrival against the fixed 1 s schedule, taking the earliest tick (from
    # the calm ticks before the flood on) as on time.
    offsets = [t - k for k, t in enumerate(times[first - 2:])]
    during = [o for o, t in zip(offsets, times[first - 2:]) if t >= t0]
    return {
        "scenario": name,
        "seconds": FLOOD_SECONDS,
        "flood_messages": sent,
        "calm_hwm": calm,
        "peak_rss": hwm,
        "peak_vmrss": peak,
        "ticks": len(during),
        "expected_ticks": int(FLOOD_SECONDS),
        "worst_late_ms": (max(during) - min(offsets)) * 1000 if during else None,
        "stop_s": stop_s,
        "exit": rc,
        "warnings": [l for l in agent.lines if l.startswith(("WARN", "ERROR"))][:3],
    }


def floods(binary, broker, work):
    rows = []

    def via_mosquitto():
        clients = [mosquitto_flooder(broker, n) for n in range(2)]

        def stop(end=False):
            if end:
                for s, fl in clients:
                    fl.stop()
                    s.close()
            return sum(fl.sent for _, fl in clients)
        return stop

    log(f"flood: another client floods homeassistant/status through mosquitto for {FLOOD_SECONDS:.0f} s")
    try:
        rows.append(flood_run(binary, work, "ha-status", "homeassistant/status through mosquitto, discovery on",
                              broker.port, via_mosquitto, True))
    except Failure as e:
        rows.append({"scenario": "homeassistant/status through mosquitto", "error": str(e)})
    fake = FloodingBroker()

    def from_broker():
        fake.go.set()

        def stop(end=False):
            if end:
                fake.stop()
            return sum(fl.sent for fl in fake.floods)
        return stop

    log(f"flood: a broker floods unsolicited QoS 0 PUBLISHes for {FLOOD_SECONDS:.0f} s")
    try:
        rows.append(flood_run(binary, work, "unsolicited", "unsolicited QoS 0 PUBLISHes from the broker", fake.port,
                              from_broker, False))
    except Failure as e:
        rows.append({"scenario": "unsolicited QoS 0 PUBLISHes from the broker", "error": str(e)})
    fake.stop()
    return rows



def render(res):
    L = []
    m = res["machine"]
    L.append("# make bench")
    L.append("")
    L.append(f"{m['date']} on {m['cpu']} ({m['cores']} cores), {m['kernel']}; commit {m['commit']}; "
             f"{m['mosquitto']}. Agent binary: `{m['binary']}`.")
    L.append("")
    L.append("## Binary sizes")
    L.append("")
    L.append("| target | size | stripped | static |")
    L.append("| --- | ---: | --- | --- |")
    for b in res["sizes"]:
        if b.get("bytes"):
            L.append(f"| {b['target']} | {b['bytes']:,} B ({b['bytes'] / 1024:.0f} KiB) | "
                     f"{'yes' if b['stripped'] else 'no'} | {'yes' if b['static'] else 'no'} |")
        else:
            L.append(f"| {b['target']} | {b.get('note', 'not built')} | | |")
    L.append("")
    L.append("## FILE mode, 1 s interval, QoS 1, running continuously")
    L.append("")
    L.append("CPU per tick is utime+stime from `/proc/PID/stat` (10 ms clock ticks) and on-CPU time from "
             "`/proc/PID/schedstat` (ns), over the ticks shown, after two warm-up ticks (the first also connects). Other "
             "load on the machine (containers, builds) shows up here: run it on a quiet machine.")
    L.append("")
    L.append("| containers | messages/tick | ticks | CPU/tick (stat) | CPU/tick (schedstat) | CPU/message | "
             "peak RSS (VmHWM) | threads |")
    L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in res["file"]:
        if "error" in row:
            L.append(f"| {row['label']} | failed: {row['error']} | | | | | | |")
            continue
        per_msg = (row["cpu_sched_ms"] or row["cpu_stat_ms"]) * 1000 / max(row["messages"], 1)
        L.append(f"| {row['label']} | {row['messages']:,.0f} | {row['ticks']} | {stat_ms(row)} | "
                 f"{ms(row['cpu_sched_ms'])} | {per_msg:.2f} µs | {mib(row['peak_rss'])} | {row['threads']} |")
    t = res.get("tls")
    if t:
        L.append("")
        if "ratio" in t:
            L.append(f"Over TLS (mqtts://, the same 1,000 containers, {t['ticks']} ticks): {stat_ms(t)} (stat), "
                     f"{ms(t['cpu_sched_ms'])} (schedstat) per tick, peak RSS {mib(t['peak_rss'])}: "
                     f"**{t['ratio']:.2f}x** plain TCP's {ms(t['plain_cpu_ms'])} (target: at most 1.5x).")
        else:
            L.append(f"Over TLS: {t.get('error') or t.get('note') or 'no plain row to compare with'}")
    lin = res.get("linearity")
    if lin:
        L.append("")
        L.append(f"Growth: {lin}")
    skipped = [r for r in res["file"] if r.get("skipped_ticks")]
    for r in skipped:
        L.append("")
        L.append(f"At {r['containers']:,} containers {r['skipped_ticks']} tick(s) overran the 1 s interval.")
    L.append("")
    L.append("## Publishing: `--once` against `mosquitto_pub -l`, same broker, same count and sizes")
    L.append("")
    p = res.get("publishing")
    if p and "error" not in p:
        L.append(f"{p['messages']:,} messages (10,000 containers); mosquitto_pub sends lines of {p['payload_len']} "
                 f"bytes on a {p['topic_len']}-byte topic, the agent's average sizes; a subscriber counted "
                 f"{p['delivered_in_calibration']:,} of the agent's messages in an untimed calibration run. "
                 f"Median of {RUNS} runs; wall time includes start-up, and for the agent reading and parsing the "
                 f"stats file. CPU columns are user+sys (10 ms resolution for the broker); the agent's 90,000 topics "
                 f"are all different, mosquitto_pub's one topic is the same every time.")
        L.append("")
        L.append("| QoS | agent --once | mosquitto_pub -l | ratio agent / mosquitto_pub | agent CPU | "
                 "mosquitto_pub CPU | broker CPU (agent run) | broker CPU (mosquitto_pub run) | mosquitto_pub delivered | "
                 "ratio per delivered message |")
        L.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for qos, q in sorted(p["qos"].items()):
            L.append(f"| {qos} | {q['ours_wall_s'] * 1000:.0f} ms | {q['pub_wall_s'] * 1000:.0f} ms | "
                     f"**{q['ratio']:.2f}** | {q['ours_cpu_s'] * 1000:.0f} ms | {q['pub_cpu_s'] * 1000:.0f} ms | "
                     f"{q['ours_broker_cpu_s'] * 1000:.0f} ms | {q['pub_broker_cpu_s'] * 1000:.0f} ms | "
                     f"{q['pub_delivered']:,} of {p['messages']:,} | {q['ratio_per_message']:.2f} |")
        L.append("")
        L.append("`mosquitto_pub -l` does not deliver every line at QoS 1 (see the delivered column), so its time is no "
                 "like-for-like reference there. The same count of same-size messages from `mosquitto_pub --repeat N` "
                 "(one topic, every message delivered):")
        L.append("")
        L.append("| QoS | agent --once | mosquitto_pub --repeat | ratio agent / mosquitto_pub --repeat | "
                 "mosquitto_pub --repeat CPU | delivered |")
        L.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for qos, q in sorted(p["qos"].items()):
            L.append(f"| {qos} | {q['ours_wall_s'] * 1000:.0f} ms | {q['rep_wall_s'] * 1000:.0f} ms | "
                     f"**{q['ratio_repeat']:.2f}** | {q['rep_cpu_s'] * 1000:.0f} ms | "
                     f"{q['rep_delivered']:,} of {p['messages']:,} |")
        L.append("")
        for qos, q in sorted(p["qos"].items()):
            L.append(f"QoS {qos} runs (s): agent {', '.join(f'{x:.3f}' for x in q['ours_runs'])}; "
                     f"mosquitto_pub {', '.join(f'{x:.3f}' for x in q['pub_runs'])}.  ")
    else:
        L.append(f"failed: {p.get('error') if p else 'not run'}")
    q = res.get("qos1")
    if q:
        L.append("")
        L.append("## QoS 1 burst: `--once` against rumqttc, stock mosquitto and `set_tcp_nodelay true` (issue 18)")
        L.append("")
        if "error" in q:
            L.append(f"failed: {q['error']}")
        else:
            import qos1
            L.extend(qos1.render(q))
    b = res.get("bytes")
    if b:
        L.append("")
        L.append("## Bytes on the wire per device per day (issue 19)")
        L.append("")
        if "error" in b:
            L.append(f"failed: {b['error']}")
        else:
            import bytes as bytes_bench
            L.extend(bytes_bench.render(b).splitlines())
    sp = res.get("spool")
    if sp:
        L.append("")
        L.append("## Spool: an outage's cost in disk writes and memory (issue 21)")
        L.append("")
        if "error" in sp:
            L.append(f"failed: {sp['error']}")
        else:
            import spool
            L.extend(spool.render(sp))
    fl = res.get("fleet")
    if fl:
        L.append("")
        L.append("## A simulated fleet: broker restart and a cluster node killed (issue 20)")
        L.append("")
        if "error" in fl:
            L.append(f"failed: {fl['error']}")
        else:
            import fleet
            L.extend(fleet.render(fl))
    L.append("")
    L.append("## Real containers (CLI and ENGINE mode), 1 s interval")
    L.append("")
    L.append("| mode | containers | messages/tick | ticks | agent CPU/tick (stat) | agent CPU/tick (schedstat) | "
             "CLI child CPU/tick | peak RSS | threads |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in res["engine"]:
        if "error" in row or "note" in row:
            L.append(f"| {row['mode']} | {row.get('error') or row.get('note')} | | | | | | | |")
            continue
        kids = ms(row["children_cpu_ms"]) if row["mode"] == "CLI" else "-"
        L.append(f"| {row['mode']} | {row['containers']} | {row['messages']:.0f} | {row['ticks']} | "
                 f"{stat_ms(row)} | {ms(row['cpu_sched_ms'])} | {kids} | {mib(row['peak_rss'])} | "
                 f"{row['threads']} |")
    for row in res["engine"]:
        if row.get("skipped_ticks"):
            L.append("")
            L.append(f"{row['mode']}: {row['skipped_ticks']} tick(s) overran the 1 s interval "
                     f"(CPU is divided by ticks completed).")
    scale = res.get("engine_scale")
    if scale:
        L.append("")
        L.append("## ENGINE collection time at 10, 40 and 100 running containers (issue 11)")
        L.append("")
        L.append("From the tick to the figures handed to publishing (the agent's `engine collection took` "
                 "debug line), 5 s interval; the first collection waits for a second CPU sample. Set "
                 "BENCH_ENGINE_BASELINE to an older build to compare.")
        L.append("")
        if "error" in scale:
            L.append(f"failed: {scale['error']}")
        else:
            import engine_scale
            L.extend(engine_scale.render(scale))
    kf = res.get("kernel_figures")
    if kf:
        L.append("")
        L.append("## CPU per cycle of the agent and the engine: figures from cgroups, the API, the CLI (issue 12)")
        L.append("")
        if "error" in kf:
            L.append(f"failed: {kf['error']}")
        else:
            import kernel_figures
            L.extend(l.replace("### ", "#### ", 1) if l.startswith("### ") else l for l in kernel_figures.render(kf))
    L.append("")
    L.append("## Floods (issue 10): a peer that keeps the socket full")
    L.append("")
    L.append(f"FILE mode, 8 containers, 1 s interval, QoS 1. Each flood runs {FLOOD_SECONDS:.0f} s; SIGTERM is sent "
             "with the flood still running. Lateness: a tick line's arrival against the fixed 1 s schedule, the "
             "earliest tick taken as on time (so it includes the reading of the log pipe).")
    L.append("")
    L.append("| flood | messages sent | peak RSS before -> after (VmHWM) | ticks / expected | worst tick lateness | "
             "stop after SIGTERM |")
    L.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in res.get("floods", []):
        if "error" in row:
            L.append(f"| {row['scenario']} | failed: {row['error']} | | | | |")
            continue
        late = f"{row['worst_late_ms']:.0f} ms" if row["worst_late_ms"] is not None else "no tick"
        L.append(f"| {row['scenario']} | {row['flood_messages']:,} | {mib(row['calm_hwm'])} -> {mib(row['peak_rss'])} | "
                 f"{row['ticks']} / {row['expected_ticks']} | {late} | {row['stop_s'] * 1000:.0f} ms |")
    L.append("")
    L.append("## Targets (issues 6, 10, 12, 18 and 19), for reading; nothing fails on them")
    L.append("")
    L.append("| target | measured |")
    L.append("| --- | --- |")
    for t in res["targets"]:
        L.append(f"| {t['what']} | {t['measured']} |")
    L.append("")
    return "\n".join(L)


def targets(res):
    by = {r["containers"]: r for r in res["file"] if "error" not in r and not r.get("musl")}
    out = []

    def cpu(r):
        return r["cpu_sched_ms"] if r.get("cpu_sched_ms") is not None else r["cpu_stat_ms"]

    if 8 in by:
        out.append({"what": "CPU per tick, 8 containers < 0.2 ms", "value": cpu(by[8]), "limit": 0.2,
                    "measured": ms(cpu(by[8])), "unit": "ms"})
    if 1000 in by:
        out.append({"what": "CPU per tick, 1,000 containers <= 13.6 ms", "value": cpu(by[1000]), "limit": 13.6,
                    "measured": ms(cpu(by[1000])), "unit": "ms"})
        out.append({"what": "peak RSS, 1,000 containers < 1.9 MiB", "value": by[1000]["peak_rss"] / 2**20,
                    "limit": 1.9, "measured": mib(by[1000]["peak_rss"]), "unit": "MiB"})
        out.append({"what": "threads = 1", "value": by[1000]["threads"], "limit": 1,
                    "measured": str(by[1000]["threads"]), "unit": ""})
    for row in res.get("floods", []):
        if "error" in row or row["worst_late_ms"] is None:
            continue
        out.append({"what": f"flood ({row['scenario'].split(',')[0]}): peak RSS < 16 MiB",
                    "value": row["peak_rss"] / 2**20, "limit": 16, "measured": mib(row["peak_rss"]), "unit": "MiB"})
        out.append({"what": "flood: worst tick lateness <= 100 ms", "value": row["worst_late_ms"], "limit": 100,
                    "measured": f"{row['worst_late_ms']:.0f} ms", "unit": "ms"})
        out.append({"what": "flood: stop after SIGTERM < 2 s", "value": row["stop_s"], "limit": 2,
                    "measured": f"{row['stop_s'] * 1000:.0f} ms", "unit": "s"})
    t = res.get("tls")
    if t and "ratio" in t:
        out.append({"what": "CPU per tick over TLS / plain TCP, 1,000 containers <= 1.5", "value": t["ratio"],
                    "limit": 1.5, "measured": f"{t['ratio']:.2f} ({ms(cpu(t))} against {ms(t['plain_cpu_ms'])})",
                    "unit": "x"})
    kf = res.get("kernel_figures")
    if kf and "error" not in kf:
        import kernel_figures
        out.extend(kernel_figures.targets(kf))
    p = res.get("publishing")
    if p and "error" not in p and 1 in p["qos"]:
        out.append({"what": "QoS 1 publishing ratio agent / mosquitto_pub -l <= 1.0", "value": p["qos"][1]["ratio"],
                    "limit": 1.0, "measured": f"{p['qos'][1]['ratio']:.2f} (mosquitto_pub -l delivered "
                    f"{p['qos'][1]['pub_delivered']:,} of {p['messages']:,})", "unit": "x"})
        out.append({"what": "QoS 1 publishing ratio agent / mosquitto_pub --repeat <= 1.0",
                    "value": p["qos"][1]["ratio_repeat"], "limit": 1.0,
                    "measured": f"{p['qos'][1]['ratio_repeat']:.2f}", "unit": "x"})
    q = res.get("qos1")
    if q and "error" not in q:
        import qos1
        out.extend(qos1.targets(q))
    b = res.get("bytes")
    if b and "error" not in b:
        import bytes as bytes_bench
        out.extend(bytes_bench.targets(b))
    return out


def svg(res):
    """Each target as a bar of measured / target (the line at 1.0 is the target), then the publishing times."""
    rows = res["targets"]
    p = res.get("publishing")
    pub = sorted(p["qos"].items()) if p and "error" not in p else []
    W, left, barw, rowh = 760, 330, 360, 26
    h = 60 + rowh * len(rows) + (50 + rowh * 2 * len(pub) if pub else 0) + 20
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{h}" fill="white"/>',
         '<text x="10" y="22" font-size="15" font-weight="bold">make bench: measured / target '
         '(the line is the target; shorter is better)</text>']
    scale = max([2.0] + [r["value"] / r["limit"] for r in rows if r["limit"]])
    y = 40
    for r in rows:
        frac = r["value"] / r["limit"] if r["limit"] else 0
        w = barw * frac / scale
        color = "#3a8f4b" if r.get("ok", frac <= 1) else "#c0504d"
        s.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{esc(r["what"])}</text>')
        s.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{rowh - 8}" fill="{color}"/>')
        s.append(f'<text x="{left + max(w, 1) + 6:.1f}" y="{y + 15}">{esc(r["measured"])}</text>')
        y += rowh
    x1 = left + barw / scale
    s.append(f'<line x1="{x1:.1f}" y1="36" x2="{x1:.1f}" y2="{y}" stroke="black" stroke-dasharray="4,3"/>')
    if pub:
        y += 30
        s.append(f'<text x="10" y="{y}" font-size="15" font-weight="bold">{p["messages"]:,} messages: wall time '
                 '(median)</text>')
        y += 10
        top = max(max(q["ours_wall_s"], q["pub_wall_s"]) for _, q in pub)
        for qos, q in pub:
            for who, v, color in (("agent --once", q["ours_wall_s"], "#4f81bd"),
                                  ("mosquitto_pub -l", q["pub_wall_s"], "#9b9b9b")):
                w = barw * v / top
                s.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">QoS {qos}, {who}</text>')
                s.append(f'<rect x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{rowh - 8}" fill="{color}"/>')
                s.append(f'<text x="{left + w + 6:.1f}" y="{y + 15}">{v * 1000:.0f} ms</text>')
                y += rowh
    s.append("</svg>")
    return "\n".join(s) + "\n"


def esc(t):
    return t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def machine(binary):
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"], cwd=ROOT,
                           capture_output=True, text=True)
    mq = subprocess.run(["mosquitto_pub", "--help"], capture_output=True, text=True)
    mqv = next((l for l in (mq.stdout + mq.stderr).splitlines() if "version" in l), "mosquitto_pub")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": f"Linux {platform.release()}",
        "commit": (commit.stdout.strip() or "?") + (" (src modified)" if dirty.stdout.strip() else ""),
        "mosquitto": mqv.strip().rstrip("."),
        "binary": os.path.relpath(binary, ROOT) if binary.startswith(ROOT) else binary,
    }


# ---------------------------------------------------------------------------------------------------------


def main():
    # kernel_figures imports `bench`: let it share this running module (one RES, one Failure), not a copy.
    sys.modules.setdefault("bench", sys.modules[__name__])
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # The shipped binary (static musl, std rebuilt for size) is what is measured; the glibc build of
    # `make build` gets one comparison row.
    shipped = os.path.join(ROOT, "dist", "amd64", NAME)
    glibc = os.path.join(ROOT, "target", "release", NAME)
    binary_src = os.environ.get("BENCH_BIN", shipped if os.path.exists(shipped) else glibc)
    if not os.path.exists(binary_src):
        raise Failure(f"{binary_src} missing: run make dist")
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            raise Failure(f"{tool} missing (Debian: apt-get install mosquitto mosquitto-clients)")
    os.makedirs(OUT_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="telemetry-bench-")
    failures = 0
    try:
        # A private copy, so a concurrent rebuild cannot swap the binary under a measurement.
        binary = os.path.join(work, NAME)
        shutil.copy2(binary_src, binary)
        res = {"machine": machine(binary_src)}
        res["sizes"] = binary_sizes()
        broker = Broker(work)
        log(f"mosquitto on 127.0.0.1:{broker.port}, work dir {work}")

        res["file"] = []
        ticks_big = int(TICKS) if TICKS else None
        for containers, ticks in ((8, 3 * ticks_big if ticks_big else 30), (1000, ticks_big or 20),
                                  (10000, ticks_big or 10)):
            stats = os.path.join(work, f"stats-{containers}.jsonl")
            write_stats(stats, containers)
            conf = os.path.join(work, f"file-{containers}")
            write_config(conf, broker, {"mode": "FILE", "file_path": stats, "collection_interval_in_seconds": 1})
            log(f"FILE mode, {containers} containers, {ticks} ticks")
            try:
                row = measure_ticks(binary, conf, os.path.join(work, f"agent-file-{containers}.log"), ticks,
                                    touch=stats)
                row["containers"] = containers
            except Failure as e:
                failures += 1
                row = {"containers": containers, "error": str(e)}
            row["label"] = f"{containers:,}"
            res["file"].append(row)
        # For comparison: the glibc build at 1,000 containers (glibc's malloc and a dynamic libc).
        if os.path.exists(glibc) and binary_src != glibc and "BENCH_BIN" not in os.environ:
            glibc_copy = os.path.join(work, NAME + "-glibc")
            shutil.copy2(glibc, glibc_copy)
            conf = os.path.join(work, "file-1000")
            log(f"FILE mode, 1000 containers, x86_64 glibc build, {ticks_big or 20} ticks")
            try:
                row = measure_ticks(glibc_copy, conf, os.path.join(work, "agent-file-1000-glibc.log"), ticks_big or 20,
                                    touch=os.path.join(work, "stats-1000.jsonl"))
            except Failure as e:
                failures += 1
                row = {"error": str(e)}
            row.update(containers=1000, label="1,000 (x86_64 glibc build, for comparison)", musl=True)
            res["file"].append(row)
        # MQTT over TLS at 1,000 containers against the plain row above (issue 13: at most 1.5x).
        tls = make_certs(work)
        if tls is None:
            res["tls"] = {"note": "not measured: openssl missing (apt-get install openssl)"}
        else:
            try:
                tls_broker = Broker(work, tls)
                conf = os.path.join(work, "file-1000-tls")
                write_config(conf, tls_broker, {"mode": "FILE", "file_path": os.path.join(work, "stats-1000.jsonl"),
                                                "collection_interval_in_seconds": 1})
                log(f"FILE mode, 1000 containers, over TLS, {ticks_big or 20} ticks")
                res["tls"] = measure_ticks(binary, conf, os.path.join(work, "agent-file-1000-tls.log"),
                                           ticks_big or 20, touch=os.path.join(work, "stats-1000.jsonl"))
                plain = next((r for r in res["file"] if r.get("containers") == 1000 and "error" not in r), None)
                if plain:
                    cpu = lambda r: r["cpu_sched_ms"] or r["cpu_stat_ms"]
                    res["tls"]["plain_cpu_ms"] = cpu(plain)
                    res["tls"]["ratio"] = cpu(res["tls"]) / cpu(plain)
            except Failure as e:
                failures += 1
                res["tls"] = {"error": str(e)}
        by = {r["containers"]: r for r in res["file"] if "error" not in r and not r.get("musl")}
        if all(k in by for k in (8, 1000, 10000)):
            c = {k: (by[k]["cpu_sched_ms"] or by[k]["cpu_stat_ms"]) for k in by}
            res["linearity"] = (
                f"{c[8] * 1000 / 8:.1f} µs per container at 8 (fixed costs dominate), "
                f"{c[1000] * 1000 / 1000:.2f} µs at 1,000, {c[10000] * 1000 / 10000:.2f} µs at 10,000; "
                f"from 1,000 to 10,000 containers (10x) CPU per tick grows {c[10000] / c[1000]:.1f}x "
                f"and peak RSS {by[10000]['peak_rss'] / by[1000]['peak_rss']:.2f}x.")

        res["floods"] = floods(binary, broker, work)
        failures += sum(1 for r in res["floods"] if "error" in r)

        stats10k = os.path.join(work, "stats-10000.jsonl")
        try:
            res["publishing"] = publishing(binary, broker, work, stats10k, 10000)
        except Failure as e:
            failures += 1
            res["publishing"] = {"error": str(e)}
        try:
            import qos1
            log("QoS 1 burst against rumqttc through two brokers (issue 18)")
            res["qos1"] = qos1.measure(binary, work)
        except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the bench goes on
            failures += 1
            res["qos1"] = {"error": str(e)}
        try:
            import bytes as bytes_bench
            log("bytes on the wire per device per day through a counting proxy (issue 19)")
            res["bytes"] = bytes_bench.measure(binary, work)
            failures += bytes_bench.failures(res["bytes"])
        except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the bench goes on
            failures += 1
            res["bytes"] = {"error": str(e)}
        try:
            import spool
            log("an outage with and without the spool (issue 21)")
            res["spool"] = spool.measure(binary, work)
        except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the bench goes on
            failures += 1
            res["spool"] = {"error": str(e)}
        try:
            import fleet
            quick = os.environ.get("BENCH_FLEET_QUICK") == "1"
            log(f"a simulated fleet of {100 if quick else 500} agents: a broker restart, a RabbitMQ node killed "
                "(issue 20)")
            res["fleet"] = fleet.measure(binary, work, quick=quick)
            failures += sum(1 for k in ("mosquitto", "rabbit") if "error" in res["fleet"].get(k, {}))
        except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the bench goes on
            failures += 1
            res["fleet"] = {"error": str(e)}

        res["engine"] = []
        why = engine_answers()
        if why:
            res["engine"] = [{"mode": "CLI", "note": f"not available ({why})"},
                             {"mode": "ENGINE", "note": f"not available ({why})"}]
        else:
            try:
                # Before the rows below start their own containers: the counts are the engine's whole.
                import engine_scale
                binaries = [binary] + [b for b in [os.environ.get("BENCH_ENGINE_BASELINE")] if b]
                log(f"ENGINE collection time at {engine_scale.COUNTS} containers ({len(binaries)} binaries)")
                measured = engine_scale.measure(binaries, broker.port)
                res["engine_scale"] = {("this build" if b == binary else b): r for b, r in measured.items()}
            except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the bench goes on
                failures += 1
                res["engine_scale"] = {"error": str(e)}
            try:
                # Also before the rows below: it grows the engine to 200 containers of its own and removes them.
                import kernel_figures
                log("CPU per cycle of agent + engine: ENGINE figures from cgroups or the API, and the CLI route "
                    f"(issue 12; {kernel_figures.COUNTS} containers)")
                res["kernel_figures"] = kernel_figures.measure(binary, broker, work)
                failures += res["kernel_figures"]["failures"]
                kernel_figures.write(res["kernel_figures"], machine(binary_src))
            except Exception as e:  # noqa: BLE001 - reported in the table, the rest of the bench goes on
                failures += 1
                res["kernel_figures"] = {"error": str(e)}
            try:
                log(f"starting {ENGINE_CONTAINERS} busybox containers")
                start_containers(work, ENGINE_CONTAINERS)
                for mode in ("CLI", "ENGINE"):
                    conf = os.path.join(work, f"mode-{mode}")
                    collector = {"mode": mode, "collection_interval_in_seconds": 1}
                    if mode == "CLI":
                        collector["cli_path"] = "docker"
                    else:
                        ok, why = engine_supported(binary, work, broker)
                        if not ok:
                            res["engine"].append({"mode": mode, "note": f"not available: {why}"})
                            continue
                    write_config(conf, broker, collector)
                    log(f"{mode} mode on real containers, 10 ticks")
                    try:
                        row = measure_ticks(binary, conf, os.path.join(work, f"agent-{mode}.log"), 10, 15)
                        row["mode"] = mode
                    except Failure as e:
                        failures += 1
                        row = {"mode": mode, "error": str(e)}
                    res["engine"].append(row)
            except Failure as e:
                failures += 1
                res["engine"].append({"mode": "CLI/ENGINE", "error": str(e)})

        res["targets"] = targets(res)
        report = render(res)
        with open(os.path.join(OUT_DIR, "report.md"), "w") as f:
            f.write(report)
        with open(os.path.join(OUT_DIR, "report.svg"), "w") as f:
            f.write(svg(res))
        with open(os.path.join(OUT_DIR, "report.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
        print(report)
        log(f"written {os.path.relpath(OUT_DIR, ROOT)}/report.md, report.svg, report.json")
    finally:
        RES.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        log(f"failed: {e}")
        sys.exit(1)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); everything started was stopped")
        sys.exit(130)
