#!/usr/bin/env python3
"""Issue 19's "how much": bytes on the wire per device per day, counted by a TCP proxy between the agent
and mosquitto (stdlib only). A section of `make bench`; alone: `make bench-bytes` (`--quick`: fewer rows).

What runs: 10 containers in FILE mode (device figures off: the containers are what is compared), each row
its own agent, proxy and stats file, all rows at once (they are light) against one plain and one TLS
mosquitto. Time is scaled by SCALE = 10: a 1 s tick stands for the default 10 s interval, and every other
duration is scaled with it (heartbeat 900 s -> 90 s, keep-alive 60 s -> 6 s, outage 2 min -> 12 s, backoff
cap 60 s -> 6 s), so one real second is ten device seconds and a device day is 8,640 real seconds.

The stats files are rewritten twice a second (a new inode each time, so every tick reads a new version);
the figures change once a second. At rest: CPU moves 0.3 points either way, memory 0.4 %, network
counters 10 kB and block I/O 5 kB a tick, PIDs not at all: all under the deadbands (1 point, 2 %, 1 MiB).
Busy: CPU jumps 5 points every 3 ticks, memory 5 % every 4, network 400 kB and block I/O 300 kB a tick
(a crossing every 3 and 4 ticks), PIDs every 5.

Each row's timeline: start; A = 2 s after the first tick; B = A + 90 s (exactly one heartbeat, so the
steady rate includes one heartbeat round); then the proxy cuts the connection and refuses new ones for
12 s (its listener closed: the agent's attempts get a RST); C = 20 s after the proxy opens again.
Per day = steady rate (A..B) x 8,640 s + the outage's extra bytes (B..C less the steady rate over it),
i.e. one 2-minute outage a day. The start (connect, first baseline) is left out: it happens once per boot.

Counted at the proxy's socket towards the agent: TCP payload both ways (MQTT, or TLS records), and
segments both ways from the kernel's TCP_INFO (tcpi_segs_in/segs_out, read on that socket while it is
open and once more just before it is closed; the SYN-ACK, which the child socket does not count, is added).
The proxy's listener sets TCP_MAXSEG 1460, so segments are Ethernet-sized as on a device, not loopback's
64 KiB. All-in = payload + 52 bytes of TCP/IP headers per segment (pure ACKs included) + 2 segments per
refused connect during the outage (SYN, RST; counted from the agent's log). Over TLS the proxy sees
records, not MQTT: their count is shown and their overhead is in the payload.

The original program is emulated (its code is not here): a small Python MQTT 3.1.1 client that, as the
original did, publishes 2 figures (CPU and memory percent) per container per tick, one message per metric,
QoS 1, on `isb/{device_id}/telemetry/system/{service_name}/{metric}` with the bare value as payload,
through its own proxy, and drops the ticks while the broker is away (the original lost them).

Writes target/bench/bytes.md and bytes.json. Nothing passes or fails on a figure except the exit code when
a row could not be measured; the issue's target (fleet defaults at rest, <= 2 MB per device per day all
in) is reported as met or not.
"""

import json
import math
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SCALE = 10
DAY = 86400 / SCALE  # real seconds that stand for a device day
CONTAINERS = 10
HEARTBEAT = 900 // SCALE
KEEP_ALIVE = 60 // SCALE
OUTAGE = 120 / SCALE
RECOVERY = 20
HEADER = 52
TARGET = 2_000_000
DEVICE = "4f9c1e6a0b7d4c2e9a8f3b5d6e7c1a20"  # a balena UUID's length: topics as long as on a device
SERVICES = ["main", "worker", "db", "cache", "mqtt-bridge", "frontend", "api", "scheduler", "logger", "sensor"]
# Offsets in struct tcp_info (Linux 4.6 and later): tcpi_segs_out, tcpi_segs_in; tcpi_data_segs_in.
TCP_INFO_SEGS, TCP_INFO_DATA_IN = 136, 152


