"""The status draft: the typed status of one reconcile, and the minimal patch it makes.

`StatusDraft` starts from the object's current status, is read and changed through the
typed fields (`status.server.id`, `status.phase = Phase.STOPPED`), and yields only the
fields that differ as an RFC 7386 merge patch, so a reconcile that changed nothing
writes nothing (no status write storm, no resourceVersion churn).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import PrivateAttr

from agentspaces.api.enums import ConditionStatus, ConditionType, Reason
from agentspaces.api.status import Condition, WorkspaceStatus


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (UNCHANGED when equal)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        patch: dict[str, Any] = {}
        for key in set(old) | set(new):
            if key not in new:
                patch[key] = None
            elif key not in old:
                patch[key] = new[key]
            else:
                sub = merge_patch(old[key], new[key])
                if sub is not UNCHANGED:
                    patch[key] = sub
        return patch if patch else UNCHANGED
    return UNCHANGED if old == new else new


UNCHANGED: Any = object()


class StatusDraft(WorkspaceStatus):
    """The typed `.status` of one reconcile, which knows what it changed."""

    _original: dict[str, Any] = PrivateAttr(default_factory=dict)
    _now: datetime | None = PrivateAttr(default=None)
    _generation: int = PrivateAttr(default=0)

    @classmethod
    def begin(cls, current: Mapping[str, Any] | None, now: datetime, generation: int
              ) -> StatusDraft:
        draft = cls.model_validate(dict(current or {}))
        draft._original = draft.dump()
        draft._now = now
        draft._generation = generation
        return draft

    @property
    def now(self) -> datetime:
        assert self._now is not None, "use StatusDraft.begin"
        return self._now

    @property
    def generation(self) -> int:
        return self._generation

    # conditions ----------------------------------------------------------------------

    def init_conditions(self) -> None:
        """Every condition exists; Unknown on the first visit."""
        existing = {c.type for c in self.conditions}
        for type_ in ConditionType.initial():
            if type_ not in existing:
                self.condition(type_, ConditionStatus.UNKNOWN, Reason.FIRST_VISIT,
                               "not observed yet")

    def condition(self, type_: ConditionType, status: bool | ConditionStatus,
                  reason: Reason | str, message: str = "") -> None:
        """Set one condition; lastTransitionTime moves only when its status flips.

        `reason` is a Reason, or text copied from another condition (Ready repeats the
        failing step's reason) or named by the agent (a restore refusal).
        """
        if isinstance(status, bool):
            status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
        current = self._find(type_)
        if current is None:
            self.conditions.append(Condition(
                type=type_, status=status, reason=reason, message=message,
                last_transition_time=self.now, observed_generation=self.generation))
            return
        if current.status != status:
            current.status = status
            current.last_transition_time = self.now
        current.reason = reason
        current.message = message
        current.observed_generation = self.generation

    def is_true(self, type_: ConditionType) -> bool:
        current = self._find(type_)
        return current is not None and current.status == ConditionStatus.TRUE

    def reason(self, type_: ConditionType) -> str | None:
        current = self._find(type_)
        return current.reason if current is not None else None

    def message(self, type_: ConditionType) -> str:
        current = self._find(type_)
        return (current.message or "") if current is not None else ""

    def _find(self, type_: ConditionType) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    # fields --------------------------------------------------------------------------

    @property
    def has_server(self) -> bool:
        """A server id is recorded (the server may still be starting or deleting)."""
        return self.server is not None and self.server.id is not None

    def patch(self) -> dict[str, Any]:
        """The merge patch from the original status to the draft ({} when unchanged)."""
        result = merge_patch(self._original, self.dump())
        return {} if result is UNCHANGED else result  # type: ignore[no-any-return]
