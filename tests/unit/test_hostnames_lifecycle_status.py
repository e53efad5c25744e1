"""Pure pieces of the reconciler: hostnames, the run/stop intent, status bookkeeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from agentspaces.api.enums import ConditionStatus, ConditionType, Phase, StoppedBy
from agentspaces.api.hostnames import HASH_LEN, MAX_LABEL, recorded_label, workspace_label
from agentspaces.api.status import WorkspaceStatus
from agentspaces.reconcile.lifecycle import WAKE_ANNOTATION, decide_intent
from agentspaces.reconcile.status import StatusDraft

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?", fullmatch=True)
namespaces = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


@given(names, namespaces)
def test_labels_are_valid_dns_labels(name: str, namespace: str) -> None:
    label = workspace_label(name, namespace)
    assert 1 <= len(label) <= MAX_LABEL
    assert label[0].isalnum() and label[-1].isalnum()
    assert all(c.isalnum() or c == "-" for c in label)
    assert label == workspace_label(name, namespace)


def test_ambiguous_readable_parts_still_get_distinct_labels() -> None:
    first, second = workspace_label("a-b", "c"), workspace_label("a", "b-c")
    assert first.startswith("a-b-c-") and second.startswith("a-b-c-")
    assert first != second


def test_long_names_are_cut_but_keep_their_hash() -> None:
    a = workspace_label("x" * 63, "team-one")
    b = workspace_label("x" * 63, "team-two")
    assert len(a) == len(b) == MAX_LABEL
    assert a != b


def test_names_identical_after_the_cut_differ_by_at_least_64_bits_of_hash() -> None:
    # The readable part is cut at 49 characters: these two read the same.
    a = workspace_label("victim-" + "y" * 50, "team")
    b = workspace_label("victim-" + "y" * 50 + "z", "team")
    assert a[:-HASH_LEN] == b[:-HASH_LEN]
    assert a != b
    assert HASH_LEN * 5 >= 64  # base32: 5 bits per character
    assert all(c in "abcdefghijklmnopqrstuvwxyz234567" for c in a[-HASH_LEN:])


def test_a_recorded_hostname_is_kept_and_junk_is_not() -> None:
    legacy = "demo-team-a-1960e3"  # the 6-hex-digit scheme of earlier releases
    assert recorded_label(legacy, "demo", "team-a") == legacy
    fresh = workspace_label("demo", "team-a")
    assert fresh != legacy
    for junk in (None, "", "Not_A.Label", "x" * 64, "-lead", 42):
        assert recorded_label(junk, "demo", "team-a") == fresh


def test_intent_user_stop_and_start() -> None:
    assert decide_intent(False, WorkspaceStatus(), {}).stopped_by == StoppedBy.USER
    intent = decide_intent(True, WorkspaceStatus(stopped_by=StoppedBy.USER), {})
    assert intent.running and intent.stopped_by is None


def test_idle_stop_holds_until_a_new_wake_value() -> None:
    status = WorkspaceStatus(stopped_by=StoppedBy.INACTIVITY, wake_handled="1")
    assert not decide_intent(True, status, {WAKE_ANNOTATION: "1"}).running
    assert not decide_intent(True, status, {}).running
    woke = decide_intent(True, status, {WAKE_ANNOTATION: "2"})
    assert woke.running and woke.woke and woke.wake_handled == "2"


def test_running_workspace_records_the_current_wake_value() -> None:
    intent = decide_intent(True, WorkspaceStatus(), {WAKE_ANNOTATION: "old"})
    assert intent.running and not intent.woke and intent.wake_handled == "old"


def test_condition_transition_time_moves_only_on_flip() -> None:
    draft = StatusDraft.begin(None, NOW, 1)
    draft.condition(ConditionType.READY, False, "A", "m")
    first = draft.conditions[0].last_transition_time
    later = StatusDraft.begin(draft.dump(), NOW + timedelta(minutes=5), 2)
    later.condition(ConditionType.READY, False, "B", "m2")
    (same,) = later.conditions
    assert same.last_transition_time == first
    assert same.reason == "B" and same.observed_generation == 2
    later.condition(ConditionType.READY, True, "C", "")
    assert later.dump()["conditions"][0]["lastTransitionTime"] == "2026-11-27T12:05:00Z"


def test_status_draft_patches_only_what_changed() -> None:
    ready = StatusDraft.begin(None, NOW, 1)
    ready.condition(ConditionType.READY, True, "R", "")
    current = {"phase": "Running", "server": {"id": 1, "ipv4": "203.0.113.1"},
               "conditions": ready.dump()["conditions"]}
    draft = StatusDraft.begin(current, NOW + timedelta(minutes=1), 1)
    draft.condition(ConditionType.READY, True, "R", "")
    draft.phase = Phase.RUNNING
    assert draft.patch() == {}
    assert draft.server is not None
    draft.server.ipv4 = "203.0.113.2"
    draft.stopped_by = None
    assert draft.patch() == {"server": {"ipv4": "203.0.113.2"}}
    draft.server = None
    assert draft.patch() == {"server": None}


def test_first_visit_sets_every_condition_unknown() -> None:
    draft = StatusDraft.begin(None, NOW, 1)
    draft.init_conditions()
    types = {c.type: c.status for c in draft.conditions}
    assert set(types) == set(ConditionType.initial())
    assert set(types.values()) == {ConditionStatus.UNKNOWN}
