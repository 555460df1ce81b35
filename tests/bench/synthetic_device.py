"""A synthetic host tree for the device pseudo-service (`@device`): a Raspberry Pi 4 (4 cores, 4 GB, balenaOS)
whose figures the bench controls, so that `make bench-bytes` can count a resting device's bytes on a build
machine whose own figures never rest. Stdlib only; used by bytes.py.

The agent reads (src/source/device/): under `proc_root` `stat` (the `cpu` line), `meminfo` (MemTotal,
MemAvailable, SwapTotal, SwapFree), `loadavg`, `uptime` and `1/net/dev`, each opened once and read again
with pread at every tick; under `host_sys_root` the CPU's thermal zones (`class/thermal/thermal_zoneN/type`
probed once at start, `temp` opened and read anew at each tick by its reader child) and the `rpi_volt`
hwmon's `in0_lcrit_alarm`; `statvfs` of each `device_disk_paths` entry (real paths: see bytes.py).

So the /proc files are rewritten in place (a new inode would never be seen: the agent keeps the old one
open), each with one pwrite of a fixed length: the real text, then spaces and a line break up to that
length, which no parser reads (stat, loadavg and uptime are read for their first line, meminfo for four
keys, net/dev for lines with a colon). Same length each time, no truncation: a read never sees an empty
or shortened file. The sysfs tree is tests/data/device/rpi4's (its symlinks kept); its `temp` is replaced
(a new inode is fine there: it is opened at every read).

Time: `u` real seconds since the start stand for SCALE x u device seconds (1 s ticks for 10 s). Counters
(CPU jiffies, interface bytes, uptime) grow at device rates; the CPU jiffies are integrated from the CPU
share of each moment, so whatever two readings the agent takes, their busy / total is that share's mean
between them.

At rest (a Pi idling): CPU 3.2 % moving +-0.42 points, memory in use 770 MB +-0.8 %, swap 22 MB +-0.3 %,
load 0.30 +-0.18 (1 min), CPU temperature 48.7 C +-0.4, eth0 3 kB received and 2.2 kB sent a tick,
resin-vpn 0.6 / 0.7 kB: every move under its deadband (1 point, 2 %, 0.5, 1 C, 1 MiB; a counter gains
270 kB in a heartbeat of 90 ticks, so the heartbeat's fresh value is always reached first). Busy: CPU
30 <-> 55 % every 3 ticks, memory +5 % every 4, temperature 58 <-> 60.5 C every 5, load 1.2 <-> 2.0 every 6,
eth0 400 / 300 kB a tick (a crossing of 1 MiB every 3 and 4 ticks), resin-vpn 20 kB.

Interfaces as on a Pi 4 on Ethernet with balenaOS: lo, eth0, wlan0 (down: zeros), resin-dns, balena0,
supervisor0, resin-vpn, a compose network's bridge and one veth per container. Published: eth0, wlan0
and resin-vpn (the agent leaves the rest out).
"""

import math
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE_SYS = os.path.join(HERE, "..", "data", "device", "rpi4", "sys")
TEMP = "devices/virtual/thermal/thermal_zone0/temp"
CORES, USER_HZ = 4, 100
MEM_TOTAL_KB = 3882652
SWAP_TOTAL_KB = 1941324
PAD = 512  # bytes of room after each /proc file's text (its length changes by a few digits at most)


def waves(u, *terms):
    """A sum of sines: (amplitude, period in real seconds, phase) each."""
    return sum(a * math.sin(u / p + ph) for a, p, ph in terms)


