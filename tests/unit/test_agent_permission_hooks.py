"""The Claude settings the agent writes: a permission dialog reaches the agent (waiting
for the user), and the product grants no tool permissions while keeping the user's."""

from __future__ import annotations

from agentspaces.vmconfig.claude import render_claude_settings
from agentspaces_vm.activity import WAITING_EVENTS
from agentspaces_vm.claude_settings import MARKER_HEADER, merge_settings
from tests.unit.vmconfig_inputs import make_klass, make_spec

HOOK_URL = "http://127.0.0.1:9180/hooks"


def test_a_permission_dialog_is_reported_to_the_agent_as_waiting() -> None:
    merged = merge_settings(None, hook_url=HOOK_URL, hook_token="t0k3n")
    [group] = merged["hooks"]["PermissionRequest"]
    assert "matcher" not in group  # every tool's dialog
    [hook] = group["hooks"]
    assert hook["url"] == HOOK_URL and MARKER_HEADER in hook["headers"]
    assert {"PermissionRequest", "Notification"} <= WAITING_EVENTS


def test_the_product_grants_no_tool_permissions_and_keeps_the_users() -> None:
    seed = render_claude_settings(make_spec(make_klass()))
    assert "permissions" not in seed
    assert "permissions" not in merge_settings(None, hook_url=HOOK_URL, hook_token="t",
                                               seed=seed)
    user = {"permissions": {"allow": ["Bash(npm test:*)"], "deny": ["WebFetch"],
                            "defaultMode": "acceptEdits"}}
    merged = merge_settings(user, hook_url=HOOK_URL, hook_token="t", seed=seed)
    assert merged["permissions"] == user["permissions"]
    # A second start merges over the first result: still the user's, unchanged.
    again = merge_settings(merged, hook_url=HOOK_URL, hook_token="t2", seed=seed)
    assert again["permissions"] == user["permissions"]
