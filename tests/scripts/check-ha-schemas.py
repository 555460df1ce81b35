#!/usr/bin/env python3
"""make check-ha: every Home Assistant discovery config the agent sends, checked with Home Assistant's own
MQTT discovery schemas (`homeassistant.components.mqtt.{sensor,binary_sensor}.DISCOVERY_SCHEMA`), and its
`value_template` rendered by Home Assistant's template engine against the message it describes.

The configs come from a real broker: the agent runs against a throwaway mosquitto on a free loopback port
in FILE mode on tests/data/sample-stats.jsonl, with discovery on, four times (`--once` and a running agent
stopped with SIGTERM, each in per_metric and per_service mode); every retained config under
`homeassistant/#` is read back, and the figures are caught by a subscriber on `root/#`. No source in this
branch reports containers' lifecycle yet, so the lifecycle entities' configs and messages come from the
unit test `dump_configs_and_messages` (src/publish/tick.rs), which runs a tick with a running and an exited
container through the same publishing and discovery code in both payload modes; so do the device
pseudo-service's entities this machine does not have (CPU temperature, the Raspberry Pi's eight
throttling flags), from the same test's device tick with every figure. The agent's own runs publish this
machine's device figures (CPU, memory, load, swap, uptime, its interfaces and `/`).

A rendered value must be what Home Assistant can take: `ON`/`OFF` for binary sensors (`running` ON exactly
when the state is running, `oom_killed` ON exactly when true), one of the options for enum sensors, and
the payload's number for numeric sensors; in per_service mode an absent key must render `None`, which Home
Assistant's MQTT sensor takes as unknown.

Home Assistant 2024.3.3 is the newest release that installs on this machine's Python 3.11. It is installed
into a virtual environment (target/ha-venv, or $HA_VENV) on the first run (about 400 MB; minutes), never
committed. Its schemas drop unknown keys silently, so this script fails when the schema drops any key,
so a misspelt or unsupported key cannot pass unnoticed, except two that are newer than 2024.3.3, which it
takes out before validating and checks by the rules of the release that added them:
- `default_entity_id` (2025.10): with Home Assistant's own `valid_entity_id`, domain = the platform;
- an enum sensor's `options` (2024.9, home-assistant/core#123248): a non-empty list of strings, only with
  `device_class: enum`, never with `state_class` or `unit_of_measurement`.
Older releases ignore both: the entity id then comes from the names, and an enum sensor takes any word.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HA_VERSION = "2024.3.3"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
BIN = os.path.join(ROOT, "target", "release", "balena-multi-container-telemetry")
SAMPLE = os.path.join(ROOT, "tests", "data", "sample-stats.jsonl")
VENV = os.environ.get("HA_VENV") or os.path.join(ROOT, "target", "ha-venv")
# Keys newer than Home Assistant 2024.3.3, which its schemas drop; checked by other means (see above).
NEWER_KEYS = {"default_entity_id": "2025.10", "options": "2024.9"}


def ensure_home_assistant():
    """Re-runs this script under a Python that has Home Assistant, installing it when missing."""
    if os.environ.get("CHECK_HA_IN_VENV") == "1":
        return
    python = os.path.join(VENV, "bin", "python")
    probe = [python, "-c", "import homeassistant.components.mqtt.sensor"]
    if not os.path.exists(python) or subprocess.run(probe, cwd="/", capture_output=True).returncode:
        print(f"== installing homeassistant=={HA_VERSION} into {VENV} (once; large)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run(
            [python, "-m", "pip", "install", "-q", f"homeassistant=={HA_VERSION}"], check=True
        )
    env = dict(os.environ, CHECK_HA_IN_VENV="1")
    os.execve(python, [python, os.path.abspath(__file__)] + sys.argv[1:], env)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env():
    """The agent's environment without this machine's MQTT_*, STATS_* or balena variables."""
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("MQTT_", "STATS_", "BALENA_"))}
    # The sample file is old on purpose; its staleness warnings would drown the result.
    keep["LOG_LEVEL"] = "error"
    return keep


def write_configs(work, name, port, mode):
    cfg = os.path.join(work, name)
    os.makedirs(cfg)
    with open(os.path.join(cfg, "balena_stats_collector.config.json"), "w") as f:
        json.dump({"mode": "FILE", "file_path": SAMPLE, "collection_interval_in_seconds": 1}, f)
    with open(os.path.join(cfg, "mqtt.config.json"), "w") as f:
        json.dump({"broker_url": f"tcp://127.0.0.1:{port}", "device_id": name,
                   "payload_mode": mode, "home_assistant_discovery": True}, f)
    return cfg


def run_agent(work, name, port, mode, once):
    cfg = write_configs(work, name, port, mode)
    cmd = [BIN, "--config-dir", cfg] + (["--once"] if once else [])
    if once:
        subprocess.run(cmd, env=clean_env(), check=True, timeout=60)
        return
    p = subprocess.Popen(cmd, env=clean_env())
    time.sleep(3)
    p.send_signal(signal.SIGTERM)
    if p.wait(timeout=10) != 0:
        sys.exit(f"{name}: the agent exited with {p.returncode}")


def retained_configs(port):
    """Every retained message under homeassistant/#, as (topic, payload text)."""
    out = subprocess.run(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "homeassistant/#",
         "-W", "2", "-F", "%t\t%p"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if "\t" in line]


