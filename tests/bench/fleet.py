#!/usr/bin/env python3
"""Issue 20's fleet: 500 real agents (the static binary) against one mosquitto restarted after 20 s down,
and against a 3-node RabbitMQ cluster with one node killed (SIGKILL), then, with the same agents, the
whole cluster stopped (SIGTERM to every node's pid) and every node started again together after 20 s.

Every agent runs in FILE mode on ONE shared stats file (one container) that this script rewrites every
2 s (write + rename), so every 10 s tick has a new version with moved figures; distinct device ids
(MQTT_DEVICE_ID=fleet-NNNN), QoS 1, `report` every_tick and payload_mode per_service: exactly one QoS 1
message per agent per tick, each carrying its collection timestamp. Why every_tick: by exception
(on_change, the image's default) an agent publishes only what moved, so a missing message could not be
told from one that was never due; with one message per tick the timestamps of one agent come 10 s apart
and every gap in them is a lost message. A subscriber of our own (a small MQTT 3.1.1 client over a
socket, clean session off, QoS 1, so the broker queues for it across its own restart: mosquitto runs with
persistence) records every message; lost = ticks between an agent's first and last message received
that never arrived. Messages received twice (QoS 1 is at least once) are counted apart.

Connection attempts come from the agents' own log lines (every attempt ends in exactly one of
`connected to broker`, `broker ... unreachable`, `could not connect to broker`), stamped when the line
reaches us (the agents log no time themselves; on loopback a refused connect ends within a millisecond).
While the broker is down its port is simply closed, as in a real restart: the kernel refuses each
connect. (A placeholder listener accepting and closing would count the same attempts but change what the
agents see.)

The cluster's full restart counts from the first CONNACK any node gives again (probed with a CONNECT of
our own): RabbitMQ 3.10 nodes listen on MQTT before they take sessions (its MQTT client-id tracker, a Raft
cluster of its own, must have a leader first; until then CONNECT gets CONNACK 3, server unavailable).

Steady state: the broker's CPU (% of one core from /proc/PID/stat utime+stime over a window) and RSS, each
agent's VmRSS. A linear extrapolation to 10,000 devices is printed, labelled as such.

Alone: `make bench-fleet` (`--quick`: 100 agents, shorter windows); `python3 tests/bench/fleet.py [--quick]
[--agents N] [--skip-rabbit] [--skip-cluster-restart] [--bin PATH]`. Writes target/bench/fleet.md and
fleet.json. `make bench` runs it as a section. Exit code non-zero when a target FAILs or a measurement
could not be made.
"""

import argparse
import json
import os
import random
import re
import resource
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
import bench  # noqa: E402

INTERVAL = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONNECTED_RE = re.compile(r"connected to broker (\S+?):(\d+)(?:.*\(failover from \S+?:(\d+)\))?")
START_RE = re.compile(r"starting at \S+?:(\d+)")


