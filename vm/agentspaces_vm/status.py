"""The status document GET /v1/status returns (contracts.AgentStatus; shape in
docs/agent-protocol.md)."""

from __future__ import annotations

from collections.abc import Iterable

from agentspaces_vm.bootstrap import BootState
from agentspaces_vm.contracts import (
    Activity,
    AgentStatus,
    BackupJob,
    BootStage,
    DevcontainerReport,
    RestoreReport,
    RestoreState,
)


def build_status(*, version: str, simulated: bool, boot: BootState, ports: Iterable[int],
                 activity: Activity | None, secrets_version: str | None,
                 backup: BackupJob) -> AgentStatus:
    """Assemble the document from the agent's parts (pure).

    `activity` is the tracker's report; None means the tracker has not produced one
    yet, which the operator must read as "unknown", never as idle.
    """
    return AgentStatus(
        version=version, simulated=simulated, boot_stage=BootStage(boot.stage),
        boot_message=boot.message,
        devcontainer=DevcontainerReport(state=boot.devcontainer_state,
                                        message=boot.devcontainer_message,
                                        policy=boot.devcontainer_policy,
                                        removed=tuple(boot.devcontainer_removed)),
        ports=tuple(sorted(set(ports))), activity=activity, secrets_version=secrets_version,
        restore=RestoreReport(state=RestoreState(boot.restore_state), error=boot.restore_error,
                              reason=boot.restore_reason),
        backup_state=backup.state, backup_id=backup.backup_id)
