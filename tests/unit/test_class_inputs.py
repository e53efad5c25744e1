"""A class and the Secrets it names are read once for all the polls of its workspaces
(class_inputs.py): kept for `max_age`, read afresh after a change to a Workspace, never
kept when missing, one request for concurrent readers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from agentspaces.class_inputs import ClassInputs
from agentspaces.kube import SecretData
from agentspaces.reconcile.credentials import resolve
from tests.support.clock import WallClock
from tests.support.fakes import FakeKube
from tests.support.scope_builder import NOW, OPERATOR_NAMESPACE, SETTINGS, ScopeBuilder
from tests.unit.test_stop_at_gateway import run


def _world() -> tuple[FakeKube, WallClock, ClassInputs]:
    kube, clock = FakeKube(), WallClock(NOW)
    kube.classes["standard"] = {"metadata": {"name": "standard"}, "spec": {}}
    kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": "one"})
    return kube, clock, ClassInputs(kube, 10, clock.monotonic)


def _reads(kube: FakeKube, method: str) -> int:
    return len(kube.calls.only([method]))


async def test_polls_within_max_age_share_one_read() -> None:
    kube, clock, inputs = _world()
    first = await inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False)
    kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": "two"})  # rotated
    clock.advance(9)
    again = await inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False)
    assert first is not None and again is not None
    assert again.data["token"] == "one" and _reads(kube, "read_secret") == 1
    clock.advance(2)  # older than max_age: read again
    later = await inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False)
    assert later is not None and later.data["token"] == "two"
    assert _reads(kube, "read_secret") == 2


async def test_a_fresh_read_goes_to_the_apiserver_and_refreshes_what_polls_get() -> None:
    kube, _, inputs = _world()
    await inputs.workspace_class("standard", fresh=False)
    kube.classes["standard"] = {"metadata": {"name": "standard"}, "spec": {"edited": True}}
    fresh = await inputs.workspace_class("standard", fresh=True)
    polled = await inputs.workspace_class("standard", fresh=False)
    assert fresh is not None and polled is not None
    assert fresh["spec"] == polled["spec"] == {"edited": True}
    assert _reads(kube, "get_workspace_class") == 2


async def test_what_is_missing_is_read_again_and_a_deleted_entry_is_dropped() -> None:
    kube, _, inputs = _world()
    assert await inputs.secret(OPERATOR_NAMESPACE, "cloudflare", fresh=False) is None
    kube.add_secret(OPERATOR_NAMESPACE, "cloudflare", {"token": "t"})
    found = await inputs.secret(OPERATOR_NAMESPACE, "cloudflare", fresh=False)
    assert found is not None and _reads(kube, "read_secret") == 2

    await inputs.workspace_class("standard", fresh=False)
    del kube.classes["standard"]
    assert await inputs.workspace_class("standard", fresh=True) is None
    kube.classes["standard"] = {"metadata": {"name": "standard"}, "spec": {"back": 1}}
    back = await inputs.workspace_class("standard", fresh=False)  # not the deleted one
    assert back is not None and back["spec"] == {"back": 1}


async def test_no_age_means_every_read_goes_to_the_apiserver() -> None:
    kube, clock = FakeKube(), WallClock(NOW)
    kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": "one"})
    inputs = ClassInputs(kube, 0, clock.monotonic)
    for _ in range(3):
        await inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False)
    assert _reads(kube, "read_secret") == 3 and inputs.kept == 0


class _GatedKube(FakeKube):
    """Holds every Secret read until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.failing = False

    async def read_secret(self, namespace: str, name: str) -> SecretData | None:
        self.calls.log("read_secret", namespace, name)
        await self.gate.wait()
        if self.failing:
            raise RuntimeError("apiserver unavailable")
        return self.secrets.get((namespace, name))


