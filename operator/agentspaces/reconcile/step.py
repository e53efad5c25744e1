"""The one contract every step of the workspace state machine follows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agentspaces.reconcile.outcome import Outcome
    from agentspaces.reconcile.scope import Scope


class Step(Protocol):
    """A step module: converge its part of the world, or take it away.

    Both return None when done (the walk goes on) or the Outcome to return now (wait,
    requeue). What a step learns goes on the scope for the steps after it.
    """

    async def reconcile(self, scope: Scope) -> Outcome | None: ...

    async def delete(self, scope: Scope) -> Outcome | None: ...
