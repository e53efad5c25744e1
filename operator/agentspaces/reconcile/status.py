"""Status bookkeeping: conditions, phase, and a minimal merge patch.

`StatusDraft` starts from the object's current status, collects changes, and yields
only the fields that differ, so a reconcile that changed nothing writes nothing (no
status write storm, no resourceVersion churn).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from agentspaces.api import conditions as C


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(conditions: list[dict[str, Any]], type_: str, status: str, reason: str,
                  message: str, now: datetime, generation: int) -> list[dict[str, Any]]:
    """Return conditions with one entry set; lastTransitionTime moves only on a flip."""
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(cond)
            continue
        found = True
        updated = dict(cond, reason=reason, message=message, observedGeneration=generation)
        if cond.get("status") != status:
            updated["status"] = status
            updated["lastTransitionTime"] = iso(now)
        out.append(updated)
    if not found:
        out.append({"type": type_, "status": status, "reason": reason, "message": message,
                    "lastTransitionTime": iso(now), "observedGeneration": generation})
    return out


def get_condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return cond  # type: ignore[no-any-return]
    return None


def is_true(status: Mapping[str, Any], type_: str) -> bool:
    cond = get_condition(status, type_)
    return bool(cond and cond.get("status") == "True")


def _merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (None when equal)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        patch: dict[str, Any] = {}
        for key in set(old) | set(new):
            if key not in new:
                patch[key] = None
            elif key not in old:
                patch[key] = new[key]
            else:
                sub = _merge_patch(old[key], new[key])
                if sub is not _UNCHANGED:
                    patch[key] = sub
        return patch if patch else _UNCHANGED
    return _UNCHANGED if old == new else new


_UNCHANGED: Any = object()


class StatusDraft:
    """Mutable copy of `.status` that knows what it changed."""

    def __init__(self, current: Mapping[str, Any] | None, now: datetime, generation: int
                 ) -> None:
        self._original = copy.deepcopy(dict(current or {}))
        self.data: dict[str, Any] = copy.deepcopy(self._original)
        self.now = now
        self.generation = generation

    # conditions ----------------------------------------------------------------------

    def init_conditions(self) -> None:
        """Every condition exists; Unknown on the first visit."""
        existing = {c.get("type") for c in self.data.get("conditions") or []}
        for type_ in C.ALL_TYPES:
            if type_ not in existing:
                self.condition(type_, "Unknown", C.FIRST_VISIT, "not observed yet")

    def condition(self, type_: str, status: str | bool, reason: str, message: str = "") -> None:
        if isinstance(status, bool):
            status = "True" if status else "False"
        self.data["conditions"] = set_condition(
            list(self.data.get("conditions") or []), type_, status, reason, message,
            self.now, self.generation)

    def is_true(self, type_: str) -> bool:
        return is_true(self.data, type_)

    def reason(self, type_: str) -> str | None:
        cond = get_condition(self.data, type_)
        return cond.get("reason") if cond else None

    # fields ----------------------------------------------------------------------------

    def get(self, *path: str, default: Any = None) -> Any:
        cur: Any = self.data
        for key in path:
            if not isinstance(cur, Mapping) or key not in cur:
                return default
            cur = cur[key]
        return cur

    def set(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def update(self, key: str, **fields: Any) -> None:
        section = dict(self.data.get(key) or {})
        for name, value in fields.items():
            if value is None:
                section.pop(name, None)
            else:
                section[name] = value
        self.set(key, section or None)

    def patch(self) -> dict[str, Any]:
        """The merge patch from the original status to the draft ({} when unchanged)."""
        result = _merge_patch(self._original, self.data)
        return {} if result is _UNCHANGED else result  # type: ignore[no-any-return]
