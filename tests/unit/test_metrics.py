"""The metric helpers: path templates, bounded labels, the counters each cloud adapter
feeds, the phase gauge, the /metrics server, its settings, and the shipped Grafana
dashboard reading only metrics the operator exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from agentspaces import metrics
from agentspaces.api.enums import AgentState, Phase
from agentspaces.api.status import TokenCountsStatus, WorkspaceStatus
from agentspaces.clouds import hetzner, r2
from agentspaces.reconcile import backup_step
from agentspaces.settings import OperatorSettings
from agentspaces_vm.contracts import BackupJob, JobState
from tests.support.scope_builder import SETTINGS, ScopeBuilder
from tests.unit.test_backup_step import World

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("path", "base", "expected"), [
    ("/v1/servers", "/v1", "/servers"),
    ("https://api.hetzner.cloud/v1/servers?label_selector=a%3Db", "/v1", "/servers"),
    ("/v1/servers/42/actions/poweron", "/v1", "/servers/{id}/actions/poweron"),
    ("/v1/firewalls/7/actions/set_rules", "/v1", "/firewalls/{id}/actions/set_rules"),
    ("/v10/servers", "/v1", "/v10/servers"),  # only a whole segment is the base
    ("/zones/023e105f4ecef8ad9ca31a8372d0c353/dns_records/372e67954025e0ba6aaa6d586b9e0b59",
     "", "/zones/{id}/dns_records/{id}"),
    ("/zones/abcdefabcdefabcdef/dns_records", "", "/zones/{id}/dns_records"),  # hex, no digit
    ("/v1/status", "", "/v1/status"),
    ("/servers/my-server.example", "", "/servers/{id}"),
    ("/", "", "/"),
    ("/a/b/c/d/e/f/g/h", "", "/a/b/c/d/e/f/..."),
])
def test_endpoint_template(path: str, base: str, expected: str) -> None:
    assert metrics.endpoint_template(path, base) == expected


@pytest.mark.parametrize(("code", "expected"), [
    (201, "201"), ("404", "404"), (99, "other"), (600, "other"), ("x", "other")])
def test_status_code(code: int | str, expected: str) -> None:
    assert metrics.status_code(code) == expected


def test_bounded_label_keeps_known_values_past_the_limit() -> None:
    bound = metrics.BoundedLabel(limit=2)
    assert [bound(v) for v in ("a", "b", "c", "a", "d", "b")] == [
        "a", "b", "other", "a", "other", "b"]


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_cloud_endpoints_are_bounded_per_provider() -> None:
    provider = "unit-bounded"
    words = [f"kind{chr(97 + n // 26)}{chr(97 + n % 26)}" for n in range(70)]
    for word in words:
        metrics.cloud_request(provider, "get", f"/v1/{word}/{len(word)}", 200, 0.01, "/v1")
    series = {s.labels["endpoint"] for family in metrics.REGISTRY.collect()
              if family.name == "agentspaces_cloud_requests"
              for s in family.samples if s.labels.get("provider") == provider}
    assert len(series) == 65  # the first 64, then "other" for the rest
    assert "other" in series and "GET /kindaa/{id}" in series
    assert "GET /kindcr/{id}" not in series  # the 70th


def test_hetzner_requests_are_counted_with_their_template_and_status() -> None:
    class Answer:
        status_code = 201

    def send(method: str, url: str, **_: Any) -> Any:
        if url.endswith("/firewalls"):
            raise ConnectionError("refused")
        return Answer()

    request = hetzner.counted(send, "/v1")
    labels = {"provider": "hetzner", "endpoint": "POST /servers", "code": "201"}
    before = _value("agentspaces_cloud_requests_total", **labels)
    assert request("POST", "http://127.0.0.1:1/v1/servers", json={}).status_code == 201
    assert _value("agentspaces_cloud_requests_total", **labels) == before + 1
    failed = {"provider": "hetzner", "endpoint": "GET /firewalls", "code": "error"}
    before = _value("agentspaces_cloud_requests_total", **failed)
    with pytest.raises(ConnectionError):
        request("GET", "http://127.0.0.1:1/v1/firewalls")
    assert _value("agentspaces_cloud_requests_total", **failed) == before + 1


def test_the_hetzner_adapter_counts_through_its_session() -> None:
    servers = hetzner.HcloudServers("token", "http://127.0.0.1:9/v1")
    session = servers._client._client._session
    assert session.request.__name__ == "send"  # wrapped by `counted`


def test_s3_attempts_are_counted_by_operation() -> None:
    class Operation:
        name = "PutObject"

    class Http:
        status_code = 503
        headers: dict[str, str] = {}

    ok = {"provider": "s3", "endpoint": "PutObject", "code": "503"}
    before = _value("agentspaces_cloud_requests_total", **ok)
    r2._count_attempt(response=(Http(), {}), operation=Operation(), attempts=1)
    r2._count_attempt(response=None, operation=Operation(), caught_exception=OSError())
    assert _value("agentspaces_cloud_requests_total", **ok) == before + 1
    assert _value("agentspaces_cloud_requests_total", provider="s3", endpoint="PutObject",
                  code="error") >= 1
    # make_client registers it: botocore emits the event after each attempt.
    client = r2.make_client("http://127.0.0.1:9", "k", "s")
    before = _value("agentspaces_cloud_requests_total", **ok)
    client.meta.events.emit("needs-retry.s3.PutObject", response=(Http(), {}),
                            operation=client.meta.service_model.operation_model("PutObject"),
                            attempts=1, caught_exception=None,
                            request_dict={"context": {}}, endpoint=None)
    assert _value("agentspaces_cloud_requests_total", **ok) == before + 1


def test_agent_requests_split_long_polls_from_polls() -> None:
    # The registry is process-wide and other tests poll agents too: compare deltas.
    poll = {"endpoint": "GET /v1/status", "code": "200"}
    long_poll = {"endpoint": "GET /v1/status (long-poll)", "code": "200"}
    failed = {"endpoint": "PUT /v1/secrets", "code": "unreachable"}
    count = "agentspaces_agent_request_duration_seconds_count"
    bucket = "agentspaces_agent_request_duration_seconds_bucket"
    before = {
        "poll": _value(count, **poll), "long": _value(count, **long_poll),
        "long_fast": _value(bucket, **long_poll, le="10.0"),
        "poll_fast": _value(bucket, **poll, le="0.025"), "failed": _value(count, **failed)}
    metrics.agent_request("GET", "/v1/status", 200, 0.02)
    metrics.agent_request("GET", "/v1/status", 200, 25.0, long_poll=True)
    metrics.agent_request("PUT", "/v1/secrets", "unreachable", 3.0)
    assert _value(count, **poll) == before["poll"] + 1
    assert _value(bucket, **poll, le="0.025") == before["poll_fast"] + 1
    assert _value(count, **long_poll) == before["long"] + 1
    assert _value(bucket, **long_poll, le="10.0") == before["long_fast"]  # 25 s is slower
    assert _value(count, **failed) == before["failed"] + 1


def test_phase_book_counts_every_phase() -> None:
    book = metrics.PhaseBook()
    registry = CollectorRegistry()
    registry.register(book)
    book.set("a", "Running")
    book.set("b", "Running")
    book.set("c", None)
    book.set("d", "Bogus")
    book.set("b", "Stopped")
    book.forget("a")
    book.forget("missing")
    got = {p: registry.get_sample_value("agentspaces_workspaces", {"phase": p})
           for p in ("Running", "Stopped", "Pending", "Creating", "other")}
    assert got == {"Running": 0, "Stopped": 1, "Pending": 1, "Creating": 0, "other": 1}


def test_agents_count_running_workspaces_by_their_agents_state() -> None:
    registry = CollectorRegistry()
    book = metrics.CountBook("agentspaces_agents", "test", "state", AgentState)
    registry.register(book)
    book.set("a", "working")
    book.set("b", "working")
    book.set("c", "waiting")
    book.set("b", None)  # stopped: no longer counted
    got = {s.value: registry.get_sample_value("agentspaces_agents", {"state": s.value})
           for s in AgentState}
    assert got == {"working": 1, "waiting": 1, "idle": 0, "absent": 0, "unknown": 0}


def test_workspace_seen_counts_an_agent_only_while_running() -> None:
    uid = "uid-agents"
    before = metrics.AGENTS.counts()
    metrics.workspace_seen(uid, WorkspaceStatus.model_validate(
        {"phase": "Running", "activity": {"agentState": "waiting"}}))
    assert metrics.AGENTS.counts()["waiting"] == before["waiting"] + 1
    metrics.workspace_seen(uid, WorkspaceStatus.model_validate({"phase": "Running"}))
    assert metrics.AGENTS.counts()["unknown"] == before["unknown"] + 1  # not reported yet
    metrics.workspace_seen(uid, WorkspaceStatus.model_validate({"phase": "Stopping"}))
    assert metrics.AGENTS.counts() == before
    metrics.workspace_gone(uid)


def test_token_counters_add_what_the_sums_grew_by_from_the_first_sight() -> None:
    registry = CollectorRegistry()
    book = metrics.TokenBook(Counter("agentspaces_claude_tokens", "test", ["kind"],
                                     registry=registry))

    def usage(inp: int, out: int) -> TokenCountsStatus:
        return TokenCountsStatus.model_validate({"inputTokens": inp, "outputTokens": out})

    def value(kind: str) -> float | None:
        return registry.get_sample_value("agentspaces_claude_tokens_total", {"kind": kind})

    book.observe("a", usage(1000, 50))  # a restarted operator's baseline: not counted
    book.observe("a", usage(1500, 80))
    book.observe("b", None)
    book.observe("b", usage(10, 1))     # a new workspace's first use: all of it
    book.observe("a", usage(200, 5))    # shrank (an older backup restored): new baseline
    book.observe("a", usage(300, 5))
    assert (value("input"), value("output"), value("cache_read")) == (610, 31, 0)
    book.forget("a")
    book.observe("a", usage(900, 9))    # after a forget, a baseline again
    assert value("input") == 610


async def test_server_serves_the_registry_on_a_free_port() -> None:
    registry = CollectorRegistry()
    book = metrics.PhaseBook()
    registry.register(book)
    book.set("x", "Running")
    server = await metrics.serve("127.0.0.1", 0, registry)
    try:
        assert server.port > 0
        async with httpx.AsyncClient() as client:
            response = await client.get(server.url)
            missing = await client.get(server.url.replace("/metrics", "/other"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert 'agentspaces_workspaces{phase="Running"} 1.0' in response.text
        assert missing.status_code == 404
    finally:
        await server.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("127.0.0.1", 9090)),
    ({"AGENTSPACES_METRICS_PORT": "0"}, ("127.0.0.1", 0)),
    ({"AGENTSPACES_METRICS_PORT": "off", "AGENTSPACES_METRICS_HOST": "0.0.0.0"},
     ("0.0.0.0", None)),
])
def test_metrics_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                          expected: tuple[str, int | None]) -> None:
    monkeypatch.delenv("AGENTSPACES_METRICS_PORT", raising=False)
    monkeypatch.delenv("AGENTSPACES_METRICS_HOST", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings.from_env()
    assert (settings.metrics_host, settings.metrics_port) == expected


def test_a_port_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSPACES_METRICS_PORT", "70000")
    with pytest.raises(ValueError, match="not a port"):
        OperatorSettings.from_env()


def _exported() -> dict[str, set[str]]:
    """Every sample name the operator can export, with its label names."""
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    for family in metrics.REGISTRY.collect():
        labels = set().union(*(s.labels for s in family.samples)) if family.samples else set()
        for collector_labels in _declared_labels(family.name):
            labels |= collector_labels
        for suffix in suffixes.get(family.type, ("",)):
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _declared_labels(name: str) -> list[set[str]]:
    declared = [metrics.RECONCILE_SECONDS, metrics.CLOUD_REQUESTS,
                metrics.CLOUD_REQUEST_SECONDS, metrics.AGENT_REQUEST_SECONDS,
                metrics.IDLE_STOPS, metrics.SERVER_BOOTS, metrics.BACKUPS, metrics.BACKUP_BYTES,
                metrics.BACKUP_SECONDS]
    return [set(m._labelnames) for m in declared if m._name == name] + (
        [{"phase"}] if name == "agentspaces_workspaces" else [])


def test_the_dashboard_queries_only_exported_metrics_and_labels() -> None:
    dashboard = json.loads((ROOT / "docs/monitoring/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    exported = _exported()
    queried: set[str] = set()
    for expr in exprs:
        for name, matchers in re.findall(r"\b((?:agentspaces|process)_\w+)(\{[^}]*\})?",
                                         expr):
            assert name in exported, (name, expr)
            queried.add(name.removesuffix("_bucket").removesuffix("_count")
                        .removesuffix("_sum").removesuffix("_total"))
            for label in re.findall(r"(\w+)\s*(?:=~|!=|!~|=)", matchers):
                # job and instance are the labels Prometheus adds to every target.
                assert label in exported[name] | {"job", "instance"}, (label, name, expr)
        for label in re.findall(r"\bby \(([^)]*)\)", expr):
            for one in (x.strip() for x in label.split(",")):
                assert any(one in labels for labels in exported.values()), (one, expr)
    # Every family of ours is on the dashboard.
    ours = {n.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            .removesuffix("_total") for n in exported if n.startswith("agentspaces_")}
    assert ours <= queried, ours - queried


def test_the_docs_describe_every_metric() -> None:
    text = (ROOT / "docs/metrics.md").read_text()
    for name in _exported():
        if name.startswith("agentspaces_") and not name.endswith(("_bucket", "_count",
                                                                   "_sum")):
            assert f"`{name}`" in text, name


def test_the_scrape_config_keeps_the_operator_pod_as_the_manifests_annotate_it() -> None:
    job = yaml.safe_load((ROOT / "docs/monitoring/prometheus-scrape.yaml").read_text()
                         )["scrape_configs"][0]
    deployment = next(d for d in yaml.safe_load_all(
        (ROOT / "manifests/deployment.yaml").read_text()) if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["metadata"]
    keep, address = job["relabel_configs"][0], job["relabel_configs"][1]
    joined = ";".join([pod["labels"]["app.kubernetes.io/name"],
                       pod["annotations"]["prometheus.io/scrape"]])
    assert re.fullmatch(keep["regex"], joined)
    assert not re.fullmatch(keep["regex"], "agentspaces-dashboard;true")
    port = pod["annotations"]["prometheus.io/port"]
    found = re.fullmatch(address["regex"], f"10.0.0.7:8080;{port}")
    assert found and found.expand(address["replacement"].replace("$", "\\")) == "10.0.0.7:9090"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": int(port)} in container["ports"]


# -- counted where it happens ----------------------------------------------------------

async def test_a_lifetime_stop_is_counted_once(scope_builder: ScopeBuilder) -> None:
    b = scope_builder
    b.with_spec(lifetime={"max": "1m"}, lifecycle={"preStop": "none"},
                persistence={"enabled": False})
    for _ in range(2):
        await b.reconcile()
        b.clock.advance(SETTINGS.boot_poll)
        b.servers.boot()
    b.agent.report_ready(b.clock())
    await b.reconcile()
    assert b.status["phase"] == Phase.RUNNING
    before = _value("agentspaces_idle_stops_total", reason="lifetime")
    b.clock.advance(61)
    for _ in range(10):  # the stop takes several reconciles; it is one stop
        await b.reconcile()
        b.clock.advance(1)
    assert b.status["phase"] == Phase.STOPPED and b.status["stoppedBy"] == "lifetime"
    assert _value("agentspaces_idle_stops_total", reason="lifetime") == before + 1


async def test_a_committed_backup_counts_its_bytes_and_time_a_failed_one_its_failure(
        ) -> None:
    world = World()
    ok = (_value("agentspaces_backups_total", result="succeeded"),
          _value("agentspaces_backup_bytes_total"),
          _value("agentspaces_backup_duration_seconds_count"),
          _value("agentspaces_backup_duration_seconds_sum"))
    await world.step(backup_step.before_stop)
    world.builder.clock.advance(7)
    world.finish_backup(b"x" * 4321)
    outcome, _ = await world.step(backup_step.before_stop)
    assert outcome is None  # committed
    assert (_value("agentspaces_backups_total", result="succeeded"),
            _value("agentspaces_backup_bytes_total"),
            _value("agentspaces_backup_duration_seconds_count")) == (
        ok[0] + 1, ok[1] + 4321, ok[2] + 1)
    assert _value("agentspaces_backup_duration_seconds_sum") - ok[3] == pytest.approx(7)

    failed = World()
    before = _value("agentspaces_backups_total", result="failed")
    await failed.step(backup_step.before_stop)
    failed.agent.job = BackupJob(JobState.FAILED, failed.agent.plans[0].backup_id,
                                 error="disk full", reason="ArchiveFailed")
    await failed.step(backup_step.before_stop)
    assert _value("agentspaces_backups_total", result="failed") == before + 1
