"""Claude Code's token usage, read from the transcripts it writes.

Claude Code appends one JSON object per line to
`$CLAUDE_CONFIG_DIR/projects/<project>/<session id>.jsonl` (a subagent's to
`<session id>/subagents/*.jsonl` beside it). An assistant record carries the Messages
API's answer: `message.id`, `message.model` and `message.usage` (input_tokens,
output_tokens, cache_creation_input_tokens, cache_read_input_tokens and
cache_creation.ephemeral_1h_input_tokens), with the record's `sessionId` and
`timestamp`. What the real CLI writes (2.1.332, tests/component/test_claude_usage.py):

- an answer with several content blocks is written once per block, every copy with the
  same message id and usage: a message is counted once per file, with the largest value
  of each counter seen (an early copy may hold the usage of `message_start`);
- `--continue` and `--resume` append to the session's own file;
- `--fork-session` copies the parent's records into the new session's file, each copy
  marked with `requestSessionId` (the session that made the request): copies are not
  counted again.

`UsageScanner.poll` reads incrementally: per file it keeps the offset read so far, the
device and inode, and the file's own sums, and reads at most `budget` bytes per poll in
all (a large restored history takes several polls; `complete` says when it is caught
up). A file that shrank or was replaced is read again from its start, its old sums
dropped; a file that vanished takes its sums with it, so the totals are always those of
the transcripts on disk (they survive a stop in the workspace's backup).

The tree belongs to the container's user and the agent runs as root: directories are
walked by descriptor without following links, and only regular files are opened
(O_PATH, checked, then reopened), so a planted link, FIFO or device is never read.
Stdlib only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from agentspaces_vm import safefs
from agentspaces_vm.contracts import (
    MAX_RECENT_SESSIONS,
    MAX_USAGE_MODELS,
    MODEL_NAME,
    SessionUsage,
    TokenCounts,
    UsageReport,
    parse_time,
)

log = logging.getLogger(__name__)

DEFAULT_BUDGET = 32 * 1024 * 1024
"""Bytes read per poll over all transcripts."""
MAX_LINE = 64 * 1024 * 1024
"""A longer line (a huge tool result) is skipped, never buffered whole."""
MAX_FILES = 20_000
MAX_DEPTH = 4  # projects/<project>/<session>/subagents/<agent>.jsonl
RECENT_IDS = 512
"""Message ids remembered per file: the copies of one message are adjacent."""
OTHER_MODEL = "other"
"""Where the tokens of models beyond MAX_USAGE_MODELS are summed."""
SYNTHETIC_MODEL = "<synthetic>"  # Claude Code's own placeholder answers (no API call)
_MAX_ID = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Record:
    """One counted assistant record."""

    message_id: str
    session_id: str
    model: str
    tokens: TokenCounts
    time: datetime | None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _name(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID and value.isprintable():
        return value
    return None


def parse_record(line: bytes) -> Record | None:
    """The usage of one transcript line, or None if it is not a counted assistant record
    (other record kinds, Claude Code's synthetic answers, copies from a forked session,
    malformed lines)."""
    if b'"assistant"' not in line or b'"usage"' not in line:
        return None  # cheap: most lines are prompts, tool results and request records
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("type") != "assistant":
        return None
    message = doc.get("message")
    session = _name(doc.get("sessionId"))
    if not isinstance(message, dict) or session is None:
        return None
    requested_by = doc.get("requestSessionId")
    if requested_by is not None and requested_by != session:
        return None  # a fork's copy: counted in the session that made the request
    message_id, model, usage = _name(message.get("id")), _name(message.get("model")), \
        message.get("usage")
    if message_id is None or model is None or model == SYNTHETIC_MODEL or \
            not isinstance(usage, dict):
        return None
    if not MODEL_NAME.fullmatch(model):
        model = OTHER_MODEL
    creation = usage.get("cache_creation")
    write_1h = _int(creation.get("ephemeral_1h_input_tokens")) \
        if isinstance(creation, dict) else 0
    write = _int(usage.get("cache_creation_input_tokens"))
    tokens = TokenCounts(input=_int(usage.get("input_tokens")),
                         output=_int(usage.get("output_tokens")),
                         cache_read=_int(usage.get("cache_read_input_tokens")),
                         cache_write=write, cache_write_1h=min(write_1h, write))
    try:
        when = parse_time(doc["timestamp"]) if isinstance(doc.get("timestamp"), str) else None
    except ValueError:
        when = None
    return Record(message_id, session, model, tokens, when)


def _larger(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(max(a.input, b.input), max(a.output, b.output),
                       max(a.cache_read, b.cache_read), max(a.cache_write, b.cache_write),
                       max(a.cache_write_1h, b.cache_write_1h))


def _minus(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(a.input - b.input, a.output - b.output, a.cache_read - b.cache_read,
                       a.cache_write - b.cache_write, a.cache_write_1h - b.cache_write_1h)


@dataclass
class _Last:
    time: datetime | None = None
    model: str | None = None

    def note(self, when: datetime | None, model: str) -> None:
        if self.model is None or (when is not None and (self.time is None or when >= self.time)):
            self.time, self.model = when, model


@dataclass
class FileUsage:
    """What one transcript holds, and where reading it stopped."""

    identity: tuple[int, int]  # (device, inode)
    offset: int = 0
    pending: bytearray = field(default_factory=bytearray)
    skipping: bool = False  # inside a line longer than MAX_LINE
    sums: dict[tuple[str, str], TokenCounts] = field(default_factory=dict)
    """(session id, model) -> tokens."""
    last: dict[str, _Last] = field(default_factory=dict)
    """session id -> its newest counted record."""
    recent: OrderedDict[str, Record] = field(default_factory=OrderedDict)

    def feed(self, chunk: bytes) -> None:
        """Count the complete lines in `chunk` (after what is pending)."""
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            piece = chunk[start:end]
            start = end + 1
            if self.skipping:
                self.skipping = False
                self.pending.clear()
                continue
            if self.pending:
                self.pending += piece
                line = bytes(self.pending)
                self.pending.clear()
            else:
                line = piece
            self.count(line)
        rest = chunk[start:]
        if self.skipping:
            return
        if len(self.pending) + len(rest) > MAX_LINE:
            self.pending.clear()
            self.skipping = True
            return
        self.pending += rest

    def count(self, line: bytes) -> None:
        record = parse_record(line)
        if record is None:
            return
        counted = self.recent.pop(record.message_id, None)
        if counted is not None and (counted.session_id, counted.model) == \
                (record.session_id, record.model):
            tokens = _larger(counted.tokens, record.tokens)
            added = _minus(tokens, counted.tokens)
        else:  # a new message (an id reused by another session or model counts anew)
            tokens = added = record.tokens
        self.recent[record.message_id] = Record(record.message_id, record.session_id,
                                                record.model, tokens, record.time)
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)
        key = (record.session_id, record.model)
        self.sums[key] = self.sums.get(key, TokenCounts()) + added
        self.last.setdefault(record.session_id, _Last()).note(record.time, record.model)


class UsageScanner:
    """Thread-safe: `poll` (the agent's poller thread) and `report` (API threads)."""

    def __init__(self, workspaces: Path, config_dir: str = ".claude", *,
                 budget: int = DEFAULT_BUDGET) -> None:
        if budget < 1:
            raise ValueError(f"the read budget must be positive, not {budget}")
        self._workspaces = workspaces
        self._projects = f"{config_dir}/projects"
        self._budget = budget
        self._files: dict[tuple[str, ...], FileUsage] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._complete = False  # nothing read yet
        self._held = False
        self._generation = 0
        self._report: UsageReport | None = None
        self._warned = False

    def hold(self, busy: bool) -> None:
        """While the start sequence writes /workspaces (a restore above all), the sums
        may be partial: the report says incomplete from now until a poll that starts
        after `hold(False)` has read everything."""
        with self._lock:
            self._held = busy
            self._generation += 1
            self._complete = False
            self._report = None

    # --- reading ---------------------------------------------------------------------

    def poll(self) -> None:
        """Read what the transcripts gained since the last poll. Never raises."""
        with self._poll_lock:
            with self._lock:
                generation = self._generation
            try:
                changed, complete = self._poll()
            except Exception:
                log.exception("reading Claude Code's transcripts failed")
                return
            with self._lock:
                complete = complete and not self._held and generation == self._generation
                if changed or complete != self._complete:
                    self._report = None
                self._complete = complete

    def _poll(self) -> tuple[bool, bool]:
        """(whether any sums may have changed, whether every transcript is read)."""
        with contextlib.ExitStack() as stack:
            try:
                root = stack.enter_context(safefs.open_dir(self._workspaces, self._projects))
            except OSError as exc:
                if not isinstance(exc, FileNotFoundError) and not self._warned:
                    log.warning("not reading transcripts: %s", exc)  # a planted link
                    self._warned = True
                with self._lock:
                    changed = bool(self._files)
                    self._files.clear()
                return changed, True
            return self._scan(root)

    def _scan(self, root: int) -> tuple[bool, bool]:
        budget = self._budget
        seen: set[tuple[str, ...]] = set()
        complete, changed = True, False
        for rel, dir_fd, name in self._walk(root):
            seen.add(rel)
            budget, caught_up, grew = self._read(rel, dir_fd, name, budget)
            changed = changed or grew
            complete = complete and caught_up
        with self._lock:
            for gone in set(self._files) - seen:
                del self._files[gone]
                changed = True
        return changed, complete

    def _walk(self, root: int) -> Iterator[tuple[tuple[str, ...], int, str]]:
        """(relative path, its directory's descriptor, name) of every *.jsonl below
        `root`, without following links; at most MAX_FILES, MAX_DEPTH directories deep.
        A directory's descriptor stays open while its files are yielded."""
        count = 0
        pending: list[tuple[int, tuple[str, ...], int]] = [(root, (), 0)]
        try:
            while pending:
                fd, here, level = pending.pop()
                try:
                    try:
                        with os.scandir(fd) as entries:
                            listed = sorted((e.name, e.is_dir(follow_symlinks=False),
                                             e.is_file(follow_symlinks=False))
                                            for e in entries)
                    except OSError:
                        listed = []
                    for name, is_dir, is_file in listed:
                        if is_file and name.endswith(".jsonl"):
                            count += 1
                            if count > MAX_FILES:
                                return
                            yield (*here, name), fd, name
                        elif is_dir and level < MAX_DEPTH:
                            try:
                                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                            except OSError:
                                continue
                            pending.append((child, (*here, name), level + 1))
                finally:
                    if fd != root:
                        os.close(fd)
        finally:
            for fd, _, _ in pending:
                if fd != root:
                    os.close(fd)

    def _read(self, rel: tuple[str, ...], dir_fd: int, name: str, budget: int
              ) -> tuple[int, bool, bool]:
        """Read what `rel` gained, within `budget`: (budget left, whether the file is read
        to its end, whether its sums may have changed)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return budget, True, False
        if not stat.S_ISREG(st.st_mode):
            return budget, True, False
        identity = (st.st_dev, st.st_ino)
        reset = False
        with self._lock:
            known = self._files.get(rel)
            if known is None or known.identity != identity or st.st_size < known.offset:
                reset = known is not None  # replaced or truncated: read it again
                known = self._files[rel] = FileUsage(identity)
        if st.st_size == known.offset:
            return budget, True, reset
        if budget <= 0:
            return 0, False, reset
        want = min(st.st_size - known.offset, budget)
        chunk = self._read_bytes(dir_fd, name, identity, known.offset, want)
        if not chunk:
            return budget, True, reset
        with self._lock:
            known.feed(chunk)
            known.offset += len(chunk)
        return budget - len(chunk), known.offset >= st.st_size, True

    @staticmethod
    def _read_bytes(dir_fd: int, name: str, identity: tuple[int, int], offset: int,
                    size: int) -> bytes | None:
        # O_PATH opens nothing yet: a link, FIFO or device swapped in is never opened.
        try:
            pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return None
        try:
            st = os.fstat(pfd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != identity:
                return None
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        finally:
            os.close(pfd)
        try:
            return os.pread(fd, size, offset)
        except OSError:
            return None
        finally:
            os.close(fd)

    # --- the report ------------------------------------------------------------------

    def report(self) -> UsageReport:
        """The sums over every transcript read so far (cached until the next poll)."""
        with self._lock:
            if self._report is None:
                self._report = self._build()
            return self._report

    def _build(self) -> UsageReport:
        per_model: dict[str, TokenCounts] = {}
        per_session: dict[str, TokenCounts] = {}
        last: dict[str, _Last] = {}
        for usage in self._files.values():
            for (session, model), tokens in usage.sums.items():
                per_model[model] = per_model.get(model, TokenCounts()) + tokens
                per_session[session] = per_session.get(session, TokenCounts()) + tokens
            for session, newest in usage.last.items():
                if newest.model is not None:
                    last.setdefault(session, _Last()).note(newest.time, newest.model)
        newest_overall = _Last()
        for newest in last.values():
            if newest.model is not None:
                newest_overall.note(newest.time, newest.model)
        recent = sorted(per_session, key=lambda s: (_sort_time(last.get(s)), s),
                        reverse=True)[:MAX_RECENT_SESSIONS]
        return UsageReport(
            sessions=len(per_session), models=_capped(per_model),
            last_model=newest_overall.model, last_time=newest_overall.time,
            recent_sessions=tuple(
                SessionUsage(session_id=s, tokens=per_session[s],
                             last_model=last[s].model if s in last else None,
                             last_time=last[s].time if s in last else None)
                for s in recent),
            complete=self._complete)


def _sort_time(newest: _Last | None) -> float:
    return newest.time.timestamp() if newest is not None and newest.time is not None else 0.0


def _capped(per_model: dict[str, TokenCounts]) -> dict[str, TokenCounts]:
    """At most MAX_USAGE_MODELS models: the rest (fewest tokens) summed as "other"."""
    if len(per_model) <= MAX_USAGE_MODELS:
        return per_model
    ranked = sorted(per_model, key=lambda m: (-per_model[m].total, m))
    kept = {m: per_model[m] for m in ranked[:MAX_USAGE_MODELS - 1]}
    rest = TokenCounts()
    for model in ranked[MAX_USAGE_MODELS - 1:]:
        rest = rest + per_model[model]
    kept[OTHER_MODEL] = kept.get(OTHER_MODEL, TokenCounts()) + rest
    return kept
