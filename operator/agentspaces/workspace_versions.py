"""Which version of each Workspace this process last read from or wrote to the
apiserver, so a reconcile can start from the body Kopf's watch delivered instead of
reading it again.

Kopf keeps a timer's and a daemon's body up to date from its watch stream, but a
stream lags: right after the operator patched status, the body still shows the old
status, and a reconcile that started from it would redo what was just done. A body is
used only when its resourceVersion is the very one this process last saw for that
Workspace; any other (older, or newer because someone else wrote) means a read. Only
equality is tested: resourceVersions are opaque and must not be ordered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def version_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


class WorkspaceVersions:
    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def saw(self, uid: str, version: str | None) -> None:
        """`version` is what the apiserver holds now (None or "" when unknown, e.g. a
        write's answer was lost: the next reconcile reads)."""
        if version:
            self._seen[uid] = version
        else:
            self._seen.pop(uid, None)

    def current(self, uid: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A private copy of `body` when it is the version last seen, else None. The
        copy keeps a reconcile's input fixed while Kopf replaces the body it watches.
        It leaves out `metadata.managedFields`, which no reconcile reads and which is
        often as large as the rest; a JSON round trip copies about three times faster
        than `copy.deepcopy` (the body is JSON from the watch stream)."""
        version = version_of(body)
        if not version or self._seen.get(uid) != version:
            return None
        raw = dict(body)
        meta = {k: v for k, v in (raw.get("metadata") or {}).items() if k != "managedFields"}
        copied: dict[str, Any] = json.loads(json.dumps({**raw, "metadata": meta}))
        return copied

    def forget(self, uid: str) -> None:
        self._seen.pop(uid, None)
