#!/usr/bin/env bash
# Installs Prometheus and promtool (Debian's `prometheus` package, 2.42) for the tests of
# tests/prometheus.rs: a real Prometheus scrapes the service, and promtool checks its /metrics
# output and unit-tests the alert rules in deploy/prometheus/. No-op when promtool is on PATH.
#
# The package is installed without its recommends (a web-console asset bundle and node
# exporter are not needed), and nothing is started: Debian's maintainer scripts cannot start
# the daemon without systemd, and the tests start their own Prometheus on a free port.
# `apt-get update` runs only when the package lists do not know the package yet (a fresh
# image), since it is the slow part.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: prometheus/promtool not found and no apt-get to install them." >&2
  echo "       Install Prometheus 2.x so that 'prometheus' and 'promtool' are on PATH." >&2
  exit 1
fi
SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
echo "installing prometheus (apt-get)" >&2
# apt's chatter (debconf notices included) is shown only when something fails.
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  "${SUDO[@]}" apt-get update -qq >"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >"$LOG" 2>&1 \
  || { cat "$LOG" >&2; exit 1; }
command -v promtool >/dev/null
