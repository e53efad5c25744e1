"""The operator's Prometheus metrics (docs/metrics.md) and the server that exposes them.

Every metric lives in one registry, `REGISTRY`, served at /metrics by `serve()`. Label
values are bounded: cloud endpoints are path templates (ids replaced by `{id}`), status
codes are HTTP codes or a fixed word, and each label keeps at most `BoundedLabel.limit`
distinct values, beyond which it reads "other". No workspace name, namespace or id is
ever a label: the phase gauge counts workspaces per phase from what this process last
reconciled, so a scrape costs no API call.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentspaces.api.enums import AgentState, Phase
from agentspaces.api.status import TokenCountsStatus, WorkspaceStatus

log = logging.getLogger(__name__)

OTHER = "other"
"""The label value standing for everything past a label's bound."""


class BoundedLabel:
    """One label's values, at most `limit` distinct ones; later new ones read "other"."""

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # scrapes and hcloud's worker threads share it

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.limit:
                return OTHER
            self._seen.add(value)
            return value


_WORD = re.compile(r"(?:[a-z][a-z_]{0,39}|v[0-9]{1,2})\Z")  # a name or an API version
_HEXISH = re.compile(r"[0-9a-f]{16,}\Z")
MAX_SEGMENTS = 6


def endpoint_template(path: str, base_path: str = "") -> str:
    """A request path as a label: no query, `base_path` (the API's version prefix)
    removed, every segment that is not a plain lower-case word or an API version (ids,
    names, hashes) replaced by "{id}", at most MAX_SEGMENTS segments.

    "/v1/servers/42/actions/poweron?x=1" with base "/v1" -> "/servers/{id}/actions/poweron"
    """
    path = urlsplit(path).path
    base = base_path.rstrip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):]
    segments = [s for s in path.split("/") if s]
    shown = [s if _WORD.match(s) and not _HEXISH.match(s) else "{id}"
             for s in segments[:MAX_SEGMENTS]]
    if len(segments) > MAX_SEGMENTS:
        shown.append("...")
    return "/" + "/".join(shown)


def status_code(code: int | str) -> str:
    """An HTTP status as a label value; anything that is not one reads "other"."""
    try:
        number = int(code)
    except (TypeError, ValueError):
        return OTHER
    return str(number) if 100 <= number <= 599 else OTHER


REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # process_cpu_seconds_total, resident memory, fds

RECONCILE_SECONDS = Histogram(
    "agentspaces_reconcile_duration_seconds",
    "One reconcile of a Workspace (its status read, steps and status write), by handler "
    "(reconcile or finalize) and outcome (done, requeue or error).",
    ["handler", "outcome"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))

CLOUD_REQUESTS = Counter(
    "agentspaces_cloud_requests",
    "HTTP requests to a cloud API, by provider, endpoint (method and path template) and "
    "status code (\"error\" when no response came).",
    ["provider", "endpoint", "code"], registry=REGISTRY)

