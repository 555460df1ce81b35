#!/bin/sh
# Stands in for `balena` in CLI-mode tests: prints recorded `stats` output when called exactly as the
# agent calls it, and fails loudly otherwise. FAKE_STATS names the recording; FAKE_MODE picks a fault.
if [ "$*" != "stats --no-stream --format {{json .}}" ]; then
    echo "fake-balena: unexpected arguments: $*" >&2
    exit 64
fi
case "${FAKE_MODE:-ok}" in
    ok) cat "${FAKE_STATS:?}" ;;
    fail) echo "Cannot connect to the balenaEngine daemon at unix:///var/run/balena-engine.sock" >&2; exit 1 ;;
    hang) exec sleep 30 ;;
esac
