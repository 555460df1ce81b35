#!/bin/sh
# Makes sure what the tests and the demo need is installed: mosquitto and its clients (Debian packages).
# Installs them when we are root with apt-get; otherwise says exactly what to install.
set -eu
# `ensure-deps.sh bench` also wants python3, which runs the benchmark, and rabbitmq-server (the fleet's
# cluster half, tests/bench/fleet.py). `ensure-deps.sh test` also wants rabbitmq-server
# (tests/cluster.rs) and python3 (tests/scripts/rabbitmq_cluster.py, which drives it).
missing=""
packages="mosquitto mosquitto-clients"
for cmd in mosquitto mosquitto_sub mosquitto_pub; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ "${1:-}" = test ] || [ "${1:-}" = bench ]; then
    if ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        missing="$missing rabbitmq-server"
        packages="$packages rabbitmq-server"
    fi
    if ! command -v python3 >/dev/null 2>&1; then
        missing="$missing python3"
        packages="$packages python3"
    fi
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $packages (missing:$missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # Debian's rabbitmq-server starts its default node on install; the tests run their own nodes, so a
    # policy-rc.d refusing service starts keeps it from starting (removed again right after).
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy=/usr/sbin/policy-rc.d
    fi
    status=0
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $packages >/dev/null || status=$?
    [ -n "$policy" ] && rm -f "$policy"
    exit "$status"
fi
echo "missing:$missing. Install them with: sudo apt-get install $packages" >&2
exit 1
