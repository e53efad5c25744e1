"""When a running workspace takes a scheduled backup, and where a restore reads from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.reconcile import backup_step
from agentspaces.reconcile.credentials import ResolvedCredentials
from agentspaces.reconcile.scope import Scope
from agentspaces.reconcile.status import StatusDraft
from agentspaces.runtime import Runtime
from agentspaces.settings import OperatorSettings

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CLASS = {
    "metadata": {"name": "c"},
    "spec": {"hetzner": {"tokenSecretRef": {"name": "h"}},
             "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
             "storage": {"endpoint": "https://r2.example", "bucket": "backups",
                         "credentialsSecretRef": {"name": "r2"}},
             "encryption": {"keySecretRef": {"name": "k"}}},
}


def _scope(status: dict[str, Any], persistence: dict[str, Any],
           annotations: dict[str, str] | None = None) -> Scope:
    klass = WorkspaceClass.from_body(CLASS)
    spec = WorkspaceSpec.from_spec({"className": "c", "persistence": persistence,
                                    "repository": {"url": "https://github.com/a/b"}}, klass)
    creds = ResolvedCredentials(klass=klass, spec=spec, hetzner_token="h", dns_token="d",
                                storage_access_key="a", storage_secret_key="s",
                                class_key=b"k" * 32, class_key_previous=None,
                                anthropic_api_key=None, repository_token=None)
    settings = OperatorSettings(namespace="ops", poll_interval=30, inventory_interval=600,
                                boot_poll=5, agent_concurrency=4, unreachable_after=3,
                                backup_part_mib=16, backup_url_ttl=3600, agent_timeout=5)
    runtime = Runtime(settings, kube=None, clock=lambda: NOW)  # type: ignore[arg-type]
    body = {"metadata": {"annotations": annotations or {}}}
    return Scope(ref=WorkspaceRef("ns", "ws", "uid-1", 1), body=body,
                 status=StatusDraft.begin(status, NOW, 1), runtime=runtime,
                 emit=lambda *_: None, creds=creds)


def _iso(delta: timedelta) -> str:
    return (NOW - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(("status", "due"), [
    ({"startedAt": _iso(timedelta(minutes=10))}, False),             # fresh start
    ({"startedAt": _iso(timedelta(hours=3))}, True),                 # never backed up
    ({"startedAt": _iso(timedelta(hours=3)),
      "backup": {"time": _iso(timedelta(minutes=30))}}, False),       # recent backup
    ({"startedAt": _iso(timedelta(minutes=5)),                       # an old backup from
      "backup": {"time": _iso(timedelta(days=2))}}, False),           # before this start
    ({"startedAt": _iso(timedelta(hours=5)),
      "backup": {"time": _iso(timedelta(hours=2, minutes=1))}}, True),
    ({"startedAt": _iso(timedelta(minutes=1)), "pendingBackup": {"backup_id": "x"}}, True),
])
def test_scheduled_backup_due(status: dict[str, Any], due: bool) -> None:
    assert backup_step.scheduled_backup_due(_scope(status, {"schedule": "2h"})) is due


def test_no_schedule_means_no_scheduled_backups() -> None:
    scope = _scope({"startedAt": _iso(timedelta(days=1))}, {})
    assert backup_step.scheduled_backup_due(scope) is False
    scope = _scope({"startedAt": _iso(timedelta(days=1))}, {"schedule": "2h",
                                                            "enabled": False})
    assert backup_step.scheduled_backup_due(scope) is False


def test_restore_reads_a_retained_prefix_until_the_workspace_has_its_own_backup() -> None:
    own = "agentspaces/ns/ws-uid-1/"
    retained = "agentspaces/ns/old-uid-0/"
    scope = _scope({"restore": {"prefix": retained}}, {})
    assert backup_step.restore_location(scope).prefix == retained
    assert backup_step.location(scope).prefix == own      # new backups go to its own
    scope = _scope({"restore": {"prefix": retained},
                    "backup": {"time": _iso(timedelta(hours=1))}}, {})
    assert backup_step.restore_location(scope).prefix == own
