"""How the operator configures Kopf (persistence, watching, error delays): applied by
the startup handler, and by benchmarks/kopf_floor.py so that it measures Kopf as the
operator runs it."""

from __future__ import annotations

import logging

import kopf

from agentspaces.api.model import GROUP, OPERATOR_FINALIZER

# Kopf ignores every annotation under its storage prefix when diffing, so its
# bookkeeping lives under a sub-domain and user annotations such as
# agentspaces.dev/wake still trigger a reconcile.
KOPF_PREFIX = f"kopf.{GROUP}"


def apply(settings: kopf.OperatorSettings) -> None:
    settings.persistence.finalizer = OPERATOR_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.batching.error_delays = (1, 2, 5, 10, 30)
