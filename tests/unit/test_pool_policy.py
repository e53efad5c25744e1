"""The warm pool's pure decisions: names, labels, what to create and delete, who may
claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agentspaces.api.types import ServerSettings
from agentspaces.clouds.hetzner import ServerInfo
from agentspaces.reconcile import pool_policy as policy

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
WANT = ServerSettings(type="cx23", location="fsn1", image="debian-13")


def server(slot: int, sid: int | None = None, *, klass: str = "std", image: str = "debian-13",
           type_: str = "cx23", location: str = "fsn1", status: str = "running",
           age: timedelta = timedelta(minutes=1), name: str | None = None) -> ServerInfo:
    return ServerInfo(id=sid if sid is not None else 100 + slot,
                      name=name or policy.slot_name(klass, slot), status=status,
                      ipv4="127.0.0.1", ipv6=None, server_type=type_, location=location,
                      labels=policy.labels(klass, slot, image), created=NOW - age)


def test_names_are_valid_server_names_for_any_class_name() -> None:
    assert policy.slot_name("std", 3) == "pool-std-3"
    long_a, long_b = "a" * 200 + "x", "a" * 200 + "y"
    assert len(policy.slot_name(long_a, 19)) <= 63
    assert policy.slot_name(long_a, 0) != policy.slot_name(long_b, 0)
    assert policy.secret_name("std", 1) == "agentspaces-pool-pool-std-1"


def test_a_pool_fills_its_empty_slots_a_few_at_a_time() -> None:
    plan = policy.plan("std", 8, WANT, "debian-13", [server(2)], set(), NOW)
    assert list(plan.keep) == [2]
    assert plan.create == (0, 1, 3, 4, 5)  # MAX_CREATES_PER_VISIT
    assert plan.delete == ()


def test_shrinking_deletes_the_slots_beyond_the_size() -> None:
    servers = [server(i) for i in range(3)]
    plan = policy.plan("std", 1, WANT, "debian-13", servers, {100, 101, 102}, NOW)
    assert list(plan.keep) == [0]
    assert [s.id for s in plan.delete] == [101, 102]
    assert plan.reasons[101] == "the pool shrank to 1"
    assert policy.plan("std", 0, WANT, "debian-13", servers, set(), NOW).keep == {}


@pytest.mark.parametrize("changed", [{"image": "4711"}, {"type_": "cx33"},
                                     {"location": "nbg1"}])
def test_servers_of_another_boot_are_replaced(changed: dict[str, str]) -> None:
    plan = policy.plan("std", 1, WANT, "debian-13", [server(0, **changed)], {100}, NOW)
    assert [s.id for s in plan.delete] == [100]
    assert plan.create == (0,)


def test_a_second_server_in_one_slot_goes_the_older_stays() -> None:
    plan = policy.plan("std", 1, WANT, "debian-13", [server(0, 7), server(0, 5)], set(), NOW)
    assert plan.keep[0].id == 5 and [s.id for s in plan.delete] == [7]


def test_a_server_never_ready_is_replaced_after_the_boot_timeout() -> None:
    late = policy.BOOT_TIMEOUT + timedelta(seconds=1)
    stuck = policy.plan("std", 1, WANT, "debian-13", [server(0, age=late)], set(), NOW)
    assert [s.id for s in stuck.delete] == [100]
    ready = policy.plan("std", 1, WANT, "debian-13", [server(0, age=late)], {100}, NOW)
    assert ready.delete == ()


def test_unusable_servers_go_with_their_reason() -> None:
    plan = policy.plan("std", 2, WANT, "debian-13", [server(0), server(1)], set(), NOW,
                       {101: "its agent credentials are gone"})
    assert [s.id for s in plan.delete] == [101]
    assert plan.reasons[101] == "its agent credentials are gone"
    assert plan.create == (1,)


def test_servers_not_of_this_pool_are_never_touched() -> None:
    others = [server(0, 1, klass="other"), server(0, 2, name="someone-else"),
              server(1, 3, status="deleting")]
    plan = policy.plan("std", 2, WANT, "debian-13", others, set(), NOW)
    assert plan.delete == () and plan.keep == {}
    assert plan.create == (0, 1)


def test_only_a_workspace_booting_what_the_pool_boots_may_claim() -> None:
    assert policy.claimable(WANT, WANT, own_image=False)
    assert not policy.claimable(WANT, WANT, own_image=True)
    assert not policy.claimable(WANT, ServerSettings("cx33", "fsn1", "debian-13"), False)
    assert not policy.claimable(WANT, ServerSettings("cx23", "hel1", "debian-13"), False)