async def test_concurrent_polls_share_one_request_and_survive_a_cancelled_reader() -> None:
    kube, clock = _GatedKube(), WallClock(NOW)
    kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": "one"})
    inputs = ClassInputs(kube, 10, clock.monotonic)
    readers = [asyncio.create_task(inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False))
               for _ in range(20)]
    await asyncio.sleep(0)
    readers[0].cancel()  # e.g. the reader that started the request
    await asyncio.sleep(0)
    kube.gate.set()
    results = await asyncio.gather(*readers[1:])
    assert all(r is not None and r.data["token"] == "one" for r in results)
    assert readers[0].cancelled()
    assert _reads(kube, "read_secret") == 1


async def test_a_failed_shared_read_fails_its_readers_and_is_not_kept() -> None:
    kube, clock = _GatedKube(), WallClock(NOW)
    kube.add_secret(OPERATOR_NAMESPACE, "hcloud", {"token": "one"})
    kube.failing = True
    inputs = ClassInputs(kube, 10, clock.monotonic)
    readers = [asyncio.create_task(inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False))
               for _ in range(3)]
    await asyncio.sleep(0)
    kube.gate.set()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    kube.failing = False
    found = await inputs.secret(OPERATOR_NAMESPACE, "hcloud", fresh=False)
    assert found is not None and _reads(kube, "read_secret") == 2


def _agent_in_workspace(b: ScopeBuilder) -> None:
    b.kube.add_secret(b.namespace, "claude", {"apiKey": "sk-ant-api03-for-tests"})
    b.with_spec(agent={"apiKeySecretRef": {"name": "claude", "key": "apiKey"}})


async def test_resolve_shares_the_class_and_its_secrets_not_the_workspaces() -> None:
    b = ScopeBuilder()
    _agent_in_workspace(b)

    async def poll() -> Any:
        return await resolve(b.kube, b.body["spec"], b.namespace, OPERATOR_NAMESPACE,
                             shared=b.runtime.class_inputs, fresh=False)

    for _ in range(3):
        resolved = await poll()
        assert getattr(resolved, "hetzner_token", None) is not None, resolved
    reads = b.kube.calls.only(["read_secret", "get_workspace_class"])
    by_target: dict[tuple[Any, ...], int] = {}
    for call in reads:
        by_target[(call.method, *call.args)] = by_target.get((call.method, *call.args), 0) + 1
    assert by_target == {("get_workspace_class", "standard"): 1,
                         ("read_secret", OPERATOR_NAMESPACE, "hcloud"): 1,
                         ("read_secret", OPERATOR_NAMESPACE, "cloudflare"): 1,
                         ("read_secret", b.namespace, "claude"): 3}


@pytest.mark.parametrize("fresh_inputs", [True, False])
async def test_a_running_workspaces_poll_reads_its_class_only_when_fresh(
        fresh_inputs: bool) -> None:
    b = ScopeBuilder()
    await run(b)
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile(fresh_inputs=fresh_inputs)
    b.clock.advance(1)
    await b.reconcile(fresh_inputs=fresh_inputs)
    class_reads: Mapping[str, int] = {
        m: len(b.kube.calls.only([m])) for m in ("get_workspace_class",)}
    operator_secrets = [c for c in b.kube.calls.only(["read_secret"])
                        if c.args[0] == OPERATOR_NAMESPACE]
    # Two polls 1 s apart: fresh reads go to the apiserver each time; the second poll
    # reuses what the first read (the run's reads are older than max_age by then).
    expected = 2 if fresh_inputs else 1
    assert class_reads["get_workspace_class"] == expected
    assert len(operator_secrets) == 2 * expected


async def test_a_start_or_a_stop_reads_the_class_afresh_even_from_a_poll() -> None:
    b = ScopeBuilder()
    await run(b)
    b.clear_calls()
    await b.reconcile(fresh_inputs=False)  # running, staying so: what the run read
    assert _reads(b.kube, "get_workspace_class") == 0
    b.with_spec(running=False)
    await b.reconcile(fresh_inputs=False)  # a stop begins: read afresh
    assert _reads(b.kube, "get_workspace_class") == 1
