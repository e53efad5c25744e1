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
reconciled, and `agentspaces_operator_active` reads 0), the liveness endpoint and the
keep-alives. None of them writes to a Workspace or a cloud.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from agentspaces import metrics
from agentspaces.api.crd import PEERING_GROUP

PLURAL = "clusterkopfpeerings"
KOPF_PEERING_LOGGER = "kopf._core.engines.peering"


def start_priority(now_ns: int | None = None) -> int:
    """Higher for an older replica; distinct for two started in the same microsecond
    but for one chance in a thousand (int64-safe for millennia)."""
    micros = (time.time_ns() if now_ns is None else now_ns) // 1000
    return -(micros * 1000 + secrets.randbelow(1000))


class ActivityFollower(logging.Filter):
    """Sets `agentspaces_operator_active` from Kopf's own decisions to pause and resume
    this replica, which it makes known only by logging them (pinned Kopf; tests/
    integration/test_ha.py reads the metric of both replicas through a takeover)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Pausing "):
            metrics.OPERATOR_ACTIVE.set(0)
        elif message.startswith("Resuming operations"):
            metrics.OPERATOR_ACTIVE.set(1)
        return True  # the record is logged as before


def follow_activity() -> None:
    """Peered, a replica starts paused (mandatory peering): 0 until Kopf resumes it."""
    metrics.OPERATOR_ACTIVE.set(0)
    source = logging.getLogger(KOPF_PEERING_LOGGER)
    if not source.isEnabledFor(logging.INFO):  # quiet logging: the records must exist
        source.setLevel(logging.INFO)
    if not any(isinstance(f, ActivityFollower) for f in source.filters):
        source.addFilter(ActivityFollower())


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
    follow_activity()
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
