#!/usr/bin/env bash
# Install everything the sandbox and the test suite need, idempotently: a virtualenv
# with the project and its test extras, and the kube-apiserver/etcd/kubectl binaries
# (built once). scripts/test.sh adds Debian's cloud-init for `cloud-init schema`.
# Prints the KUBEBUILDER_ASSETS directory as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  log "installing Python dependencies"
  "$VENV/bin/pip" install -q --upgrade pip >&2
  "$VENV/bin/pip" install -q -e ".[test]" >&2
  touch "$stamp"
fi

for tool in git tar zstd; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is required"; exit 1; }
done

bash scripts/build-envtest.sh
