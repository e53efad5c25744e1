"""The status document GET /v1/status returns (shape in docs/agent-protocol.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentspaces_vm.bootstrap import BootState


def build_status(*, version: str, simulated: bool, boot: BootState, ports: Iterable[int],
                 activity: Mapping[str, Any] | None, secrets_version: str | None,
                 backup: Mapping[str, Any]) -> dict[str, Any]:
    """Assemble the document from the agent's parts (pure).

    `activity` is the tracker's snapshot; None means the tracker has not produced one
    yet, which the operator must read as "unknown", never as idle.
    """
    return {
        "version": version,
        "simulated": simulated,
        "bootStage": boot.stage,
        "bootMessage": boot.message,
        "devcontainer": {"state": boot.devcontainer_state,
                         "message": boot.devcontainer_message,
                         "policy": boot.devcontainer_policy,
                         "removed": list(boot.devcontainer_removed)},
        "ports": sorted(set(ports)),
        "activity": dict(activity) if activity is not None else None,
        "secrets": {"version": secrets_version},
        "restore": {"state": boot.restore_state, "error": boot.restore_error,
                    "reason": boot.restore_reason},
        "backup": {"state": backup.get("state", "idle"), "id": backup.get("id")},
    }
