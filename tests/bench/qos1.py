#!/usr/bin/env python3
"""Issue 18's benchmark: a burst of QoS 1 messages from the agent's `--once` against rumqttc publishing the
same messages with the same in-flight window, through a stock mosquitto and through one with
`set_tcp_nodelay true`. Target: ours no slower than rumqttc on both.

What is published: FILE mode on a stats file of BENCH_QOS1_CONTAINERS containers (default 10,000, bench.py's
generator), 9 metrics each: 90,000 messages. An untimed calibration run of the agent, on a broker of the
bench's own that queues without limit, captures what it publishes (topic and payload, with mosquitto_sub);
rumqttc (tests/bench/rumqttc-qos1, built here with its own lock file and target/) publishes exactly those
messages, read into memory before it connects. Its in-flight window is the agent's MAX_INFLIGHT, read from
src/ (BENCH_QOS1_INFLIGHT overrides).

What is timed, the same way for both programs: from the line each writes on stderr when the broker's
CONNACK is in (the agent's `connected to broker`, rumqttc's `connected`) to the process's exit (wait4),
i.e. every PUBLISH and PUBACK, and the DISCONNECT. Start-up and connecting are left out: the agent reads
its config and the stats file before connecting, which rumqttc has no counterpart for. What stays in is
the agent's work per message (parsing the stats records and building topics and payloads as the window
lets it), which rumqttc does not do: it gets its messages ready-made, so the comparison leans, slightly,
rumqttc's way. Also shown: start-to-exit wall time, CPU (user + sys, wait4's rusage), the broker's CPU over
each run, and rumqttc's own clock from its first PUBLISH out to the last PUBACK.

The brokers: `listener` and `allow_anonymous true` only (mosquitto's defaults otherwise), and the same
plus `set_tcp_nodelay true`; both on free loopback ports, both up for the whole run. Per broker one
untimed warm-up run of each program, then BENCH_QOS1_ROUNDS rounds (default 9, at least 3) with the two
programs taking turns to go first. Reported: median and range; "met" when ours' median <= rumqttc's. Nine
rounds because single runs scatter: on a shared 2-core machine, main's agent through the stock broker took
either about 0.7 s or about 2 s (mostly idle, waiting on acknowledgements), from one run to the next.

Alone: `make bench-qos1`, or `python3 tests/bench/qos1.py [BINARY]` (default BENCH_BIN, else the release
build of `make build`); writes target/bench/qos1.md and qos1.json. `make bench` runs it as a section of
its report. Nothing passes or fails on a figure: the exit code is non-zero only when a measurement could
not be made.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

CONTAINERS = int(os.environ.get("BENCH_QOS1_CONTAINERS", "10000"))
ROUNDS = max(3, int(os.environ.get("BENCH_QOS1_ROUNDS", "9")))
PROJECT = os.path.join(bench.ROOT, "tests", "bench", "rumqttc-qos1")
RUMQTTC = os.path.join(PROJECT, "target", "release", "rumqttc-qos1")
TOPICS = "root/bench/telemetry/system/+/+"
TIMEOUT = 300
# (label, the broker's settings after its listener line)
BROKERS = [("default", "allow_anonymous true\n"),
           ("set_tcp_nodelay true", "allow_anonymous true\nset_tcp_nodelay true\n")]


def log(msg):
    print(f"bench qos1: {msg}", file=sys.stderr, flush=True)


def agent_inflight():
    """The agent's in-flight window, from its source, so the reference follows it when it changes."""
    if os.environ.get("BENCH_QOS1_INFLIGHT"):
        return int(os.environ["BENCH_QOS1_INFLIGHT"])
    pattern = re.compile(r"const MAX_INFLIGHT: usize = ([\d_]+);")
    for top, _, files in os.walk(os.path.join(bench.ROOT, "src")):
        for name in files:
            if name.endswith(".rs"):
                with open(os.path.join(top, name)) as f:
                    m = pattern.search(f.read())
                if m:
                    return int(m.group(1).replace("_", ""))
    raise bench.Failure("no `const MAX_INFLIGHT: usize = N;` in src/: set BENCH_QOS1_INFLIGHT")


