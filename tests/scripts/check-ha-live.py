#!/usr/bin/env python3
"""make check-ha-live: the agent against a running Home Assistant 2025.4.4, for what schemas cannot show.

A throwaway mosquitto, and Home Assistant 2025.4.4 (the venv of check-ha-device.py, with paho-mqtt 2.1.0
for its MQTT integration; no pip at run time) with its MQTT integration set up on that broker and
`mqtt_statestream` publishing every entity's state back to it. The agent runs in FILE mode on
tests/data/sample-stats.jsonl with an hour's interval, so one collection only:
1. entity form: every one of the 63 entities gets its value in Home Assistant although the collection's
   own messages went out before Home Assistant had subscribed; Home Assistant's log shows which copy it
   received (the collection's or the re-send), and how long after each config it subscribed;
2. Home Assistant stopped, one entity renamed in its registry (`sensor.my_cpu`), started again; the agent
   in the device form: the migration must keep every registry entry (same id, same entity id, the renamed
   one too), log one "Migration ... started" per entity and no warning, and the values must arrive;
3. the device form again (the agent's next start, which repeats the migration requests): no warning.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("check_ha_device", os.path.join(HERE, "check-ha-device.py"))
dev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dev)
entity = dev.entity

PAHO = "paho-mqtt==2.1.0"  # what Home Assistant 2025.4.4's MQTT integration requires
DEVICE = "live"


def write_home_assistant(ha_dir, broker_port):
    os.makedirs(os.path.join(ha_dir, ".storage"))
    with open(os.path.join(ha_dir, "configuration.yaml"), "w") as f:
        f.write(f"""homeassistant:
  name: live
  latitude: 0
  longitude: 0
  elevation: 0
  unit_system: metric
  time_zone: UTC
http:
  server_host: 127.0.0.1
  server_port: {entity.free_port()}
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
mqtt_statestream:
  base_topic: hastate
""")
    mqtt_entry = {
        "entry_id": "01JLIVEMQTT0000000000000000", "version": 1, "minor_version": 2, "domain": "mqtt",
        "title": "127.0.0.1", "data": {"broker": "127.0.0.1", "port": broker_port},
        "options": {"discovery": True, "discovery_prefix": "homeassistant"},
        "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
        "unique_id": None, "disabled_by": None, "created_at": "2025-01-01T00:00:00+00:00",
        "modified_at": "2025-01-01T00:00:00+00:00", "discovery_keys": {}, "subentries": [],
    }
    with open(os.path.join(ha_dir, ".storage", "core.config_entries"), "w") as f:
        json.dump({"version": 1, "minor_version": 5, "key": "core.config_entries",
                   "data": {"entries": [mqtt_entry]}}, f)


class HomeAssistant:
    def __init__(self, ha_dir, sub):
        self.dir, self.sub, self.proc = ha_dir, sub, None

    def start(self):
        mark = len(self.sub.snapshot())
        hass = os.path.join(dev.VENV, "bin", "hass")
        self.proc = subprocess.Popen([hass, "-c", self.dir, "--skip-pip"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        # Its birth message says it is up, subscribed, and done with the retained discovery messages.
        self.sub.wait_for(lambda l: any(m[2] == "homeassistant/status" and m[3] == "online"
                                        for m in l[mark:]), 180, "Home Assistant's birth")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def log(self):
        with open(os.path.join(self.dir, "home-assistant.log")) as f:
            return f.read()

    def registry(self):
        with open(os.path.join(self.dir, ".storage", "core.entity_registry")) as f:
            return json.load(f)["data"]


def log_events(log, pattern):
    """(seconds, match) for each line of Home Assistant's log matching `pattern`."""
    out = []
    for line in log.splitlines():
        m = re.search(pattern, line)
        if m:
            t = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            out.append((t, m))
    return out


def numeric_states(lines, since=0, device=DEVICE):
    """entity topic -> latest state from mqtt_statestream, for the device's entities (`..._on_<device>_...`,
    and the one renamed)."""
    states = {}
    for _, _, t, p in lines[since:]:
        if t.startswith("hastate/") and t.endswith("/state") and (f"_on_{device}_" in t or "my_cpu" in t):
            states[t] = p
    return {t: p for t, p in states.items() if p not in ("unknown", "unavailable")}


