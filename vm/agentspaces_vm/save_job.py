"""One pre-stop save at a time, in a worker thread; its state is what GET /v1/save shows.

The operator POSTs a `contracts.SaveRequest` just before it backs up and deletes the
server, then polls. The work itself is `wip_save.WipSave` with the request's deadline;
the job always ends with a `SaveResult`, also when something unexpected breaks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentspaces_vm.config import AgentConfig
from agentspaces_vm.contracts import (
    ContractError,
    JobState,
    SaveJob,
    SaveOutcome,
    SaveRequest,
    SaveResult,
)
from agentspaces_vm.redact import redact
from agentspaces_vm.secrets import SecretStore
from agentspaces_vm.wip_save import (
    SHADOW_PREFIX,
    GitRunner,
    SaveContext,
    WipSave,
    run_git,
    sweep_shadows,
)

log = logging.getLogger(__name__)
_ENDED_WELL = (SaveOutcome.SAVED, SaveOutcome.NOTHING_TO_SAVE, SaveOutcome.NO_REPOSITORY)


class SaveRunner:
    def __init__(self, config: AgentConfig, store: SecretStore,
                 repo_dir: Callable[[], Path], *, runner: GitRunner = run_git,
                 tmp_root: Path | None = None) -> None:
        self._config = config
        self._store = store
        self._repo_dir = repo_dir
        self._runner = runner
        self._tmp_root = tmp_root
        # Per agent (its state directory), so agents sharing a host never sweep each
        # other's shadow directories.
        digest = hashlib.sha256(str(config.paths.state).encode()).hexdigest()[:10]
        self._prefix = f"{SHADOW_PREFIX}{digest}-"
        self._lock = threading.Lock()
        self._job = SaveJob()
        self._thread: threading.Thread | None = None

    def snapshot(self) -> SaveJob:
        with self._lock:
            return self._job

    def wait(self, timeout: float) -> bool:
        """Wait for a running save to end (tests); True when none is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def start(self, body: object) -> tuple[int, dict[str, Any]]:
        """POST /v1/save: (HTTP status, answer)."""
        try:
            request = SaveRequest.from_json(body)
        except ContractError as exc:
            return 400, {"error": "bad request", "detail": str(exc)}
        with self._lock:
            if self._job.state is JobState.RUNNING:
                return 409, {"error": "save running", "id": self._job.save_id}
            if self._job.save_id == request.save_id:
                return 202, {"id": request.save_id}  # already done: poll for its result
            self._job = SaveJob(state=JobState.RUNNING, save_id=request.save_id)
            self._thread = threading.Thread(target=self._run, args=(request,),
                                             name="wip-save", daemon=True)
            self._thread.start()
        return 202, {"id": request.save_id}

    def _context(self, request: SaveRequest) -> SaveContext:
        cfg = self._config
        token_file = self._store.repository_token_file
        token = token_file.read_text(encoding="utf-8").strip() if token_file.is_file() else ""
        as_user = os.geteuid() == 0 and not cfg.simulate
        return SaveContext(
            repo=self._repo_dir(), workspace=cfg.workspace.name, host=cfg.host,
            url=cfg.repository.url if cfg.repository else "", git=cfg.tools.git,
            user=(cfg.container_user.uid, cfg.container_user.gid) if as_user else None,
            token=token or None, reason=request.reason)

    def _run(self, request: SaveRequest) -> None:
        try:
            sweep_shadows(self._prefix, self._tmp_root)
            result = WipSave(self._context(request), request.mode, request.timeout_seconds,
                             runner=self._runner, tmp_root=self._tmp_root,
                             shadow_prefix=self._prefix).run()
        except Exception as exc:  # the job must always end with a readable result
            log.exception("pre-stop save %s crashed", request.save_id)
            result = SaveResult(SaveOutcome.FAILED,
                                redact(f"internal error: {type(exc).__name__}", 300))
        log.info("pre-stop save %s: %s (%s)", request.save_id, result.outcome.value,
                 result.message)
        state = JobState.SUCCEEDED if result.outcome in _ENDED_WELL else JobState.FAILED
        with self._lock:
            self._job = SaveJob(state=state, save_id=request.save_id, result=result)
