"""CLAUDE.md, Claude Code settings.json, .mcp.json and the devcontainer choice."""

from __future__ import annotations

import re
from typing import Any

import pytest

from agentspaces.vmconfig.claude import (
    HOOK_EVENTS,
    TOOL_EVENTS,
    render_claude_md,
    render_claude_settings,
    render_mcp_json,
    reserved_ports,
)
from agentspaces.vmconfig.devcontainer import (
    CLAUDE_CODE_FEATURE,
    additional_features,
    config_candidates,
    default_devcontainer,
    image_devcontainer,
)
from agentspaces.vmconfig.layout import API_KEY_FILE, VM_LAYOUT, VmLayout
from agentspaces_vm.claude_settings import API_KEY_AUTH, MARKER_HEADER, merge_settings
from agentspaces_vm.secrets import API_KEY_NAME, CONTAINER_SECRETS_DIR
from tests.unit.vmconfig_inputs import FULL_SPEC, HOST, WS, make_klass, make_spec


def claude_md(**spec: Any) -> str:
    klass = make_klass(**spec.pop("klass", {}))
    return render_claude_md(WS, make_spec(klass, **spec), klass, host=HOST)


def test_claude_md_names_the_workspace_and_its_urls() -> None:
    text = claude_md()
    assert text.startswith("# Workspace demo\n")
    assert "`demo` (namespace `default`)" in text
    assert f"Workspace UI (chat, files, terminal): https://{HOST}/" in text
    assert f"`https://{{port}}.{HOST}/`" in text
    assert f"https://3000.{HOST}/" in text


def test_claude_md_explains_ports() -> None:
    text = claude_md(access={"ports": [{"port": 8080, "visibility": "public"},
                                       {"port": 3000, "visibility": "private"},
                                       {"port": 4000, "visibility": "public"}]})
    assert "listening on `0.0.0.0` or `127.0.0.1`" in text
    assert "Public ports (no password): 4000, 8080." in text
    assert "Public ports (no password): none." in claude_md()
    assert "never get a URL: 22, 80, 443, 2019, 3001, 9180, 9443." in text
    # A reserved port never gets a URL, so it is not listed as public either.
    assert "Public ports (no password): 8080." in claude_md(
        access={"ports": [{"port": 8080, "visibility": "public"},
                          {"port": 3001, "visibility": "public"}]})


def test_claude_md_points_at_the_logs() -> None:
    text = claude_md()
    for unit in ("agentspaces-agent", "agentspaces-caddy", "agentspaces-cloudcli"):
        assert f"journalctl -u {unit}" in text
    assert "/var/log/cloud-init-output.log" in text


def test_claude_md_states_the_limits() -> None:
    text = claude_md(idle={"timeout": "45m", "agentBusyCap": "2h"}, lifetime={"max": "12h"})
    assert "Idle timeout: 45m without activity" in text
    assert "for at most\n  2h." in text
    assert "Maximum lifetime: 12h." in text
    assert "Maximum lifetime: none." in claude_md()


def test_claude_md_urls_follow_the_class_tls_settings() -> None:
    plain = claude_md(klass={"tls": {"mode": "none", "httpPort": 8080}})
    assert f"http://{HOST}:8080/" in plain
    assert f"`http://{{port}}.{HOST}:8080/`" in plain
    custom = claude_md(klass={"tls": {"mode": "internal", "httpsPort": 8443}})
    assert f"https://3000.{HOST}:8443/" in custom
    assert "never get a URL: 22, 80, 2019, 3001, 8443, 9180, 9443." in custom


def test_owner_instructions_come_last() -> None:
    text = claude_md(agent={"instructions": "  Use pnpm, not npm.\n\nAsk before deleting.\n"})
    assert text.endswith("## Instructions from the workspace owner\n\n"
                         "Use pnpm, not npm.\n\nAsk before deleting.\n")
    assert "Instructions from the workspace owner" not in claude_md()
    assert "Instructions from the workspace owner" not in claude_md(
        agent={"instructions": "  \n"})


def test_claude_md_has_no_unfilled_placeholders() -> None:
    assert not re.search(r"\{\{|\}\}", claude_md(**FULL_SPEC))


def test_reserved_ports_cover_every_vm_service() -> None:
    klass = make_klass(agent={"port": 9555})
    layout = VmLayout(local_listen="127.0.0.1:9999", caddy_admin="127.0.0.1:2999", ui_port=3999)
    assert reserved_ports(klass, layout) == (22, 80, 443, 2999, 3999, 9555, 9999)


def settings(**spec: Any) -> dict[str, Any]:
    klass = make_klass()
    return render_claude_settings(make_spec(klass, **spec))


