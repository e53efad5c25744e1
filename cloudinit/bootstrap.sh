#!/bin/bash
# First-boot installation of an agentspaces workspace VM (Ubuntu 24.04), run once by
# cloud-init's runcmd after its `packages` step (Docker, git, zstd, python3-cryptography).
#
# Progress goes to $STATE_FILE as one line, "running <step>", "failed <step>" or "done";
# the agent reports it and starts no devcontainer before it reads "done".
set -euo pipefail

STATE_DIR=/var/lib/agentspaces
STATE_FILE=$STATE_DIR/bootstrap
WORKSPACES=/workspaces
KEYRINGS=/etc/apt/keyrings
# CloudCLI and the shell it offers run as this user, with the devcontainer user's uid
# (agent.json containerUser, default 1000) so its file browser can edit the workspace.
UI_USER=cloudcli
UI_UID=1000
NODE_MAJOR=22
# Major versions are pinned; patches come from the registry at boot.
NPM_PACKAGES=("@devcontainers/cli@0" "@cloudcli-ai/cloudcli@1")
export DEBIAN_FRONTEND=noninteractive

step=start

record() {
  printf '%s\n' "$1" >"$STATE_FILE.tmp"
  mv "$STATE_FILE.tmp" "$STATE_FILE"
}

stage() {
  step=$1
  record "running $step"
  echo "agentspaces-bootstrap: $step"
}

on_exit() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    record "failed $step"
    echo "agentspaces-bootstrap: step $step failed (exit $rc)" >&2
  fi
}

# retry <attempts> <command...>: network steps get a few tries with growing pauses.
retry() {
  local attempts=$1 n=1
  shift
  until "$@"; do
    if ((n >= attempts)); then
      return 1
    fi
    sleep $((n * 5))
    n=$((n + 1))
  done
}

# add_apt_repo <name> <key URL> <"URI suite component">: a vendor repository whose
# signing key is fetched over HTTPS and trusted for that repository only.
add_apt_repo() {
  local name=$1 key_url=$2 repo=$3 key
  key=$(mktemp)
  retry 5 curl -fsSL --max-time 60 -o "$key" "$key_url"
  gpg --batch --yes --dearmor -o "$KEYRINGS/$name.gpg" "$key"
  rm -f "$key"
  chmod 0644 "$KEYRINGS/$name.gpg"
  printf 'deb [signed-by=%s] %s\n' "$KEYRINGS/$name.gpg" "$repo" \
    >"/etc/apt/sources.list.d/$name.list"
}

install -d -m 0700 "$STATE_DIR"
install -d -m 0755 "$WORKSPACES" "$KEYRINGS"
trap on_exit EXIT

stage agent
systemctl daemon-reload
# First, so the operator can reach the VM (and deliver the agent bundle) and see this
# boot's progress, including a failure in a later step.
systemctl enable --now agentspaces-agent.service

stage firewall
# Docker's drop-in pulled the guards in when the docker.io package started Docker;
# enabling them keeps them on every boot, and starting them here fails loudly if they
# could not be applied.
systemctl enable --now agentspaces-firewall.service

stage repositories
add_apt_repo nodesource https://deb.nodesource.com/gpgkey/nodesource-repo.gpg.key \
  "https://deb.nodesource.com/node_${NODE_MAJOR}.x nodistro main"
add_apt_repo caddy-stable https://dl.cloudsmith.io/public/caddy/stable/gpg.key \
  "https://dl.cloudsmith.io/public/caddy/stable/deb/debian any-version main"
retry 3 apt-get update -q

stage packages
retry 3 apt-get install -y -q nodejs caddy
node_major=$(node --version | sed -E 's/^v([0-9]+)\..*/\1/')
if [[ $node_major != "$NODE_MAJOR" ]]; then
  echo "agentspaces-bootstrap: expected Node $NODE_MAJOR, got $(node --version)" >&2
  exit 1
fi

stage npm
retry 3 npm install --global --no-fund --no-audit --loglevel=error "${NPM_PACKAGES[@]}"

stage users
if ! id -u "$UI_USER" >/dev/null 2>&1; then
  getent group "$UI_UID" >/dev/null || groupadd --gid "$UI_UID" "$UI_USER"
  useradd --uid "$UI_UID" --gid "$UI_UID" --non-unique --no-create-home \
    --home-dir /var/lib/cloudcli --shell /bin/bash --comment "agentspaces CloudCLI" "$UI_USER"
fi

stage services
# The package's own unit would serve its default Caddyfile on port 80; ours starts
# Caddy with only the admin API and lets the agent load the real configuration.
systemctl disable --now caddy.service
systemctl mask caddy.service
systemctl enable --now agentspaces-caddy.service agentspaces-cloudcli.service

step="done"
record "done"
echo "agentspaces-bootstrap: done"