def build_rumqttc():
    """The reference client, from its committed lock file, into its own target/ (a no-op once built)."""
    cargo = os.environ.get("CARGO", "cargo")
    argv = [cargo, "build", "--release", "--locked", "--quiet", "--manifest-path",
            os.path.join(PROJECT, "Cargo.toml"), "--target-dir", os.path.join(PROJECT, "target")]
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise bench.Failure(f"building {os.path.relpath(PROJECT, bench.ROOT)} failed: {r.stderr.strip()[-500:]}")
    with open(os.path.join(PROJECT, "Cargo.lock")) as f:
        m = re.search(r'name = "rumqttc"\nversion = "([^"]+)"', f.read())
    return m.group(1) if m else "?"


def run(argv, ready, broker, env=None):
    """Runs `argv` to its end. Seconds from start to the first stderr line holding `ready` and to the exit
    (a blocking wait4, so the end is exact), the CPU of the process and of the broker meanwhile, stdout."""
    b0 = bench.proc_stat(broker.proc.pid)[0]
    t0 = time.monotonic()
    p = bench.RES.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ready_at, err = [], []

    def read():
        for line in p.stderr:
            if not ready_at and ready in line:
                ready_at.append(time.monotonic())
            err.append(line.decode(errors="replace").rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    watchdog = threading.Timer(TIMEOUT, p.kill)
    watchdog.start()
    _, status, ru = os.wait4(p.pid, 0)
    end = time.monotonic()
    watchdog.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    out = p.stdout.read().decode(errors="replace")
    p.stdout.close()
    p.stderr.close()
    name = os.path.basename(argv[0])
    if p.returncode != 0:
        raise bench.Failure(f"{name} exited {p.returncode}: {' | '.join(err[-3:]) or '(no output)'}")
    if not ready_at:
        raise bench.Failure(f"{name} never said it was connected: {' | '.join(err[-3:]) or '(no output)'}")
    return {"burst_s": end - ready_at[0], "wall_s": end - t0, "connect_s": ready_at[0] - t0,
            "cpu_s": ru.ru_utime + ru.ru_stime, "broker_cpu_s": bench.proc_stat(broker.proc.pid)[0] - b0,
            "warnings": [l for l in err if l.startswith(("WARN", "ERROR"))][:3], "stdout": out}


def agent_conf(work, broker, stats, label):
    conf = os.path.join(work, "agent-" + re.sub(r"\W+", "-", label))
    bench.write_config(conf, broker, {"mode": "FILE", "file_path": stats, "collection_interval_in_seconds": 1},
                       qos=1, once_timeout=TIMEOUT)
    return conf


def capture(binary, work, stats, messages, env):
    """The agent's messages as `topic<TAB>payload` lines, from an untimed run on a broker that queues
    without limit. A retained probe on a topic the subscription matches tells when it is in place."""
    broker = bench.Broker(work, name="mosquitto-capture")
    conf = agent_conf(work, broker, stats, "capture")
    probe = TOPICS.replace("+", "bench-probe")
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-r", "-t", probe,
                        "-m", "probe"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise bench.Failure(f"capture: mosquitto_pub of the probe failed: {r.stderr.strip()}")
    sub = bench.RES.popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", TOPICS, "-q", "1",
                           "-F", "%t\t%p", "-C", str(messages + 1), "-W", str(TIMEOUT)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines, subscribed = [], threading.Event()

    def read():
        for line in sub.stdout:
            if line.startswith(probe + "\t"):
                subscribed.set()
            else:
                lines.append(line.rstrip("\n"))
        subscribed.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not subscribed.wait(30) or sub.poll() is not None:
        raise bench.Failure("capture: mosquitto_sub did not subscribe")
    run([binary, "--once", "--config-dir", conf], b"connected to broker", broker, env)
    try:
        sub.wait(timeout=60)
    except subprocess.TimeoutExpired:
        sub.terminate()
    reader.join(timeout=10)
    if len(lines) != messages or any("\t" not in l for l in lines):
        raise bench.Failure(f"capture: {len(lines):,} of {messages:,} messages seen")
    path = os.path.join(work, "messages.tsv")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    sizes = [l.split("\t", 1) for l in lines]
    return path, {"topic_len": statistics.mean(len(t) for t, _ in sizes),
                  "payload_len": statistics.mean(len(p) for _, p in sizes)}


def measure(binary, work):
    """Both programs through both brokers; see the module's doc. `binary`: a private copy of the agent."""
    inflight = agent_inflight()
    log(f"building {os.path.relpath(PROJECT, bench.ROOT)}")
    version = build_rumqttc()
    messages = CONTAINERS * bench.METRICS_PER_CONTAINER
    stats = os.path.join(work, f"qos1-stats-{CONTAINERS}.jsonl")
    bench.write_stats(stats, CONTAINERS)
    env = dict(os.environ, LOG_LEVEL="info")
    log(f"capturing the agent's {messages:,} messages")
    tsv, shape = capture(binary, work, stats, messages, env)
    res = {"messages": messages, "containers": CONTAINERS, "inflight": inflight, "rounds": ROUNDS,
           "rumqttc_version": version, **shape, "brokers": {}}
    for label, settings in BROKERS:
        broker = bench.Broker(work, name="mosquitto-" + re.sub(r"\W+", "-", label), settings=settings)
        conf = agent_conf(work, broker, stats, label)
        progs = {
            "ours": ([binary, "--once", "--config-dir", conf], b"connected to broker", env),
            "rumqttc": ([RUMQTTC, "--port", str(broker.port), "--messages", tsv, "--inflight", str(inflight)],
                        b"connected", None),
        }
        runs = {"ours": [], "rumqttc": []}
        log(f"broker {label} (127.0.0.1:{broker.port}): warm-up")
        for who, (argv, ready, e) in progs.items():
            run(argv, ready, broker, e)
        for i in range(ROUNDS):
            order = ["ours", "rumqttc"] if i % 2 == 0 else ["rumqttc", "ours"]
            for who in order:
                argv, ready, e = progs[who]
                r = run(argv, ready, broker, e)
                if who == "rumqttc":
                    r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
                else:
                    r.pop("stdout")
                runs[who].append(r)
            log(f"broker {label}, round {i + 1}/{ROUNDS}: ours {runs['ours'][-1]['burst_s']:.3f} s, "
                f"rumqttc {runs['rumqttc'][-1]['burst_s']:.3f} s")
        res["brokers"][label] = summarize(runs)
    return res


def summarize(runs):
    out = {"runs": runs}
    for who, rs in runs.items():
        b = [r["burst_s"] for r in rs]
        out[who] = {"median_s": statistics.median(b), "min_s": min(b), "max_s": max(b),
                    "wall_s": statistics.median(r["wall_s"] for r in rs),
                    "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                    "broker_cpu_s": statistics.median(r["broker_cpu_s"] for r in rs)}
    out["rumqttc"]["own_clock_s"] = statistics.median(r["first_publish_to_last_puback_s"] for r in runs["rumqttc"])
    out["ratio"] = out["ours"]["median_s"] / out["rumqttc"]["median_s"]
    out["met"] = out["ours"]["median_s"] <= out["rumqttc"]["median_s"]
    out["warnings"] = sorted({w for r in runs["ours"] for w in r["warnings"]})
    return out


def rng(s):
    return f"{s['median_s']:.3f} s ({s['min_s']:.3f}–{s['max_s']:.3f})"


def render(res):
    L = [f"{res['messages']:,} QoS 1 messages ({res['containers']:,} containers x 9 metrics, topics of "
         f"{res['topic_len']:.0f} bytes and payloads of {res['payload_len']:.0f} on average), in-flight window "
         f"{res['inflight']:,} for both; rumqttc {res['rumqttc_version']} publishes the agent's own messages, "
         f"captured in an untimed run. Timed from CONNACK (each program's stderr line) to the process's exit: "
         f"median (range) of {res['rounds']} rounds, the two taking turns to go first, after one warm-up each.",
         "",
         "| broker | ours (`--once`) | rumqttc | ours / rumqttc | target: ours <= rumqttc |",
         "| --- | ---: | ---: | ---: | --- |"]
    for label, b in res["brokers"].items():
        L.append(f"| mosquitto, {label} | {rng(b['ours'])} | {rng(b['rumqttc'])} | **{b['ratio']:.2f}** | "
                 f"{'met' if b['met'] else 'NOT met'} |")
    L += ["",
          "| broker | wall, start to exit: ours / rumqttc | CPU: ours / rumqttc | broker CPU: ours' runs / "
          "rumqttc's | rumqttc's own clock, first PUBLISH to last PUBACK |",
          "| --- | ---: | ---: | ---: | ---: |"]
    for label, b in res["brokers"].items():
        o, t = b["ours"], b["rumqttc"]
        L.append(f"| {label} | {o['wall_s']:.3f} s / {t['wall_s']:.3f} s | {o['cpu_s'] * 1000:.0f} ms / "
                 f"{t['cpu_s'] * 1000:.0f} ms | {o['broker_cpu_s'] * 1000:.0f} ms / {t['broker_cpu_s'] * 1000:.0f} ms "
                 f"| {t['own_clock_s']:.3f} s |")
    L.append("")
    for label, b in res["brokers"].items():
        ours, theirs = (", ".join(f"{r['burst_s']:.3f}" for r in b["runs"][w]) for w in ("ours", "rumqttc"))
        L.append(f"{label}, runs (s): ours {ours}; rumqttc {theirs}.  ")
        if b["warnings"]:
            L.append(f"{label}: the agent warned: {' | '.join(b['warnings'])}  ")
    return L


def targets(res):
    """Issue 18's target per broker, in bench.py's form (value against an upper limit)."""
    return [{"what": f"QoS 1 burst, ours / rumqttc <= 1.0 (mosquitto, {label})", "value": b["ratio"], "limit": 1.0,
             "measured": f"{b['ratio']:.2f} ({b['ours']['median_s']:.3f} s against {b['rumqttc']['median_s']:.3f} s)",
             "unit": "x"} for label, b in res["brokers"].items()]


def main():
    sys.modules.setdefault("qos1", sys.modules[__name__])
    bench.signal.signal(bench.signal.SIGTERM, bench.on_signal)
    bench.signal.signal(bench.signal.SIGHUP, bench.on_signal)
    target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(bench.ROOT, "target"))
    binary_src = (sys.argv[1] if len(sys.argv) > 1 else
                  os.environ.get("BENCH_BIN", os.path.join(target_dir, "release", bench.NAME)))
    if not os.path.exists(binary_src):
        raise bench.Failure(f"{binary_src} missing: run make build")
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if not bench.shutil.which(tool):
            raise bench.Failure(f"{tool} missing (Debian: apt-get install mosquitto mosquitto-clients)")
    os.makedirs(bench.OUT_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="telemetry-bench-qos1-")
    try:
        # A private copy, so a concurrent rebuild cannot swap the binary under a measurement.
        binary = os.path.join(work, bench.NAME)
        bench.shutil.copy2(binary_src, binary)
        res = measure(binary, work)
        m = bench.machine(binary_src)
        res["machine"] = m
        lines = ["# make bench-qos1 (issue 18)", "",
                 f"{m['date']} on {m['cpu']} ({m['cores']} cores), {m['kernel']}; commit {m['commit']}; "
                 f"{m['mosquitto']}. Agent binary: `{m['binary']}`.", ""] + render(res)
        report = "\n".join(lines) + "\n"
        with open(os.path.join(bench.OUT_DIR, "qos1.md"), "w") as f:
            f.write(report)
        with open(os.path.join(bench.OUT_DIR, "qos1.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(report)
        log(f"written {os.path.relpath(bench.OUT_DIR, bench.ROOT)}/qos1.md, qos1.json")
    finally:
        bench.RES.cleanup()
        bench.shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bench.Failure as e:
        log(f"failed: {e}")
        sys.exit(1)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); everything started was stopped")
        sys.exit(130)
