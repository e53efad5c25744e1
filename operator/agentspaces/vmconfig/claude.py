"""Claude Code files seeded into a workspace: CLAUDE.md, settings.json, .mcp.json.

cloud-init writes them to `VmLayout.claude_seed_dir`; the agent copies them into the
workspace at each start (docs/vm.md): CLAUDE.md and settings.json into
CLAUDE_CONFIG_DIR, mcp.json merged into the repository's .mcp.json.
"""

from __future__ import annotations

from typing import Any

from agentspaces.api.durations import format_duration
from agentspaces.api.types import McpServer, WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.vmconfig import templates
from agentspaces.vmconfig.layout import API_KEY_FILE, SSH_PORT, VM_LAYOUT, VmLayout
from agentspaces.vmconfig.urls import port_url, port_url_pattern, workspace_url

# Claude Code hook events reported to the agent: prompts and tool calls mean "working",
# Stop/Notification "waiting", SessionEnd "gone" (docs/agent-protocol.md).
HOOK_EVENTS = ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse",
               "Notification", "Stop", "SubagentStop", "SessionEnd")
TOOL_EVENTS = ("PreToolUse", "PostToolUse")


def reserved_ports(klass: WorkspaceClass, layout: VmLayout = VM_LAYOUT) -> tuple[int, ...]:
    """Ports the VM's own services use; they never get a workspace URL."""
    return tuple(sorted({SSH_PORT, klass.tls.http_port, klass.tls.https_port,
                         klass.agent_port, layout.local_port, layout.caddy_admin_port,
                         layout.ui_port}))


def render_claude_md(ws: WorkspaceRef, spec: WorkspaceSpec, klass: WorkspaceClass, *,
                     host: str, layout: VmLayout = VM_LAYOUT) -> str:
    """CLAUDE.md: where the agent is, how ports become URLs, limits and logs, then the
    owner's `spec.agent.instructions`."""
    reserved = reserved_ports(klass, layout)
    public = [port for port in spec.public_ports if port not in reserved]
    text = templates.fill_text("CLAUDE.md", {
        "name": ws.name,
        "namespace": ws.namespace,
        "workspaces": layout.workspaces_dir,
        "claude_config_dir": layout.claude_config_dir,
        "ui_url": workspace_url(host, klass.tls),
        "port_url_pattern": port_url_pattern(host, klass.tls),
        "example_port_url": port_url(3000, host, klass.tls),
        "public_ports": ", ".join(str(p) for p in public) if public else "none",
        "reserved_ports": ", ".join(str(p) for p in reserved),
        "idle_timeout": format_duration(spec.idle.timeout),
        "busy_cap": format_duration(spec.idle.agent_busy_cap),
        "lifetime": format_duration(spec.lifetime_max) if spec.lifetime_max else "none",
    })
    instructions = spec.instructions.strip()
    if instructions:
        text += f"\n## Instructions from the workspace owner\n\n{instructions}\n"
    return text


def render_claude_settings(spec: WorkspaceSpec, *, layout: VmLayout = VM_LAYOUT
                           ) -> dict[str, Any]:
    """settings.json: activity hooks to the agent's local listener, the API key helper
    and the environment. The hook token is not in here: headers name the variable
    AGENTSPACES_HOOK_TOKEN, which the agent provides (docs/vm.md)."""
    hook = templates.fill_json("claude-hook.json", {"hook_url": layout.hook_url})
    settings: dict[str, Any] = templates.fill_json("claude-settings.json", {
        "api_key_helper": f"cat {API_KEY_FILE}",
        "claude_config_dir": layout.claude_config_dir,
        "hook": hook,
    })
    names = [server.name for server in spec.mcp_servers]
    if names:
        # Pre-approve exactly the servers the owner configured, not whatever else a
        # repository's own .mcp.json brings.
        settings["enabledMcpjsonServers"] = names
    return settings


def _mcp_entry(server: McpServer) -> dict[str, Any]:
    if server.type == "stdio":
        entry: dict[str, Any] = {"type": "stdio", "command": server.command}
        if server.args:
            entry["args"] = list(server.args)
        if server.env:
            entry["env"] = dict(sorted(server.env.items()))
        return entry
    return {"type": server.type, "url": server.url}


def render_mcp_json(spec: WorkspaceSpec) -> dict[str, Any] | None:
    """.mcp.json for spec.agent.mcpServers, or None when there are none."""
    if not spec.mcp_servers:
        return None
    return {"mcpServers": {server.name: _mcp_entry(server) for server in spec.mcp_servers}}