def log(msg):
    print(f"bench bytes: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The stats files.


def dec(v):
    """docker's HumanSizeWithPrecision(v, 3): decimal units, 3 significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if v < 1000 or unit == "TB":
            return f"{v:.3g}{unit}"
        v /= 1000


def binary(v):
    """docker's BytesSize: binary units, 4 significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.4g}{unit}"
        v /= 1024


def stats_text(busy, k):
    """The stats file at tick `k` (seconds since the start)."""
    lines = []
    for i, svc in enumerate(SERVICES[:CONTAINERS]):
        limit = (1 + i % 4) * 2**30
        mem = (40 + 37 * i) * 2**20
        cpu = 2 + 3.1 * i
        if busy:
            cpu += 5 * ((k // 3) % 2) + 0.2 * math.sin(k + i)
            mem *= 1 + 0.05 * ((k // 4) % 2)
            net, blk, pids = 400_000 * k, 300_000 * k, 10 + i + (k // 5) % 3
        else:
            cpu += 0.3 * math.sin(k + i)
            mem *= 1 + 0.004 * math.sin(k / 3 + i)
            net, blk, pids = 10_000 * k, 5_000 * k, 10 + i
        cid = f"{i + 1:012x}"
        net0, blk0 = 50_000_000 * (i + 1), 20_000_000 * (i + 1)
        rec = {"BlockIO": f"{dec(blk0 + blk)} / {dec(blk0 // 2 + blk // 3)}", "CPUPerc": f"{cpu:.2f}%",
               "Container": cid, "ID": cid, "MemPerc": f"{mem / limit * 100:.2f}%",
               "MemUsage": f"{binary(mem)} / {binary(limit)}",
               "Name": f"{svc}_{5400000 + i}_2764432_{i:032x}",
               "NetIO": f"{dec(net0 + net)} / {dec(net0 // 3 + net // 2)}", "PIDs": str(pids)}
        lines.append(json.dumps(rec, separators=(",", ":")))
    return "\n".join(lines) + "\n"


def original_figures(busy, k):
    """(service, cpu %, memory %) per container, as the stats file says at tick `k`."""
    out = []
    for line in stats_text(busy, k).splitlines():
        r = json.loads(line)
        out.append((r["Name"].split("_")[0], r["CPUPerc"].rstrip("%"), r["MemPerc"].rstrip("%")))
    return out


def keep_writing(files, t0, stop):
    """Rewrites every (path, busy) twice a second with the figures of the current second."""
    while not stop.wait(0.5):
        k = int(time.monotonic() - t0)
        for path, busy in files:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(stats_text(busy, k))
            os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# The counting proxy.


class Counter:
    """One direction of the MQTT stream (plain rows), split into packets: what kind of bytes go where."""

    def __init__(self, tls):
        self.tls = tls
        self.buf = b""
        self.c = dict(bytes=0, chunks=0, publish=0, topic=0, payload=0, framing=0, puback=0, ping=0, other=0,
                      records=0)

    def feed(self, data):
        self.c["bytes"] += len(data)
        self.c["chunks"] += 1
        self.buf += data
        if self.tls:
            while len(self.buf) >= 5:  # TLS records: type, version, 2-byte length
                n = 5 + struct.unpack_from(">H", self.buf, 3)[0]
                if len(self.buf) < n:
                    break
                self.c["records"] += 1
                self.buf = self.buf[n:]
            return
        while len(self.buf) >= 2:
            mult, rem, i = 1, 0, 1
            while i < len(self.buf) and i <= 4:
                b = self.buf[i]
                rem += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            else:
                return
            n = i + rem
            if len(self.buf) < n:
                return
            p, self.buf = self.buf[:n], self.buf[n:]
            kind = p[0] >> 4
            if kind == 3:
                tlen = struct.unpack_from(">H", p, i)[0]
                pid = 2 if (p[0] >> 1) & 3 else 0
                self.c["publish"] += 1
                self.c["topic"] += tlen
                self.c["payload"] += n - i - 2 - tlen - pid
                self.c["framing"] += i + 2 + pid
            elif kind == 4:
                self.c["puback"] += n
            elif kind in (12, 13):
                self.c["ping"] += n
            else:
                self.c["other"] += n


def segs(sock):
    """(segments out, segments in, segments in with data) of a TCP socket, from the kernel's TCP_INFO."""
    try:
        b = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("<II", b, TCP_INFO_SEGS) + struct.unpack_from("<I", b, TCP_INFO_DATA_IN)
    except OSError:
        return (0, 0, 0)


class Conn:
    def __init__(self, client, upstream, tls):
        self.client, self.upstream = client, upstream
        self.up, self.down = Counter(tls), Counter(tls)
        self.final = None  # (segs out, segs in) read just before the client socket was closed
        self.lock = threading.Lock()

    def close(self):
        with self.lock:
            if self.final is None:
                self.final = segs(self.client)
                for s in (self.client, self.upstream):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

    def segments(self):
        with self.lock:
            out, inn, data_in = self.final or segs(self.client)
        return out + 1, inn, data_in  # + the SYN-ACK, which the accepted socket does not count


class Proxy:
    """Listens on a free port and relays to `upstream`, counting; cut() closes every connection and the
    listener (connects are refused), restore() listens again on the same port."""

    def __init__(self, upstream, tls):
        self.upstream, self.tls = upstream, tls
        self.conns = []
        self.lock = threading.Lock()
        self.port = 0
        self.listen()

    def listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Ethernet-sized segments, as on a device (loopback's MSS is 64 KiB): inherited by accepted sockets
        # and announced in their SYN-ACK, so the agent's side keeps to it too.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self.port = s.getsockname()[1]
        self.listener = s
        threading.Thread(target=self.accept, args=(s,), daemon=True).start()

    def accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                client.close()
                continue
            c = Conn(client, up, self.tls)
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self.relay, args=(c, client, up, c.up), daemon=True).start()
            threading.Thread(target=self.relay, args=(c, up, client, c.down), daemon=True).start()

    @staticmethod
    def relay(conn, src, dst, counter):
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                counter.feed(data)
                dst.sendall(data)
            except OSError:
                break
        conn.close()

    def cut(self):
        # shutdown first: a close alone leaves a listener that another thread is blocked accepting on alive.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            c.close()

    def restore(self):
        self.listen()

    def snapshot(self):
        with self.lock:
            conns = list(self.conns)
        total = dict(connections=len(conns), segs_out=0, segs_in=0, data_segs_in=0)
        for c in conns:
            o, i, d = c.segments()
            total["segs_out"] += o
            total["segs_in"] += i
            total["data_segs_in"] += d
            for side, counter in (("up", c.up), ("down", c.down)):
                for k, v in counter.c.items():
                    total[f"{side}_{k}"] = total.get(f"{side}_{k}", 0) + v
        return total


# ---------------------------------------------------------------------------------------------------------
# The original program, emulated.


class Original:
    """Publishes what the original did each tick through `port`; reconnects each tick while the broker is
    away, dropping that tick's figures."""

    def __init__(self, port, busy, ca, t0, n):
        self.port, self.busy, self.ca, self.t0 = port, busy, ca, t0
        self.client_id = f"isb-{n}-{DEVICE}".encode()  # one per row: rows sharing a broker must not kick each other
        self.stop = threading.Event()
        self.ticks = 0
        self.connects = 0
        self.refused = 0
        self.sock = None
        self.pid = 0
        threading.Thread(target=self.run, daemon=True).start()

    def connect(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ca:
            ctx = ssl.create_default_context(cafile=self.ca)
            s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
        cid = self.client_id
        body = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", KEEP_ALIVE) + struct.pack(">H", len(cid)) + cid
        s.sendall(bytes([0x10, len(body)]) + body)
        if len(s.recv(4)) < 4:
            raise OSError("no CONNACK")
        threading.Thread(target=self.drain, args=(s,), daemon=True).start()
        self.connects += 1
        return s

    @staticmethod
    def drain(s):
        try:
            while s.recv(4096):
                pass
        except OSError:
            pass

    def run(self):
        k = 0
        while not self.stop.wait(max(0.0, self.t0 + k + 1 - time.monotonic())):
            k += 1
            try:
                if self.sock is None:
                    self.sock = self.connect()
                out = b""
                for svc, cpu, mem in original_figures(self.busy, int(time.monotonic() - self.t0)):
                    for metric, value in (("cpu", cpu), ("memory", mem)):
                        topic = f"isb/{DEVICE}/telemetry/system/{svc}/{metric}".encode()
                        self.pid = self.pid % 65535 + 1
                        rest = struct.pack(">H", len(topic)) + topic + struct.pack(">H", self.pid) + value.encode()
                        out += bytes([0x32, len(rest)]) + rest
                self.sock.sendall(out)
                self.ticks += 1
            except OSError:
                if self.sock is None:
                    self.refused += 1
                else:
                    try:
                        self.sock.close()
                    except OSError:
                        pass
                self.sock = None

    def close(self):
        self.stop.set()
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------------------
# Rows.


def rows(quick):
    """(report, payload mode, tls, busy, device figures) per agent row, then ("original", None, tls, busy,
    False)."""
    if quick:
        return [("on_change", "per_metric", False, False, False), ("every_tick", "per_metric", False, False, False),
                ("on_change", "per_service", False, False, False), ("original", None, False, False, False)]
    # The fleet's real defaults also publish the device's own figures: this machine's, whatever it is doing.
    out = [("on_change", "per_metric", False, False, True)]
    for busy in (False, True):
        for tls in (False, True):
            for report in ("every_tick", "on_change"):
                for mode in ("per_metric", "per_service"):
                    out.append((report, mode, tls, busy, False))
            out.append(("original", None, tls, busy, False))
    return out


class Row:
    def __init__(self, spec, binary, work, brokers, t0, n):
        self.report, self.mode, self.tls, self.busy, self.device = spec
        self.name = (f"{n:02d}-{self.report}-{self.mode}-{'tls' if self.tls else 'plain'}-"
                     f"{'busy' if self.busy else 'rest'}{'-device' if self.device else ''}")
        broker = brokers[self.tls]
        self.proxy = Proxy(broker.port, self.tls)
        self.stats = os.path.join(work, self.name + ".jsonl")
        with open(self.stats, "w") as f:
            f.write(stats_text(self.busy, 0))
        self.agent = self.original = None
        if self.report == "original":
            self.original = Original(self.proxy.port, self.busy, broker.tls and broker.tls[0], t0, n)
            return
        conf = os.path.join(work, self.name)
        os.makedirs(conf)
        collector = {"mode": "FILE", "file_path": self.stats, "collection_interval_in_seconds": 1,
                     "report": self.report, "report_heartbeat_in_seconds": HEARTBEAT,
                     "device_metrics": self.device}
        url = ("mqtts" if self.tls else "tcp") + f"://127.0.0.1:{self.proxy.port}"
        mqtt = {"broker_url": url, "device_id": DEVICE, "client_id": f"bytes-{n}", "qos": 1,
                "keep_alive_in_seconds": KEEP_ALIVE, "payload_mode": self.mode,
                "reconnect_max_delay_in_seconds": 60 // SCALE}
        if self.tls:
            mqtt["tls_ca_file"] = broker.tls[0]
        with open(os.path.join(conf, "balena_stats_collector.config.json"), "w") as f:
            json.dump(collector, f)
        with open(os.path.join(conf, "mqtt.config.json"), "w") as f:
            json.dump(mqtt, f)
        self.agent = bench.Agent(binary, conf, os.path.join(work, self.name + ".log"))

    def lines(self, word):
        if not self.agent:
            return 0
        with self.agent.cv:
            return sum(1 for l in self.agent.lines if word in l)

    def refused(self):
        return self.original.refused if self.original else self.lines("unreachable")


def all_in(d):
    return d["up_bytes"] + d["down_bytes"] + HEADER * (d["segs_in"] + d["segs_out"] + 2 * d.get("refused", 0))


def diff(a, b):
    return {k: b.get(k, 0) - a.get(k, 0) for k in b}


def per_day(steady, steady_s, outage, outage_s):
    """Steady rate over a device day plus one outage's extra (never below zero)."""
    out = {}
    for k in steady:
        rate = steady[k] / steady_s
        out[k] = rate * DAY + max(0.0, outage.get(k, 0) - rate * outage_s)
    out["all_in"] = all_in(out)
    return out


def measure(binary, work, quick=False):
    """Every row at once; see the module's doc."""
    tls = bench.make_certs(work)
    brokers = {False: bench.Broker(work, name="mosquitto-bytes")}
    specs = [s for s in rows(quick) if not s[2] or tls]
    if tls:
        brokers[True] = bench.Broker(work, tls, name="mosquitto-bytes-tls")
    t0 = time.monotonic()
    stop = threading.Event()
    built = [Row(s, binary, work, brokers, t0, n) for n, s in enumerate(specs)]
    writer = threading.Thread(target=keep_writing, args=([(r.stats, r.busy) for r in built], t0, stop), daemon=True)
    writer.start()
    log(f"{len(built)} rows at once, {CONTAINERS} containers each, 1 s ticks standing for {SCALE} s; about "
        f"{HEARTBEAT + OUTAGE + RECOVERY + 10:.0f} s")
    try:
        for r in built:
            if r.agent:
                r.agent.wait_ticks(1, 30)
        time.sleep(2)  # A: the first tick's baseline is out (a bench pause, not a test's wait)
        a = {r.name: r.proxy.snapshot() for r in built}
        ta = time.monotonic()
        time.sleep(HEARTBEAT)
        b = {r.name: r.proxy.snapshot() for r in built}
        tb = time.monotonic()
        refused_b = {r.name: r.refused() for r in built}
        log(f"steady window done; cutting the broker for {OUTAGE:.0f} s")
        for r in built:
            r.proxy.cut()
        time.sleep(OUTAGE)
        for r in built:
            r.proxy.restore()
        time.sleep(RECOVERY)
        c = {r.name: r.proxy.snapshot() for r in built}
        tc = time.monotonic()
        results = []
        for r in built:
            steady, outage = diff(a[r.name], b[r.name]), diff(b[r.name], c[r.name])
            outage["refused"] = r.refused() - refused_b[r.name]
            steady["refused"] = 0
            day = per_day(steady, tb - ta, outage, tc - tb)
            reconnected = r.original.connects >= 2 if r.original else r.lines("connected to broker") >= 2
            results.append({"row": r.name, "report": r.report, "mode": r.mode, "tls": r.tls, "busy": r.busy,
                            "device": r.device,
                            "day": day, "steady": steady, "outage": outage, "steady_s": tb - ta,
                            "outage_s": tc - tb, "reconnected": reconnected})
        return {"rows": results, "scale": SCALE, "containers": CONTAINERS, "device": DEVICE, "tls": bool(tls)}
    finally:
        stop.set()
        for r in built:
            if r.original:
                r.original.close()
            if r.agent:
                r.agent.stop()
            r.proxy.cut()


# ---------------------------------------------------------------------------------------------------------
# Report.


def mb(v):
    return f"{v / 1e6:,.2f} MB"


def label(r):
    if r["report"] == "original":
        return "original program (emulated)"
    return f"`{r['report']}`, `{r['mode']}`" + (" + the device's own figures (this machine's)" if r["device"] else "")


def render(res):
    L = [f"{res['containers']} containers in FILE mode, QoS 1, a 32-character device id; 1 s ticks standing "
         f"for the default 10 s (every duration scaled by {res['scale']}), one 2-minute broker outage a day. Per "
         "device per day. MQTT: the PUBLISH/PUBACK/PINGREQ... bytes (plain rows; over TLS the same MQTT rides in "
         "the records counted). Segments: both directions, pure ACKs included (TCP_INFO). All-in: payload + 52 "
         "bytes per segment.", ""]
    for busy in (False, True):
        rs = [r for r in res["rows"] if r["busy"] == busy]
        if not rs:
            continue
        L += [f"**{'Busy' if busy else 'At rest'}**", "",
              "| report, payload | TLS | messages | MQTT / TLS bytes | segments | all-in | all-in per 30 days |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in rs:
            d = r["day"]
            wire = d["up_bytes"] + d["down_bytes"]
            what = f"{mb(wire)}" + (f" in {d['up_records'] + d['down_records']:,.0f} records" if r["tls"] else "")
            msgs = f"{d['up_publish']:,.0f}" if not r["tls"] else "(as plain)"
            flag = "" if r["reconnected"] else " (did not reconnect!)"
            L.append(f"| {label(r)}{flag} | {'yes' if r['tls'] else 'no'} | {msgs} | {what} | "
                     f"{d['segs_in'] + d['segs_out']:,.0f} | **{mb(d['all_in'])}** | {mb(30 * d['all_in'])} |")
        L.append("")
    L += ["How a tick leaves (steady window, per tick, from the agent): TCP payload, the proxy's reads of it, "
          "TLS records, segments with data (TCP_INFO; MSS 1448), all segments (pure ACKs included); and the "
          "broker's TLS records back (mosquitto writes one per PUBACK):", "",
          "| row | bytes | reads | records | data segments | segments | broker's records |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["rows"]:
        s, t = r["steady"], r["steady_s"]
        rec = (lambda k: f"{s[k] / t:.2f}") if r["tls"] else (lambda k: "")
        L.append(f"| {label(r)}, {'TLS' if r['tls'] else 'plain'}, {'busy' if r['busy'] else 'at rest'} | "
                 f"{s['up_bytes'] / t:,.0f} | {s['up_chunks'] / t:.2f} | {rec('up_records')} | "
                 f"{s['data_segs_in'] / t:.2f} | {s['segs_in'] / t:.2f} | {rec('down_records')} |")
    L.append("")
    fleet = next((r for r in res["rows"] if r["report"] == "on_change" and r["mode"] == "per_metric"
                  and not r["tls"] and not r["busy"] and not r["device"]), None)
    if fleet:
        d = fleet["day"]
        hdr = HEADER * (d["segs_in"] + d["segs_out"] + 2 * d["refused"])
        L += ["Where the fleet default's bytes go at rest (`on_change`, `per_metric`, plain), per day:", "",
              "| part | bytes |", "| --- | ---: |"]
        for what, v in (("topics of the PUBLISHes", d["up_topic"]), ("payloads", d["up_payload"]),
                        ("PUBLISH framing (header, lengths, packet id)", d["up_framing"]),
                        ("PUBACKs", d["down_puback"]), ("PINGREQ + PINGRESP", d["up_ping"] + d["down_ping"]),
                        ("CONNECT, CONNACK, SUBSCRIBE, DISCONNECT", d["up_other"] + d["down_other"]),
                        (f"TCP/IP headers ({d['segs_in'] + d['segs_out']:,.0f} segments, "
                         f"{d['segs_in'] + d['segs_out'] - d['up_chunks'] - d['down_chunks']:,.0f} of them "
                         "without data, about)", hdr)):
            L.append(f"| {what} | {v:,.0f} |")
        L.append("")
    return "\n".join(L)


def targets(res):
    out = []
    for r in res["rows"]:
        if r["report"] == "on_change" and r["mode"] == "per_metric" and not r["busy"] and not r["device"]:
            v = r["day"]["all_in"]
            out.append({"what": f"fleet defaults at rest, all in per device per day{' over TLS' if r['tls'] else ''}"
                        " <= 2 MB", "value": v, "limit": TARGET, "measured": mb(v), "unit": "B"})
    return out


def main():
    sys.modules.setdefault("bytes", sys.modules[__name__])
    bench.signal.signal(bench.signal.SIGTERM, bench.on_signal)
    bench.signal.signal(bench.signal.SIGHUP, bench.on_signal)
    quick = "--quick" in sys.argv[1:]
    args = [a for a in sys.argv[1:] if a != "--quick"]
    binary_src = args[0] if args else os.environ.get(
        "BENCH_BIN", os.path.join(bench.ROOT, "target", "release", bench.NAME))
    if not os.path.exists(binary_src):
        raise bench.Failure(f"{binary_src} missing: run make build")
    os.makedirs(bench.OUT_DIR, exist_ok=True)
    work = tempfile.mkdtemp(prefix="telemetry-bytes-")
    try:
        binary = os.path.join(work, bench.NAME)
        bench.shutil.copy2(binary_src, binary)
        res = measure(binary, work, quick)
        res["targets"] = targets(res)
        report = render(res)
        for t in res["targets"]:
            report += f"\nTarget: {t['what']}: {t['measured']}, {'met' if t['value'] <= t['limit'] else 'NOT met'}"
        with open(os.path.join(bench.OUT_DIR, "bytes.md"), "w") as f:
            f.write(report + "\n")
        with open(os.path.join(bench.OUT_DIR, "bytes.json"), "w") as f:
            json.dump(res, f, indent=1)
        print(report)
        log(f"written {os.path.relpath(bench.OUT_DIR, bench.ROOT)}/bytes.md and bytes.json")
        return 0 if all(r["reconnected"] for r in res["rows"]) else 1
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
        log(f"interrupted ({e}); everything started was stopped")
        sys.exit(130)
