"""Status follows the agent: with a 30 s poll interval, a Claude Code hook posted to a
simulated VM shows in `kubectl get ws` (AGENT) within 2 s, while at steady state the
operator makes at most one agent request per workspace per interval; after an operator
restart or crash the watch resumes (nothing is left holding the agent's slots), and a
stop ends it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import Kubectl
from tests.support.hook_lag import agent_column, api_requests, post_hook
from tests.support.stack import VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "follow"
POLL = 30.0
LAG_LIMIT = 2.0


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 31, 18089,
                  env={"AGENTSPACES_POLL_INTERVAL": f"{POLL:g}s",
                       "AGENTSPACES_INVENTORY_INTERVAL": "10m"}) as stack:
        yield stack


def _hooks_follow(stack: VmStack, kubectl: Kubectl, name: str, namespace: str,
                  server_id: int, rounds: int) -> list[float]:
    """Post `rounds` state-changing hooks; the lag of each to the AGENT column."""
    plane = kubectl.plane
    lags = []
    with agent_column(plane.kubectl, kubectl.kubeconfig, name, namespace) as column:
        for n in range(rounds):
            event, state = (("UserPromptSubmit", "working") if n % 2 == 0
                            else ("Stop", "waiting"))
            posted = post_hook(stack.vms.state_dir, server_id, event)
            lags.append(column.first(state, posted, timeout=POLL) - posted)
            time.sleep(1.5)
    return lags


def _watchers(stack: VmStack) -> tuple[int, int]:
    """(started, ended) agent watch daemons of the current operator process, from its
    log."""
    text = stack.operator.log_path.read_text(errors="replace")
    current = text[text.rindex("agentspaces operator starting"):]
    return (current.count("Daemon 'workspace_agent_watch' is invoked"),
            current.count("Daemon 'workspace_agent_watch' has exited on request"))


def test_hooks_reach_status_within_two_seconds_at_one_poll_per_interval(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    kubectl.apply(workspace("follow", namespace, CLASS, idle={"timeout": "30m"},
                            persistence={"enabled": False}))
    ready = wait_for(lambda: (w := kubectl.get_json("workspace", "follow", "-n", namespace))
                     and condition(w, "Ready").get("status") == "True" and w, 90,
                     "follow Ready")
    server_id = int(ready["status"]["server"]["id"])
    vm = stack.vms.vm(server_id)
    assert vm is not None
    agent_log = vm.logs["agent"]

    lags = _hooks_follow(stack, kubectl, "follow", namespace, server_id, 6)
    print(f"\nhook -> AGENT column: {', '.join(f'{lag:.2f}s' for lag in lags)}")
    assert max(lags) < LAG_LIMIT, lags
    table = kubectl("get", "workspace", "follow", "-n", namespace)
    assert table.splitlines()[0].split()[4] == "AGENT"
    assert table.splitlines()[1].split()[4] == "waiting"  # the last hook was a Stop

    # Steady state: two poll intervals without hooks cost at most one agent request per
    # interval (+1 for where the window falls), the timer's polls included.
    time.sleep(2)
    before = api_requests(agent_log)
    time.sleep(2 * POLL)
    steady = api_requests(agent_log) - before
    print(f"steady state: {steady} agent requests in {2 * POLL:.0f}s")
    assert 1 <= steady <= 3, steady

    # An operator restart and a crash: the new operator's watch takes over, and the old
    # held requests are gone from the agent (else the new ones would not be held and a
    # hook would wait for the next poll).
    for crash in (False, True):
        if crash:
            stack.operator.kill()
        else:
            stack.operator.stop()
        stack.operator.start()
        time.sleep(6)  # started, resumed, reconciled and watching again
        lags = _hooks_follow(stack, kubectl, "follow", namespace, server_id, 2)
        print(f"after {'a crash' if crash else 'a restart'}: "
              f"{', '.join(f'{lag:.2f}s' for lag in lags)}")
        assert max(lags) < LAG_LIMIT, lags

    # A stop ends the watch: its daemon exits once the agent endpoint leaves status.
    # Counted from here: the shared apiserver may hold other modules' workspaces, whose
    # watchers this operator starts too.
    ended_before = _watchers(stack)[1]
    kubectl("patch", "workspace", "follow", "-n", namespace, "--type", "merge",
            "-p", '{"spec":{"running":false}}')
    wait_for(lambda: (w := kubectl.get_json("workspace", "follow", "-n", namespace))
             and w["status"].get("phase") == "Stopped", 60, "follow Stopped")
    wait_for(lambda: _watchers(stack)[1] == ended_before + 1, 15, "the watcher ended")

    kubectl("delete", "workspace", "follow", "-n", namespace, "--wait=false")
    wait_for(lambda: kubectl.get_json("workspace", "follow", "-n", namespace) is None, 60,
             "deleted")
    assert stack.clouds.hetzner.servers == {}
