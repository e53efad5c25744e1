#!/usr/bin/env bash
# Fetch the dashboard's front-end files (htmx and its SSE extension) from the npm
# registry, pinned by version and integrity in operator/agentspaces/dashboard/assets.lock,
# into a cache outside the repository. Prints the directory as the last line of stdout;
# `agentspaces dashboard` finds it there (or in AGENTSPACES_DASHBOARD_ASSETS).
# A tarball whose sha512 differs from the lock is refused and nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK=operator/agentspaces/dashboard/assets.lock
CACHE_ROOT="${AGENTSPACES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentspaces}"
key=$(grep -v '^#' "$LOCK" | sha256sum | cut -c1-16)
OUT="${AGENTSPACES_DASHBOARD_ASSETS:-$CACHE_ROOT/dashboard-assets/$key}"

log() { printf '[dashboard-assets] %s\n' "$*" >&2; }

complete() {
  local name file
  while IFS=$'\t' read -r name _ _ _ file; do
    [ -s "$OUT/$file" ] || return 1
  done < <(grep -v '^#' "$LOCK")
}

if complete; then
  log "cached: $OUT"
  echo "$OUT"
  exit 0
fi
command -v npm >/dev/null || { log "npm is required to fetch the dashboard's assets"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/out"
while IFS=$'\t' read -r name version integrity member file; do
  tarball=$(cd "$work" && npm pack --silent --pack-destination "$work" "$name@$version" | tail -n 1)
  # The tarball's SRI hash, computed with node (npm's own runtime).
  got="sha512-$(node -e 'const c=require("crypto"),f=require("fs");
    process.stdout.write(c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' \
    "$work/$tarball")"
  if [ "$got" != "$integrity" ]; then
    log "$name@$version: integrity $got does not match the lock ($integrity)"
    exit 1
  fi
  tar -xzf "$work/$tarball" -C "$work" "$member"
  mv "$work/$member" "$work/out/$file"
  rm -rf "$work/package"
  log "$name@$version verified"
done < <(grep -v '^#' "$LOCK")
# Into place in one move, so an interrupted fetch never looks cached.
mkdir -p "$(dirname "$OUT")"
rm -rf "$OUT"
mv "$work/out" "$OUT"
echo "$OUT"