def log(msg):
    print(f"bench fleet: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The subscriber: MQTT 3.1.1 over a socket, clean session off, QoS 1, reconnecting on its own.


def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


class Subscriber:
    def __init__(self, ports, topic, client_id):
        self.ports = list(ports)
        self.topic = topic
        self.client_id = client_id
        self.lock = threading.Lock()
        self.seen = {}  # device -> {timestamp: count}
        self.arrivals = []  # (mono, device, timestamp)
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.sock = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 0
        while not self.stopping.is_set():
            port = self.ports[i % len(self.ports)]
            try:
                self._session(port)
            except OSError:
                pass
            self.connected.clear()
            i += 1
            self.stopping.wait(0.3)

    def _session(self, port):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock = s
        try:
            var = _str("MQTT") + bytes([4, 0x00]) + struct.pack("!H", 300)  # clean session off
            body = var + _str(self.client_id)
            s.sendall(bytes([0x10]) + _varint(len(body)) + body)
            s.settimeout(None)
            f = s.makefile("rb")
            pkt = self._read(f)
            if pkt is None or pkt[0] >> 4 != 2 or pkt[1][1] != 0:
                raise OSError("no CONNACK")
            body = struct.pack("!H", 1) + _str(self.topic) + bytes([1])
            s.sendall(bytes([0x82]) + _varint(len(body)) + body)
            last_ping = time.monotonic()
            while not self.stopping.is_set():
                pkt = self._read(f)
                if pkt is None:
                    return
                kind, data = pkt
                if kind >> 4 == 9:
                    self.connected.set()
                elif kind >> 4 == 3:
                    qos = (kind >> 1) & 3
                    tl = struct.unpack("!H", data[:2])[0]
                    topic = data[2:2 + tl].decode(errors="replace")
                    pos = 2 + tl
                    if qos:
                        pid = data[pos:pos + 2]
                        pos += 2
                        s.sendall(b"\x40\x02" + pid)
                    self._record(topic, data[pos:])
                if time.monotonic() - last_ping > 60:
                    s.sendall(b"\xc0\x00")
                    last_ping = time.monotonic()
        finally:
            self.sock = None
            s.close()

    @staticmethod
    def _read(f):
        h = f.read(1)
        if not h:
            return None
        n, mult = 0, 1
        while True:
            b = f.read(1)
            if not b:
                return None
            n += (b[0] & 0x7F) * mult
            mult *= 128
            if not b[0] & 0x80:
                break
        data = f.read(n)
        if len(data) < n:
            return None
        return h[0], data

    def _record(self, topic, payload):
        parts = topic.split("/")
        if len(parts) < 2 or not payload.startswith(b"{"):
            return  # availability (online/offline) and anything not a figure
        try:
            ts = json.loads(payload)["timestamp"]
        except (ValueError, KeyError):
            return
        dev = parts[1]
        with self.lock:
            d = self.seen.setdefault(dev, {})
            d[ts] = d.get(ts, 0) + 1
            self.arrivals.append((time.monotonic(), dev, ts))

    def stop(self):
        self.stopping.set()
        s = self.sock
        if s:
            try:
                s.sendall(b"\xe0\x00")
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(timeout=5)

    def loss(self, since_ms=None):
        """Per device: ticks between first and last received that never arrived; duplicates apart. With
        since_ms, only the messages collected at or after it (one scenario of several on one subscriber)."""
        lost, dups, total, per = 0, 0, 0, {}
        with self.lock:
            for dev, d in self.seen.items():
                if since_ms is not None:
                    d = {t: c for t, c in d.items() if t >= since_ms}
                    if not d:
                        continue
                ts = sorted(d)
                expected = round((ts[-1] - ts[0]) / (INTERVAL * 1000)) + 1
                missing = max(0, expected - len(ts))
                lost += missing
                dups += sum(c - 1 for c in d.values())
                total += len(ts)
                if missing:
                    per[dev] = missing
        return {"received": total, "lost": lost, "duplicates": dups, "devices_with_loss": per}

    def latest(self):
        with self.lock:
            return {dev: max(d) for dev, d in self.seen.items()}


# ---------------------------------------------------------------------------------------------------------
# The fleet: N agent processes, their stderr read by one thread and stamped on arrival.


class Fleet:
    def __init__(self, binary, n, urls, stats, work, keep_alive=60):
        self.n = n
        self.procs = []
        self.events = []  # (mono, agent, kind, port, failover_from)
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)
        self.log = open(os.path.join(work, f"agents-{int(time.time())}.log"), "w")
        self.sel = selectors.DefaultSelector()
        self.stop_reader = False
        confdir = os.path.join(work, "empty-config")
        os.makedirs(confdir, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("STATS_", "MQTT_", "BALENA"))}
        base.update(LOG_LEVEL="info", STATS_MODE="FILE", STATS_FILE_PATH=stats,
                    STATS_COLLECTION_INTERVAL_IN_SECONDS=str(INTERVAL), STATS_REPORT="every_tick",
                    STATS_DEVICE_METRICS="false", MQTT_BROKER_URL=urls, MQTT_QOS="1",
                    MQTT_PAYLOAD_MODE="per_service", MQTT_KEEP_ALIVE_IN_SECONDS=str(keep_alive))
        for i in range(n):
            env = dict(base, MQTT_DEVICE_ID=f"fleet-{i:04d}")
            p = bench.RES.popen([binary, "--config-dir", confdir], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            os.set_blocking(p.stderr.fileno(), False)
            self.sel.register(p.stderr, selectors.EVENT_READ, (i, bytearray()))
            self.procs.append(p)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.stop_reader and self.sel.get_map():
            for key, _ in self.sel.select(timeout=0.5):
                i, buf = key.data
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    continue
                now = time.monotonic()
                buf.extend(chunk)
                while b"\n" in buf:
                    line, _, rest = bytes(buf).partition(b"\n")
                    buf[:] = rest
                    self._line(now, i, line.decode(errors="replace"))

    def _line(self, now, i, line):
        self.log.write(f"{now:.3f} {i} {line}\n")
        kind = port = frm = None
        m = CONNECTED_RE.search(line)
        if m and "INFO" in line:
            kind, port, frm = "connected", int(m.group(2)), m.group(3) and int(m.group(3))
        elif "unreachable:" in line or "could not connect to broker" in line:
            kind = "failed"
        elif "connection to broker" in line and " lost" in line:
            kind = "lost"
        elif "tick:" in line:
            kind = "tick"
        elif "starting at" in line:
            m = START_RE.search(line)
            kind, port = "start", m and int(m.group(1))
        elif line.startswith("ERROR"):
            kind = "error"
        if kind:
            with self.cv:
                self.events.append((now, i, kind, port, frm))
                self.cv.notify_all()

    def wait(self, pred, timeout, what):
        """Waits (on log lines, not a sleep) until pred(events) is true."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                r = pred(self.events)
                if r:
                    return r
                dead = [i for i, p in enumerate(self.procs) if p.poll() is not None]
                if dead:
                    raise bench.Failure(f"{len(dead)} agents exited (first: {dead[0]}, code "
                                        f"{self.procs[dead[0]].returncode}); see {self.log.name}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise bench.Failure(f"timed out after {timeout:.0f} s waiting for {what}")
                self.cv.wait(min(left, 1.0))

    def connected_since(self, t0):
        """agent -> first `connected` event at or after t0 (mono, port, failover_from)."""
        out = {}
        with self.lock:
            for t, i, kind, port, frm in self.events:
                if kind == "connected" and t >= t0 and i not in out:
                    out[i] = (t, port, frm)
        return out

    def rss_kib(self):
        vals = []
        for p in self.procs:
            try:
                vals.append(status_kib(p.pid, "VmRSS"))
            except OSError:
                pass
        return vals

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.stop_reader = True
        self.thread.join(timeout=3)
        for p in self.procs:
            p.stderr.close()
            if p in bench.RES.procs:
                bench.RES.procs.remove(p)
        self.log.close()


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime


def cpu_percent(pids, seconds):
    """% of one core each pid used over `seconds` (a measurement window: a duration by design)."""
    before = {p: cpu_ticks(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    return {p: (cpu_ticks(p) - before[p]) / CLK_TCK / dt * 100 for p in pids}


def rewriter(path, stop):
    """The shared stats file rewritten every 2 s (tmp + rename), figures drawn anew each time."""
    k = 0
    while True:
        r = random.Random(k)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(bench.stats_line(r, 0) + "\n")
        os.replace(tmp, path)
        k += 1
        if stop.wait(2):
            return


def attempts_profile(events, t0, t1):
    """Attempts (each ends in one connected/failed line) per whole second from t0 to t1: (peak, total, series)."""
    per = {}
    for t, _i, kind, _p, _f in events:
        if kind in ("connected", "failed") and t0 <= t < t1:
            s = int(t - t0)
            per[s] = per.get(s, 0) + 1
    series = [per.get(s, 0) for s in range(int(t1 - t0) + 1)]
    return (max(series) if series else 0), sum(series), series


def wait_deliveries(sub, fleet, after_wall_ms, timeout, what):
    """Until every agent delivered a message collected after `after_wall_ms` (a tick after the event)."""
    devs = [f"fleet-{i:04d}" for i in range(fleet.n)]
    deadline = time.monotonic() + timeout
    while True:
        latest = sub.latest()
        behind = [d for d in devs if latest.get(d, 0) <= after_wall_ms]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise bench.Failure(f"{len(behind)} agents delivered nothing {what} within {timeout:.0f} s "
                                f"(first: {behind[0]})")
        time.sleep(0.2)  # polling the subscriber's own record, not a fixed wait


# ---------------------------------------------------------------------------------------------------------
# Scenario 1: one mosquitto, restarted after 20 s down.


class Mosquitto:
    def __init__(self, work, port, max_conn):
        self.work = work
        self.port = port
        self.conf = os.path.join(work, "fleet-mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections {max_conn}\n"
                    f"persistence true\npersistence_location {work}/\npersistence_file fleet-mosquitto.db\n"
                    "autosave_interval 5\nmax_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 100\n"
                    "log_type error\nlog_type warning\nlog_type notice\n"
                    # Started as root, mosquitto would switch to its own user, which cannot write its
                    # persistence file into our private work directory (a no-op when not root).
                    "user root\n")
        self.logf = open(os.path.join(work, "fleet-mosquitto.log"), "a")
        self.proc = None

    def start(self):
        self.proc = bench.RES.popen(["mosquitto", "-c", self.conf], stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise bench.Failure(f"mosquitto exited with {self.proc.returncode}; see {self.logf.name}")
            if bench_listening(self.port):
                return
            time.sleep(0.05)
        raise bench.Failure("mosquitto did not listen within 15 s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # its own pid; it saves its persistence file on the way out
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc in bench.RES.procs:
            bench.RES.procs.remove(self.proc)


def bench_listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def steady(fleet, pids, window):
    cpu = cpu_percent(pids, window)
    rss = sorted(fleet.rss_kib())
    return {"cpu_percent": cpu, "broker_rss_kib": {p: status_kib(p, "VmRSS") for p in pids},
            "agent_rss_kib": {"min": rss[0], "median": statistics.median(rss), "max": rss[-1], "n": len(rss)}}


def mosquitto_scenario(binary, work, n, stats, window, outage):
    res = {"agents": n, "outage_s": outage, "keep_alive": 60, "max_delay": 60}
    port = bench.free_port()
    broker = Mosquitto(work, port, n + 50)
    broker.start()
    sub = Subscriber([port], "root/+/telemetry/#", "fleet-bench-sub")
    fleet = None
    try:
        if not sub.connected.wait(10):
            raise bench.Failure("subscriber not subscribed within 10 s")
        res["broker_rss_idle_kib"] = status_kib(broker.proc.pid, "VmRSS")
        log(f"mosquitto on 127.0.0.1:{port}; starting {n} agents")
        t_start = time.monotonic()
        fleet = Fleet(binary, n, f"tcp://127.0.0.1:{port}", stats, work)
        fleet.wait(lambda e: len(fleet.connected_since(0)) == n, 120, f"{n} agents connected")
        res["all_connected_s"] = time.monotonic() - t_start
        log(f"all {n} connected in {res['all_connected_s']:.1f} s; steady state over {window} s")
        # Each agent stable (>= 30 s up) before the loss, so the restart is a stable loss for all of them.
        fleet.wait(lambda e: time.monotonic() - t_start > 35, 60, "35 s of uptime")
        res["steady"] = steady(fleet, [broker.proc.pid], window)
        res["steady"]["broker_cpu_percent"] = res["steady"]["cpu_percent"][broker.proc.pid]
        res["steady"]["broker_rss"] = res["steady"]["broker_rss_kib"][broker.proc.pid]
        log(f"stopping mosquitto (pid {broker.proc.pid}) for {outage} s")
        t_down = time.monotonic()
        broker.stop()
        time.sleep(outage)  # the scenario itself is a duration
        # Taken before the start: an agent may connect between the port opening and start() returning.
        t_up = time.monotonic()
        broker.start()
        wall_up = time.time() * 1000
        log(f"mosquitto up again (pid {broker.proc.pid}); waiting for every agent")
        fleet.wait(lambda e: len(fleet.connected_since(t_up)) == n, 300, "every agent back")
        back = fleet.connected_since(t_up)
        last = max(t for t, _p, _f in back.values())
        res["back_s"] = last - t_up
        peak, total, series = attempts_profile(fleet.events, t_down, last + 1)
        res.update(peak_attempts_per_s=peak, total_attempts=total, attempts_series=series,
                   down_to_up_s=t_up - t_down)
        log(f"every agent back {res['back_s']:.1f} s after the restart; waiting for a tick from each")
        wait_deliveries(sub, fleet, wall_up + 1000, 3 * INTERVAL + 30, "after the restart")
        res["qos1"] = sub.loss()
        res["rss_after"] = sorted(fleet.rss_kib())[-1]
    finally:
        if fleet:
            fleet.stop()
        sub.stop()
        broker.stop()
    return res


# ---------------------------------------------------------------------------------------------------------
# Scenario 2: a 3-node RabbitMQ cluster, one node killed.


def rabbit_scenario(binary, work, n, stats, window, keep_alive, outage=20, restart=True):
    import rabbitmq_cluster
    if not rabbitmq_cluster.installed():
        return {"note": "not measured: rabbitmq-server not installed (apt-get install rabbitmq-server)"}
    res = {"agents": n, "keep_alive": keep_alive}
    cdir = os.path.join(work, "rabbit")
    fleet = sub = None
    t0 = time.monotonic()
    with rabbitmq_cluster.Cluster(cdir, nodes=3) as c:
        res["cluster_start_s"] = time.monotonic() - t0
        ports = c.mqtt_ports
        log(f"RabbitMQ cluster up in {res['cluster_start_s']:.0f} s, MQTT ports {ports}")
        try:
            victim = 2
            sub = Subscriber([ports[0], ports[1]], "root/+/telemetry/#", "fleet-bench-sub-rabbit")
            if not sub.connected.wait(30):
                raise bench.Failure("subscriber not subscribed within 30 s")
            urls = ",".join(f"tcp://127.0.0.1:{p}" for p in ports)
            t_start = time.monotonic()
            fleet = Fleet(binary, n, urls, stats, work, keep_alive=keep_alive)
            fleet.wait(lambda e: len(fleet.connected_since(0)) == n, 180, f"{n} agents connected")
            res["all_connected_s"] = time.monotonic() - t_start
            log(f"all {n} connected in {res['all_connected_s']:.1f} s; steady state over {window} s")
            fleet.wait(lambda e: time.monotonic() - t_start > 35, 60, "35 s of uptime")
            pids = [c.pid(i) for i in range(3)]
            st = steady(fleet, pids, window)
            res["steady"] = {"node_cpu_percent": [st["cpu_percent"][p] for p in pids],
                             "node_rss_kib": [st["broker_rss_kib"][p] for p in pids],
                             "agent_rss_kib": st["agent_rss_kib"]}
            # Where each agent is now: its last `connected` line.
            where = {}
            with fleet.lock:
                for _t, i, kind, port, _f in fleet.events:
                    if kind == "connected":
                        where[i] = port
            on_victim = sorted(i for i, p in where.items() if p == ports[victim])
            res["per_node"] = [sum(1 for p in where.values() if p == q) for q in ports]
            log(f"agents per node {res['per_node']}; SIGKILL node {victim} (pid {c.pid(victim)})")
            t_kill = time.monotonic()
            wall_kill = time.time() * 1000
            c.kill(victim)
            fleet.wait(lambda e: all(i in fleet.connected_since(t_kill) for i in on_victim), 4 * keep_alive + 60,
                       "the victim's agents on another node")
            back = fleet.connected_since(t_kill)
            moved = {i: back[i] for i in on_victim}
            res["on_victim"] = len(on_victim)
            res["last_moved_s"] = max((t - t_kill for t, _p, _f in moved.values()), default=0)
            res["moved_to_victim_port"] = sum(1 for _t, p, _f in moved.values() if p == ports[victim])
            res["moved_without_failover_line"] = sum(1 for _t, _p, f in moved.values() if f is None)
            others = [i for i in range(n) if i not in set(on_victim)]
            peak, total, series = attempts_profile(fleet.events, t_kill, t_kill + res["last_moved_s"] + 1)
            res.update(peak_attempts_per_s=peak, total_attempts=total, attempts_series=series)
            log(f"{len(on_victim)} agents moved, the last {res['last_moved_s']:.1f} s after the kill; "
                "waiting for a tick from each")
            wait_deliveries(sub, fleet, wall_kill + 1000, 3 * INTERVAL + 30, "after the kill")
            back = fleet.connected_since(t_kill)
            res["others_moved"] = sum(1 for i in others if i in back)
            res["qos1"] = sub.loss()
            if restart:
                # The kill's figures are final here; the full restart reuses the cluster and the fleet.
                try:
                    res["restart"] = cluster_restart(c, fleet, sub, n, keep_alive, victim, outage)
                except (bench.Failure, RuntimeError) as e:
                    res["restart"] = {"error": str(e)}
        finally:
            if fleet:
                fleet.stop()
            if sub:
                sub.stop()
    return res


# ---------------------------------------------------------------------------------------------------------
# Scenario 3: the same cluster and fleet, after the kill: the whole cluster stopped gracefully, down 20 s,
# every node started again together.


class PortWatch:
    """When each node accepts again, from a thread per port: `tcp` the first moment its port takes a TCP
    connection (polled every 50 ms; a closed loopback port refuses at once), `mqtt` the first CONNACK
    (return code 0) to a CONNECT of our own (clean session, its own client id) sent from then on, every
    0.2 s while none came, each waiting up to 5 s: a node can listen well before it takes MQTT sessions.
    Monotonic times; None until it happened."""

    def __init__(self, ports):
        self.ports = list(ports)
        self.tcp = [None] * len(self.ports)
        self.mqtt = [None] * len(self.ports)
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(self.ports))]
        for t in self.threads:
            t.start()

    def _run(self, i):
        port = self.ports[i]
        while not self.done.is_set() and self.tcp[i] is None:
            if bench_listening(port):
                self.tcp[i] = time.monotonic()
            else:
                self.done.wait(0.05)
        while not self.done.is_set() and self.mqtt[i] is None:
            if mqtt_accepts(port, f"fleet-bench-probe-{i}"):
                self.mqtt[i] = time.monotonic()
            else:
                self.done.wait(0.2)

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))

    def stop(self):
        self.done.set()
        for t in self.threads:
            t.join(timeout=6)


def mqtt_accepts(port, client_id, timeout=5):
    """Whether the broker on `port` answers a clean-session CONNECT with CONNACK 0 within `timeout` s."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            body = _str("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + _str(client_id)
            s.sendall(bytes([0x10]) + _varint(len(body)) + body)
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return False
                data += chunk
            ok = data[0] == 0x20 and data[3] == 0
            if ok:
                s.sendall(b"\xe0\x00")
            return ok
    except OSError:
        return False


def last_ports(fleet, since):
    """agent -> the port of its last `connected` line at or after `since`."""
    where = {}
    with fleet.lock:
        for t, i, kind, port, _f in fleet.events:
            if kind == "connected" and t >= since:
                where[i] = port
    return where


def spread_at_most(keep_alive, max_delay):
    """The longest first-retry spread of src/mqtt/reconnect.rs: what is left of 1.5 keep-alives since the
    broker was last heard from (at most all of them), at most 30 s and the maximum delay."""
    return min(30, 1.5 * keep_alive, max_delay)


def cluster_restart(c, fleet, sub, n, keep_alive, victim, outage):
    """The node killed by the previous scenario started again (the whole cluster is what goes down), every
    agent's connection left up 35 s (stable: the loss then starts every cap at the spread), then every node
    stopped at once (SIGTERM to its own beam.smp pid; rabbitmq_cluster.Cluster.stop_all), down `outage` s
    after the last one had exited, and every node started again together (start_all). The subscriber's
    session is the kill scenario's (clean session off, a durable queue on node 0), its figures counted from
    one tick before the stop on."""
    ports = c.mqtt_ports
    max_delay = 60
    res = {"agents": n, "keep_alive": keep_alive, "max_delay": max_delay, "outage_s": outage,
           "spread_s": spread_at_most(keep_alive, max_delay)}
    t0 = time.monotonic()
    log(f"starting node {victim} again (killed above), so that the whole cluster goes down")
    c.restart(victim)
    res["victim_rejoined_s"] = time.monotonic() - t0
    with fleet.lock:
        last_conn = max(t for t, _i, kind, _p, _f in fleet.events if kind == "connected")
    fleet.wait(lambda e: time.monotonic() - last_conn > 35, 120, "35 s since the last connect")
    where = last_ports(fleet, 0)
    res["per_node_before"] = [sum(1 for p in where.values() if p == q) for q in ports]
    # The subscriber's queue, for the record: durable, on its node, its messages persistent (QoS 1).
    def queues():
        return c.ctl(0, "list_queues", "--no-table-headers", "--quiet", "name", "durable", "type", "messages",
                     "consumers", timeout=60, check=False).strip()

    res["queues_before"] = queues()
    since_ms = time.time() * 1000 - INTERVAL * 1000
    log(f"agents per node {res['per_node_before']}; stopping every node (SIGTERM to pids "
        f"{[c.pid(i) for i in range(c.n)]})")
    t_stop = time.monotonic()
    wall_stop = time.time() * 1000
    stopped = c.stop_all()
    t_gone = time.monotonic()
    res.update(stop_s=t_gone - t_stop, sigkilled=stopped["sigkilled"])
    log(f"every node gone {res['stop_s']:.1f} s after the SIGTERMs (SIGKILL for {stopped['sigkilled'] or 'none'});"
        f" down for {outage} s")
    time.sleep(outage)  # the scenario itself is a duration
    watch = PortWatch(ports)
    t_start = time.monotonic()
    try:
        c.start_all()
        t_all = time.monotonic()
        watch.wait(60)
    finally:
        watch.stop()
    if None in watch.tcp or None in watch.mqtt:
        raise bench.Failure(f"after the full restart, ports {ports}: listening {watch.tcp}, CONNACK {watch.mqtt}")
    fleet.wait(lambda e: len(fleet.connected_since(t_start)) == n, 300, "every agent back after the full restart")
    back = fleet.connected_since(t_start)
    # The cluster accepts connections again at its first CONNACK, to our probe or to an agent.
    t_up = min(min(watch.mqtt), min(t for t, _p, _f in back.values()))
    wall_up = time.time() * 1000 - (time.monotonic() - t_up) * 1000
    res.update(start_s=t_all - t_start, stop_to_all_back_s=t_all - t_stop, down_s=t_start - t_gone,
               listen_s=[f - t_start for f in watch.tcp], connack_s=[f - t_start for f in watch.mqtt])
    log(f"cluster back {res['start_s']:.1f} s after starting its nodes (listening after "
        f"{', '.join(f'{x:.1f}' for x in res['listen_s'])} s, a CONNACK after "
        f"{', '.join(f'{x:.1f}' for x in res['connack_s'])} s); every agent back")
    last = max(t for t, _p, _f in back.values())
    res["back_s"] = last - t_up
    res["first_back_s"] = min(t for t, _p, _f in back.values()) - t_up
    peak, total, series = attempts_profile(fleet.events, t_stop, last + 1)
    with fleet.lock:
        before_up = sum(1 for t, _i, kind, _p, _f in fleet.events
                        if kind in ("connected", "failed") and t_stop <= t < t_up)
    res.update(peak_attempts_per_s=peak, total_attempts=total, attempts_series=series,
               attempts_before_up=before_up,
               marks={"gone": t_gone - t_stop, "start": t_start - t_stop, "listen": min(watch.tcp) - t_stop,
                      "up": t_up - t_stop, "all_back": t_all - t_stop})
    log(f"every agent back {res['back_s']:.1f} s after the cluster's first CONNACK; waiting for a tick from each")
    wait_deliveries(sub, fleet, wall_up + 1000, 3 * INTERVAL + 60, "after the full restart")
    where = last_ports(fleet, t_start)
    res["per_node_after"] = [sum(1 for p in where.values() if p == q) for q in ports]
    with fleet.lock:
        connects = {}
        for t, i, kind, _p, _f in fleet.events:
            if kind == "connected" and t >= t_start:
                connects[i] = connects.get(i, 0) + 1
    res["reconnected_after_back"] = sum(1 for v in connects.values() if v > 1)
    res["queues_after"] = queues()
    res["qos1"] = sub.loss(since_ms)
    # Where a loss sits, for the report: each gap (a missing tick) in seconds from the stop.
    gaps = []
    with sub.lock:
        for dev in res["qos1"]["devices_with_loss"]:
            ts = sorted(t for t in sub.seen[dev] if t >= since_ms)
            for a, b in zip(ts, ts[1:]):
                k = round((b - a) / (INTERVAL * 1000))
                gaps += [round((a + j * INTERVAL * 1000 - wall_stop) / 1000) for j in range(1, k)]
    res["lost_at_s_from_stop"] = sorted(gaps)
    return res


# ---------------------------------------------------------------------------------------------------------


def targets(res):
    out = []
    m = res.get("mosquitto")
    if m and "error" not in m:
        n = m["agents"]
        out.append(("mosquitto restart: peak connection attempts/s <= a tenth of the fleet",
                    f"{m['peak_attempts_per_s']}/s", f"<= {n // 10}/s", m["peak_attempts_per_s"] <= n // 10))
        bound = spread_at_most(m["keep_alive"], m["max_delay"]) + m["max_delay"]
        out.append(("mosquitto restart: every agent back within spread + backoff cap",
                    f"{m['back_s']:.1f} s", f"<= {bound:.0f} s", m["back_s"] <= bound))
        out.append(("mosquitto restart: QoS 1 messages lost", str(m["qos1"]["lost"]), "0", m["qos1"]["lost"] == 0))
    r = res.get("rabbit")
    if r and "error" not in r and "note" not in r:
        out.append(("RabbitMQ kill: every agent of the dead node on another within 2 x keep-alive",
                    f"{r['last_moved_s']:.1f} s", f"<= {2 * r['keep_alive']} s",
                    r["last_moved_s"] <= 2 * r["keep_alive"] and r["moved_to_victim_port"] == 0))
        out.append(("RabbitMQ kill: agents of the other nodes that moved", str(r["others_moved"]), "0",
                    r["others_moved"] == 0))
        out.append(("RabbitMQ kill: QoS 1 messages lost", str(r["qos1"]["lost"]), "0", r["qos1"]["lost"] == 0))
    x = res.get("rabbit_restart")
    if x and "error" not in x:
        n = x["agents"]
        out.append(("RabbitMQ full restart: peak connection attempts/s <= a tenth of the fleet",
                    f"{x['peak_attempts_per_s']}/s", f"<= {n // 10}/s", x["peak_attempts_per_s"] <= n // 10))
        bound = x["spread_s"] + x["max_delay"]
        out.append((f"RabbitMQ full restart: every agent back within spread ({x['spread_s']:.0f} s at most) "
                    f"+ backoff cap ({x['max_delay']} s), from the first CONNACK",
                    f"{x['back_s']:.1f} s", f"<= {bound:.0f} s", x["back_s"] <= bound))
        out.append(("RabbitMQ full restart: QoS 1 messages lost", str(x["qos1"]["lost"]), "0",
                    x["qos1"]["lost"] == 0))
    return out


def render(res):
    L = [f"{res['commit']}; {res['agents']} agents{' (--quick)' if res['quick'] else ''}, FILE mode, one container, "
         f"every_tick, per_service: one QoS 1 message per agent per {INTERVAL} s tick; run took {res['seconds']:.0f} s.",
         ""]
    m = res.get("mosquitto")
    if m:
        L += ["### One mosquitto, stopped (SIGTERM, its persistence saved) and started again after "
              f"{m.get('outage_s', '?')} s", ""]
        if "error" in m:
            L.append(f"failed: {m['error']}")
        else:
            s = m["steady"]
            L += ["| | measured |", "| --- | ---: |",
                  f"| all agents connected after start | {m['all_connected_s']:.1f} s |",
                  f"| broker CPU at steady state | {s['broker_cpu_percent']:.1f} % of a core |",
                  f"| broker RSS | {s['broker_rss'] / 1024:.1f} MiB |",
                  f"| agent RSS min / median / max | {s['agent_rss_kib']['min'] / 1024:.2f} / "
                  f"{s['agent_rss_kib']['median'] / 1024:.2f} / {s['agent_rss_kib']['max'] / 1024:.2f} MiB |",
                  f"| every agent back after the restart | {m['back_s']:.1f} s |",
                  f"| connection attempts from the stop to the last back | {m['total_attempts']} "
                  f"({m['total_attempts'] / m['agents']:.1f} per agent) |",
                  f"| peak attempts in one second | {m['peak_attempts_per_s']} |",
                  f"| QoS 1 messages received / lost / duplicates | {m['qos1']['received']} / {m['qos1']['lost']} / "
                  f"{m['qos1']['duplicates']} |", "",
                  "attempts per second from the stop (s 0) on: " + " ".join(map(str, m["attempts_series"])), ""]
    r = res.get("rabbit")
    if r:
        L += [f"### RabbitMQ, 3 nodes, node 2 killed (SIGKILL); keep-alive {r.get('keep_alive', '?')} s", ""]
        if "error" in r or "note" in r:
            L.append(r.get("error") or r.get("note"))
        else:
            s = r["steady"]
            L += ["| | measured |", "| --- | ---: |",
                  f"| cluster start | {r['cluster_start_s']:.0f} s |",
                  f"| all agents connected after start | {r['all_connected_s']:.1f} s |",
                  f"| agents per node before the kill | {' / '.join(map(str, r['per_node']))} |",
                  "| node CPU at steady state | " + " / ".join(f"{x:.1f} %" for x in s["node_cpu_percent"]) + " |",
                  "| node RSS | " + " / ".join(f"{x / 1024:.0f} MiB" for x in s["node_rss_kib"]) + " |",
                  f"| agent RSS min / median / max | {s['agent_rss_kib']['min'] / 1024:.2f} / "
                  f"{s['agent_rss_kib']['median'] / 1024:.2f} / {s['agent_rss_kib']['max'] / 1024:.2f} MiB |",
                  f"| agents on the killed node | {r['on_victim']} |",
                  f"| the last of them on another node | {r['last_moved_s']:.1f} s after the kill |",
                  f"| their `connected` lines without `(failover from ...)` | {r['moved_without_failover_line']} |",
                  f"| agents of the other nodes that moved | {r['others_moved']} |",
                  f"| attempts until the last moved / peak per second | {r['total_attempts']} / "
                  f"{r['peak_attempts_per_s']} |",
                  f"| QoS 1 messages received / lost / duplicates | {r['qos1']['received']} / {r['qos1']['lost']} / "
                  f"{r['qos1']['duplicates']} |", ""]
    x = res.get("rabbit_restart")
    if x or (r and "note" in r):
        x = x or {}
        L += ["### RabbitMQ, 3 nodes, the whole cluster stopped (SIGTERM to every node at once) and started "
              f"again after {x.get('outage_s', '?')} s; keep-alive {x.get('keep_alive', '?')} s, the same agents "
              "after the kill", ""]
        if "error" in x or not x:
            L.append(x.get("error") or r.get("note"))
        else:
            mk = x["marks"]
            L += ["| | measured |", "| --- | ---: |",
                  f"| the killed node started again, rejoined in | {x['victim_rejoined_s']:.1f} s |",
                  f"| agents per node before the stop | {' / '.join(map(str, x['per_node_before']))} |",
                  f"| every node gone after the SIGTERMs | {x['stop_s']:.1f} s (SIGKILL needed: "
                  f"{x['sigkilled'] or 'none'}) |",
                  f"| nodes started, each listening on its MQTT port after | "
                  + " / ".join(f"{v:.1f} s" for v in x["listen_s"]) + " |",
                  f"| nodes started, each answering a CONNECT with a CONNACK after | "
                  + " / ".join(f"{v:.1f} s" for v in x["connack_s"]) + " |",
                  f"| nodes started, every node running clustered after | {x['start_s']:.1f} s |",
                  f"| cluster stop -> all nodes back | {x['stop_to_all_back_s']:.1f} s |",
                  f"| first / every agent back, from the cluster's first CONNACK (ours or an agent's) | "
                  f"{x['first_back_s']:.1f} / "
                  f"{x['back_s']:.1f} s |",
                  f"| connection attempts from the stop to the last back | {x['total_attempts']} "
                  f"({x['total_attempts'] / x['agents']:.1f} per agent; {x['attempts_before_up']} before the "
                  "first CONNACK) |",
                  f"| peak attempts in one second | {x['peak_attempts_per_s']} |",
                  f"| QoS 1 messages received / lost / duplicates (from one tick before the stop) | "
                  f"{x['qos1']['received']} / {x['qos1']['lost']} / {x['qos1']['duplicates']} |",
                  f"| agents per node after the restart | {' / '.join(map(str, x['per_node_after']))} |",
                  f"| agents that connected more than once after the start | {x['reconnected_after_back']} |", ""]
            if x["qos1"]["lost"]:
                L += [f"lost: {len(x['qos1']['devices_with_loss'])} agents; the missing ticks, seconds from the "
                      "stop: " + " ".join(map(str, x["lost_at_s_from_stop"][:200])), ""]
            L += [f"attempts per second from the stop (s 0) on; every node gone at s {mk['gone']:.0f}, started "
                  f"at s {mk['start']:.0f}, the first listening at s {mk['listen']:.0f}, the first CONNACK at s "
                  f"{mk['up']:.0f}, all clustered at s {mk['all_back']:.0f}: "
                  + " ".join(map(str, x["attempts_series"])), "",
                  "the queues (node 0's view; name, durable, type, messages, consumers) before the stop: "
                  f"`{' | '.join(x['queues_before'].splitlines())}`; after: "
                  f"`{' | '.join(x['queues_after'].splitlines())}`", ""]
    k = 10000 / res["agents"]
    L += ["### Scaled to 10,000 devices (linear extrapolation, not measured)", "", "| | at 10,000 |", "| --- | ---: |"]
    if m and "error" not in m:
        idle = m["broker_rss_idle_kib"]
        L += [f"| mosquitto CPU (same tick rate) | {m['steady']['broker_cpu_percent'] * k:.0f} % of a core |",
              f"| mosquitto RSS (idle {idle / 1024:.1f} MiB + per agent x 10,000) | "
              f"{(idle + (m['steady']['broker_rss'] - idle) * k) / 1024:.0f} MiB |",
              f"| messages per second (one per device per tick) | {10000 / INTERVAL:.0f} |",
              f"| restart: peak attempts per second | {m['peak_attempts_per_s'] * k:.0f} (target {10000 // 10}) |",
              f"| restart: attempts in all | {m['total_attempts'] * k:.0f} |"]
    if r and "error" not in r and "note" not in r:
        L += ["| RabbitMQ CPU, 3 nodes summed | " + f"{sum(r['steady']['node_cpu_percent']) * k:.0f} % of a core |",
              f"| agents to move when a node dies | {r['on_victim'] * k:.0f} |"]
    if x and "error" not in x and "marks" in x:
        L += [f"| cluster restart: peak attempts per second | {x['peak_attempts_per_s'] * k:.0f} (target "
              f"{10000 // 10}) |", f"| cluster restart: attempts in all | {x['total_attempts'] * k:.0f} |"]
    L += ["", "### Targets", "", "| target | measured | bound | |", "| --- | ---: | ---: | --- |"]
    for what, measured, bound, ok in res["targets"]:
        L.append(f"| {what} | {measured} | {bound} | {'PASS' if ok else 'FAIL'} |")
    return L


def measure(binary, work, quick=False, agents=None, rabbit=True, full_restart=True):
    started = time.monotonic()
    n = agents or (100 if quick else 500)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * n + 1000), hard))
    commit = subprocess.run(["git", "-C", bench.ROOT, "log", "-1", "--format=%h %s"], capture_output=True,
                            text=True).stdout.strip()[:80]
    res = {"agents": n, "quick": quick, "commit": f"commit {commit}"}
    stats = os.path.join(work, "fleet-stats.jsonl")
    stop = threading.Event()
    w = threading.Thread(target=rewriter, args=(stats, stop), daemon=True)
    w.start()
    window = 10 if quick else 20
    try:
        try:
            res["mosquitto"] = mosquitto_scenario(binary, work, n, stats, window, 20)
        except bench.Failure as e:
            res["mosquitto"] = {"error": str(e)}
        if rabbit:
            try:
                res["rabbit"] = rabbit_scenario(binary, work, n, stats, window, 20, 20, full_restart)
            except (bench.Failure, RuntimeError) as e:
                res["rabbit"] = {"error": str(e)}
            if "restart" in res["rabbit"]:
                res["rabbit_restart"] = res["rabbit"].pop("restart")
    finally:
        stop.set()
    res["seconds"] = time.monotonic() - started
    res["targets"] = targets(res)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 agents, shorter windows")
    ap.add_argument("--agents", type=int)
    ap.add_argument("--skip-rabbit", action="store_true")
    ap.add_argument("--skip-cluster-restart", action="store_true", help="the RabbitMQ node kill only")
    ap.add_argument("--bin")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, bench.on_signal)
    host = os.path.join(bench.ROOT, "dist", "host", bench.NAME)
    binary = a.bin or os.environ.get("BENCH_BIN") or (
        host if os.path.exists(host) else os.path.join(bench.ROOT, "target", "release", bench.NAME))
    os.makedirs(bench.OUT_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bmct-bench-fleet-")
    log(f"binary {binary}, work dir {work}")
    try:
        res = measure(binary, work, a.quick, a.agents, not a.skip_rabbit, not a.skip_cluster_restart)
    finally:
        bench.RES.cleanup()
    text = "\n".join(["# A simulated fleet (issue 20)", ""] + render(res)) + "\n"
    with open(os.path.join(bench.OUT_DIR, "fleet.md"), "w") as f:
        f.write(text)
    with open(os.path.join(bench.OUT_DIR, "fleet.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(text)
    log(f"logs kept in {work}")
    bad = any(not ok for *_x, ok in res["targets"]) or any(
        isinstance(res.get(k), dict) and "error" in res[k] for k in ("mosquitto", "rabbit", "rabbit_restart"))
    return 1 if bad else 0


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
