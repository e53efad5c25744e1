#!/usr/bin/env bash
# The local sandbox from a fresh checkout: installs what it needs, starts a real
# kube-apiserver, the cloud emulators, an S3 endpoint and the operator, then applies
# the example Workspace and waits until its URL answers. Stop with `make sandbox-down`.
set -euo pipefail
cd "$(dirname "$0")/.."

assets=$(bash scripts/bootstrap.sh | tail -n 1)
export KUBEBUILDER_ASSETS="$assets"
# The dashboard's pinned htmx files (npm, integrity-checked, cached outside the repository).
dashboard_assets=$(bash scripts/fetch-dashboard-assets.sh | tail -n 1)
export AGENTSPACES_DASHBOARD_ASSETS="$dashboard_assets"
exec .venv/bin/agentspaces sandbox up --example "$@"