def dumped(work):
    """The lifecycle tick's (configs, messages), each a list of (topic, payload text)."""
    path = os.path.join(work, "dump.tsv")
    subprocess.run(
        ["cargo", "test", "--release", "--quiet", "--bin", "balena-multi-container-telemetry",
         "dump_configs_and_messages", "--", "--ignored"],
        cwd=ROOT, env=dict(os.environ, HA_CONFIG_DUMP=path), check=True, capture_output=True,
    )
    with open(path) as f:
        rows = [tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line]
    return ([r for r in rows if r[0].startswith("homeassistant/")],
            [r for r in rows if not r[0].startswith("homeassistant/")])


def render_all(configs, messages):
    """Renders every config's value_template with Home Assistant's engine; returns the failures."""
    import asyncio
    from homeassistant.core import HomeAssistant
    from homeassistant.helpers.template import Template

    latest = dict(messages)
    failures = []

    def check(hass, topic, config):
        where = f"{topic}: "
        component, obj = topic.split("/")[1], topic.split("/")[3]
        payload = latest.get(config["state_topic"])
        if payload is None:
            return [where + f"no message arrived on its state_topic {config['state_topic']}"]
        per_metric = "value_json.value" in config["value_template"]
        # The payload's key the template reads: `value`, or in per_service mode the metric's (which a
        # device part's object id has its part after: network_received_in_bytes_eth0).
        read = re.search(r"value_json\.(\w+)", config["value_template"])
        key = read.group(1) if read else obj
        value = json.loads(payload).get(key)
        template = Template(config["value_template"], hass)
        got = template.async_render_with_possible_json_value(payload, "<error>")
        out = []
        if component == "binary_sensor":
            want = "ON" if (value == "running" if obj == "running" else value is True) else "OFF"
            if got != want:
                out.append(where + f"rendered {got!r} from {payload}, want {want!r}")
        elif config.get("device_class") == "enum":
            if got not in config.get("options", [got]) or got != value:
                out.append(where + f"rendered {got!r}, not one of {config.get('options')}")
        else:
            try:
                if float(got) != float(value):
                    out.append(where + f"rendered {got!r} from {payload}, want {value}")
            except (TypeError, ValueError):
                out.append(where + f"rendered {got!r} from {payload}: not a number")
            if not per_metric:
                absent = template.async_render_with_possible_json_value('{"timestamp":1}', "<error>")
                if absent != "None":
                    out.append(where + f"an absent key renders {absent!r}, not None (unknown)")
        return out

    async def run():
        hass = HomeAssistant(tempfile.mkdtemp())
        for topic, text in configs:
            if text:
                failures.extend(check(hass, topic, json.loads(text)))

    asyncio.run(run())
    return failures


