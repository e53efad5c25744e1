"""The operator<->agent documents: built, serialised and parsed by the same code."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from agentspaces.persistence import backups as bk
from agentspaces.persistence.keys import DataKey
from agentspaces_vm import contracts as c

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()
URLS = ("https://r2.example/b/k?partNumber=1&X-Amz-Signature=s1",
        "https://r2.example/b/k?partNumber=2&X-Amz-Signature=s2")
T = datetime(2026, 11, 27, 4, 19, tzinfo=UTC)

BACKUP_PLAN = c.BackupPlan(backup_id="20261127T041900Z", workspace_uid="0f1e2d3c",
                           object_key="agentspaces/ns/demo-0f1e2d3c/20261127T041900Z.tar.zst.enc",
                           key_id="dk-1", key=KEY, part_size=5 << 20, part_urls=URLS,
                           chunk_size=1 << 20, expires_at=T, exclude=("node_modules",))
RESTORE_PLAN = c.RestorePlan(backup_id="20261127T041900Z", workspace_uid="0f1e2d3c",
                             object_key="agentspaces/ns/demo-0f1e2d3c/x.tar.zst.enc",
                             key_id="dk-1", key=KEY, url=URLS[0], size=10,
                             sha256="ab" * 32, expires_at=T)
RESULT = c.BackupResult(backup_id="20261127T041900Z",
                        parts=(c.UploadedPart(1, '"e1"'), c.UploadedPart(2, '"e2"')),
                        size=(5 << 20) + 7, sha256="cd" * 32, key_id="dk-1",
                        chunk_size=1 << 20, format_version=2, plaintext_size=100,
                        warnings="tar: ./x: file changed as we read it")


def wire(doc: dict[str, Any]) -> Any:
    return json.loads(json.dumps(doc))


# --- time ---------------------------------------------------------------------------------

def test_one_time_format_both_ways() -> None:
    local = datetime(2026, 11, 27, 5, 19, 7, 900_000, tzinfo=timezone(timedelta(hours=1)))
    assert c.format_time(local) == "2026-11-27T04:19:07Z"
    assert c.parse_time("2026-11-27T04:19:07Z") == datetime(2026, 11, 27, 4, 19, 7, tzinfo=UTC)
    assert c.parse_time("2026-11-27T04:19:07+00:00") == c.parse_time("2026-11-27T04:19:07Z")
    assert c.parse_time(None) is None and c.parse_time("") is None


# --- round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("document", [BACKUP_PLAN, RESTORE_PLAN, RESULT,
                                      replace(RESULT, plaintext_size=None, warnings="")])
def test_documents_survive_json(document: Any) -> None:
    assert type(document).from_json(wire(document.to_json())) == document


def test_backup_plan_wire_form() -> None:
    doc = BACKUP_PLAN.to_json()
    assert doc["version"] == c.PLAN_VERSION == 2
    assert doc["parts"] == [{"partNumber": 1, "url": URLS[0]}, {"partNumber": 2, "url": URLS[1]}]
    assert doc["key"] == KEY_B64 and doc["expiresAt"] == "2026-11-27T04:19:00Z"
    # Parts in any order arrive ordered by number.
    shuffled = c.BackupPlan.from_json({**doc, "parts": doc["parts"][::-1]})
    assert shuffled.part_urls == URLS and shuffled.capacity == 2 * (5 << 20)
    assert shuffled.binding == "0f1e2d3c/20261127T041900Z"


def test_secrets_never_in_a_repr() -> None:
    for plan in (BACKUP_PLAN, RESTORE_PLAN):
        shown = repr(plan)
        assert KEY_B64 not in shown and str(KEY) not in shown and "X-Amz" not in shown


def test_status_document_round_trip() -> None:
    status = c.AgentStatus(
        version="0.1.0", boot_stage=c.BootStage.READY, simulated=True,
        devcontainer=c.DevcontainerReport("running", "", "restricted", ("runArgs[--privileged]",)),
        ports=(3000, 8080),
        activity=c.Activity("working", T, T, None, ("http",), 0, {"claude": 1}),
        secrets_version="v3",
        restore=c.RestoreReport(c.RestoreState.SUCCEEDED), backup_state=c.JobState.RUNNING,
        backup_id="b-1")
    assert c.AgentStatus.from_json(wire(status.to_json())) == status


def test_the_loaders_status_parses() -> None:
    """The VM's loader answers before the agent runs: everything else defaults."""
    doc = {"version": "loader", "simulated": False, "bootStage": "awaiting-agent",
           "bootMessage": "waiting for the operator", "agentBundle": {"sha256": "ab" * 32}}
    status = c.AgentStatus.from_json(doc)
    assert status.boot_stage is c.BootStage.AWAITING_AGENT and not status.boot_stage.booting
    assert status.activity is None and status.secrets_version is None
    assert status.restore.state is c.RestoreState.NONE and status.backup_state is c.JobState.IDLE


