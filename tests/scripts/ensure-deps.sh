#!/bin/sh
# Makes sure what the tests and the demo need is installed: mosquitto and its clients (Debian packages).
# Installs them when we are root with apt-get; otherwise says exactly what to install.
set -eu
missing=""
for cmd in mosquitto mosquitto_sub mosquitto_pub; do
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing mosquitto mosquitto-clients (missing:$missing)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients >/dev/null
    exit 0
fi
echo "missing:$missing. Install them with: sudo apt-get install mosquitto mosquitto-clients" >&2
exit 1