def validate(configs):
    from homeassistant.components.mqtt import binary_sensor, sensor
    from homeassistant.core import valid_entity_id

    schemas = {"sensor": sensor.DISCOVERY_SCHEMA, "binary_sensor": binary_sensor.DISCOVERY_SCHEMA}
    failures, counts = [], {}
    for topic, text in configs:
        parts = topic.split("/")
        component = parts[1] if len(parts) == 5 else "?"
        where = f"{topic}: "
        if not text:
            failures.append(where + "empty payload (a removal) where a config was expected")
            continue
        if component not in schemas:
            failures.append(where + f"platform {component!r} is not one we publish")
            continue
        config = json.loads(text)
        entity_id = config.pop("default_entity_id", None)
        if entity_id is None:
            failures.append(where + "no default_entity_id")
        elif not valid_entity_id(entity_id) or not entity_id.startswith(component + "."):
            failures.append(where + f"default_entity_id {entity_id!r} is not a valid {component} id")
        options = config.pop("options", None)
        if options is not None and not (
            isinstance(options, list) and options and all(isinstance(o, str) for o in options)
            and config.get("device_class") == "enum"
            and "state_class" not in config and "unit_of_measurement" not in config
        ):
            failures.append(where + f"options {options!r} break 2024.9's rules for enum sensors")
        if "object_id" in config:
            failures.append(where + "object_id is deprecated since Home Assistant 2025.10")
        try:
            checked = schemas[component](dict(config))
        except Exception as e:  # voluptuous' Invalid, with the key and the reason
            failures.append(where + f"rejected: {e}")
            continue
        dropped = set(config) - set(checked)
        if dropped:
            failures.append(where + f"keys Home Assistant {HA_VERSION} does not know: {sorted(dropped)}")
        counts[component] = counts.get(component, 0) + 1
    return failures, counts


def the_check_can_fail():
    """A check that cannot fail proves nothing: broken configs must be caught."""
    good = {"name": "x", "state_topic": "a/b", "default_entity_id": "sensor.a_b"}
    broken = [
        ("homeassistant/sensor/n/o/config", dict(good, state_class="sometimes")),
        ("homeassistant/sensor/n/o/config", dict(good, expire_after=-1)),
        ("homeassistant/sensor/n/o/config", dict(good, expire_afetr=30)),
        ("homeassistant/sensor/n/o/config", dict(good, default_entity_id="sensor.A__b")),
        ("homeassistant/binary_sensor/n/o/config", dict(good)),
        ("homeassistant/sensor/n/o/config", dict(good, options=["a"])),
        ("homeassistant/sensor/n/o/config", dict(good, object_id="o")),
    ]
    failures, _ = validate([(t, json.dumps(c)) for t, c in broken])
    ok, _ = validate([("homeassistant/sensor/n/o/config", json.dumps(good))])
    if len(failures) != len(broken) or ok:
        sys.exit(f"the check itself is broken: {failures} / {ok}")
    wrong = [  # templates that render the wrong thing
        ("homeassistant/binary_sensor/n/running/config",
         {"state_topic": "r/s", "value_template": "{{ 'ON' if value_json.value != 'running' else 'OFF' }}"}),
        ("homeassistant/sensor/n/pids/config",
         {"state_topic": "r/p", "state_class": "measurement", "value_template": "{{ value_json.valeu }}"}),
        ("homeassistant/sensor/n/pids/config",
         {"state_topic": "r", "state_class": "measurement", "value_template": "{{ value_json.pids | default(0) }}"}),
    ]
    messages = [("r/s", '{"value":"running"}'), ("r/p", '{"value":3}'), ("r", '{"pids":3}')]
    for topic, config in wrong:
        if not render_all([(topic, json.dumps(config))], messages):
            sys.exit(f"the template check itself is broken: {config} passed")


def main():
    ensure_home_assistant()
    the_check_can_fail()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
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
            figures = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "root/#", "-F", "%t\t%p"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            runs = [("once-metric", "per_metric", True), ("once-service", "per_service", True),
                    ("run-metric", "per_metric", False), ("run-service", "per_service", False)]
            for name, mode, once in runs:
                run_agent(work, name, port, mode, once)
            from_agent = retained_configs(port)
            time.sleep(0.5)
            figures.terminate()
            agent_messages = [tuple(line.split("\t", 1)) for line in figures.communicate()[0].splitlines()
                              if "\t" in line]
        finally:
            broker.terminate()
            broker.wait()
        for name, _, _ in runs:
            n = sum(1 for t, _ in from_agent if f"/{name}_" in t)
            if n == 0:
                sys.exit(f"no config arrived from the {name} run")
        from_dump, dump_messages = dumped(work)
    failures, counts = validate(from_agent + from_dump)
    failures += render_all(from_agent + from_dump, agent_messages + dump_messages)
    print(f"== Home Assistant {HA_VERSION} discovery schemas: {len(from_agent)} configs from the agent "
          f"via mosquitto, {len(from_dump)} from dump_configs_and_messages (lifecycle); "
          f"schema-valid: {counts}; templates rendered against {len(agent_messages)} + "
          f"{len(dump_messages)} messages")
    newer = ", ".join(f"{k} ({v})" for k, v in NEWER_KEYS.items())
    print(f"   keys newer than {HA_VERSION}, checked by their own rules instead: {newer}")
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