def test_a_pool_loaders_status_parses_with_its_class() -> None:
    """A warm-pool server's loader, before the claim: awaiting-claim, not booting."""
    doc = {"version": "loader", "simulated": True, "bootStage": "awaiting-claim",
           "bootMessage": "a warm-pool server, waiting to be claimed",
           "pool": {"class": "standard"}, "agentBundle": {"sha256": "ab" * 32}}
    status = c.AgentStatus.from_json(doc)
    assert status.boot_stage is c.BootStage.AWAITING_CLAIM and not status.boot_stage.booting
    assert c.BootStage("awaiting-claim") is c.BootStage.AWAITING_CLAIM
    assert status.pool_class == "standard"
    assert c.AgentStatus.from_json(wire(status.to_json())) == status
    assert c.AgentStatus.from_json({**doc, "pool": None}).pool_class is None
    assert "pool" not in c.AgentStatus("1", c.BootStage.READY).to_json()
    with pytest.raises(c.ContractError):
        c.AgentStatus.from_json({**doc, "pool": {"class": 7}})


def test_backup_job_round_trip() -> None:
    job = c.BackupJob(c.JobState.SUCCEEDED, "b-1", None, None, RESULT.to_json(),
                      {"phase": "uploaded"})
    assert c.BackupJob.from_json(wire(job.to_json())) == job
    assert c.BackupJob.from_json({}) == c.BackupJob()


# --- rejections ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"version": 1}, {"workspaceUid": None}, {"workspaceUid": "a/b"}, {"object": None},
    {"key": "c2hvcnQ="}, {"key": "not base64"}, {"keyId": ""}, {"keyId": "k" * 65},
    {"partSize": 1 << 20}, {"partSize": True}, {"partSize": "5242880"},
    {"parts": []}, {"parts": [{"partNumber": 2, "url": URLS[1]}]},
    {"parts": [{"partNumber": 1, "url": "file:///etc/passwd"}]}, {"parts": ["x"]},
    {"parts": [{"partNumber": 1}]}, {"exclude": "x"}, {"exclude": [""]},
    {"chunkSize": 0}, {"chunkSize": (64 << 20) + 1}, {"id": "../../x"},
    {"expiresAt": "tomorrow"},
])
def test_a_malformed_backup_plan_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(c.ContractError) as info:
        c.BackupPlan.from_json({**BACKUP_PLAN.to_json(), **changes})
    assert KEY_B64 not in str(info.value) and "X-Amz" not in str(info.value)


@pytest.mark.parametrize("changes", [
    {"size": 0}, {"size": -1}, {"sha256": "abc"}, {"url": None}, {"url": "ftp://x"},
    {"workspaceUid": ""}, {"version": 3}, {"id": None},
])
def test_a_malformed_restore_plan_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(c.ContractError) as info:
        c.RestorePlan.from_json({**RESTORE_PLAN.to_json(), **changes})
    assert KEY_B64 not in str(info.value)


