"""Operator settings, read once from the environment (see README: Configuration)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agentspaces.api.durations import parse_duration


def _seconds(name: str, default: str) -> float:
    return parse_duration(os.environ.get(name, default)).total_seconds()


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _operator_namespace() -> str:
    explicit = os.environ.get("AGENTSPACES_NAMESPACE")
    if explicit:
        return explicit
    sa_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if sa_ns.exists():
        return sa_ns.read_text().strip()
    return "agentspaces-system"


@dataclass(frozen=True)
class OperatorSettings:
    namespace: str
    """Where cluster-scoped classes' Secrets live unless a ref names a namespace."""
    poll_interval: float
    """How often each running workspace's agent is polled (activity, idle, secrets)."""
    inventory_interval: float
    """How often servers are listed (by label, in pages) to notice out-of-band deletes."""
    boot_poll: float
    """Requeue delay while a server or agent is starting."""
    agent_concurrency: int
    unreachable_after: int
    backup_part_mib: int
    backup_url_ttl: float
    agent_timeout: float

    @classmethod
    def from_env(cls) -> OperatorSettings:
        return cls(
            namespace=_operator_namespace(),
            poll_interval=_seconds("AGENTSPACES_POLL_INTERVAL", "30s"),
            inventory_interval=_seconds("AGENTSPACES_INVENTORY_INTERVAL", "10m"),
            boot_poll=_seconds("AGENTSPACES_BOOT_POLL", "5s"),
            agent_concurrency=_int("AGENTSPACES_AGENT_CONCURRENCY", 20),
            unreachable_after=_int("AGENTSPACES_UNREACHABLE_AFTER", 3),
            backup_part_mib=_int("AGENTSPACES_BACKUP_PART_MIB", 16),
            backup_url_ttl=_seconds("AGENTSPACES_BACKUP_URL_TTL", "1h"),
            agent_timeout=_seconds("AGENTSPACES_AGENT_TIMEOUT", "10s"),
        )
