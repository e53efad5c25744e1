"""A reconcile starts from Kopf's watched body only when it is the Workspace version
this process last read or wrote; otherwise it reads the Workspace."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from agentspaces import handlers
from agentspaces.reconcile.outcome import Outcome
from agentspaces.reconcile.scope import Visit
from agentspaces.runtime import Runtime
from agentspaces.settings import OperatorSettings
from agentspaces.workspace_versions import WorkspaceVersions
from tests.support.fakes import FakeKube

SETTINGS = OperatorSettings.from_env()


def _body(version: str, hostname: str | None = None) -> dict[str, Any]:
    status = {"hostname": hostname} if hostname else {}
    return {"metadata": {"name": "w", "namespace": "n", "uid": "uid-1", "generation": 1,
                         "resourceVersion": version},
            "spec": {"repository": {"url": "https://example.com/r.git"}}, "status": status}


def test_a_body_is_used_only_at_the_version_last_seen() -> None:
    versions = WorkspaceVersions()
    body = _body("7")
    assert versions.current("uid-1", body) is None  # never seen
    versions.saw("uid-1", "7")
    copied = versions.current("uid-1", body)
    assert copied == body
    assert copied is not None
    copied["status"]["hostname"] = "changed"
    copied["metadata"]["name"] = "changed"
    assert body["status"] == {} and body["metadata"]["name"] == "w"  # a private copy
    watched = {**body, "metadata": {**body["metadata"], "managedFields": [
        {"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:spec": {}}}]}}
    assert versions.current("uid-1", watched) == body  # without the managed fields
    assert versions.current("uid-1", _body("6")) is None  # older: the watch lags
    assert versions.current("uid-1", _body("8")) is None  # newer: someone else wrote
    assert versions.current("uid-1", _body("")) is None
    versions.saw("uid-1", None)  # a write whose answer was lost
    assert versions.current("uid-1", body) is None
    versions.saw("uid-1", "7")
    versions.forget("uid-1")
    assert versions.current("uid-1", body) is None


async def test_a_poll_after_the_watch_caught_up_reads_nothing() -> None:
    kube = FakeKube()
    kube.workspaces[("n", "w")] = _body("100")
    memo = kopf.Memo()
    memo.runtime = Runtime(SETTINGS, kube)
    seen: list[str | None] = []

    async def name_it(visit: Visit) -> Outcome:
        seen.append(visit.status.hostname)
        visit.status.hostname = "w-n"
        return Outcome.done()

    # The first reconcile reads the Workspace and writes status (version 2 is made).
    await handlers._visit(kopf.Body(_body("100")), memo, name_it, fresh_inputs=False)
    assert kube.calls.methods().count("get_workspace") == 1
    written = kube.workspaces[("n", "w")]
    version = written["metadata"]["resourceVersion"]
    assert version != "100"

    # The watch has not delivered that write yet: the old body is not trusted.
    await handlers._visit(kopf.Body(_body("100")), memo, name_it, fresh_inputs=False)
    assert kube.calls.methods().count("get_workspace") == 2
    assert seen == [None, "w-n"]

    # Once the watched body is the written version, a poll starts from it.
    await handlers._visit(kopf.Body(copy.deepcopy(written)), memo, name_it,
                          fresh_inputs=False)
    assert kube.calls.methods().count("get_workspace") == 2
    assert seen == [None, "w-n", "w-n"]

    # A change by anyone else is another version: read again.
    kube.workspaces[("n", "w")]["metadata"]["resourceVersion"] = "999"
    await handlers._visit(kopf.Body(_body("999", "w-n")), memo, name_it, fresh_inputs=False)
    assert kube.calls.methods().count("get_workspace") == 3
