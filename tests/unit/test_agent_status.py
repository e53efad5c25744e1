"""Assembling the status document."""

from __future__ import annotations

from agentspaces_vm.bootstrap import BootState
from agentspaces_vm.contracts import Activity, AgentStatus, BackupJob, JobState
from agentspaces_vm.status import build_status

ACTIVITY_DOC = {"agentState": "waiting", "agentStateSince": "2026-11-27T04:00:00Z",
                "lastActivityTime": "2026-11-27T04:00:00Z", "lastUserActivityTime": None,
                "reasons": ["claude-hook:Stop"], "malformedHookEvents": 1,
                "sessions": {"claude": 1, "claudeWorking": 0, "claudeWaiting": 1, "ssh": 0,
                             "httpInFlight": 0}}


def test_status_document_shape() -> None:
    boot = BootState(start_requested=True, stage="failed", message="restore failed",
                     devcontainer_state="absent", restore_state="failed",
                     restore_error="chunk 2 failed authentication", restore_reason="Corrupt")
    status = build_status(version="0.1.0", simulated=False, boot=boot,
                          ports=[8080, 3000, 8080], activity=Activity.from_json(ACTIVITY_DOC),
                          secrets_version="v3",
                          backup=BackupJob(JobState.RUNNING, "b-1"))
    doc = status.to_json()
    assert doc == {
        "version": "0.1.0",
        "simulated": False,
        "bootStage": "failed",
        "bootMessage": "restore failed",
        "devcontainer": {"state": "absent", "message": "", "policy": None, "removed": []},
        "ports": [3000, 8080],
        "activity": ACTIVITY_DOC,
        "secrets": {"version": "v3", "shareLinks": True},
        "restore": {"state": "failed", "error": "chunk 2 failed authentication",
                    "reason": "Corrupt"},
        "backup": {"state": "running", "id": "b-1"},
    }
    assert AgentStatus.from_json(doc) == status  # what the operator reads back


def test_fresh_agent_status() -> None:
    doc = build_status(version="0.1.0", simulated=True, boot=BootState(), ports=(),
                       activity=None, secrets_version=None, backup=BackupJob()).to_json()
    assert doc["bootStage"] == "waiting-for-start"
    assert doc["devcontainer"] == {"state": "absent", "message": "", "policy": None,
                                   "removed": []}
    assert doc["restore"] == {"state": "none", "error": None, "reason": None}
    assert doc["backup"] == {"state": "idle", "id": None}
    assert doc["activity"] is None and doc["secrets"] == {"version": None, "shareLinks": True}
    assert doc["simulated"] is True and doc["ports"] == []
