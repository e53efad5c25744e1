#!/usr/bin/env bash
# Install the pinned Claude Code CLI (npm package @anthropic-ai/claude-code, which pulls
# its platform binary package) once, into a cache outside the repository keyed by
# version. Prints the path of the `claude` binary as the last line of stdout; progress
# goes to stderr. The tests run this binary offline against a scripted Messages API
# (tests/support/messages_api.py, tests/component/test_claude_real.py).
#
# Honours AGENTSPACES_CLAUDE_BIN: when it already runs and reports the pinned version,
# nothing is installed.
set -euo pipefail

CLAUDE_VERSION="${AGENTSPACES_CLAUDE_VERSION:-2.1.332}"
CACHE_ROOT="${AGENTSPACES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentspaces}"
OUT="$CACHE_ROOT/claude-code/$CLAUDE_VERSION"
BIN="$OUT/node_modules/.bin/claude"

log() { printf '[claude-code %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

is_pinned() {
  local bin="$1" got
  [ -x "$bin" ] || return 1
  got=$(DISABLE_AUTOUPDATER=1 timeout 60 "$bin" --version 2>/dev/null) || return 1
  [ "${got%% *}" = "$CLAUDE_VERSION" ]
}

if [ -n "${AGENTSPACES_CLAUDE_BIN:-}" ] && is_pinned "$AGENTSPACES_CLAUDE_BIN"; then
  log "using AGENTSPACES_CLAUDE_BIN=$AGENTSPACES_CLAUDE_BIN"
  echo "$AGENTSPACES_CLAUDE_BIN"
  exit 0
fi
if is_pinned "$BIN"; then
  log "cached: $BIN"
  echo "$BIN"
  exit 0
fi

command -v npm >/dev/null || { log "npm is required to install Claude Code"; exit 1; }
start=$(date +%s)
log "installing @anthropic-ai/claude-code@$CLAUDE_VERSION into $OUT"
# Install beside the final directory and move it in place, so an interrupted install
# never looks cached.
rm -rf "$OUT.partial"
mkdir -p "$OUT.partial"
npm install --prefix "$OUT.partial" --no-audit --no-fund --no-save --loglevel=error \
  "@anthropic-ai/claude-code@$CLAUDE_VERSION" >&2
rm -rf "$OUT"
mv "$OUT.partial" "$OUT"
is_pinned "$BIN" || {
  log "$BIN does not report version $CLAUDE_VERSION"
  exit 1
}
end=$(date +%s)
log "installed in $((end - start))s; $(du -sh "$OUT" | cut -f1)"
echo "$BIN"
