"""One backup at a time, run in a worker thread; its state is what GET /v1/backup shows.

The work itself is `agentspaces_vm.backup.backup(plan, root, progress)` (imported when
the first backup starts). `progress` is called with a JSON-able dict describing how far
the upload got; the latest one is reported as `progress`. The state is a
`contracts.BackupJob`, the document the operator parses.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agentspaces_vm.contracts import BackupJob, JobState
from agentspaces_vm.redact import redact

log = logging.getLogger(__name__)

BackupFn = Callable[[dict[str, Any], Path, Callable[[Any], None]], Any]


def _jsonable(value: Any) -> Any:
    to_json = getattr(value, "to_json", None)  # a contracts document (BackupResult)
    if callable(to_json):
        value = to_json()
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return redact(str(value), 300)


def _document(value: Any) -> dict[str, Any] | None:
    """A JSON object for the job's result/progress fields (anything else is wrapped)."""
    value = _jsonable(value)
    if value is None or isinstance(value, dict):
        return value
    return {"value": value}


class BackupRunner:
    def __init__(self, root: Path, backup_fn: BackupFn | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self._root = root
        self._backup_fn = backup_fn
        self._on_change = on_change
        self._lock = threading.Lock()
        self._job = BackupJob()

    def snapshot(self) -> BackupJob:
        with self._lock:
            return self._job

    def start(self, plan: dict[str, Any]) -> str | None:
        """Start a backup; its id, or None when one is already running."""
        with self._lock:
            if self._job.state is JobState.RUNNING:
                return None
            given = plan.get("id")
            backup_id = (given if isinstance(given, str) and 0 < len(given) <= 64
                         else uuid.uuid4().hex)
            self._job = BackupJob(state=JobState.RUNNING, backup_id=backup_id)
        threading.Thread(target=self._run, args=(plan, backup_id), name="backup",
                         daemon=True).start()
        self._on_change()
        return backup_id

    def _progress(self, info: Any) -> None:
        with self._lock:
            self._job = replace(self._job, progress=_document(info))

    def _run(self, plan: dict[str, Any], backup_id: str) -> None:
        try:
            fn = self._backup_fn or _load_backup()
            result = fn(plan, self._root, self._progress)
        except Exception as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            error = redact(str(exc) or type(exc).__name__, 500)
            log.error("backup %s failed (%s): %s", backup_id, reason, error)
            with self._lock:
                self._job = replace(self._job, state=JobState.FAILED, error=error,
                                    reason=str(reason))
        else:
            log.info("backup %s succeeded", backup_id)
            with self._lock:
                self._job = replace(self._job, state=JobState.SUCCEEDED,
                                    result=_document(result))
        self._on_change()


def _load_backup() -> BackupFn:
    from agentspaces_vm import backup  # written separately; imported only when needed

    fn: BackupFn = backup.backup
    return fn