CLOUD_REQUEST_SECONDS = Histogram(
    "agentspaces_cloud_request_duration_seconds",
    "Time for one HTTP request to a cloud API, by provider and endpoint.",
    ["provider", "endpoint"], registry=REGISTRY,
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

AGENT_REQUEST_SECONDS = Histogram(
    "agentspaces_agent_request_duration_seconds",
    "Time for one request to a workspace agent, by endpoint and status code "
    "(\"unreachable\" or \"certificate\" when none came). endpoint \"GET /v1/status\" is "
    "the agent poll; long-polls, which wait by design, are \"GET /v1/status (long-poll)\".",
    ["endpoint", "code"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

IDLE_STOPS = Counter(
    "agentspaces_idle_stops",
    "Workspaces the operator stopped by itself, by reason (inactivity or lifetime).",
    ["reason"], registry=REGISTRY)

SERVER_BOOTS = Counter(
    "agentspaces_server_boots",
    "Servers started for Workspaces, by source: image (created from a WorkspaceImage's "
    "snapshot), cold (created from an image that installs everything at boot) or pool "
    "(a warm-pool server claimed).",
    ["source"], registry=REGISTRY)

BACKUPS = Counter(
    "agentspaces_backups",
    "Backups that ended, by result (succeeded or failed).",
    ["result"], registry=REGISTRY)

BACKUP_BYTES = Counter(
    "agentspaces_backup_bytes",
    "Bytes of committed backups (the encrypted archive the agent uploaded).",
    registry=REGISTRY)

BACKUP_SECONDS = Histogram(
    "agentspaces_backup_duration_seconds",
    "From a backup's start to its commit.", registry=REGISTRY,
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))

OPERATOR_ACTIVE = Gauge(
    "agentspaces_operator_active",
    "1 while this replica acts on Workspaces, classes and images; 0 while it stands by "
    "behind an older peered replica (AGENTSPACES_PEERING), or before it first acts.",
    registry=REGISTRY)

# Series that exist from the start, so rate() and increase() see a 0 before the first.
for _reason in ("inactivity", "lifetime"):
    IDLE_STOPS.labels(_reason)
for _result in ("succeeded", "failed"):
    BACKUPS.labels(_result)

_endpoints: dict[str, BoundedLabel] = {}
_endpoints_lock = threading.Lock()


def _endpoint_label(provider: str, endpoint: str) -> str:
    with _endpoints_lock:
        bound = _endpoints.setdefault(provider, BoundedLabel())
    return bound(endpoint)


def cloud_request(provider: str, method: str, path: str, code: int | str | None,
                  seconds: float, base_path: str = "") -> None:
    """Count one cloud API request; `code` None when no response came."""
    endpoint = _endpoint_label(provider,
                               f"{method.upper()} {endpoint_template(path, base_path)}")
    CLOUD_REQUESTS.labels(provider, endpoint,
                          "error" if code is None else status_code(code)).inc()
    CLOUD_REQUEST_SECONDS.labels(provider, endpoint).observe(seconds)


def cloud_operation(provider: str, operation: str, code: int | str | None,
                    seconds: float | None = None) -> None:
    """Count one call of an SDK that names its operations (S3's "PutObject")."""
    endpoint = _endpoint_label(provider, operation if _OPERATION.match(operation) else OTHER)
    CLOUD_REQUESTS.labels(provider, endpoint,
                          "error" if code is None else status_code(code)).inc()
    if seconds is not None:
        CLOUD_REQUEST_SECONDS.labels(provider, endpoint).observe(seconds)


_OPERATION = re.compile(r"[A-Za-z]{1,64}\Z")
_agent_endpoints = BoundedLabel(limit=32)


def agent_request(method: str, path: str, code: int | str, seconds: float, *,
                  long_poll: bool = False) -> None:
    endpoint = f"{method.upper()} {endpoint_template(path)}"
    if long_poll:
        endpoint += " (long-poll)"
    label = code if isinstance(code, str) and not code.isdigit() else status_code(code)
    AGENT_REQUEST_SECONDS.labels(_agent_endpoints(endpoint), label).observe(seconds)


class CountBook(Collector):
    """One value per Workspace uid, as this process last wrote or read it, exported as a
    gauge of how many have each value: every known value is exported (0 when none),
    anything else as "other". Every Workspace is reconciled when the operator starts
    (Kopf's resume), so the book fills without a list call."""

    def __init__(self, name: str, documentation: str, label: str,
                 values: Iterable[str]) -> None:
        self._name, self._documentation, self._label = name, documentation, label
        self._known = [str(v) for v in values]
        self._values: dict[str, str] = {}
        self._lock = threading.Lock()

    def set(self, uid: str, value: str | None) -> None:
        """Record the uid's value; None: it no longer counts."""
        with self._lock:
            if value is None:
                self._values.pop(uid, None)
            else:
                self._values[uid] = str(value)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._values.pop(uid, None)

    def counts(self) -> dict[str, int]:
        with self._lock:
            values = list(self._values.values())
        counts = dict.fromkeys(self._known, 0)
        for value in values:
            key = value if value in counts else OTHER
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self._name, self._documentation, labels=[self._label])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for value, count in self.counts().items():
            family.add_metric([value], count)
        yield family


class PhaseBook(CountBook):
    """Workspaces by phase (`agentspaces_workspaces`); one without a phase is Pending."""

    def __init__(self) -> None:
        super().__init__("agentspaces_workspaces",
                         "Workspaces this operator manages, by phase.", "phase", Phase)

    def set(self, uid: str, value: str | None) -> None:
        super().set(uid, value or Phase.PENDING)


class TokenBook:
    """Adds to `agentspaces_claude_tokens_total` what each Workspace's token sums
    (status.usage, summed by its agent) grew by since this process last saw them. The
    first sight of a Workspace is its baseline, so a restarted operator counts only
    what is used after it started; a sum that shrank (transcripts restored from an older
    backup) becomes the new baseline."""

    KINDS = ("input", "output", "cache_read", "cache_write")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        for kind in self.KINDS:  # every series from the start, 0 before the first token
            counter.labels(kind)
        self._seen: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def observe(self, uid: str, usage: TokenCountsStatus | None) -> None:
        now = (0, 0, 0, 0) if usage is None else (
            usage.input_tokens or 0, usage.output_tokens or 0,
            usage.cache_read_tokens or 0, usage.cache_write_tokens or 0)
        with self._lock:
            before = self._seen.get(uid)
            self._seen[uid] = now
        if before is None:
            return
        for kind, old, new in zip(self.KINDS, before, now, strict=True):
            if new > old:
                self._counter.labels(kind).inc(new - old)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)


