#!/usr/bin/env python3
"""make check-ha-device: the device form of Home Assistant discovery (`home_assistant_discovery_form:
"device"`), checked with Home Assistant 2025.4.4's own code, and the migration from the entity form.

Home Assistant 2024.11 added the device form; 2024.3.3, which `make check-ha` uses, does not know it, and
the releases that do need Python 3.12 or later. So this script installs Home Assistant 2025.4.4 on pyenv's
Python 3.13 (`$HA_PYTHON`, default /root/.pyenv/versions/3.13.0/bin/python3) into target/ha-venv-2025 (or
`$HA_DEVICE_VENV`) on its first run (about 800 MB; minutes), never committed, and re-runs itself there.

Each device message goes through Home Assistant's own device-discovery code, as its MQTT integration
does when such a message arrives: `_replace_all_abbreviations`, `DEVICE_DISCOVERY_SCHEMA` (which refuses
an unknown key at the top), then one config per component with the device and origin added and the
shared options merged in (`_merge_common_device_options`). Each of those configs is then checked as
check-ha-schemas.py checks an entity form config (its `validate` and `render_all`, here with 2025.4.4's
schemas and template engine): rejected configs, keys the platform schema drops, templates that render
the wrong value all fail. `def_ent_id` is 2025.10's abbreviation of `default_entity_id`, which 2025.4.4
knows neither way: the script expands it and checks it by 2025.10's rule, as check-ha-schemas.py does.

The messages come from the agent against a throwaway mosquitto, FILE mode on tests/data/sample-stats.jsonl:
- the migration: an agent in the entity form first (its per-entity configs retained), then the same
  device in the device form: every old topic must get `{"migrate_discovery":true}`, then the device
  message, then an empty payload (in that order, as Home Assistant documents), every old `unique_id` must
  be in the device messages with the same device identifiers, and nothing may stay retained on the old
  topics;
- four more runs in the device form (`--once` and running, per_metric and per_service);
- the lifecycle entities from the unit test `dump_configs_and_messages` with `HA_DUMP_FORM=device`.
It also prints the discovery bytes each form puts on the wire at start and at a Home Assistant birth.
"""

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HA_VERSION = "2025.4.4"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "balena-multi-container-telemetry")
SAMPLE = os.path.join(ROOT, "tests", "data", "sample-stats.jsonl")
PYTHON = os.environ.get("HA_PYTHON") or "/root/.pyenv/versions/3.13.0/bin/python3"
VENV = os.environ.get("HA_DEVICE_VENV") or os.path.join(ROOT, "target", "ha-venv-2025")
MIGRATE = '{"migrate_discovery":true}'


