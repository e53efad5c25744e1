"""Activity on the VM: is the AI agent working, waiting for a human, or is nobody there?

`ActivityTracker` merges four sources into the `activity` object of `GET /v1/status`
(docs/idle.md has the full rules; docs/agent-protocol.md the wire shape):

- Claude Code hook events (`record_hook`, fed by `POST /hooks`), tracked per session:
  working events (prompt submitted, tool calls, subagents, compaction) make a session
  *working*; turn ends, notifications and permission dialogs make it *waiting* for the
  human; `SessionEnd` forgets it. The agent is `working` if any session works, else
  `waiting` if a session waited for less than `idle_after`, else `idle` if sessions
  exist (nothing has happened for a while), else `absent` (no Claude Code session).
- HTTP through Caddy (`poll`): completed requests (from the admin `/metrics`
  exposition) and long-lived connections (requests in flight on two polls in a row:
  a websocket terminal, SSE). Refused answers (401/403/407/429), unknown hosts and
  Caddy's HTTP->HTTPS redirect server do not count, so scanners keep nothing alive.
- SSH: authenticated sshd session processes in /proc (`sshd: user@pts/0`).
- Files under /workspaces: a budgeted scanner keeps the newest change time; skips
  heavy or self-updating trees (node_modules, .git, .claude, ...) and the agent's own
  writes (`suppress_files_until`).

HTTP, SSH (and web sessions) are "user" activity: the operator's runaway guard for a
busy agent looks only at those, because the agent itself changes files and fires hooks.
Everything time-based uses the injected clock; file times are compared with it too
(they come from the same system clock in production). Stdlib only.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from agentspaces_vm.contracts import format_time

log = logging.getLogger(__name__)

# --- Claude Code hook events ---------------------------------------------------------
# Only events the agent registers in the Claude settings it writes arrive here, so an
# unlisted name means a misconfigured or forged hook: counted as malformed.
WORKING_EVENTS = frozenset({
    "UserPromptSubmit", "UserPromptExpansion", "PreToolUse", "PostToolUse",
    "PostToolUseFailure", "PostToolBatch", "PermissionDenied", "SubagentStart",
    "SubagentStop", "PreCompact", "PostCompact", "ElicitationResult",
})
# PermissionRequest and Elicitation put a dialog in front of the human: Claude is
# blocked on them, which is waiting (the next tool event flips it back to working).
WAITING_EVENTS = frozenset({
    "Stop", "StopFailure", "Notification", "PermissionRequest", "Elicitation",
})
# Known events that show the session is alive but say nothing about whose turn it is.
NEUTRAL_EVENTS = frozenset({
    "SessionStart", "Setup", "InstructionsLoaded", "ConfigChange", "CwdChanged",
    "FileChanged", "WorktreeCreate", "WorktreeRemove", "TeammateIdle", "TaskCreated",
    "TaskCompleted",
})
END_EVENT = "SessionEnd"
KNOWN_EVENTS = WORKING_EVENTS | WAITING_EVENTS | NEUTRAL_EVENTS | {END_EVENT}
# Notification subtypes that are not a prompt for the human.
_NEUTRAL_NOTIFICATIONS = frozenset({"auth_success"})
_MAX_SESSION_ID = 256

WORKING, WAITING, IDLE, ABSENT = "working", "waiting", "idle", "absent"

# --- reasons (the operator keys its runaway guard on USER_REASONS; see docs/idle.md) --
REASON_HOOK = "claude-hook"          # rendered as "claude-hook:<EventName>"
REASON_HTTP = "http"                 # completed requests through Caddy
REASON_HTTP_SESSION = "http-session"  # long-lived connection (terminal websocket)
REASON_SSH = "ssh"
REASON_FILES = "files"
USER_REASONS = frozenset({REASON_HTTP, REASON_HTTP_SESSION, REASON_SSH})

# --- file scanner defaults ------------------------------------------------------------
DEFAULT_SKIP_NAMES = frozenset({
    # dependency and build trees: huge, and rewritten by tools rather than people
    "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".tox", ".cache", ".gradle", ".next", ".nuxt", ".turbo", "target",
    # git is touched by background fetches/status; commits come with a session anyway
    ".git",
    # Claude Code's own state (CLAUDE_CONFIG_DIR): its activity arrives as hooks
    ".claude",
})
DEFAULT_SKIP_SUFFIXES = (".log",)  # logs of background processes are not activity
_FUTURE_SLACK_S = 2.0  # mtimes further ahead than this are clock noise, not changes


# ======================================================================================
# Prometheus text exposition
# ======================================================================================
class Sample(NamedTuple):
    name: str
    labels: Mapping[str, str]
    value: float


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def parse_prometheus_text(text: str) -> list[Sample]:
    """Parse the Prometheus text format (v0.0.4) into samples.

    Comments, blank lines and malformed lines are skipped (one bad line must not hide
    the rest of a scrape). Timestamps are accepted and dropped.
    """
    samples: list[Sample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sample = _parse_line(line)
        if sample is not None:
            samples.append(sample)
    return samples


def _parse_line(line: str) -> Sample | None:
    match = _NAME.match(line)
    if match is None:
        return None
    name, pos = match.group(), match.end()
    labels: dict[str, str] = {}
    if pos < len(line) and line[pos] == "{":
        parsed = _parse_labels(line, pos + 1)
        if parsed is None:
            return None
        labels, pos = parsed
    rest = line[pos:].split()
    if not rest or len(rest) > 2 or not line[pos:pos + 1].isspace():
        return None
    try:
        value = float(rest[0])  # accepts NaN, +Inf, -Inf
        if len(rest) == 2:
            int(rest[1])
    except ValueError:
        return None
    return Sample(name, labels, value)


def _parse_labels(line: str, pos: int) -> tuple[dict[str, str], int] | None:
    """Parse `name="value",...}` starting after `{`; return labels and the index after `}`."""
    labels: dict[str, str] = {}
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if match is None:
            return None
        key, pos = match.group(), match.end()
        if line[pos:pos + 2] != '="':
            return None
        pos += 2
        chars: list[str] = []
        while True:
            if pos >= len(line):
                return None
            char = line[pos]
            if char == '"':
                pos += 1
                break
            if char == "\\":
                escaped = _ESCAPES.get(line[pos + 1:pos + 2])
                if escaped is None:
                    return None
                chars.append(escaped)
                pos += 2
                continue
            chars.append(char)
            pos += 1
        labels[key] = "".join(chars)
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif pos >= len(line) or line[pos] != "}":
            return None


@dataclass(frozen=True)
class HttpCounters:
    """What one Caddy scrape says about user traffic."""

    completed: float    # requests answered so far, excluding the ignored ones
    in_flight: float    # requests being handled now


# Answers the web front gives to requests it refuses: not signed in (401/407),
# cross-origin (403), rate limited (429). Anyone on the internet can cause them, so they
# never keep a workspace running.
REFUSED_CODES = ("401", "403", "407", "429")


def http_counters(samples: list[Sample], *, ignore_codes: Collection[str] = REFUSED_CODES,
                  exclude_servers: Collection[str] = ("remaining_auto_https_redirects",),
                  counts_host: Callable[[str], bool] | None = None) -> HttpCounters:
    """Sum Caddy's HTTP series that count as user activity.

    Completed requests come from `caddy_http_request_duration_seconds_count`, which has
    a `code` label, so answers like 401 (a scanner hitting basic auth) can be left out;
    without that histogram `caddy_http_requests_total` is used. Unknown hosts (Caddy's
    `_other` host label under `per_host` metrics) never count; `counts_host` can drop
    more (public ports).
    """
    def wanted(labels: Mapping[str, str]) -> bool:
        if labels.get("server") in exclude_servers:
            return False
        host = labels.get("host")
        if host is None:
            return True
        return host != "_other" and (counts_host is None or counts_host(host))

    by_code = [s for s in samples if s.name == "caddy_http_request_duration_seconds_count"]
    if by_code:
        completed = sum(s.value for s in by_code
                        if wanted(s.labels) and s.labels.get("code") not in ignore_codes)
    else:
        completed = sum(s.value for s in samples
                        if s.name == "caddy_http_requests_total" and wanted(s.labels))
    in_flight = sum(s.value for s in samples
                    if s.name == "caddy_http_requests_in_flight" and wanted(s.labels))
    return HttpCounters(completed=completed, in_flight=in_flight)


def fetch_text(url: str, timeout: float = 2.0, limit: int = 8 << 20) -> str:
    """GET a small text document (Caddy's admin API is loopback-only, plain HTTP)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read(limit + 1)
    if len(body) > limit:
        raise ValueError(f"metrics document from {url} is larger than {limit} bytes")
    return body.decode("utf-8", "replace")


# ======================================================================================
# SSH sessions
# ======================================================================================
# After authentication sshd (or sshd-session, OpenSSH >= 9.8) retitles the per-session
# process "sshd: user@pts/0" (interactive) or "sshd: user@notty" (exec, sftp, forwarding).
# Listener, "[priv]", "[net]" and "[preauth]" processes have no "@" and do not count.
_SSH_SESSION = re.compile(r"^sshd(?:-session)?: [^\s@\[]+@\S+")


def count_ssh_sessions(proc_root: Path = Path("/proc")) -> int:
    """Count authenticated SSH sessions from the process titles under `proc_root`."""
    count = 0
    try:
        entries = list(os.scandir(proc_root))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "cmdline"), "rb") as handle:
                raw = handle.read(512)
        except OSError:  # the process exited meanwhile, or is not ours to read
            continue
        title = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        if _SSH_SESSION.match(title):
            count += 1
    return count