def first_sight(ha, sub, work, port, form, device):
    """The agent's first run for `device` in `form`: every value must reach Home Assistant, from the
    re-send; returns report lines and failures, with how long Home Assistant took to subscribe."""
    mark = len(sub.snapshot())
    cfg = dev.write_config(work, device, port, "per_metric", form, interval=3600)
    dev.run_until(cfg, sub, lambda l: len(numeric_states(l, mark, device)) >= 63,
                  f"{form} form: 63 entities with values")
    log = ha.log()
    configs = log_events(log, rf"Received message on (homeassistant/[^ ]*/{device}[_/][^ ]*/config) ")
    # The device form's migration requests and removals announce nothing: its device messages do.
    configs = [c for c in configs if form == "entity" or "/device/" in c[1].group(1)]
    subscribes = log_events(log, r"Subscribing with mid: \d+ to topics with qos: (.*)$")
    subscribed = [t for t, m in subscribes if f"'root/{device}/telemetry/system/" in m.group(1)]
    arrived = [t for t, _ in configs]
    heard = log_events(log, rf"Received message on (root/{device}/telemetry/system/[^/]+/pids) ")
    sent = [m for m in sub.snapshot()[mark:] if m[2].startswith(f"root/{device}/") and m[2].endswith("/pids")]
    lines = [
        f"{form} form: {len(configs)} config messages arrived within {max(arrived) - min(arrived):.3f} s; "
        f"Home Assistant subscribed to their state topics {min(subscribed) - max(arrived):.3f} s after the "
        f"last ({min(subscribed) - min(arrived):.3f} s after the first)",
        f"{form} form: the agent sent each of 7 PIDs figures {len(sent) / 7:.0f} times (its collection, then "
        f"the re-send); Home Assistant received {len(heard)} of those {len(sent)} messages",
    ]
    failures = [] if len(heard) == 7 else [
        f"{form} form: Home Assistant received {len(heard)} PIDs messages, not 7 (the re-send alone)"]
    return lines, failures


def main():
    dev.ensure_home_assistant(__file__, (PAHO,))
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=dev.ROOT, check=True)
    failures, report = [], []
    with tempfile.TemporaryDirectory() as work:
        port = entity.free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen(["mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        sub = dev.Subscriber(port, "homeassistant/#", "root/#", "hastate/#")
        ha_dir = os.path.join(work, "ha")
        write_home_assistant(ha_dir, port)
        ha = HomeAssistant(ha_dir, sub)
        try:
            ha.start()

            # 1. The entity form: every value heard, though the collection's copies came too early.
            lines, f = first_sight(ha, sub, work, port, "entity", DEVICE)
            report += lines
            failures += f

            # 2. The migration to the device form, with a renamed entity.
            ha.stop()
            before = {e["unique_id"]: e for e in ha.registry()["entities"] if e["platform"] == "mqtt"}
            if len(before) != 63:
                failures.append(f"{len(before)} entities in the registry after the entity form, not 63")
            path = os.path.join(ha_dir, ".storage", "core.entity_registry")
            with open(path) as f:
                reg = json.load(f)
            for e in reg["data"]["entities"]:
                if e["unique_id"] == f"{DEVICE}_main_cpu_usage_in_percent":
                    e["entity_id"], e["name"] = "sensor.my_cpu", "My CPU"
                    before[e["unique_id"]] = dict(e)
            with open(path, "w") as f:
                json.dump(reg, f)
            ha.start()
            for attempt in ("first", "repeated"):
                mark = len(sub.snapshot())
                cfg = dev.write_config(work, attempt, port, "per_metric", "device", 3600, DEVICE)
                dev.run_until(cfg, sub, lambda l: "hastate/sensor/my_cpu/state" in numeric_states(l, mark) and
                              len(numeric_states(l, mark)) >= 63, f"the {attempt} device-form run's values")
                log = ha.log()
                migrations = log.count("Migration to MQTT device discovery schema started")
                report.append(f"device form, {attempt} run: {migrations} migrations in Home Assistant's log "
                              "since its start; every entity has its value again")
                if attempt == "first" and migrations != 63:
                    failures.append(f"{migrations} migrations logged, not 63")
            ha.stop()
            log = ha.log()
            for bad in ("conflicting", "already exists", "Invalid", "ERROR"):
                lines = [line for line in log.splitlines() if bad in line and "mqtt" in line]
                if lines:
                    failures.append(f"Home Assistant's log: {lines[0][:300]}")
            after = {e["unique_id"]: e for e in ha.registry()["entities"] if e["platform"] == "mqtt"}
            deleted = [e["unique_id"] for e in ha.registry().get("deleted_entities", []) if e["platform"] == "mqtt"]
            if len(after) != 63 or deleted:
                failures.append(f"after the migration: {len(after)} entities, {len(deleted)} deleted")
            for uid, e in before.items():
                a = after.get(uid)
                if a is None or (a["id"], a["entity_id"], a["device_id"]) != (e["id"], e["entity_id"], e["device_id"]):
                    failures.append(f"{uid}: registry entry not kept ({e['entity_id']} -> "
                                    f"{a and a['entity_id']})")
            report.append(f"migration: {sum(1 for u in before if u in after and after[u]['id'] == before[u]['id'])}"
                          f" of {len(before)} registry entries kept (id, entity id, device), "
                          f"'sensor.my_cpu' among them; {len(deleted)} deleted")

            # 4. The device form on first sight (nothing to migrate): every value heard, from the re-send.
            ha.start()
            lines, f = first_sight(ha, sub, work, port, "device", "fresh")
            report += lines
            failures += f
            ha.stop()
        finally:
            if ha.proc and ha.proc.poll() is None:
                ha.stop()
            sub.stop()
            broker.terminate()
            broker.wait()
    print("== Home Assistant 2025.4.4, live, its MQTT integration on mosquitto:")
    for line in report:
        print("  ", line)
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
