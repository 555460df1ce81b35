#!/usr/bin/env python3
"""A RabbitMQ cluster of N nodes on this machine, loopback only, for the failover tests (issue 20).

Debian's rabbitmq-server (3.10) with the rabbitmq_mqtt plugin. Every node has its own node name
(bmct-<tag>-<i>@localhost), its own directories under DIR/node<i> (mnesia, logs, rabbitmq.conf,
enabled_plugins, pid file), its own AMQP, MQTT and distribution ports (free ones, 127.0.0.1 only); the
cluster has its own Erlang cookie (DIR/home/.erlang.cookie: every node and every rabbitmqctl runs with
HOME=DIR/home) and its own epmd on a port of its own, so neither a system rabbitmq nor a parallel run is
touched. Nodes 1..N-1 join node 0 (stop_app, join_cluster, start_app). MQTT lets anyone in as the default
user guest, which RabbitMQ admits from loopback only.

Nothing is ever stopped by name: a node by its own beam.smp pid (from its pid file, which the node writes
itself), epmd by the pid we started it with.

As a module (tests/bench/fleet.py):

    with Cluster("/tmp/x", nodes=3) as c:   # start() on enter, stop() on exit
        c.mqtt_ports, c.pid(0), c.kill(0), c.restart(0)
        c.stop_all(), c.start_all()         # the whole cluster down gracefully, and back together

As a command (tests/common/rabbitmq.rs), state kept in DIR/cluster.json:

    rabbitmq_cluster.py start DIR N    one JSON line {"mqtt_ports": [...], "pids": [...], "nodes": [...], ...}
    rabbitmq_cluster.py kill DIR I     SIGKILL of node I's beam.smp (a crash: no goodbye)
    rabbitmq_cluster.py restart DIR I  node I started again; it rejoins the cluster. Prints the JSON line
    rabbitmq_cluster.py stop-all DIR   every node stopped gracefully (SIGTERM to each pid, all at once),
                                       their directories and the epmd kept. Prints the JSON line
    rabbitmq_cluster.py start-all DIR  every node started again, together; returns once all run clustered
    rabbitmq_cluster.py stop DIR       every node (SIGTERM, SIGKILL after 30 s) and the epmd
    rabbitmq_cluster.py status DIR     the JSON line
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

LIB = "/usr/lib/rabbitmq/bin"
SERVER = os.path.join(LIB, "rabbitmq-server")
CTL = os.path.join(LIB, "rabbitmqctl")
STATE = "cluster.json"
# Generous: two cores shared with cargo and other tests.
START_TIMEOUT = 180


def installed():
    """Whether Debian's rabbitmq-server (and Erlang's epmd) are here."""
    return os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK) and shutil.which("epmd") is not None


def free_ports(n):
    """n distinct free loopback ports (held together while probing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own child not yet reaped) is dead for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def listening(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


class Cluster:
    """N RabbitMQ nodes clustered on loopback, everything under `directory` (created; removed by stop())."""

    def __init__(self, directory, nodes=3, tag=None):
        self.dir = os.path.abspath(directory)
        self.n = nodes
        self.tag = tag or f"{os.getpid()}{secrets.token_hex(2)}"
        self.nodes = [f"bmct-{self.tag}-{i}@localhost" for i in range(nodes)]
        self.amqp_ports = []
        self.mqtt_ports = []
        self.dist_ports = []
        self.epmd_port = None
        self.epmd_pid = None
        self.pids = [None] * nodes
        self.start_seconds = None
        self._children = {}

    # -- state, for the command line ------------------------------------------------------------

    def state(self):
        return {
            "nodes": self.nodes,
            "mqtt_ports": self.mqtt_ports,
            "amqp_ports": self.amqp_ports,
            "dist_ports": self.dist_ports,
            "pids": self.pids,
            "epmd_port": self.epmd_port,
            "epmd_pid": self.epmd_pid,
            "tag": self.tag,
            "start_seconds": self.start_seconds,
        }

    def save(self):
        tmp = os.path.join(self.dir, STATE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state(), f)
        os.replace(tmp, os.path.join(self.dir, STATE))

    @classmethod
    def load(cls, directory):
        with open(os.path.join(directory, STATE)) as f:
            s = json.load(f)
        c = cls(directory, nodes=len(s["nodes"]), tag=s["tag"])
        c.nodes = s["nodes"]
        c.mqtt_ports = s["mqtt_ports"]
        c.amqp_ports = s["amqp_ports"]
        c.dist_ports = s["dist_ports"]
        c.pids = s["pids"]
        c.epmd_port = s["epmd_port"]
        c.epmd_pid = s["epmd_pid"]
        c.start_seconds = s.get("start_seconds")
        return c

    # -- environment ----------------------------------------------------------------------------

    def home(self):
        return os.path.join(self.dir, "home")

    def node_dir(self, i):
        return os.path.join(self.dir, f"node{i}")

    def env(self, i):
        """Node i's environment, for rabbitmq-server and for every rabbitmqctl aimed at it."""
        d = self.node_dir(i)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env.update(
            HOME=self.home(),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            # /etc/rabbitmq/rabbitmq-env.conf is the system node's: not read.
            RABBITMQ_CONF_ENV_FILE=os.path.join(d, "rabbitmq-env.conf"),
            RABBITMQ_NODENAME=self.nodes[i],
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_ports[i]),
            RABBITMQ_DIST_PORT=str(self.dist_ports[i]),
            RABBITMQ_CONFIG_FILE=os.path.join(d, "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=os.path.join(d, "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(d, "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=os.path.join(d, "mnesia"),
            RABBITMQ_MNESIA_DIR=os.path.join(d, "mnesia", "data"),
            RABBITMQ_LOG_BASE=os.path.join(d, "log"),
            RABBITMQ_LOGS=os.path.join(d, "log", "rabbit.log"),
            RABBITMQ_PID_FILE=os.path.join(d, "rabbit.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=loopback,
            # rabbitmqctl is a short-lived Erlang node of its own: any free port (0..0), loopback only.
            RABBITMQ_CTL_DIST_PORT_MIN="0",
            RABBITMQ_CTL_DIST_PORT_MAX="0",
            RABBITMQ_CTL_ERL_ARGS=loopback,
        )
        return env

    def ctl(self, i, *args, timeout=120, check=True):
        """rabbitmqctl -n <node i> ARGS; its output."""
        r = subprocess.run(
            [CTL, "-n", self.nodes[i], *args],
            env=self.env(i),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {self.nodes[i]} {' '.join(args)}: {r.returncode}\n{r.stdout}{r.stderr}")
        return r.stdout

    # -- life -----------------------------------------------------------------------------------

    def _prepare(self):
        os.makedirs(self.home(), exist_ok=True)
        cookie = os.path.join(self.home(), ".erlang.cookie")
        if not os.path.exists(cookie):
            with open(os.open(cookie, os.O_WRONLY | os.O_CREAT, 0o400), "w") as f:
                f.write(secrets.token_hex(20).upper())
        ports = free_ports(3 * self.n + 1)
        self.epmd_port = ports[0]
        self.amqp_ports = ports[1 : 1 + self.n]
        self.mqtt_ports = ports[1 + self.n : 1 + 2 * self.n]
        self.dist_ports = ports[1 + 2 * self.n :]
        for i in range(self.n):
            d = self.node_dir(i)
            os.makedirs(os.path.join(d, "mnesia"), exist_ok=True)
            os.makedirs(os.path.join(d, "log"), exist_ok=True)
            with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
                f.write(
                    f"listeners.tcp.1 = 127.0.0.1:{self.amqp_ports[i]}\n"
                    f"mqtt.listeners.tcp.1 = 127.0.0.1:{self.mqtt_ports[i]}\n"
                    "mqtt.allow_anonymous = true\n"
                    "mqtt.default_user = guest\n"
                    "mqtt.default_pass = guest\n"
                    "mqtt.vhost = /\n"
                    "mqtt.exchange = amq.topic\n"
                    # A busy two-core test machine: no alarm for the disk or memory of its scratch nodes.
                    "disk_free_limit.absolute = 1MB\n"
                    "vm_memory_high_watermark.relative = 0.8\n"
                )
            with open(os.path.join(d, "enabled_plugins"), "w") as f:
                f.write("[rabbitmq_mqtt].\n")

    def _start_epmd(self):
        # Our own epmd, in the foreground so that its pid is ours to stop.
        env = dict(os.environ, ERL_EPMD_ADDRESS="127.0.0.1")
        p = subprocess.Popen(
            ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "epmd.log"), "ab"),
            start_new_session=True,
        )
        self.epmd_pid = p.pid
        self._children[p.pid] = p
        deadline = time.monotonic() + 20
        while not listening(self.epmd_port):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not listen on {self.epmd_port}")
            time.sleep(0.05)

    def _spawn(self, i):
        pid_file = self.env(i)["RABBITMQ_PID_FILE"]
        if os.path.exists(pid_file):
            os.unlink(pid_file)
        out = open(os.path.join(self.node_dir(i), "log", "stdout.log"), "ab")
        p = subprocess.Popen(
            [SERVER],
            env=self.env(i),
            cwd=self.node_dir(i),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._children[p.pid] = p
        return p

    def _await(self, i, p):
        """Waits for node i to have booted (rabbitmqctl await_startup) and its MQTT port to listen; notes
        its beam.smp pid from the pid file."""
        deadline = time.monotonic() + START_TIMEOUT
        pid_file = self.env(i)["RABBITMQ_PID_FILE"]
        while True:
            if p.poll() is not None:
                raise RuntimeError(f"{self.nodes[i]} exited ({p.returncode}):\n{self.log_tail(i)}")
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
                break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.nodes[i]} wrote no pid file:\n{self.log_tail(i)}")
            time.sleep(0.1)
        # Noted (and saved) before the waits below: a node that fails them is still ours to stop, from
        # this process or from a later `stop` that reads only the state file.
        self.pids[i] = pid
        self.save()
        left = max(10, int(deadline - time.monotonic()))
        self.ctl(i, "await_startup", "--timeout", str(left), timeout=left + 30)
        while not listening(self.mqtt_ports[i]):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.nodes[i]}: MQTT port {self.mqtt_ports[i]} closed")
            time.sleep(0.1)

    def _boot_all(self):
        """Spawns every node and waits for all of them at once (a node of a cluster may wait for its peers
        to boot); the first error, once all are done."""
        procs = [self._spawn(i) for i in range(self.n)]
        errors = []

        def wait(i):
            try:
                self._await(i, procs[i])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=wait, args=(i,)) for i in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.save()
        if errors:
            raise errors[0]

    def log_tail(self, i, lines=30):
        out = []
        for name in ("stdout.log", "rabbit.log"):
            try:
                with open(os.path.join(self.node_dir(i), "log", name), errors="replace") as f:
                    out.append(f"--- {name}\n" + "".join(f.readlines()[-lines:]))
            except OSError:
                pass
        return "\n".join(out)

    def start(self):
        """Starts every node and clusters them; the time it took is in .start_seconds."""
        t0 = time.monotonic()
        os.makedirs(self.dir, exist_ok=True)
        self._prepare()
        self.save()
        try:
            self._start_epmd()
            self.save()
            self._boot_all()
            for i in range(1, self.n):
                self.ctl(i, "stop_app")
                self.ctl(i, "join_cluster", self.nodes[0])
                self.ctl(i, "start_app")
            running = self.running_nodes()
            if sorted(running) != sorted(self.nodes):
                raise RuntimeError(f"cluster has {running}, wanted {self.nodes}")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = round(time.monotonic() - t0, 1)
        self.save()
        return self

    def running_nodes(self, via=0):
        """The running nodes as node `via` sees them."""
        out = self.ctl(via, "eval", "rabbit_nodes:all_running().")
        return [n.strip().strip("'") for n in out.strip().strip("[]").split(",") if n.strip()]

    def pid(self, i):
        """Node i's beam.smp pid (None when it is not running)."""
        return self.pids[i] if alive(self.pids[i]) else None

    def kill(self, i):
        """SIGKILL of node i's beam.smp: a crash, no goodbye to its peers or clients."""
        pid = self.pids[i]
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 30)
        self.pids[i] = None
        self.save()

    def restart(self, i):
        """Starts node i again (after kill(i)); it rejoins the cluster from its own mnesia."""
        if self.pid(i):
            raise RuntimeError(f"{self.nodes[i]} is running (pid {self.pids[i]})")
        p = self._spawn(i)
        self._await(i, p)
        self.save()
        deadline = time.monotonic() + START_TIMEOUT
        while self.nodes[i] not in self.running_nodes(via=i):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.nodes[i]} did not rejoin")
            time.sleep(0.5)
        return self

    def stop_all(self, timeout=60):
        """The whole cluster down, gracefully: SIGTERM to every node's own beam.smp pid at once (each
        closes its clients and listeners, writes its queues and persistent messages, and leaves), SIGKILL
        only for a node still there after `timeout` s. The directories (mnesia, queues, messages) and our
        epmd are kept: start_all() brings the same cluster back. Returns {"stop_seconds": time until
        every node had exited, "sigkilled": the indices that needed the SIGKILL}."""
        t0 = time.monotonic()
        pids = {i: p for i, p in enumerate(self.pids) if p and alive(p)}
        for pid in pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = t0 + timeout
        killed = []
        for i, pid in pids.items():
            if not self._wait_gone(pid, max(0.1, deadline - time.monotonic())):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._wait_gone(pid, 10)
                killed.append(i)
        seconds = time.monotonic() - t0
        # The rabbitmq-server wrappers (our children, when this process started them) leave with their node.
        for p in self._children.values():
            if p.pid != self.epmd_pid and p.poll() is None:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.pids = [None] * self.n
        self.save()
        return {"stop_seconds": round(seconds, 1), "sigkilled": killed}

    def start_all(self):
        """Every node started again after stop_all(), all at once: nodes of a cluster stopped together each
        wait at boot for the peers they last saw running, so one started alone would wait for the others.
        Returns once every node has booted, listens on its MQTT port and sees all of them running; the time
        it took is returned and left in .start_seconds."""
        t0 = time.monotonic()
        running = [i for i in range(self.n) if self.pid(i)]
        if running:
            raise RuntimeError(f"nodes {running} are running")
        if not (self.epmd_pid and alive(self.epmd_pid)):
            self._start_epmd()
            self.save()
        self._boot_all()
        deadline = time.monotonic() + START_TIMEOUT
        while sorted(self.running_nodes()) != sorted(self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster has {self.running_nodes()} after a full restart, wanted {self.nodes}")
            time.sleep(0.5)
        self.start_seconds = round(time.monotonic() - t0, 1)
        self.save()
        return self.start_seconds

    def _wait_gone(self, pid, seconds):
        deadline = time.monotonic() + seconds
        while alive(pid):
            child = self._children.get(pid)
            if child is not None:
                try:
                    child.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.1)
            if time.monotonic() > deadline:
                return False
        return True

    def stop(self):
        """Every node (SIGTERM to its own pid, SIGKILL after 30 s), then our epmd; the directory removed."""
        pids = [p for p in self.pids if p and alive(p)]
        # A node that has not written its pid file yet is still our child: its wrapper's group.
        for p in self._children.values():
            if p.pid != self.epmd_pid and p.poll() is None and p.pid not in pids:
                pids.append(p.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            if not self._wait_gone(pid, 30):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._wait_gone(pid, 10)
        self.pids = [None] * self.n
        if self.epmd_pid and alive(self.epmd_pid):
            os.kill(self.epmd_pid, signal.SIGTERM)
            if not self._wait_gone(self.epmd_pid, 10):
                os.kill(self.epmd_pid, signal.SIGKILL)
        self.epmd_pid = None
        for p in self._children.values():
            if p.poll() is None:
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def main(argv):
    usage = ("usage: rabbitmq_cluster.py start DIR N | kill DIR I | restart DIR I | stop-all DIR | start-all DIR"
             " | stop DIR | status DIR")
    if len(argv) < 3:
        print(usage, file=sys.stderr)
        return 2
    cmd, directory = argv[1], argv[2]
    if cmd == "start":
        if not installed():
            print(f"{SERVER} is missing: apt-get install rabbitmq-server", file=sys.stderr)
            return 3
        n = int(argv[3]) if len(argv) > 3 else 3
        c = Cluster(directory, nodes=n).start()
        print(f"{n}-node RabbitMQ cluster up in {c.start_seconds} s", file=sys.stderr)
    elif cmd == "kill":
        c = Cluster.load(directory)
        c.kill(int(argv[3]))
    elif cmd == "restart":
        c = Cluster.load(directory)
        t0 = time.monotonic()
        c.restart(int(argv[3]))
        print(f"node {argv[3]} back in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    elif cmd == "stop-all":
        c = Cluster.load(directory)
        out = c.stop_all()
        print(f"{c.n} nodes stopped in {out['stop_seconds']} s"
              + (f", SIGKILL for {out['sigkilled']}" if out["sigkilled"] else ""), file=sys.stderr)
        print(json.dumps(dict(c.state(), **out)), flush=True)
        return 0
    elif cmd == "start-all":
        c = Cluster.load(directory)
        c.start_all()
        print(f"{c.n} nodes back in {c.start_seconds} s", file=sys.stderr)
    elif cmd == "stop":
        if not os.path.exists(os.path.join(directory, STATE)):
            return 0
        Cluster.load(directory).stop()
        return 0
    elif cmd == "status":
        c = Cluster.load(directory)
        c.pids = [c.pid(i) for i in range(c.n)]
    else:
        print(usage, file=sys.stderr)
        return 2
    print(json.dumps(c.state()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