PHASES = PhaseBook()
REGISTRY.register(PHASES)
AGENTS = CountBook("agentspaces_agents",
                   "AI agents of running Workspaces, by state, as their workspace agents "
                   "last reported it.", "state", AgentState)
REGISTRY.register(AGENTS)
CLAUDE_TOKENS = Counter(
    "agentspaces_claude_tokens",
    "Claude Code tokens used in Workspaces, by kind, as their agents sum them from the "
    "transcripts; what this process saw the sums grow by.",
    ["kind"], registry=REGISTRY)
TOKENS = TokenBook(CLAUDE_TOKENS)


def workspace_seen(uid: str, status: WorkspaceStatus) -> None:
    """A reconcile's status, as written: its phase, its agent's state while Running
    (unknown until reported), and the growth of its token sums."""
    PHASES.set(uid, status.phase)
    running = status.phase == Phase.RUNNING
    state = status.activity.agent_state if status.activity else None
    AGENTS.set(uid, (state or AgentState.UNKNOWN) if running else None)
    TOKENS.observe(uid, status.usage)


def workspace_gone(uid: str) -> None:
    PHASES.forget(uid)
    AGENTS.forget(uid)
    TOKENS.forget(uid)


class TrackedBudget(Protocol):
    """A cloud credential's request budget (clouds/budget.py)."""

    provider: str
    limit: int

    def remaining(self) -> int: ...


class BudgetBook(Collector):
    """Every live request budget, exported per provider (never per token): the
    remainder and limit of the provider's budget with the least left, the one closest
    to making calls wait."""

    def __init__(self) -> None:
        self._budgets: weakref.WeakSet[TrackedBudget] = weakref.WeakSet()
        self._lock = threading.Lock()

    def track(self, budget: TrackedBudget) -> None:
        with self._lock:
            self._budgets.add(budget)

    def budgets(self) -> list[TrackedBudget]:
        with self._lock:
            return list(self._budgets)

    def lowest(self) -> dict[str, tuple[int, int]]:
        """provider -> (remaining, limit) of its budget with the least left."""
        budgets = self.budgets()
        lowest: dict[str, tuple[int, int]] = {}
        for budget in budgets:
            reading = (budget.remaining(), budget.limit)
            if budget.provider not in lowest or reading[0] < lowest[budget.provider][0]:
                lowest[budget.provider] = reading
        return lowest

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily(
                    "agentspaces_cloud_budget_remaining",
                    "Requests left in a cloud API's budget as the operator reckons it from "
                    "the provider's rate-limit headers, by provider (the lowest of its "
                    "credentials).", labels=["provider"]),
                GaugeMetricFamily(
                    "agentspaces_cloud_budget_limit",
                    "The size of that budget, as the provider last announced it.",
                    labels=["provider"]))

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        remaining, limit = self._families()
        for provider, (left, size) in sorted(self.lowest().items()):
            remaining.add_metric([provider], left)
            limit.add_metric([provider], size)
        yield remaining
        yield limit


BUDGETS = BudgetBook()
REGISTRY.register(BUDGETS)


def track_budget(budget: TrackedBudget) -> None:
    BUDGETS.track(budget)


@dataclass
class MetricsServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def close(self) -> None:
        await self.runner.cleanup()


async def _metrics(request: web.Request) -> web.Response:
    registry: CollectorRegistry = request.app[_REGISTRY_KEY]
    return web.Response(body=generate_latest(registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


_REGISTRY_KEY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)


async def serve(host: str, port: int, registry: CollectorRegistry = REGISTRY
                ) -> MetricsServer:
    """Serve GET /metrics on host:port (port 0: a free one) in this event loop."""
    app = web.Application()
    app[_REGISTRY_KEY] = registry
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = int(runner.addresses[0][1])
    return MetricsServer(runner, host, bound)
