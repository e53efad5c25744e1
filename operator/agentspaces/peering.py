"""Kopf peering for replicated operators: one replica acts, the others stand by.

Every replica publishes a keep-alive with its priority in one ClusterKopfPeering
(`status.<identity>`, refreshed 5-10 s before its lifetime ends). A replica that sees a
live peer of higher priority pauses: Kopf closes its watch streams, so no handler runs,
and stops its daemons and timers (the agent watches and the poll timer) the way it stops
them on exit. When the active replica exits cleanly it removes its entry and a standby
resumes at once; when it dies, its entry is honoured until `lifetime` seconds after its
last keep-alive, then the standby with the highest priority resumes and re-lists every
Workspace (resume handlers, then timers and daemons as usual).

Equal priorities pause every replica, so each takes one no other can have: the older a
replica, the higher its priority (start time in microseconds, negated, with random low
digits against a tie). The active replica therefore keeps acting while others start
beside it (a rolling update hands over only when the old pod leaves), and the oldest
standby takes over.

What stays on in a standby: the startup handler (the runtime's clients, which make no
call of their own, and /metrics: its gauges describe only Workspaces this replica
reconciled), the liveness endpoint and the keep-alives. None of them writes to a
Workspace or a cloud.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentspaces.api.crd import PEERING_GROUP

PLURAL = "clusterkopfpeerings"


def start_priority(now_ns: int | None = None) -> int:
    """Higher for an older replica; distinct for two started in the same microsecond
    but for one chance in a thousand (int64-safe for millennia)."""
    micros = (time.time_ns() if now_ns is None else now_ns) // 1000
    return -(micros * 1000 + secrets.randbelow(1000))


def configure(settings: kopf.OperatorSettings, name: str, lifetime: int) -> int:
    """Make peering mandatory under `name`; returns this replica's priority.

    Mandatory also means a replica starts paused and acts only once it has read the
    peering object and found no live peer above it, so a starting standby never acts,
    not even for a moment. Cluster-wide whether or not the operator is confined to
    namespaces (-n): every replica of one installation meets in the same object."""
    settings.peering.standalone = False
    settings.peering.mandatory = True
    settings.peering.clusterwide = True
    settings.peering.name = name
    settings.peering.lifetime = lifetime
    settings.peering.priority = start_priority()
    settings.peering.stealth = True  # keep-alives are not logged; pauses and resumes are
    return settings.peering.priority


async def ensure_object(name: str) -> bool:
    """Create the ClusterKopfPeering `name` unless it exists (True: created).

    The operator creates it rather than the manifests: `kubectl apply -k` cannot create
    an object in the same run as the CRD that defines it."""
    def create() -> bool:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        with client.ApiClient() as api:
            try:
                client.CustomObjectsApi(api).create_cluster_custom_object(
                    PEERING_GROUP, "v1", PLURAL,
                    {"apiVersion": f"{PEERING_GROUP}/v1", "kind": "ClusterKopfPeering",
                     "metadata": {"name": name}})
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
        return True

    return await asyncio.to_thread(create)
