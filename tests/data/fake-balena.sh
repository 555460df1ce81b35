#!/bin/sh
# Stands in for `balena` in CLI-mode tests: prints recorded `stats` (and `ps`) output when called exactly as
# the agent calls it, and fails loudly otherwise. FAKE_STATS names the stats recording; FAKE_PS the ps one
# (none: ps lists nothing); FAKE_MODE picks a fault for both, FAKE_PS_MODE one for ps alone.
case "$*" in
    "stats --no-stream --format {{json .}}") recording="${FAKE_STATS:?}"; mode="${FAKE_MODE:-ok}" ;;
    "ps --all --no-trunc --format {{json .}}") recording="${FAKE_PS:-/dev/null}"; mode="${FAKE_PS_MODE:-${FAKE_MODE:-ok}}" ;;
    *) echo "fake-balena: unexpected arguments: $*" >&2; exit 64 ;;
esac
case "$mode" in
    ok) cat "$recording" ;;
    fail) echo "Cannot connect to the balenaEngine daemon at unix:///var/run/balena-engine.sock" >&2; exit 1 ;;
    hang) exec sleep 30 ;;
esac
