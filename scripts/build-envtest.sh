#!/usr/bin/env bash
# Build kube-apiserver, kubectl and etcd once from Go modules and cache them outside
# the repository, keyed by version. Prints the directory holding the binaries (the
# value for KUBEBUILDER_ASSETS) as the last line of stdout; progress goes to stderr.
#
# Honours KUBEBUILDER_ASSETS: when it already holds all three binaries, nothing is built.
set -euo pipefail

K8S_VERSION="${AGENTSPACES_K8S_VERSION:-1.35.4}"
ETCD_VERSION="${AGENTSPACES_ETCD_VERSION:-3.6.16}"
CACHE_ROOT="${AGENTSPACES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentspaces}"
KEY="k8s-v${K8S_VERSION}-etcd-v${ETCD_VERSION}"
OUT="$CACHE_ROOT/envtest/$KEY"
BIN="$OUT/bin"

log() { printf '[envtest %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have_all() {
  local dir="$1"
  [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ] && [ -x "$dir/kubectl" ]
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && have_all "$KUBEBUILDER_ASSETS"; then
  log "using binaries from KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi
if have_all "$BIN"; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "the go tool is required to build the test control plane"; exit 1; }

# Go's own caches live beside the binaries so a cold build on a new machine and the
# cache size we report are one directory.
export GOMODCACHE="${GOMODCACHE_OVERRIDE:-$CACHE_ROOT/envtest/gomod}"
export GOCACHE="${GOCACHE_OVERRIDE:-$CACHE_ROOT/envtest/gocache}"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

work="$OUT/src"
mkdir -p "$work/apiserver" "$work/etcd" "$BIN.partial"
start=$(date +%s)

# --- kube-apiserver + kubectl -------------------------------------------------------
log "resolving k8s.io/kubernetes v$K8S_VERSION"
cd "$work/apiserver"
rm -f go.mod go.sum
go mod init agentspaces.dev/envtest/apiserver >/dev/null 2>&1
go mod edit -go=1.25.0 -require="k8s.io/kubernetes@v$K8S_VERSION"
# k8s.io/kubernetes requires each staging module at v0.0.0 and redirects them with
# replace lines that do not apply to consumers; generate the matching replace lines
# from the published go.mod instead of copying a list that changes between minors.
kmod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$kmod")
[ -n "$staging" ] || { log "no staging modules found in $kmod"; exit 1; }
minor_patch="${K8S_VERSION#1.}"
for m in $staging; do
  go mod edit -replace="$m=$m@v0.$minor_patch"
done
log "$(echo "$staging" | wc -w) staging replace lines generated"
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
log "downloading modules (first run only)"
go mod tidy >&2
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=${minor_patch%%.*} \
 -X k8s.io/client-go/pkg/version.gitVersion=v$K8S_VERSION \
 -X k8s.io/component-base/version.gitTreeState=clean"
log "building kube-apiserver (the slow step: ~10-20 min on 2 cores)"
go build -trimpath -pgo=off -ldflags "$ldflags" -o "$BIN.partial/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
log "building kubectl"
go build -trimpath -pgo=off -ldflags "$ldflags" -o "$BIN.partial/kubectl" k8s.io/kubernetes/cmd/kubectl

# --- etcd (own module: its dependency graph differs from the apiserver's) -------------
log "building etcd v$ETCD_VERSION"
cd "$work/etcd"
rm -f go.mod go.sum
go mod init agentspaces.dev/envtest/etcd >/dev/null 2>&1
go mod edit -go=1.25.0 -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
go mod tidy >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.partial/etcd" go.etcd.io/etcd/server/v3

rm -rf "$BIN"
mv "$BIN.partial" "$BIN"
end=$(date +%s)
log "built in $((end - start))s; cache size $(du -sh "$CACHE_ROOT/envtest" | cut -f1)"
echo "$BIN"
