#!/bin/sh
# Makes sure what the tests and the demo need is installed: mosquitto and its clients (Debian packages).
# Installs them when we are root with apt-get; otherwise says exactly what to install.
set -eu
# `ensure-deps.sh bench` also wants python3, which runs the benchmark.
missing=""
packages="mosquitto mosquitto-clients"
for cmd in mosquitto mosquitto_sub mosquitto_pub; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ "${1:-}" = bench ] && ! command -v python3 >/dev/null 2>&1; then
    missing="$missing python3"
    packages="$packages python3"
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing $packages (missing:$missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $packages >/dev/null
    exit 0
fi
echo "missing:$missing. Install them with: sudo apt-get install $packages" >&2
exit 1
