"""Every lifecycle step leaves one Kubernetes Event, through `workspace.reconcile`
against the in-memory fakes: create → Ready → stopped by the user → woken → stopped by
its lifetime, each step announced once however many polls it spans."""

from __future__ import annotations

from agentspaces.api.enums import Phase
from tests.support.scope_builder import SETTINGS, ScopeBuilder
from tests.unit.test_stop_at_gateway import GATEWAY, run


async def _settle(b: ScopeBuilder, passes: int = 4) -> None:
    for _ in range(passes):
        await b.reconcile()
        b.clock.advance(SETTINGS.boot_poll)


async def test_each_step_is_announced_once_in_order() -> None:
    b = ScopeBuilder().with_class(wakeGateway=GATEWAY)
    await run(b)
    await _settle(b)  # Running polls add nothing
    started = b.reasons()
    assert [r for r in started if r in ("ServerCreated", "SecretsDelivered", "Ready")] == [
        "ServerCreated", "SecretsDelivered", "Ready"]
    assert started.index("DNSUpdated") < started.index("Ready")

    b.events.clear()
    b.with_spec(running=False)
    await _settle(b)
    assert b.status["phase"] == Phase.STOPPED
    stopping = [e for e in b.events if e.reason == "Stopping"]
    assert len(stopping) == 1 and stopping[0].message == (
        "stopping (user): spec.running is false")
    assert b.reasons().count("Stopped") == 1
    assert b.reasons().index("Stopping") < b.reasons().index("ServerDeleted") < \
        b.reasons().index("Stopped")

    b.events.clear()
    b.with_spec(running=True, lifetime={"max": "1m"})
    await run(b)
    assert b.reasons().count("Ready") == 1 and "ServerCreated" in b.reasons()
    b.events.clear()
    b.clock.advance(120)
    await _settle(b)
    assert b.status["phase"] == Phase.STOPPED
    stopping = [e for e in b.events if e.reason == "Stopping"]
    assert len(stopping) == 1 and stopping[0].message.startswith("stopping (lifetime): ")
    assert b.reasons().count("Stopped") == 1
