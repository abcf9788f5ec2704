#!/usr/bin/env bash
# Installs the Python packages that the tests drive as real tools, pinned, into the git-ignored
# venv .venv-tests/ at the repo root:
# - confluent-kafka: the client of docs/python-consumer.md, run against the test broker
#   (tests/python_client.rs runs tests/python/consume_trends.py);
# - grpcio-tools (bundles protoc) and protobuf: the Python code generated from proto/;
# - PyYAML, kubernetes-validate and check-jsonschema: parse deploy/ and check the k8s manifests
#   and the compose file against the schemas those packages ship (the Kubernetes OpenAPI
#   schemas; the Compose specification's), offline (tests/deploy.rs runs
#   tests/python/validate_deploy.py).
#
# Idempotent and quick when done: a stamp names the pinned set, so changing a pin reinstalls.
# Called by the tests that need it (first call ~20 s); prints the venv's python on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-tests"
PACKAGES=(confluent-kafka==2.16.1 grpcio-tools==1.85.1 pyyaml==6.0.3 kubernetes-validate==1.37.0
  check-jsonschema==0.39.0)
STAMP="$VENV/.installed-$(echo "${PACKAGES[*]}" | sha1sum | cut -c1-12)"
PYTHON="${PYTHON:-python3}"

if [[ -f "$STAMP" && -x "$VENV/bin/python" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "error: '$PYTHON -m venv' is unavailable. On Debian/Ubuntu: apt-get install python3-venv" >&2
  exit 1
fi
echo "installing ${PACKAGES[*]} into $VENV" >&2
# A venv left half-made by an interrupted run has no working pip: start it over.
if [[ -d "$VENV" && ! -x "$VENV/bin/pip" ]]; then
  rm -rf "$VENV"
fi
if [[ ! -x "$VENV/bin/pip" ]]; then
  "$PYTHON" -m venv "$VENV" >&2
fi
PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install --quiet "${PACKAGES[@]}" >&2
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "$VENV/bin/python"
