#!/usr/bin/env bash
# Build the pinned helm (helm.sh/helm/v3, from the Go module proxy) once and cache it
# outside the repository, keyed by version, like scripts/build-envtest.sh does for the
# Kubernetes binaries. Prints the path of the helm binary as the last line of stdout;
# progress goes to stderr. tests/integration/test_helm_chart.py lints and renders the
# chart in charts/agentspaces/ with it.
#
# Honours AGENTSPACES_HELM: when it already runs and reports the pinned version,
# nothing is built.
set -euo pipefail

# v3.20 builds with the Go 1.25 the README asks for and links client-go v0.35, the
# minor of the apiserver the tests run (scripts/build-envtest.sh).
HELM_VERSION="${AGENTSPACES_HELM_VERSION:-3.20.2}"
CACHE_ROOT="${AGENTSPACES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentspaces}"
OUT="$CACHE_ROOT/helm/v$HELM_VERSION"
BIN="$OUT/bin/helm"

log() { printf '[helm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

is_pinned() {
  local bin="$1" got
  [ -x "$bin" ] || return 1
  got=$("$bin" version --template '{{.Version}}' 2>/dev/null) || return 1
  [ "$got" = "v$HELM_VERSION" ]
}

if [ -n "${AGENTSPACES_HELM:-}" ] && is_pinned "$AGENTSPACES_HELM"; then
  log "using AGENTSPACES_HELM=$AGENTSPACES_HELM"
  echo "$AGENTSPACES_HELM"
  exit 0
fi
if is_pinned "$BIN"; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "the go tool is required to build helm"; exit 1; }

# The envtest build's Go caches: helm shares most of its modules (k8s.io/*, ...) with
# kube-apiserver and kubectl, so a second download and compile is mostly skipped.
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$CACHE_ROOT/envtest/gomod}"
export GOCACHE="${GOCACHE_OVERRIDE:-$CACHE_ROOT/envtest/gocache}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

work="$OUT/src"
mkdir -p "$work" "$OUT/bin"
start=$(date +%s)
cd "$work"
rm -f go.mod go.sum
go mod init agentspaces.dev/tools/helm >/dev/null 2>&1
go mod edit -go=1.25.0 -require="helm.sh/helm/v3@v$HELM_VERSION"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
log "downloading modules for helm v$HELM_VERSION (first run only)"
go mod tidy >&2
log "building helm"
# The version helm reports (and puts in .Capabilities.HelmVersion) comes from ldflags.
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION \
 -X helm.sh/helm/v3/internal/version.gitTreeState=clean" -o "$BIN.partial" helm.sh/helm/v3/cmd/helm
mv "$BIN.partial" "$BIN"
is_pinned "$BIN" || { log "built $BIN does not report v$HELM_VERSION"; exit 1; }
log "built in $(($(date +%s) - start))s"
echo "$BIN"
