#!/bin/bash
# Runs Claude Code inside the workspace's devcontainer. Installed as
# /usr/local/bin/agentspaces-claude; CloudCLI (on the VM) uses it as its Claude CLI so
# every session runs in the container with the repository's tools and its credentials.
set -euo pipefail

# CloudCLI runs unprivileged; Docker is root's. The sudo rule in
# /etc/sudoers.d/agentspaces-claude allows exactly this script, with no environment.
if [[ $EUID -ne 0 ]]; then
  exec sudo --non-interactive -- /usr/local/bin/agentspaces-claude "$@"
fi

label() {
  docker inspect --format "{{ index .Config.Labels \"$2\" }}" "$1"
}

container=$(docker ps --quiet --filter label=devcontainer.local_folder | head -n 1)
if [[ -z $container ]]; then
  echo "agentspaces: the devcontainer is not running yet; see journalctl -u agentspaces-agent" >&2
  exit 1
fi
folder=$(label "$container" devcontainer.local_folder)
config=$(label "$container" devcontainer.config_file)
args=(exec --workspace-folder "$folder")
if [[ -n $config && $config != "<no value>" ]]; then
  args+=(--config "$config")
fi
# shellcheck disable=SC2016 # expands in the container: the token is in no argv
launch='t=/run/agentspaces/claude-oauth-token
[ -r $t ] && CLAUDE_CODE_OAUTH_TOKEN=$(cat $t) && export CLAUDE_CODE_OAUTH_TOKEN
exec claude "$@"'
exec devcontainer "${args[@]}" /bin/sh -c "$launch" claude "$@"