# ======================================================================================
# Files
# ======================================================================================
class FileScanner:
    """Walk a tree a budgeted slice at a time, remembering the newest change time.

    Each `step` stats at most `budget` entries and resumes where the last one stopped
    (even inside a huge directory), so a big tree costs a bounded amount per poll and is
    covered over several polls. The change time of an entry is max(mtime, ctime): ctime
    also catches files moved or extracted with old mtimes. Directories are included, so
    deletions show up through their parent. Symlinks are not followed and other
    filesystems are not entered.
    """

    def __init__(self, root: Path, *, budget: int = 10_000,
                 skip_names: Collection[str] = DEFAULT_SKIP_NAMES,
                 skip_suffixes: tuple[str, ...] = DEFAULT_SKIP_SUFFIXES) -> None:
        if budget < 1:
            raise ValueError(f"file scan budget must be positive, not {budget}")
        self.root = str(root)
        self.budget = budget
        self.skip_names = frozenset(skip_names)
        self.skip_suffixes = skip_suffixes
        self.newest: float | None = None       # newest change time seen (epoch seconds)
        self.passes = 0                        # completed walks of the whole tree
        self.last_step_entries = 0
        self._pending: list[str] = []
        self._current: Iterator[os.DirEntry[str]] | None = None
        self._root_dev: int | None = None
        self._walking = False

    def step(self, now: float) -> float | None:
        """Stat up to `budget` entries; return the newest change time not after `now`."""
        limit = now + _FUTURE_SLACK_S
        visited = 0
        started_pass = False
        while visited < self.budget:
            if self._current is None:
                if not self._pending:
                    if self._walking:
                        self._walking = False
                        self.passes += 1
                    if started_pass:
                        break  # the whole tree fit in this step; go again next time
                    started_pass = True
                    if not self._start_pass(limit):
                        break
                    visited += 1
                    continue
                self._current = self._open(self._pending.pop())
                continue
            entry = next(self._current, None)
            if entry is None:
                self._close_current()
                continue
            visited += 1
            self._visit(entry, limit)
        self.last_step_entries = visited
        return self.newest

    def close(self) -> None:
        self._close_current()

    def _start_pass(self, limit: float) -> bool:
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        self._root_dev = st.st_dev
        self._note(st, limit)
        self._pending = [self.root]
        self._walking = True
        return True

    def _open(self, path: str) -> Iterator[os.DirEntry[str]] | None:
        try:
            return os.scandir(path)
        except OSError:  # removed or unreadable since it was queued
            return None

    def _close_current(self) -> None:
        current, self._current = self._current, None
        close = getattr(current, "close", None)
        if close is not None:
            close()

    def _visit(self, entry: os.DirEntry[str], limit: float) -> None:
        name = entry.name
        if name in self.skip_names or name.endswith(self.skip_suffixes):
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return
        self._note(st, limit)
        if stat.S_ISDIR(st.st_mode) and st.st_dev == self._root_dev:
            self._pending.append(entry.path)

    def _note(self, st: os.stat_result, limit: float) -> None:
        changed = max(st.st_mtime, st.st_ctime)
        if changed <= limit and (self.newest is None or changed > self.newest):
            self.newest = changed