def step(u, every):
    """0 or 1, switching every `every` real seconds (ticks)."""
    return int(u // every) % 2


class Figures:
    """The device's figures at a moment: CPU share, memory, swap, load, temperature, and rates per tick."""

    def __init__(self, busy):
        self.busy = busy

    def cpu(self, u):
        if self.busy:
            return 30 + 25 * step(u, 3) + waves(u, (0.5, 1.3, 0))
        return 3.2 + waves(u, (0.3, 9, 0), (0.12, 1.7, 1))

    def mem_used_kb(self, u):
        base = 770_000
        if self.busy:
            return base * (1 + 0.05 * step(u, 4)) * (1 + waves(u, (0.002, 2.1, 0)))
        return base * (1 + waves(u, (0.006, 11, 0), (0.002, 2.3, 2)))

    def swap_used_kb(self, u):
        return 22_528 * (1 + waves(u, (0.003, 23, 0)))

    def load(self, u):
        if self.busy:
            one = 1.2 + 0.8 * step(u, 6) + waves(u, (0.05, 1.9, 0))
            return one, 1.4 + waves(u, (0.1, 30, 0)), 1.1 + waves(u, (0.03, 80, 0))
        return (0.30 + waves(u, (0.12, 13, 0), (0.06, 3.7, 1)), 0.28 + waves(u, (0.05, 41, 0)),
                0.25 + waves(u, (0.02, 97, 0)))

    def temp_c(self, u):
        if self.busy:
            return 58 + 2.5 * step(u, 5) + waves(u, (0.2, 1.1, 0))
        return 48.7 + waves(u, (0.3, 17, 0), (0.1, 2.9, 1))

    def traffic(self, u):
        """Bytes per tick: (eth0 received, eth0 sent, resin-vpn received, resin-vpn sent)."""
        if self.busy:
            return 400_000, 300_000, 20_000, 20_000
        return 3_000 + waves(u, (500, 5, 0)), 2_200 + waves(u, (300, 7, 0)), 600, 700


class Tree:
    """A host tree under `root` (`root/proc`, `root/sys`), moved forward by `advance(u)`."""

    def __init__(self, root, busy, scale, containers):
        self.root, self.scale, self.containers = root, scale, containers
        self.fig = Figures(busy)
        self.proc = os.path.join(root, "proc")
        self.sys = os.path.join(root, "sys")
        os.makedirs(os.path.join(self.proc, "1", "net"))
        shutil.copytree(FIXTURE_SYS, self.sys, symlinks=True)
        self.fds = {}
        self.u = 0.0
        # Counters at the start: a Pi up a day (86,423 s), as tests/data/device/rpi4 has it.
        self.uptime = 86423.51
        self.busy_j = 979_600.0  # user + system + softirq jiffies, all cores
        self.total_j = self.uptime * CORES * USER_HZ
        self.iow_j = 22_638.0
        self.net = [1_873_459_121.0, 412_983_225.0, 2_841_192.0, 5_219_384.0]
        self.advance(0.0)

    def advance(self, u):
        """The figures at `u` real seconds from the start, written."""
        dt, self.u = max(0.0, u - self.u), u
        device_s = dt * self.scale
        ticks = dt  # one tick a real second
        self.uptime += device_s
        self.total_j += device_s * CORES * USER_HZ
        self.busy_j += device_s * CORES * USER_HZ * self.fig.cpu(u) / 100
        self.iow_j += device_s * CORES * USER_HZ * 0.002
        for i, rate in enumerate(self.fig.traffic(u)):
            self.net[i] += rate * ticks
        self.write_proc("stat", self.stat())
        self.write_proc("meminfo", self.meminfo(u))
        self.write_proc("loadavg", self.loadavg(u))
        self.write_proc("uptime", f"{self.uptime:.2f} {self.idle_j() / USER_HZ:.2f}\n")
        self.write_proc("1/net/dev", self.netdev())
        tmp = os.path.join(self.sys, TEMP + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{round(self.fig.temp_c(u) * 1000)}\n")
        os.replace(tmp, os.path.join(self.sys, TEMP))

    def write_proc(self, name, text):
        data = text.encode()
        if name not in self.fds:
            fd = os.open(os.path.join(self.proc, name), os.O_RDWR | os.O_CREAT, 0o644)
            self.fds[name] = (fd, len(data) + PAD)
        fd, size = self.fds[name]
        if len(data) >= size:
            raise ValueError(f"synthetic {name} outgrew its {size} bytes")
        os.pwrite(fd, data + b" " * (size - 1 - len(data)) + b"\n", 0)

    def idle_j(self):
        return self.total_j - self.busy_j - self.iow_j

    def stat(self):
        busy, idle, iow = int(self.busy_j), int(self.idle_j()), int(self.iow_j)
        user, system = busy * 70 // 100, busy * 26 // 100
        softirq = busy - user - system
        cols = [user, 65, system, idle, iow, 0, softirq, 0, 0, 0]
        lines = ["cpu  " + " ".join(map(str, cols))]
        for c in range(CORES):  # each core a quarter (the agent reads only the `cpu` line)
            lines.append(f"cpu{c} " + " ".join(str(v // CORES) for v in cols))
        lines += [f"intr {int(self.uptime * 44)} 0 0 0 0 0", f"ctxt {int(self.uptime * 600)}", "btime 1717319358",
                  f"processes {41296 + int(self.uptime) // 60}", "procs_running 1", "procs_blocked 0",
                  f"softirq {int(self.uptime * 96)} 0 0 0 0 0 0 0 0 0 0"]
        return "\n".join(lines) + "\n"

    def meminfo(self, u):
        used = int(self.fig.mem_used_kb(u))
        avail = MEM_TOTAL_KB - used
        swap_free = SWAP_TOTAL_KB - int(self.fig.swap_used_kb(u))
        rows = [("MemTotal:", MEM_TOTAL_KB), ("MemFree:", avail - 693_572), ("MemAvailable:", avail),
                ("Buffers:", 64128), ("Cached:", 712544), ("SwapCached:", 0), ("Active:", 498232),
                ("Inactive:", 745996), ("SwapTotal:", SWAP_TOTAL_KB), ("SwapFree:", swap_free),
                ("Dirty:", 148), ("Writeback:", 0), ("AnonPages:", 467580), ("Mapped:", 241408),
                ("Shmem:", 4904), ("CmaTotal:", 524288), ("CmaFree:", 492200)]
        return "".join(f"{k:<16}{v:>8} kB\n" for k, v in rows)

    def loadavg(self, u):
        loads = " ".join(f"{max(0.0, v):.2f}" for v in self.fig.load(u))
        return f"{loads} 1/245 {3187 + int(self.uptime) // 600}\n"

    def netdev(self):
        rx, tx, vrx, vtx = (int(v) for v in self.net)
        rows = [("lo", 184522, 1923, 184522, 1923), ("eth0", rx, rx // 970, tx, tx // 410), ("wlan0", 0, 0, 0, 0),
                ("resin-dns", 0, 0, 1491, 17), ("balena0", 3129, 41, 4120, 44),
                ("supervisor0", 8273618, 51842, 90412834, 61290), ("resin-vpn", vrx, vrx // 143, vtx, vtx // 228),
                ("br-4d2f9c8e1a7b", 15492877, 101298, 382901744, 268123)]
        rows += [(f"veth{i:03x}9a1f{i}", 1_600_000 + i, 10_000 + i, 38_000_000 + i, 26_000 + i)
                 for i in range(self.containers)]
        out = ["Inter-|   Receive                                                |  Transmit",
               " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo "
               "colls carrier compressed"]
        for name, r, rp, t, tp in rows:
            # The kernel's "%6s: %7llu %7llu %4llu %4llu %4llu %5llu %10llu %9llu %8llu %7llu %4llu ..."
            out.append(f"{name:>6}: {r:>7} {rp:>7} {0:>4} {0:>4} {0:>4} {0:>5} {0:>10} {0:>9} {t:>8} {tp:>7} "
                       f"{0:>4} {0:>4} {0:>4} {0:>5} {0:>7} {0:>10}")
        return "\n".join(out) + "\n"

    def close(self):
        for fd, _ in self.fds.values():
            os.close(fd)
        self.fds.clear()
