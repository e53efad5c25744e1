"""The status document GET /v1/status returns (contracts.AgentStatus; shape in
docs/agent-protocol.md), its ETag, and the long-polls that wait for it to change."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from agentspaces_vm.bootstrap import BootState
from agentspaces_vm.connections import ConnectionSlots
from agentspaces_vm.contracts import (
    Activity,
    AgentStatus,
    BackupJob,
    BootStage,
    DevcontainerReport,
    RestoreReport,
    RestoreState,
    UsageReport,
    format_time,
)


def build_status(*, version: str, simulated: bool, boot: BootState, ports: Iterable[int],
                 activity: Activity | None, secrets_version: str | None,
                 backup: BackupJob,
                 usage: UsageReport | None = None, share_links: bool = True) -> AgentStatus:
    """Assemble the document from the agent's parts (pure).

    `activity` is the tracker's report; None means the tracker has not produced one
    yet, which the operator must read as "unknown", never as idle.
    """
    return AgentStatus(
        version=version, simulated=simulated, boot_stage=BootStage(boot.stage),
        boot_message=boot.message,
        devcontainer=DevcontainerReport(state=boot.devcontainer_state,
                                        message=boot.devcontainer_message,
                                        policy=boot.devcontainer_policy,
                                        removed=tuple(boot.devcontainer_removed)),
        ports=tuple(sorted(set(ports))), activity=activity, secrets_version=secrets_version,
        restore=RestoreReport(state=RestoreState(boot.restore_state), error=boot.restore_error,
                              reason=boot.restore_reason),
        backup_state=backup.state, backup_id=backup.backup_id,
        usage=usage, share_links=share_links)


# --- long-polls ---------------------------------------------------------------------------

MAX_WAIT_SECONDS = 120.0
"""The longest a long-poll is held, whatever the client asks for."""
RECHECK_SECONDS = 1.0
"""How often a held long-poll rebuilds the document: changes nobody announces (a boot
stage, a backup ending, waiting turning idle) and a client that went away are noticed
within this."""


def change_key(doc: AgentStatus) -> str:
    """The document's ETag: a digest of what the operator acts on as soon as it changes
    (boot, restore, devcontainer, secrets, ports, backup, the agent's state and since
    when). Times that advance on their own (last activity, the reasons window, session
    counters) are left out: they would end every long-poll within seconds, and the
    operator reads them on its regular poll anyway."""
    activity = doc.activity
    parts = {
        "version": doc.version, "simulated": doc.simulated, "boot": doc.boot_stage.value,
        "bootMessage": doc.boot_message, "devcontainer": doc.devcontainer.to_json(),
        "ports": sorted(set(doc.ports)), "secrets": doc.secrets_version,
        "restore": doc.restore.to_json(), "backup": [doc.backup_state.value, doc.backup_id],
        "agent": None if activity is None else [activity.agent_state,
                                                format_time(activity.agent_state_since)],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def requested_wait(prefer: str | None) -> float | None:
    """The `wait` preference of a `Prefer` header (RFC 7240), capped at MAX_WAIT_SECONDS;
    None when there is none or it is not a number."""
    for token in (prefer or "").replace(";", ",").split(","):
        name, _, value = token.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        return min(seconds, MAX_WAIT_SECONDS) if seconds == seconds and seconds > 0 else None
    return None


def requested_etag(if_none_match: str | None) -> str | None:
    """The first entity tag of an `If-None-Match` header, without quotes or `W/`."""
    first = (if_none_match or "").split(",")[0].strip()
    first = first.removeprefix("W/").strip('"')
    return first or None


@dataclass(frozen=True)
class Answer:
    status: AgentStatus
    etag: str
    waited: bool
    """The wait preference was honoured (`Preference-Applied`): False when none was
    asked for or every long-poll slot was taken."""


class StatusWatch:
    """Long-polls of GET /v1/status: a request that names the ETag it has and a wait is
    answered as soon as the document's ETag differs, or when the wait ends.

    `changed()` wakes every held request at once (a hook arrived, secrets or a start
    were applied); anything else is noticed by rebuilding the document every
    RECHECK_SECONDS. Held requests are capped in total and per client address, so the
    operator's one long-poll per workspace never takes the connection slots other
    callers need: over a cap, the answer comes at once, without `waited`.
    """

    def __init__(self, build: Callable[[], AgentStatus], *, max_waiters: int = 8,
                 per_address: int = 2, recheck: float = RECHECK_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._build = build
        self._slots = ConnectionSlots(max_waiters, per_address)
        self._recheck = recheck
        self._monotonic = monotonic
        self._changes = threading.Condition()
        self._generation = 0
        self._closed = False

    def changed(self) -> None:
        with self._changes:
            self._generation += 1
            self._changes.notify_all()

    def close(self) -> None:
        """Answer every held request now (the server is shutting down)."""
        with self._changes:
            self._closed = True
            self._changes.notify_all()

    def answer(self, etag: str | None, wait: float | None, address: str,
               gone: Callable[[], bool] = lambda: False) -> Answer:
        """The document for a request that has `etag` and asks to wait `wait` seconds;
        `gone()` says the client hung up (then the wait ends early)."""
        if wait is None or not self._slots.acquire(address):
            doc = self._build()
            return Answer(doc, change_key(doc), False)
        try:
            deadline = self._monotonic() + wait
            while True:
                with self._changes:
                    seen = self._generation
                doc = self._build()
                key = change_key(doc)
                left = deadline - self._monotonic()
                if key != etag or left <= 0 or self._closed or gone():
                    return Answer(doc, key, True)
                with self._changes:
                    if self._generation == seen and not self._closed:
                        self._changes.wait(timeout=min(self._recheck, left))
        finally:
            self._slots.release(address)