# ======================================================================================
# The tracker
# ======================================================================================
@dataclass
class _Session:
    working: bool
    last_event: datetime


def _iso(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None


class ActivityTracker:
    """Thread-safe: `record_hook` (HTTP handler threads), `poll` (one poller thread) and
    `snapshot` (API threads) may run concurrently."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        *,
        workspaces_root: Path,
        caddy_metrics_url: str | None,
        proc_root: Path = Path("/proc"),
        fetch_metrics: Callable[[str], str] = fetch_text,
        scan_files: bool = True,
        file_budget: int = 10_000,
        file_skip_names: Collection[str] = DEFAULT_SKIP_NAMES,
        idle_after: timedelta = timedelta(minutes=10),
        session_ttl: timedelta = timedelta(hours=12),
        max_sessions: int = 32,
        reason_window: timedelta = timedelta(minutes=2),
        http_ignore_codes: Collection[str] = REFUSED_CODES,
        http_exclude_servers: Collection[str] = ("remaining_auto_https_redirects",),
        http_counts_host: Callable[[str], bool] | None = None,
    ) -> None:
        """
        idle_after: a waiting agent with no hook event for this long is reported idle.
        session_ttl: a session with no hook event for this long is forgotten (Claude
            Code killed without SessionEnd).
        max_sessions: sessions tracked at most; the least recently active is dropped.
        reason_window: a source is listed in `reasons` if active this recently.
        http_counts_host: False for Caddy host labels whose traffic must not count
            (public ports); consulted on every poll, so it may follow config changes.
        """
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be positive, not {max_sessions}")
        self._clock = clock
        self._metrics_url = caddy_metrics_url
        self._fetch_metrics = fetch_metrics
        self._proc_root = proc_root
        self._scanner = (FileScanner(workspaces_root, budget=file_budget,
                                     skip_names=file_skip_names) if scan_files else None)
        self._idle_after = idle_after
        self._session_ttl = session_ttl
        self._max_sessions = max_sessions
        self._window = reason_window
        self._http_ignore_codes = frozenset(http_ignore_codes)
        self._http_exclude_servers = frozenset(http_exclude_servers)
        self._http_counts_host = http_counts_host

        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        start = clock()
        self._started = start
        self._sessions: dict[str, _Session] = {}
        self._base = ABSENT              # working|waiting|absent from events; idle derives
        self._base_since = start
        self._last_hook: datetime | None = None
        self._last_hook_name = ""
        self._malformed = 0
        self._last_activity: datetime | None = None
        self._last_user_activity: datetime | None = None
        self._seen: dict[str, datetime] = {}   # reason -> newest activity time
        # source state
        self._http_prev: float | None = None
        self._in_flight_prev = 0.0
        self._in_flight = 0.0
        self._metrics_ok = True
        self._ssh_sessions = 0
        self._files_after = start.timestamp()   # changes up to here are not activity
        self._files_counted = start.timestamp()

    # --- hooks ---------------------------------------------------------------------
    def record_hook(self, payload: object) -> bool:
        """Apply one Claude Code hook event; False (and counted) if it is malformed."""
        parsed = _parse_hook(payload)
        with self._lock:
            if parsed is None:
                self._malformed += 1
                return False
            event, session_id, notification_type = parsed
            now = self._clock()
            self._expire(now)
            self._last_hook = now
            self._last_hook_name = event
            self._bump(f"{REASON_HOOK}:{event}", now)
            if event == END_EVENT:
                self._sessions.pop(session_id, None)
            else:
                session = self._sessions.pop(session_id, None)  # re-insert: LRU order
                if event in WORKING_EVENTS:
                    working = True
                elif event in WAITING_EVENTS and notification_type not in _NEUTRAL_NOTIFICATIONS:
                    working = False
                else:  # neutral: a new session waits for its first prompt
                    working = session.working if session is not None else False
                self._sessions[session_id] = _Session(working=working, last_event=now)
                while len(self._sessions) > self._max_sessions:
                    del self._sessions[next(iter(self._sessions))]
            self._rebase(now)
            return True

    # --- sampled sources ---------------------------------------------------------------
    def poll(self) -> None:
        """Sample Caddy, SSH and files. Never raises: a failing source reports nothing."""
        with self._poll_lock:
            now = self._clock()
            counters = self._sample_http()
            ssh = self._sample_ssh()
            newest = self._sample_files(now)
            with self._lock:
                self._expire(now)
                self._apply_http(counters, now)
                self._ssh_sessions = ssh
                if ssh > 0:
                    self._bump(REASON_SSH, now, user=True)
                if newest is not None and newest > max(self._files_after, self._files_counted):
                    self._files_counted = newest
                    changed = min(datetime.fromtimestamp(newest, UTC), now)
                    self._bump(REASON_FILES, changed)

    def suppress_files_until(self, until: datetime) -> None:
        """File changes up to `until` are not activity (the agent's own restore, clone,
        devcontainer build). Call with a future time before such work and with the
        clock's time when it ends; a later call replaces an earlier one."""
        with self._lock:
            self._files_after = until.timestamp()

    def close(self) -> None:
        if self._scanner is not None:
            self._scanner.close()

    def _sample_http(self) -> HttpCounters | None:
        if self._metrics_url is None:
            return None
        try:
            text = self._fetch_metrics(self._metrics_url)
            counters = http_counters(parse_prometheus_text(text),
                                     ignore_codes=self._http_ignore_codes,
                                     exclude_servers=self._http_exclude_servers,
                                     counts_host=self._http_counts_host)
        except Exception as exc:  # any failure means "no HTTP activity", never a crash
            if self._metrics_ok:
                log.warning("caddy metrics unavailable: %s", exc)
            self._metrics_ok = False
            return None
        self._metrics_ok = True
        return counters

    def _sample_ssh(self) -> int:
        try:
            return count_ssh_sessions(self._proc_root)
        except Exception:
            log.exception("counting ssh sessions failed")
            return 0

    def _sample_files(self, now: datetime) -> float | None:
        if self._scanner is None:
            return None
        try:
            return self._scanner.step(now.timestamp())
        except Exception:
            log.exception("scanning files failed")
            return None

    def _apply_http(self, counters: HttpCounters | None, now: datetime) -> None:
        if counters is None:  # unreachable: start over so a restarted Caddy is no burst
            self._http_prev, self._in_flight_prev, self._in_flight = None, 0.0, 0.0
            return
        previous, self._http_prev = self._http_prev, counters.completed
        if previous is not None:
            # A smaller total means Caddy restarted and counted again from zero.
            increase = (counters.completed - previous if counters.completed >= previous
                        else counters.completed)
            if increase > 0:
                self._bump(REASON_HTTP, now, user=True)
        # One poll with requests in flight can be an ordinary request; two in a row is
        # a long-lived connection such as the web terminal.
        if counters.in_flight > 0 and self._in_flight_prev > 0:
            self._bump(REASON_HTTP_SESSION, now, user=True)
        self._in_flight_prev = self._in_flight = counters.in_flight

    # --- state ---------------------------------------------------------------------
    def _bump(self, reason: str, when: datetime, *, user: bool = False) -> None:
        key = REASON_HOOK if reason.startswith(REASON_HOOK) else reason
        if key not in self._seen or when > self._seen[key]:
            self._seen[key] = when
        if self._last_activity is None or when > self._last_activity:
            self._last_activity = when
        if user and (self._last_user_activity is None or when > self._last_user_activity):
            self._last_user_activity = when

    def _rebase(self, now: datetime, *, quiet_since: datetime | None = None) -> None:
        """Recompute the event-driven state; date a change `now`, or `quiet_since` when
        it happened only because time passed."""
        if any(s.working for s in self._sessions.values()):
            base = WORKING
        elif self._sessions:
            base = WAITING
        else:
            base = ABSENT
        if base != self._base:
            self._base = base
            self._base_since = now if quiet_since is None else max(self._base_since,
                                                                    quiet_since)

    def _expire(self, now: datetime) -> None:
        stale = [sid for sid, s in self._sessions.items()
                 if now - s.last_event >= self._session_ttl]
        if not stale:
            return
        newest = max(self._sessions[sid].last_event for sid in stale)
        for sid in stale:
            del self._sessions[sid]
        self._rebase(now, quiet_since=newest)

    def _state(self, now: datetime) -> tuple[str, datetime]:
        if self._base == WAITING and self._last_hook is not None and \
                now - self._last_hook >= self._idle_after:
            # A relabel, not an event: keep the time the agent stopped working.
            return IDLE, self._base_since
        return self._base, self._base_since

    def snapshot(self) -> dict[str, object]:
        """The `activity` object of /v1/status (shape in docs/agent-protocol.md)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            state, since = self._state(now)
            reasons = []
            for key in (REASON_HOOK, REASON_HTTP, REASON_HTTP_SESSION, REASON_SSH,
                        REASON_FILES):
                seen = self._seen.get(key)
                if seen is not None and now - seen <= self._window:
                    reasons.append(f"{REASON_HOOK}:{self._last_hook_name}"
                                   if key == REASON_HOOK else key)
            working = sum(1 for s in self._sessions.values() if s.working)
            return {
                "agentState": state,
                "agentStateSince": _iso(since),
                "lastActivityTime": _iso(self._last_activity),
                "lastUserActivityTime": _iso(self._last_user_activity),
                "reasons": reasons,
                "malformedHookEvents": self._malformed,
                "sessions": {
                    "claude": len(self._sessions),
                    "claudeWorking": working,
                    "claudeWaiting": len(self._sessions) - working,
                    "ssh": self._ssh_sessions,
                    "httpInFlight": int(self._in_flight),
                },
            }


def _parse_hook(payload: object) -> tuple[str, str, str | None] | None:
    """(event, session id, notification type) of a well-formed hook payload, else None."""
    if not isinstance(payload, dict):
        return None
    event = payload.get("hook_event_name")
    session_id = payload.get("session_id")
    if not isinstance(event, str) or event not in KNOWN_EVENTS:
        return None
    if not isinstance(session_id, str) or not 0 < len(session_id) <= _MAX_SESSION_ID:
        return None
    for key in ("cwd", "transcript_path", "notification_type"):
        if key in payload and not isinstance(payload[key], str):
            return None
    notification_type = payload.get("notification_type")
    return event, session_id, notification_type
