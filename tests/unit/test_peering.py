"""Peering priorities: the older replica wins, and no two replicas tie; the active
gauge follows Kopf's pause and resume."""

from __future__ import annotations

import logging

import kopf
import pytest

from agentspaces import metrics, peering
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


def test_the_active_gauge_follows_kopfs_pause_and_resume() -> None:
    """Peered, a replica reads 0 until Kopf resumes it; its pause (an older replica
    came back, or a tie) reads 0 again. Kopf's other peering lines change nothing."""
    kopf_log = logging.getLogger(peering.KOPF_PEERING_LOGGER)
    peering.configure(kopf.OperatorSettings(), "agentspaces", 30)
    assert _active() == 0
    kopf_log.info("Resuming operations after the pause. Conflicting operators with the "
                  "same priority are gone.")
    assert _active() == 1
    kopf_log.info("Keep-alive in 'agentspaces' cluster-wide: ok.")
    assert _active() == 1
    kopf_log.warning("Pausing all operators, including self: []")
    assert _active() == 0
    peering.configure(kopf.OperatorSettings(), "agentspaces", 30)  # a retried startup
    assert sum(isinstance(f, peering.ActivityFollower) for f in kopf_log.filters) == 1


def _active() -> float | None:
    return metrics.REGISTRY.get_sample_value("agentspaces_operator_active")
