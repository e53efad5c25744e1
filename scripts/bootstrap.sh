#!/usr/bin/env bash
# Install everything the sandbox and the test suite need, idempotently:
# a virtualenv with the project and its test extras, Debian's cloud-init (for
# `cloud-init schema`), and the kube-apiserver/etcd/kubectl binaries (built once).
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

if ! command -v cloud-init >/dev/null 2>&1; then
  log "installing cloud-init (for cloud-init schema)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    cloud-init >&2 || {
    log "apt-get install cloud-init failed; trying after apt-get update"
    $SUDO apt-get update >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cloud-init >&2
  }
fi
for tool in git tar zstd; do
  command -v "$tool" >/dev/null 2>&1 || { log "$tool is required"; exit 1; }
done

bash scripts/build-envtest.sh
