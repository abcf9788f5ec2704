#!/usr/bin/env bash
# The project's test command: installs the test broker (scripts/install-test-broker.sh, a no-op
# when already installed), then runs `cargo test --workspace` with any extra arguments passed
# through, e.g. `scripts/test.sh -p dynsig --test pipeline -- --nocapture`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/install-test-broker.sh" >/dev/null
cd "$ROOT"
exec cargo test --workspace "$@"
