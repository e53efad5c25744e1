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


def _metrics_port() -> int | None:
    """AGENTSPACES_METRICS_PORT: a port, 0 for a free one, or "off"."""
    value = os.environ.get("AGENTSPACES_METRICS_PORT", "9090").strip().lower()
    if value in ("off", "false", "no", ""):
        return None
    port = int(value)
    if not 0 <= port <= 65535:
        raise ValueError(f"AGENTSPACES_METRICS_PORT {value} is not a port")
    return port


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
    metrics_host: str = "127.0.0.1"
    """Where /metrics listens (the Deployment sets 0.0.0.0, as it does for /healthz)."""
    metrics_port: int | None = None
    """Its port (0: a free one); None: no metrics server."""
    peering: str | None = None
    """The ClusterKopfPeering replicas share (one acts, the others stand by); None:
    standalone, as `agentspaces run` is out of cluster (the Deployment sets one)."""
    peering_lifetime: int = 30
    """Seconds a replica's keep-alive stays valid: how long a crashed active replica
    holds the others back at most."""
    pool_interval: float = 30.0
    """How often a class's warm pool is looked at: refilled after claims, its booted
    servers offered (one Hetzner list per class with a pool)."""
    class_cache: float = 10.0
    """Seconds a WorkspaceClass and the Secrets it names are reused by polls (0: read
    them on every reconcile): how long a rotated class credential may take to apply."""
    memory_trim: float = 60.0
    """How often the C heap's free pages go back to the system (memory_trim.py; 0: never)."""

    @classmethod
    def from_env(cls) -> OperatorSettings:
        return cls(
            namespace=_operator_namespace(),
            poll_interval=_seconds("AGENTSPACES_POLL_INTERVAL", "30s"),
            inventory_interval=_seconds("AGENTSPACES_INVENTORY_INTERVAL", "10m"),
            pool_interval=_seconds("AGENTSPACES_POOL_INTERVAL", "30s"),
            boot_poll=_seconds("AGENTSPACES_BOOT_POLL", "5s"),
            agent_concurrency=_int("AGENTSPACES_AGENT_CONCURRENCY", 20),
            unreachable_after=_int("AGENTSPACES_UNREACHABLE_AFTER", 3),
            backup_part_mib=_int("AGENTSPACES_BACKUP_PART_MIB", 16),
            backup_url_ttl=_seconds("AGENTSPACES_BACKUP_URL_TTL", "1h"),
            agent_timeout=_seconds("AGENTSPACES_AGENT_TIMEOUT", "10s"),
            metrics_host=os.environ.get("AGENTSPACES_METRICS_HOST", "127.0.0.1"),
            metrics_port=_metrics_port(),
            peering=os.environ.get("AGENTSPACES_PEERING", "").strip() or None,
            peering_lifetime=max(3, round(_seconds("AGENTSPACES_PEERING_LIFETIME", "30s"))),
            class_cache=_seconds("AGENTSPACES_CLASS_CACHE", "10s"),
            memory_trim=_seconds("AGENTSPACES_MEMORY_TRIM", "60s"),
        )
