#!/bin/sh
# Callgrind profiles behind issue 6's findings (not part of `make bench`): the agent built with symbols, on
#   file-1000: FILE mode, 1,000 generated containers, 1 s interval, running continuously for PROFILE_SECONDS;
#   once-90k:  --once, QoS 1, 10,000 containers (90,000 messages);
# each against its own mosquitto on a free loopback port. Prints callgrind_annotate's inclusive and self
# tops; the raw callgrind.out files stay in target/bench/profile/.
# Usage: sh tests/bench/profile.sh
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
out="$here/target/bench/profile"
seconds=${PROFILE_SECONDS:-20}
mkdir -p "$out"
work=$(mktemp -d)
broker=""; agent=""
trap 'for p in $agent $broker; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT INT TERM

echo "== building with symbols (target/bench/prof-target)" >&2
CARGO_TARGET_DIR="$here/target/bench/prof-target" CARGO_PROFILE_RELEASE_STRIP=false \
    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="$here/target/bench/prof-target/release/balena-multi-container-telemetry"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2>"$work/broker.log" & broker=$!
sleep 0.5

python3 -c "import sys; sys.path.insert(0, '$here/tests/bench'); import bench
bench.write_stats('$work/s1000.jsonl', 1000); bench.write_stats('$work/s10000.jsonl', 10000)"
conf() { # dir file qos
    mkdir -p "$1"
    printf '{"mode":"FILE","file_path":"%s","collection_interval_in_seconds":1}\n' "$2" \
        > "$1/balena_stats_collector.config.json"
    printf '{"broker_url":"tcp://127.0.0.1:%s","device_id":"bench","qos":%s,"once_timeout_in_seconds":600}\n' \
        "$port" "$3" > "$1/mqtt.config.json"
}
conf "$work/c1000" "$work/s1000.jsonl" 1
conf "$work/c90k" "$work/s10000.jsonl" 1

echo "== file-1000 for ${seconds}s under callgrind" >&2
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.file-1000" \
    "$bin" --config-dir "$work/c1000" 2>"$out/file-1000.log" & agent=$!
sleep "$seconds"; kill -TERM "$agent"; wait "$agent" || true; agent=""
echo "== once-90k under callgrind" >&2
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.once-90k" \
    "$bin" --once --config-dir "$work/c90k" 2>"$out/once-90k.log" || echo "once-90k exited $?" >&2

for p in file-1000 once-90k; do
    echo "== $p: $(grep -c 'tick:' "$out/$p.log") tick(s)"
    echo "-- inclusive"
    callgrind_annotate --inclusive=yes "$out/callgrind.$p" 2>/dev/null | sed -n '/^Ir/,$p' | head -45
    echo "-- self"
    callgrind_annotate "$out/callgrind.$p" 2>/dev/null | sed -n '/^Ir/,$p' | head -35
done
