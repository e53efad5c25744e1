"""Where things live on a workspace VM: one place for the paths and addresses that the
user-data, the systemd units, agent.json and the generated Claude files must agree on.

`VM_LAYOUT` is the real VM (docs/vm.md). The local sandbox runs the agent as a plain
process and passes its own layout (loopback address, scratch directories) to
`render_agent_config`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Names the scripts in cloudinit/ also use; the VM paths below are fixed by them.
SLICE = "agentspaces.slice"
UI_USER = "cloudcli"  # CloudCLI's unprivileged user (bootstrap.sh creates it)
UI_UID = 1000  # bootstrap.sh UI_UID: the container user's uid
SUDOERS_FILE = "/etc/sudoers.d/agentspaces-claude"
HOOK_PATH = "/hooks"
CONTAINER_SECRETS_DIR = "/run/agentspaces"
API_KEY_FILE = f"{CONTAINER_SECRETS_DIR}/anthropic-api-key"
SSH_PORT = 22


@dataclass(frozen=True)
class VmLayout:
    """Paths and listen addresses of one agent installation."""

    api_host: str = "0.0.0.0"
    local_listen: str = "127.0.0.1:9180"
    caddy_admin: str = "127.0.0.1:2019"
    caddy_bind: str = ""
    ui_port: int = 3001
    install_dir: str = "/opt/agentspaces"
    config_dir: str = "/etc/agentspaces"
    state_dir: str = "/var/lib/agentspaces"
    workspaces_dir: str = "/workspaces"

    @property
    def agent_pyz(self) -> str:
        return f"{self.install_dir}/agent.pyz"

    @property
    def agent_loader(self) -> str:
        return f"{self.install_dir}/agent-loader.py"

    @property
    def agent_sha256_file(self) -> str:
        """The digest of the bundle this VM accepts (the loader checks it)."""
        return f"{self.config_dir}/agent.pyz.sha256"

    @property
    def agent_json(self) -> str:
        return f"{self.config_dir}/agent.json"

    @property
    def tls_cert(self) -> str:
        return f"{self.config_dir}/tls.crt"

    @property
    def tls_key(self) -> str:
        return f"{self.config_dir}/tls.key"

    @property
    def caddy_bootstrap(self) -> str:
        return f"{self.config_dir}/caddy-bootstrap.json"

    @property
    def claude_seed_dir(self) -> str:
        """Seeds the agent copies into the workspace at each start (docs/vm.md)."""
        return f"{self.config_dir}/claude"

    @property
    def claude_config_dir(self) -> str:
        """CLAUDE_CONFIG_DIR inside and outside the devcontainer (same path)."""
        return f"{self.workspaces_dir}/.claude"

    @property
    def hook_url(self) -> str:
        return f"http://{self.local_listen}{HOOK_PATH}"

    @property
    def caddy_admin_port(self) -> int:
        return int(self.caddy_admin.rsplit(":", 1)[1])

    @property
    def local_port(self) -> int:
        return int(self.local_listen.rsplit(":", 1)[1])

    @property
    def guarded_ports(self) -> tuple[int, ...]:
        """Loopback ports without authentication of their own, closed to containers."""
        return (self.caddy_admin_port, self.ui_port)

    @property
    def ui_guarded_ports(self) -> tuple[int, ...]:
        """Loopback ports closed to CloudCLI's user (its web terminal is a host shell)."""
        return (self.caddy_admin_port,)


VM_LAYOUT = VmLayout()
