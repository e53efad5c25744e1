#!/bin/bash
# Network guards of an agentspaces workspace VM; agentspaces-firewall.service runs this
# on every boot after cloud-init has read the metadata service and before Docker starts.
#
# 1. Nobody reaches the metadata service any more: it serves the user-data, which holds
#    the agent's TLS key and token hash. Blocked in OUTPUT (host processes and
#    containers sharing the host network) and in DOCKER-USER (bridged containers).
# 2. Workspace containers run in the cgroup $AGENTSPACES_SLICE (Docker's cgroup-parent).
#    They share the host network, so without a rule they could reach the loopback-only
#    management ports $AGENTSPACES_GUARDED_PORTS (Caddy's admin API, CloudCLI, which has
#    no login of its own). A cgroup match holds even for root inside a container, where
#    a uid match would not.
#
# 3. CloudCLI runs as an unprivileged user (uid $AGENTSPACES_UI_UID) whose web terminal
#    is a shell on the VM; it must not reconfigure Caddy (drop the login) through the
#    admin API ($AGENTSPACES_UI_GUARDED_PORTS). Matched by uid, which that user cannot
#    change: its only sudo rule runs the Claude wrapper. Numeric, since this runs before
#    bootstrap.sh creates the user.
#
# Every rule is checked before it is inserted, so running this twice changes nothing.
set -euo pipefail

: "${AGENTSPACES_SLICE:?set by agentspaces-firewall.service}"
: "${AGENTSPACES_GUARDED_PORTS:?set by agentspaces-firewall.service}"
: "${AGENTSPACES_UI_UID:?set by agentspaces-firewall.service}"
: "${AGENTSPACES_UI_GUARDED_PORTS:?set by agentspaces-firewall.service}"
METADATA_V4=169.254.169.254
METADATA_V6=fe80::a9fe:a9fe

# ensure <iptables|ip6tables> <chain> <rule...>: insert the rule at the top unless present.
ensure() {
  local cmd=$1 chain=$2
  shift 2
  if ! "$cmd" -w -C "$chain" "$@" 2>/dev/null; then
    "$cmd" -w -I "$chain" 1 "$@"
  fi
}

# The unit wants the slice, so systemd has normally created its cgroup already; creating
# it here is harmless (systemd adopts an existing directory) and the rule needs it.
mkdir -p "/sys/fs/cgroup/$AGENTSPACES_SLICE"

ports=${AGENTSPACES_GUARDED_PORTS// /,}
ui_ports=${AGENTSPACES_UI_GUARDED_PORTS// /,}
for cmd in iptables ip6tables; do
  # Docker keeps an existing DOCKER-USER chain and jumps to it first.
  "$cmd" -w -N DOCKER-USER 2>/dev/null || true
  ensure "$cmd" OUTPUT -o lo -p tcp -m multiport --dports "$ports" \
    -m cgroup --path "$AGENTSPACES_SLICE" -j REJECT --reject-with tcp-reset
  ensure "$cmd" OUTPUT -o lo -p tcp -m multiport --dports "$ui_ports" \
    -m owner --uid-owner "$AGENTSPACES_UI_UID" -j REJECT --reject-with tcp-reset
done
ensure iptables OUTPUT -d "$METADATA_V4" -j REJECT
ensure iptables DOCKER-USER -d "$METADATA_V4" -j REJECT
ensure ip6tables OUTPUT -d "$METADATA_V6" -j REJECT
ensure ip6tables DOCKER-USER -d "$METADATA_V6" -j REJECT
echo "agentspaces-firewall: metadata service blocked; ports $ports closed to $AGENTSPACES_SLICE;" \
  "ports $ui_ports closed to uid $AGENTSPACES_UI_UID"
