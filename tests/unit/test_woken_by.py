"""Who woke a workspace: the agentspaces.dev/woken-by annotation rides along with a new
wake value into the wake's event, cleaned of control characters and bounded; alone it
wakes nothing. And spec.wake.onRequest read from the raw spec."""

from __future__ import annotations

import pytest

from agentspaces.api.enums import StoppedBy
from agentspaces.api.status import WorkspaceStatus
from agentspaces.reconcile.lifecycle import (
    WAKE_ANNOTATION,
    WOKEN_BY_ANNOTATION,
    WOKEN_BY_MAX,
    decide_intent,
    wakes_on_request,
    woken_by,
)

IDLE = WorkspaceStatus(stopped_by=StoppedBy.INACTIVITY, wake_handled="gateway-1")


def test_a_new_wake_value_carries_who_woke_it() -> None:
    intent = decide_intent(True, IDLE, {WAKE_ANNOTATION: "gateway-2",
                                        WOKEN_BY_ANNOTATION: "gateway: alice from 192.0.2.4"})
    assert intent.running and intent.woke
    assert intent.woken_by == "gateway: alice from 192.0.2.4"


def test_woken_by_alone_wakes_nothing() -> None:
    intent = decide_intent(True, IDLE, {WAKE_ANNOTATION: "gateway-1",
                                        WOKEN_BY_ANNOTATION: "gateway: mallory"})
    assert not intent.running and not intent.woke and intent.woken_by is None
    assert intent.stopped_by is StoppedBy.INACTIVITY


def test_a_wake_without_woken_by_names_nobody() -> None:
    assert decide_intent(True, IDLE, {WAKE_ANNOTATION: "2"}).woken_by is None


@pytest.mark.parametrize(("raw", "shown"), [
    ("gateway: share link for port 3000 from 2001:db8::5",
     "gateway: share link for port 3000 from 2001:db8::5"),
    ("alice\r\nFAKE LOG LINE\x1b[31m", "alice FAKE LOG LINE [31m"),
    ("a\u202eb\u200bc\u2028d\x00e", "a b c d e"),  # bidi override, zero width, separators
    ("  \t\n ", None),
    ("", None),
])
def test_woken_by_is_printable_text(raw: str, shown: str | None) -> None:
    assert woken_by({WOKEN_BY_ANNOTATION: raw}) == shown


def test_woken_by_is_bounded() -> None:
    shown = woken_by({WOKEN_BY_ANNOTATION: "x" * 10_000})
    assert shown is not None and len(shown) == WOKEN_BY_MAX and shown.endswith("\u2026")
    assert woken_by({WOKEN_BY_ANNOTATION: "y" * WOKEN_BY_MAX}) == "y" * WOKEN_BY_MAX


@pytest.mark.parametrize(("spec", "wakes"), [
    ({}, True),
    ({"wake": {}}, True),
    ({"wake": {"onRequest": True}}, True),
    ({"wake": {"onRequest": False}}, False),
    ({"wake": None}, True),
])
def test_wake_on_request_defaults_to_true(spec: dict[str, object], wakes: bool) -> None:
    assert wakes_on_request(spec) is wakes
