#!/bin/sh
# Cost of a tick, ENGINE mode against CLI mode, on the real engine with 10 running containers.
#
# Starts 10 idle busybox containers (image built FROM scratch; no registry needed), a throwaway mosquitto
# on a loopback port, then:
#  - `--once` N times per mode: wall and CPU time (user+sys, the `docker stats` child included: the agent
#    waits for it, so /usr/bin/time counts it) of a first tick, which in ENGINE mode includes the 1 s
#    second-sample wait and in CLI mode the CLI's own ~2 s wait;
#  - the agent running for TICKS ticks at a 3 s interval: CPU time per steady-state tick.
# Everything it made is removed on exit. Usage: tests/scripts/measure-engine-vs-cli.sh [N] [TICKS]
set -eu
n=${1:-5}
ticks=${2:-10}
here=$(cd "$(dirname "$0")/../.." && pwd)
bin="$here/target/release/balena-multi-container-telemetry"
work=$(mktemp -d)
tag="bmct-measure-$$"
cleanup() {
    kill "$broker" 2>/dev/null || true
    docker ps -aq --filter "name=^$tag-" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker rmi -f "$tag:1" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cp /bin/busybox "$work/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n' > "$work/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t "$tag:1" "$work" >/dev/null 2>&1
for i in 0 1 2 3 4 5 6 7 8 9; do
    docker run -d --name "$tag-$i" --network none "$tag:1" sleep 3600 >/dev/null
done
running=$(docker ps -q | wc -l)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\nuser root\n' "$port" > "$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" 2>/dev/null & broker=$!
sleep 0.5
mkdir "$work/cli" "$work/engine"
for m in cli engine; do
    printf '{"broker_url": "tcp://127.0.0.1:%s", "device_id": "measure"}\n' "$port" > "$work/$m/mqtt.config.json"
done
echo '{"mode": "CLI", "cli_path": "docker", "collection_interval_in_seconds": 3}' \
    > "$work/cli/balena_stats_collector.config.json"
echo '{"mode": "ENGINE", "engine_socket": "/var/run/docker.sock", "collection_interval_in_seconds": 3}' \
    > "$work/engine/balena_stats_collector.config.json"

echo "running containers on the engine: $running (10 of them ours); $(nproc) CPUs"
for m in cli engine; do
    for i in $(seq "$n"); do
        LOG_LEVEL=error /usr/bin/time -f "%e %U %S" -a -o "$work/$m.once" "$bin" --once --config-dir "$work/$m"
    done
    awk -v m="$m" '{w+=$1; c+=$2+$3} END {printf "%-6s --once (first tick): wall %.3f s, CPU %.3f s  (mean of %d)\n", m, w/NR, c/NR, NR}' "$work/$m.once"
done
for m in cli engine; do
    # Run until TICKS ticks are logged, then stop it; divide its CPU (children included) by the ticks.
    : > "$work/$m.log"
    LOG_LEVEL=debug /usr/bin/time -f "%e %U %S" -o "$work/$m.run" "$bin" --config-dir "$work/$m" 2>"$work/$m.log" &
    timer=$!
    while [ "$(grep -c 'INFO tick:' "$work/$m.log" || true)" -lt "$ticks" ]; do sleep 0.2; done
    pkill -TERM -P "$timer" 2>/dev/null || true
    wait "$timer" 2>/dev/null || true
    done_ticks=$(grep -c 'INFO tick:' "$work/$m.log")
    awk -v m="$m" -v t="$done_ticks" '{printf "%-6s steady state: CPU %.4f s per tick (%d ticks, %.2f s CPU in %.1f s)\n", m, ($2+$3)/t, t, $2+$3, $1}' "$work/$m.run"
done
# ENGINE mode logs how long each collection blocked; the first includes the second-sample wait.
grep -o 'engine collection took [0-9]* ms' "$work/engine.log" | awk '{ms[NR]=$4} END {s=0; for (i=2;i<=NR;i++) s+=ms[i]; printf "engine steady state: wall %.1f ms per collection (ticks 2..%d; first %d ms)\n", s/(NR-1), NR, ms[1]}'
