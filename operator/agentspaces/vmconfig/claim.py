"""What a workspace hands the warm-pool server it claims: the `PUT /v1/claim` body.

A pool server boots with the machine part of agent.json only (`render_pool_user_data`);
the claim adds the workspace's part (`agent_config.CLAIM_KEYS`), its Claude seeds and
its SSH keys: together exactly what the workspace's own user-data would have carried
beyond the machine part, so a claimed server and a created one run the same agent.json.
The loader accepts nothing else (cloudinit/agent_loader.py).
"""

from __future__ import annotations

from typing import Any

from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.vmconfig.agent_config import claim_config
from agentspaces.vmconfig.claude import (
    render_claude_md,
    render_claude_settings,
    render_mcp_json,
)
from agentspaces.vmconfig.layout import VM_LAYOUT, VmLayout
from agentspaces.vmconfig.userdata import json_text


def render_claim(ws: WorkspaceRef, spec: WorkspaceSpec, klass: WorkspaceClass, *,
                 host: str, layout: VmLayout = VM_LAYOUT) -> dict[str, Any]:
    seeds = {
        "settings.json": json_text(render_claude_settings(spec, layout=layout)),
        "CLAUDE.md": render_claude_md(ws, spec, klass, host=host, layout=layout),
    }
    mcp = render_mcp_json(spec)
    if mcp is not None:
        seeds["mcp.json"] = json_text(mcp)
    return {"config": claim_config(ws, spec, klass, host=host), "claudeSeeds": seeds,
            "sshAuthorizedKeys": list(spec.ssh_keys)}