def load_entity_checker():
    spec = importlib.util.spec_from_file_location("check_ha_schemas",
                                                  os.path.join(HERE, "check-ha-schemas.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.HA_VERSION = HA_VERSION  # its messages name the release whose schemas it uses
    return module


entity = load_entity_checker()


def ensure_home_assistant(script=__file__, extra=()):
    """Re-runs `script` under a Python that has Home Assistant 2025.4.4 (and the `extra` packages, as
    `module==version`), installing what is missing."""
    if os.environ.get("CHECK_HA_IN_VENV") == "1":
        return
    python = os.path.join(VENV, "bin", "python")
    imports = ", ".join(["homeassistant.components.mqtt.discovery"] +
                        [e.split("==")[0].replace("-", "_").replace("paho_mqtt", "paho.mqtt") for e in extra])
    probe = [python, "-c", f"import homeassistant.const as c, {imports}; assert c.__version__ == {HA_VERSION!r}"]
    if not os.path.exists(python) or subprocess.run(probe, cwd="/", capture_output=True).returncode:
        if not os.path.exists(PYTHON):
            sys.exit(f"Home Assistant {HA_VERSION} needs Python 3.13: {PYTHON} is missing (set HA_PYTHON)")
        print(f"== installing homeassistant=={HA_VERSION} {' '.join(extra)} into {VENV} (once; large)",
              flush=True)
        subprocess.run([PYTHON, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", f"homeassistant=={HA_VERSION}", *extra],
                       check=True)
    env = dict(os.environ, CHECK_HA_IN_VENV="1")
    os.execve(python, [python, os.path.abspath(script)] + sys.argv[1:], env)


def expand(topic, text):
    """Home Assistant's reading of one device message: (failures, [(entity topic, config JSON)])."""
    import voluptuous as vol
    from homeassistant.components.mqtt.discovery import (
        MQTTDiscoveryPayload, _merge_common_device_options, _replace_all_abbreviations)
    from homeassistant.components.mqtt.schemas import DEVICE_DISCOVERY_SCHEMA

    where = f"{topic}: "
    parts = topic.split("/")
    if len(parts) != 5 or parts[1] != "device":
        return [where + "not a two-level device topic (<prefix>/device/<device>/<service>/config)"], []
    node_id, object_id = parts[2], parts[3]
    try:
        payload = MQTTDiscoveryPayload(json.loads(text))
    except ValueError as e:
        return [where + f"not JSON: {e}"], []
    _replace_all_abbreviations(payload)
    try:
        DEVICE_DISCOVERY_SCHEMA(payload)
    except vol.Invalid as e:
        return [where + f"rejected by DEVICE_DISCOVERY_SCHEMA: {e}"], []
    out = []
    for component_id, config in payload["components"].items():
        config = dict(config)
        platform = config.pop("platform")
        component = MQTTDiscoveryPayload(config)
        component["device"] = payload["device"]
        component["origin"] = payload.get("origin")
        _merge_common_device_options(component, payload)
        if "def_ent_id" in component:  # 2025.10's abbreviation, unknown to 2025.4.4 (see above)
            component["default_entity_id"] = component.pop("def_ent_id")
        # The entity form's topic for the same entity, which its checks read the platform and key from.
        out.append((f"{parts[0]}/{platform}/{node_id}_{object_id}/{component_id}/config",
                    json.dumps(dict(component))))
    return [], out


def check(device_configs, messages):
    """Every device message expanded and checked: (failures, entity configs, counts)."""
    failures, expanded = [], []
    for topic, text in device_configs:
        f, configs = expand(topic, text)
        failures += f
        expanded += configs
    f, counts = entity.validate(expanded)
    failures += f
    failures += entity.render_all(expanded, messages)
    return failures, expanded, counts


def the_check_can_fail():
    """A check that cannot fail proves nothing: broken device messages must be caught."""
    cpu = {"p": "sensor", "name": "CPU", "uniq_id": "d_s_cpu", "def_ent_id": "sensor.d_s_cpu",
           "stat_t": "r/s/cpu", "val_tpl": "{{ value_json.value }}", "stat_cla": "measurement"}
    good = {"dev": {"ids": ["d_s"], "name": "s on d"}, "o": {"name": "x"}, "cmps": {"cpu": cpu}}
    topic = "homeassistant/device/d/s/config"
    without = lambda d, k: {x: v for x, v in d.items() if x != k}
    broken = [
        without(good, "o"),  # origin is mandatory
        dict(good, stat_tt="r/s"),  # an unknown key at the top
        dict(good, cmps={"cpu": without(cpu, "p")}),  # no platform
        dict(good, cmps={"cpu": dict(cpu, exp_aftr=30)}),  # a misspelt key, which the schema drops
        dict(good, cmps={"cpu": dict(cpu, stat_cla="sometimes")}),
        dict(good, cmps={"cpu": dict(cpu, def_ent_id="sensor.D__s")}),
        dict(good, cmps={"cpu": dict(cpu, p="binary_sensor")}),  # stat_cla is not a binary sensor's
    ]
    for b in broken:
        failures, _, _ = check([(topic, json.dumps(b))], [("r/s/cpu", '{"value":1}')])
        if not failures:
            sys.exit(f"the check itself is broken: {b} passed")
    ok, configs, _ = check([(topic, json.dumps(good))], [("r/s/cpu", '{"value":1}')])
    if ok or len(configs) != 1:
        sys.exit(f"the check itself is broken: a good device message failed: {ok}")
    wrong_template = dict(good, cmps={"cpu": dict(cpu, val_tpl="{{ value_json.valeu }}")})
    failures, _, _ = check([(topic, json.dumps(wrong_template))], [("r/s/cpu", '{"value":1}')])
    if not failures:
        sys.exit("the template check itself is broken")


class Subscriber:
    """mosquitto_sub on `#`: (arrival, retained, topic, payload) as they come."""

    def __init__(self, port, *filters):
        args = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-F", "%U\t%r\t%t\t%p"]
        for f in filters:
            args += ["-t", f]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.lines = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split("\t", 3)
            if len(parts) == 4:
                with self.lock:
                    self.lines.append((float(parts[0]), parts[1] == "1", parts[2], parts[3]))

    def snapshot(self):
        with self.lock:
            return list(self.lines)

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while not pred(self.snapshot()):
            if time.monotonic() > deadline:
                sys.exit(f"timed out waiting for {what}")
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def write_config(work, name, port, mode, form, interval=1, device_id=None):
    cfg = os.path.join(work, f"{name}-{form}-{mode}")
    os.makedirs(cfg)
    with open(os.path.join(cfg, "balena_stats_collector.config.json"), "w") as f:
        json.dump({"mode": "FILE", "file_path": SAMPLE, "collection_interval_in_seconds": interval}, f)
    with open(os.path.join(cfg, "mqtt.config.json"), "w") as f:
        json.dump({"broker_url": f"tcp://127.0.0.1:{port}", "device_id": device_id or name, "payload_mode": mode,
                   "home_assistant_discovery": True, "home_assistant_discovery_form": form}, f)
    return cfg


def run_once(cfg):
    subprocess.run([BIN, "--config-dir", cfg, "--once"], env=entity.clean_env(), check=True, timeout=60)


def run_until(cfg, sub, pred, what):
    """The agent running until `pred` holds for what the subscriber saw, then stopped with SIGTERM."""
    p = subprocess.Popen([BIN, "--config-dir", cfg], env=entity.clean_env())
    try:
        sub.wait_for(pred, 30, what)
    finally:
        p.send_signal(signal.SIGTERM)
        if p.wait(timeout=10) != 0:
            sys.exit(f"{cfg}: the agent exited with {p.returncode}")


def publish_bytes(topic, payload):
    """An MQTT 3.1.1 QoS 1 PUBLISH's size on the wire, and the broker's PUBACK (4 bytes)."""
    remaining = 2 + len(topic.encode()) + 2 + len(payload.encode())
    length = 1 + (remaining >= 128) + (remaining >= 16384) + (remaining >= 2097152)
    return 1 + length + remaining + 4


def values_came(name, services, times):
    """The PIDs (per_metric) or the payloads (per_service) of `services` services of device `name` have
    come `times` times."""
    def pred(lines):
        seen = {}
        for _, _, t, _ in lines:
            # A per_metric PIDs topic, or a per_service service topic.
            if t.startswith(f"root/{name}/") and (t.endswith("/pids") or t.count("/") == 4):
                seen[t] = seen.get(t, 0) + 1
        return sum(1 for n in seen.values() if n >= times) >= services
    return pred


def measure(port, work, form, mode):
    """Discovery bytes at start (until the values were re-sent) and at one Home Assistant birth, for a
    device id as long as a balena device UUID (32 hex digits)."""
    name = hashlib.md5(f"{form} {mode}".encode()).hexdigest()
    sub = Subscriber(port, f"homeassistant/#", f"root/{name}/#")
    time.sleep(0.3)
    cfg = write_config(work, name, port, mode, form, interval=3600)
    p = subprocess.Popen([BIN, "--config-dir", cfg], env=entity.clean_env())
    try:
        # Seven services have figures (one of the eight has none yet): their values come a second time
        # once their configs settled, and a third time after a birth's re-announcement.
        sub.wait_for(values_came(name, 7, 2), 30, f"{name}: the re-send")
        ours = lambda msgs: [m for m in msgs if m[2].startswith("homeassistant/") and name in m[2]]
        at_start = ours(sub.snapshot())
        before = len(sub.snapshot())
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "homeassistant/status",
                        "-m", "online"], check=True)
        sub.wait_for(lambda l: values_came(name, 7, 1)(l[before:]), 30, f"{name}: the re-send after a birth")
        after = ours(sub.snapshot()[before:])
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        sub.stop()
    total = lambda msgs: sum(publish_bytes(t, pl) for _, _, t, pl in msgs)
    return (len(at_start), total(at_start)), (len(after), total(after))


def main():
    ensure_home_assistant()
    the_check_can_fail()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    failures = []
    with tempfile.TemporaryDirectory() as work:
        port = entity.free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(["mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
        try:
            for _ in range(50):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            sub = Subscriber(port, "homeassistant/#", "root/#")
            time.sleep(0.5)

            # The migration: the entity form first, then the device form of the same device.
            old_cfg = write_config(work, "migrated", port, "per_metric", "entity")
            run_once(old_cfg)
            # The containers' configs (node ids migrated_<service>) and the device's own (node id migrated).
            old = {t: json.loads(p) for t, p in entity.retained_configs(port)
                   if ("/migrated_" in t or "/migrated/" in t) and p}
            containers = sum(1 for t in old if "/migrated_" in t)
            if containers != 63 or len(old) == containers:
                sys.exit(f"the entity form left {containers} container configs (not 63) and "
                         f"{len(old) - containers} of the device's (some wanted)")
            mark = len(sub.snapshot())
            run_until(write_config(work, "migrated", port, "per_metric", "device"), sub,
                      lambda l: sum(1 for m in l[mark:] if m[2] in old and m[3] == "") >= len(old),
                      "the old topics' removals")
            seen = sub.snapshot()[mark:]
            for topic in old:
                on_topic = [m[3] for m in seen if m[2] == topic]
                if on_topic != [MIGRATE, ""]:
                    failures.append(f"{topic}: got {on_topic}, not the migration request then a removal")
                else:
                    asked = next(i for i, m in enumerate(seen) if m[2] == topic)
                    cleared = max(i for i, m in enumerate(seen) if m[2] == topic)
                    device = [i for i, m in enumerate(seen) if m[2].startswith("homeassistant/device/")
                              and m[3] and asked < i < cleared]
                    if not device:
                        failures.append(f"{topic}: no device message between its request and its removal")

            runs = [("once-metric", "per_metric", True), ("once-service", "per_service", True),
                    ("run-metric", "per_metric", False), ("run-service", "per_service", False)]
            want = 8
            for name, mode, once in runs:
                cfg = write_config(work, name, port, mode, "device")
                if once:
                    run_once(cfg)
                    # What a run that waits must see too: the services' and the device's parts.
                    want = sum(1 for t, p in entity.retained_configs(port)
                               if t.startswith(f"homeassistant/device/{name}/") and p)
                else:
                    run_until(cfg, sub, lambda l, n=name, w=want: sum(
                        1 for m in l if m[2].startswith(f"homeassistant/device/{n}/") and m[3]) >= w,
                        f"{name}'s device messages")
            retained = entity.retained_configs(port)
            time.sleep(0.5)
            sub.stop()
            messages = [(t, p) for _, _, t, p in sub.snapshot() if t.startswith("root/")]

            sizes = {}
            for form in ("entity", "device"):
                for mode in ("per_metric", "per_service"):
                    sizes[(form, mode)] = measure(port, work, form, mode)
        finally:
            broker.terminate()
            broker.wait()

        left = [t for t, p in retained if not t.startswith("homeassistant/device/")]
        if left:
            failures.append(f"per-entity configs still retained after the device form ran: {left[:3]}...")
        devices = [(t, p) for t, p in retained if t.startswith("homeassistant/device/")]
        # 8 services, one without a figure, and the device itself (one message per part: the whole device,
        # each interface, each filesystem, as many as this machine has): the same count in every run.
        counts = {name: sum(1 for t, _ in devices if t.startswith(f"homeassistant/device/{name}/"))
                  for name, _, _ in runs + [("migrated", 0, 0)]}
        if min(counts.values()) < 8 or len(set(counts.values())) != 1:
            failures.append(f"device messages retained per run: {counts}, not one count of 7 services and the "
                            "device's parts")
        # Every entity the entity form had is in a device message, same unique_id, same HA device.
        new = {}
        for t, p in devices:
            if t.startswith("homeassistant/device/migrated/"):
                d = json.loads(p)
                for c in d["cmps"].values():
                    new[c["uniq_id"]] = d["dev"]["ids"]
        for topic, config in old.items():
            if new.get(config["unique_id"]) != config["device"]["identifiers"]:
                failures.append(f"{topic}: unique_id {config['unique_id']} not kept on its device")

        path = os.path.join(work, "dump.tsv")
        subprocess.run(
            ["cargo", "test", "--release", "--quiet", "--bin", "balena-multi-container-telemetry",
             "dump_configs_and_messages", "--", "--ignored"],
            cwd=ROOT, env=dict(os.environ, HA_CONFIG_DUMP=path, HA_DUMP_FORM="device"), check=True,
            capture_output=True)
        with open(path) as f:
            rows = [tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line]
        dumped = [r for r in rows if r[0].startswith("homeassistant/")]
        dump_messages = [r for r in rows if not r[0].startswith("homeassistant/")]

    f, expanded, counts = check(devices + dumped, messages + dump_messages)
    failures += f
    print(f"== Home Assistant {HA_VERSION}, device discovery: {len(devices)} device messages from the agent "
          f"via mosquitto and {len(dumped)} from dump_configs_and_messages (lifecycle), read by its own "
          f"device-discovery code into {len(expanded)} entity configs; schema-valid: {counts}; templates "
          f"rendered against {len(messages)} + {len(dump_messages)} messages; migration from the entity "
          f"form: {len(old)} entities")
    print("== discovery bytes on the wire (MQTT PUBLISH packets and their PUBACKs), 8 containers of "
          "tests/data/sample-stats.jsonl (7 with figures: 63 entities), a 32-digit device id, running "
          "(availability and expire_after in every config); at start: until the values were sent again")
    print(f"   {'form':8} {'payload mode':12} {'at start':>22} {'at a birth':>22}")
    for (form, mode), ((n0, b0), (n1, b1)) in sizes.items():
        print(f"   {form:8} {mode:12} {b0:>9,} B in {n0:3} msgs {b1:>9,} B in {n1:3} msgs")
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
