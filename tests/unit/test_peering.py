"""Peering priorities: the older replica wins, and no two replicas tie."""

from __future__ import annotations

import kopf
import pytest

from agentspaces import peering
from agentspaces.settings import OperatorSettings


def test_an_older_replica_has_the_higher_priority() -> None:
    first = peering.start_priority(now_ns=1_800_000_000_000_000_000)
    later = peering.start_priority(now_ns=1_800_000_000_000_001_000)  # 1 µs later
    assert first > later
    assert -(2**63) < later < 0  # fits the int64 the apiserver stores


def test_replicas_started_together_do_not_tie() -> None:
    same = {peering.start_priority(now_ns=1_800_000_000_000_000_000) for _ in range(50)}
    assert len(same) > 40  # random low digits: a tie is one chance in a thousand


def test_configure_makes_peering_mandatory_and_cluster_wide() -> None:
    settings = kopf.OperatorSettings()
    priority = peering.configure(settings, "agentspaces", 30)
    assert settings.peering.name == "agentspaces"
    assert settings.peering.mandatory and not settings.peering.standalone
    assert settings.peering.clusterwide and settings.peering.lifetime == 30
    assert settings.peering.priority == priority


def test_peering_is_off_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTSPACES_PEERING", raising=False)
    assert OperatorSettings.from_env().peering is None
    monkeypatch.setenv("AGENTSPACES_PEERING", "agentspaces")
    monkeypatch.setenv("AGENTSPACES_PEERING_LIFETIME", "1s")
    found = OperatorSettings.from_env()
    assert found.peering == "agentspaces" and found.peering_lifetime == 3  # floor