def test_settings_post_every_activity_event_to_the_local_listener() -> None:
    doc = settings()
    assert list(doc["hooks"]) == list(HOOK_EVENTS)
    assert {"UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop", "Notification",
            "SessionEnd", "SessionStart"} <= set(HOOK_EVENTS)
    for event, groups in doc["hooks"].items():
        assert len(groups) == 1
        group = groups[0]
        assert group.get("matcher") == ("*" if event in TOOL_EVENTS else None)
        [hook] = group["hooks"]
        assert hook["type"] == "http"
        assert hook["url"] == "http://127.0.0.1:9180/hooks" == VM_LAYOUT.hook_url
        assert 0 < hook["timeout"] <= 10


def test_hook_authorization_uses_only_allowed_environment_variables() -> None:
    for groups in settings()["hooks"].values():
        hook = groups[0]["hooks"][0]
        auth = hook["headers"]["Authorization"]
        assert auth.startswith("Bearer ")
        used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)\}?", auth))
        assert used == {"AGENTSPACES_HOOK_TOKEN"}
        assert used <= set(hook["allowedEnvVars"])
        assert hook["headers"][MARKER_HEADER] == "1"


def test_settings_key_helper_and_environment() -> None:
    doc = settings()
    assert doc["apiKeyHelper"] == f"cat {API_KEY_FILE}" == "cat /run/agentspaces/anthropic-api-key"
    # The same file the agent writes the delivered key to (its mount target).
    assert f"{CONTAINER_SECRETS_DIR}/{API_KEY_NAME}" == API_KEY_FILE
    assert doc["env"] == {"CLAUDE_CONFIG_DIR": "/workspaces/.claude", "DISABLE_AUTOUPDATER": "1"}
    assert "enabledMcpjsonServers" not in doc


def test_settings_preapprove_exactly_the_configured_mcp_servers() -> None:
    doc = settings(agent=FULL_SPEC["agent"])
    assert doc["enabledMcpjsonServers"] == ["docs", "events", "files"]


def test_the_agents_merge_replaces_the_seeded_hooks_instead_of_doubling_them() -> None:
    seed = settings()
    merged = merge_settings(seed, hook_url=VM_LAYOUT.hook_url, hook_token="t0k3n",
                            auth=API_KEY_AUTH)
    for event in HOOK_EVENTS:
        ours = [h for g in merged["hooks"][event] for h in g["hooks"]
                if MARKER_HEADER in h.get("headers", {})]
        assert len(ours) == 1, event
    assert merged["env"] == seed["env"]
    assert merged["apiKeyHelper"] == seed["apiKeyHelper"]


def test_mcp_json_maps_each_transport() -> None:
    klass = make_klass()
    doc = render_mcp_json(make_spec(klass, agent=FULL_SPEC["agent"]))
    assert doc == {"mcpServers": {
        "docs": {"type": "http", "url": "https://mcp.example.com/mcp"},
        "events": {"type": "sse", "url": "https://events.example.com/sse"},
        "files": {"type": "stdio", "command": "npx",
                  "args": ["-y", "@modelcontextprotocol/server-filesystem", "/workspaces"],
                  "env": {"LOG_LEVEL": "info"}},
    }}


def test_mcp_json_omits_empty_fields_and_is_absent_without_servers() -> None:
    klass = make_klass()
    doc = render_mcp_json(make_spec(klass, agent={"mcpServers": {"x": {"command": "run-x"}}}))
    assert doc == {"mcpServers": {"x": {"type": "stdio", "command": "run-x"}}}
    assert render_mcp_json(make_spec(klass)) is None


def test_default_devcontainer_is_ubuntu_with_node_22_and_no_claude() -> None:
    config = default_devcontainer()
    assert config["image"].startswith("mcr.microsoft.com/devcontainers/base:ubuntu")
    assert config["features"] == {"ghcr.io/devcontainers/features/node:1": {"version": "22"}}
    assert CLAUDE_CODE_FEATURE not in str(config)
    assert additional_features() == {"ghcr.io/anthropics/devcontainer-features/claude-code:1": {}}


def test_image_devcontainer_uses_only_the_image() -> None:
    assert image_devcontainer("ghcr.io/x/y:1") == {"name": default_devcontainer()["name"],
                                                   "image": "ghcr.io/x/y:1"}


@pytest.mark.parametrize(("devcontainer", "expected"), [
    (None, (".devcontainer/devcontainer.json", ".devcontainer.json")),
    ({"path": "tools/dev.json"}, ("tools/dev.json",)),
    ({"image": "ubuntu:24.04"}, ()),
])
def test_config_candidates(devcontainer: dict[str, str] | None,
                           expected: tuple[str, ...]) -> None:
    klass = make_klass()
    spec = make_spec(klass, **({"devcontainer": devcontainer} if devcontainer else {}))
    assert config_candidates(spec) == expected
