#!/bin/sh
# make demo: runs the agent once with the shipped example configs and the bundled sample stats file
# against a throwaway mosquitto on a free loopback port, and prints every message that arrived.
# make demo-engine (demo.sh engine): the same in ENGINE mode, configured by environment alone as in a
# container, on this machine's own Docker engine: the figures of the containers running here.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
bin="$here/target/release/balena-multi-container-telemetry"
work=$(mktemp -d)
trap 'kill $broker $sub 2>/dev/null || true; rm -rf "$work"' EXIT

# A free port: ask the kernel for one, then hand it to mosquitto.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 18830)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2>"$work/broker.log" & broker=$!

mkdir "$work/config"
if [ "${1:-}" = engine ]; then
    # No config files: the environment alone, as a fleet or `docker run -e` configures it.
    export STATS_MODE=ENGINE MQTT_BROKER_URL="tcp://127.0.0.1:$port"
    what="ENGINE mode on this machine's engine"
else
    what="FILE mode, $here/tests/data/sample-stats.jsonl"
    # The example configs as shipped, pointed at the sample file and this broker.
    sed -e 's/"mode": "CLI"/"mode": "FILE"/' \
        -e "s#\"file_path\": \"[^\"]*\"#\"file_path\": \"$here/tests/data/sample-stats.jsonl\"#" \
        "$here/config/balena_stats_collector.example-config.json" > "$work/config/balena_stats_collector.config.json"
    sed -e "s#\"broker_url\": \"[^\"]*\"#\"broker_url\": \"tcp://127.0.0.1:$port\"#" \
        "$here/config/mqtt.example-config.json" > "$work/config/mqtt.config.json"
fi

for _ in 1 2 3 4 5 6 7 8 9 10; do
    mosquitto_pub -h 127.0.0.1 -p "$port" -t demo/ready -n 2>/dev/null && break
    sleep 0.2
done
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'root/#' -v -q 1 > "$work/arrived.txt" & sub=$!
sleep 0.3

echo "== agent (--once, $what -> tcp://127.0.0.1:$port)"
status=0
"$bin" --once --config-dir "$work/config" || status=$?
sleep 0.3
echo "== arrived at the broker ($(wc -l < "$work/arrived.txt") messages)"
cat "$work/arrived.txt"
exit $status
