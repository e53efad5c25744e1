"""The operator's /metrics over HTTP, from the real operator process: a workspace made
Ready against the Hetzner and Cloudflare emulators and a simulated VM shows in the
phase gauge, the cloud request counters (the same count the emulator saw), the
reconcile histogram and the agent poll histogram, and no label names it."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentspaces.controlplane import free_port
from tests.conftest import Kubectl
from tests.support.stack import VmStack, condition, start_operator, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "metrics"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl, metrics_port: int,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 71, 18141,
                  env={"AGENTSPACES_METRICS_PORT": str(metrics_port),
                       "AGENTSPACES_METRICS_HOST": "127.0.0.1"}) as stack:
        yield stack


def _scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def _total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(value for (metric, series), value in samples.items()
               if metric == name and wanted <= series)


def test_scrape_shows_a_ready_workspace(stack: VmStack, kubectl: Kubectl, namespace: str,
                                        metrics_port: int) -> None:
    kubectl.apply(workspace("probe", namespace, CLASS, idle={"timeout": "30m"}))
    ws: dict[str, Any] = wait_for(
        lambda: (w := kubectl.get_json("workspace", "probe", "-n", namespace)) and
        condition(w, "Ready").get("status") == "True" and w, 60, "probe Ready")

    # The gauge follows the status write that made it Ready.
    text, samples = wait_for(
        lambda: (got := _scrape(metrics_port)) and
        _total(got[1], "agentspaces_workspaces", phase="Running") >= 1 and got,
        10, "the phase gauge to count a Running workspace")
    assert ("agentspaces_workspaces", frozenset({("phase", "Stopped")})) in samples
    assert _total(samples, "agentspaces_operator_active") == 1  # standalone: it acts

    # Exactly the server creations the emulator answered, under the path template.
    created = _total(samples, "agentspaces_cloud_requests_total", provider="hetzner",
                     endpoint="POST /servers", code="201")
    assert created == stack.clouds.hetzner.calls["POST /servers"] >= 1
    assert _total(samples, "agentspaces_cloud_requests_total", provider="cloudflare",
                  endpoint="POST /zones/{id}/dns_records", code="200") >= 1
    assert _total(samples, "agentspaces_cloud_request_duration_seconds_count",
                  provider="hetzner") > 0

    assert _total(samples, "agentspaces_reconcile_duration_seconds_count",
                  handler="reconcile") > 0
    assert _total(samples, "agentspaces_reconcile_duration_seconds_count",
                  handler="reconcile", outcome="done") > 0
    assert _total(samples, "agentspaces_agent_request_duration_seconds_count",
                  endpoint="GET /v1/status", code="200") > 0
    assert _total(samples, "agentspaces_agent_request_duration_seconds_count",
                  endpoint="PUT /v1/secrets") > 0

    # Bounded labels: no workspace name, uid, namespace or server id anywhere.
    server_id = str(ws["status"]["server"]["id"])
    for value in ("probe", ws["metadata"]["uid"], namespace):
        assert value not in text
    endpoints = {dict(series).get("endpoint", "") for (_, series) in samples}
    assert not any(server_id in endpoint.split("/") for endpoint in endpoints)


def test_a_taken_metrics_port_stops_the_operator(control_plane, tmp_path: Path  # type: ignore[no-untyped-def]
                                                 ) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        operator = start_operator(control_plane.admin_kubeconfig, tmp_path, "taken",
                                  extra_env={"AGENTSPACES_METRICS_PORT": str(port)})
        try:
            wait_for(lambda: not operator.running or None, 30, "the operator to exit")
        finally:
            operator.stop()
    assert operator.proc is not None and operator.proc.returncode != 0
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in operator.log()
