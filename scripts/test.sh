#!/usr/bin/env bash
# The project's test command: installs the test broker (scripts/install-test-broker.sh) and
# Prometheus with promtool (scripts/install-prometheus.sh), both no-ops when already installed,
# then runs `cargo test --workspace` with any extra arguments passed through, e.g.
# `scripts/test.sh -p dynsig --test pipeline -- --nocapture`. The Python packages some tests
# drive are installed by those tests (scripts/install-test-python.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/install-test-broker.sh" >/dev/null
"$ROOT/scripts/install-prometheus.sh"
cd "$ROOT"
exec cargo test --workspace "$@"