def test_not_an_object_is_refused() -> None:
    for parse in (c.BackupPlan.from_json, c.RestorePlan.from_json, c.BackupResult.from_json,
                  c.AgentStatus.from_json, c.BackupJob.from_json):
        with pytest.raises(c.ContractError):
            parse(["a", "list"])


@pytest.mark.parametrize("changes", [
    {"parts": []}, {"parts": [{"partNumber": 2, "etag": "e"}]},
    {"parts": [{"partNumber": 1, "etag": ""}]}, {"size": 0}, {"sha256": "nope"},
    {"id": None}, {"keyId": None}, {"plaintextSize": "100"},
])
def test_a_malformed_backup_result_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(c.ContractError):
        c.BackupResult.from_json({**RESULT.to_json(), **changes})


@pytest.mark.parametrize("changes", [
    {"bootStage": "dancing"}, {"bootStage": None}, {"version": None},
    {"ports": ["80"]}, {"restore": {"state": "maybe"}}, {"backup": {"state": "later"}},
    {"devcontainer": {"state": "exploded"}}, {"devcontainer": {"policy": "lax"}},
    {"activity": {"agentState": "working"}},  # no agentStateSince
    {"activity": {"agentState": "", "agentStateSince": "2026-11-27T04:00:00Z"}},
    {"activity": {"agentState": "idle", "agentStateSince": "2026-11-27T04:00:00Z",
                  "reasons": "http"}},
    {"secrets": {"version": 7}},
])
def test_a_malformed_status_document_is_refused(changes: dict[str, Any]) -> None:
    good = {"version": "0.1.0", "bootStage": "ready"}
    c.AgentStatus.from_json(good)
    with pytest.raises(c.ContractError):
        c.AgentStatus.from_json({**good, **changes})


# --- limits, enforced on both sides -------------------------------------------------------

@pytest.mark.parametrize(("part_size", "parts", "ttl"), [
    (c.MIN_PART_SIZE - 1, 1, 600), (c.MAX_PART_SIZE + 1, 1, 600),
    (c.MIN_PART_SIZE, 0, 600), (c.MIN_PART_SIZE, c.MAX_PARTS + 1, 600),
    (c.MIN_PART_SIZE, 1, 0), (c.MIN_PART_SIZE, 1, c.MAX_URL_TTL + 1),
])
def test_the_operator_never_begins_a_backup_outside_the_limits(part_size: int, parts: int,
                                                               ttl: int) -> None:
    """Checked before the store is touched (None would fail on any call)."""
    where = bk.BackupLocation.for_workspace("agentspaces/", "ns", "demo", "0f1e2d3c")
    with pytest.raises(c.ContractError):
        bk.begin_backup(None, where, DataKey("dk-1", KEY), T,  # type: ignore[arg-type]
                        part_size, parts, ttl)


def test_the_agent_refuses_a_plan_outside_the_limits() -> None:
    doc = BACKUP_PLAN.to_json()
    for changes in ({"partSize": c.MIN_PART_SIZE - 1}, {"partSize": c.MAX_PART_SIZE + 1},
                    {"parts": [{"partNumber": n, "url": URLS[0]}
                               for n in range(1, c.MAX_PARTS + 2)]}):
        with pytest.raises(c.ContractError):
            c.BackupPlan.from_json({**doc, **changes})
    with pytest.raises(c.ContractError):  # and the operator cannot even build one
        replace(BACKUP_PLAN, part_size=c.MIN_PART_SIZE - 1)
    assert c.BackupPlan.from_json({**doc, "partSize": c.MAX_PART_SIZE}).part_size == \
        c.MAX_PART_SIZE


def test_a_plan_without_a_chunk_size_uses_the_default() -> None:
    doc = BACKUP_PLAN.to_json()
    del doc["chunkSize"], doc["expiresAt"], doc["exclude"]
    plan = c.BackupPlan.from_json(doc)
    assert plan.chunk_size == c.DEFAULT_CHUNK_SIZE and plan.expires_at is None
    assert plan.exclude == ()
