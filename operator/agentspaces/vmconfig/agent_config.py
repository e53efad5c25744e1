"""agent.json: the workspace agent's configuration (docs/agent-protocol.md)."""

from __future__ import annotations

import re
from typing import Any

from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.vmconfig.layout import VM_LAYOUT, VmLayout

AGENT_CONFIG_VERSION = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


CLAIM_KEYS = ("workspace", "host", "publicPorts", "repository", "claudeCode")
"""The keys that name a workspace: a warm-pool server boots without them and gets them
when a workspace claims it (cloudinit/agent_loader.py `PUT /v1/claim`)."""
_ORDER = ("version", "workspace", "host", "listen", "tls", "tokenSha256", "caddy",
          "publicPorts", "paths", "repository", "simulate", "claudeCode")


def render_agent_config(ws: WorkspaceRef, spec: WorkspaceSpec, klass: WorkspaceClass, *,
                        host: str, token_sha256: str, simulate: bool = False,
                        layout: VmLayout = VM_LAYOUT) -> dict[str, Any]:
    """The agent.json document for one workspace.

    Only the sha256 of the operator's bearer token goes in; the token itself never
    reaches the VM.
    """
    merged = {**machine_config(klass, token_sha256=token_sha256, simulate=simulate,
                               layout=layout),
              **claim_config(ws, spec, klass, host=host)}
    return {key: merged[key] for key in _ORDER if key in merged}


def machine_config(klass: WorkspaceClass, *, token_sha256: str, simulate: bool = False,
                   layout: VmLayout = VM_LAYOUT) -> dict[str, Any]:
    """What agent.json says about the machine and its class, no workspace in it."""
    if not _HEX64.match(token_sha256):
        raise ValueError("token_sha256 must be 64 lower-case hex digits")
    return {
        "version": AGENT_CONFIG_VERSION,
        "listen": {"api": f"{layout.api_host}:{klass.agent_port}",
                   "local": layout.local_listen},
        "tls": {"cert": layout.tls_cert, "key": layout.tls_key},
        "tokenSha256": token_sha256,
        "caddy": {
            "admin": layout.caddy_admin,
            "bind": layout.caddy_bind,
            "tlsMode": klass.tls.mode,
            "httpPort": klass.tls.http_port,
            "httpsPort": klass.tls.https_port,
            "uiPort": layout.ui_port,
        },
        "paths": {"workspaces": layout.workspaces_dir, "state": layout.state_dir},
        "simulate": simulate,
    }


def claim_config(ws: WorkspaceRef, spec: WorkspaceSpec, klass: WorkspaceClass, *,
                 host: str) -> dict[str, Any]:
    """What agent.json says about the workspace (exactly the CLAIM_KEYS)."""
    return {
        "workspace": {"name": ws.name, "namespace": ws.namespace, "uid": ws.uid},
        "host": host,
        "publicPorts": list(spec.public_ports),
        "repository": {
            "url": spec.repository_url,
            "ref": spec.repository_ref,
            "devcontainerPath": spec.devcontainer_path,
            "devcontainerImage": spec.devcontainer_image,
            "trustDevcontainer": klass.trust_repository_devcontainer,
        },
        # Only when not the agent's default ("feature"): the user-data has few bytes to spare.
        **({"claudeCode": klass.claude_code} if klass.claude_code != "feature" else {}),
    }
