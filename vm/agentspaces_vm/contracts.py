"""What the operator and the workspace agent exchange, declared once for both sides.

The operator imports this module from the agent's package (which stays stdlib-only),
so a document is built and parsed by the same code on both ends:

- `BackupPlan` (POST /v1/backup) and `BackupResult` (GET /v1/backup -> result),
- `RestorePlan` (POST /v1/start -> restore),
- `BackupJob` (GET /v1/backup) and `AgentStatus` (GET /v1/status),
- the upload limits both sides enforce (part size, part count, URL lifetime, chunk size),
- the one time format (`format_time` / `parse_time`).

Every document is a frozen dataclass: `to_json()` gives the wire dict, `from_json(doc)`
parses and validates it. Construction validates too, so the operator cannot build a
plan the agent would refuse. A violation raises `ContractError` (a ValueError) whose
message names the field, never its value: plans carry the data key and presigned URLs.
Shapes are documented in docs/backup-format.md and docs/agent-protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second resolution: how every time travels and is stored."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    """The inverse of format_time; also reads `+00:00` offsets and fractions."""
    if not text:
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ContractError(ValueError):
    """A document does not follow its contract (the message names the field only)."""


# --- limits -------------------------------------------------------------------------------

MIB = 1024 * 1024
PLAN_VERSION = 2  # 2: plans carry workspaceUid (with the id, the object's binding)
MIN_PART_SIZE = 5 * MIB  # S3/R2: every part but the last
MAX_PART_SIZE = 5 * 1024 * MIB - 5 * MIB  # R2's single-part limit
MAX_PARTS = 10_000  # S3/R2 parts per multipart upload
MIN_URL_TTL = 1
MAX_URL_TTL = 7 * 24 * 3600  # the longest a SigV4 presigned URL can live
DEFAULT_CHUNK_SIZE = MIB
# A reader refuses larger chunks so a hostile header cannot make it buffer gigabytes.
MAX_CHUNK_SIZE = 64 * MIB
DATA_KEY_SIZE = 32
MAX_KEY_ID_LENGTH = 64
MAX_EXCLUDES = 1000
_BACKUP_ID = re.compile(r"[0-9A-Za-z._-]{1,64}")
_BINDING_PART = re.compile(r"[0-9A-Za-z._-]{1,100}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"^https?://")


def _in_range(value: int, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ContractError(f"{what} must be {low}..{high}")
    return value


def check_part_size(part_size: int) -> int:
    return _in_range(part_size, MIN_PART_SIZE, MAX_PART_SIZE, "part size (bytes)")


def check_part_count(count: int) -> int:
    return _in_range(count, 1, MAX_PARTS, "part count")


def check_url_ttl(seconds: int) -> int:
    return _in_range(seconds, MIN_URL_TTL, MAX_URL_TTL, "URL lifetime (seconds)")


def check_chunk_size(chunk_size: int) -> int:
    return _in_range(chunk_size, 1, MAX_CHUNK_SIZE, "chunk size (bytes)")


def check_key_id(key_id: str) -> str:
    """A key id is 1..64 printable ASCII characters (it is stored in object headers)."""
    if not (isinstance(key_id, str) and 0 < len(key_id) <= MAX_KEY_ID_LENGTH
            and key_id.isascii() and key_id.isprintable()):
        raise ContractError(f"a key id is 1..{MAX_KEY_ID_LENGTH} printable ASCII characters")
    return key_id


def backup_binding(workspace_uid: str, backup_id: str) -> str:
    """What an object is bound to: the workspace uid and the backup id it was written as."""
    for part in (workspace_uid, backup_id):
        if not (isinstance(part, str) and _BINDING_PART.fullmatch(part)):
            raise ContractError("a workspace uid or backup id is 1..100 of [0-9A-Za-z._-]")
    return f"{workspace_uid}/{backup_id}"


# --- parsing helpers ----------------------------------------------------------------------

def _object(doc: object, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise ContractError(f"{what} must be a JSON object")
    return doc


def _field(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *,
           optional: bool = False, default: Any = None) -> Any:
    """doc[name] if it has the type `kind` (bools are not ints); a missing or null
    optional field gives `default`."""
    value = doc.get(name)
    if value is None and optional:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ContractError(f"field {name!r} is missing or has the wrong type")
    return value


def _strings(doc: Mapping[str, Any], name: str) -> tuple[str, ...]:
    values = _field(doc, name, list, optional=True, default=[])
    if not all(isinstance(v, str) for v in values):
        raise ContractError(f"field {name!r} must be a list of strings")
    return tuple(values)


def _time(doc: Mapping[str, Any], name: str, *, optional: bool = True) -> datetime | None:
    value = _field(doc, name, str, optional=optional)
    if value is None:
        return None
    try:
        parsed = parse_time(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise ContractError(f"field {name!r} is not an RFC 3339 time")
    return parsed


def _key(doc: Mapping[str, Any]) -> bytes:
    try:
        return base64.b64decode(_field(doc, "key", str), validate=True)
    except (ValueError, binascii.Error):
        raise ContractError("field 'key' is not base64") from None


def _check_version(doc: Mapping[str, Any]) -> None:
    if doc.get("version") != PLAN_VERSION:
        raise ContractError(f"plan version must be {PLAN_VERSION}")


def _check_identity(backup_id: str, workspace_uid: str, key_id: str, key: bytes) -> None:
    if not isinstance(backup_id, str) or not _BACKUP_ID.fullmatch(backup_id):
        raise ContractError("the backup id is 1..64 of [0-9A-Za-z._-]")
    backup_binding(workspace_uid, backup_id)
    check_key_id(key_id)
    if not isinstance(key, bytes) or len(key) != DATA_KEY_SIZE:
        raise ContractError(f"the data key must be {DATA_KEY_SIZE} bytes")


def _check_url(url: str, what: str) -> None:
    if not isinstance(url, str) or not _URL.match(url):
        raise ContractError(f"{what} is not an http(s) URL")


def _check_sha256(sha256: str) -> None:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ContractError("sha256 must be 64 lowercase hex digits")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- plans --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupPlan:
    """POST /v1/backup: what to archive and where to upload it. Holds the data key and
    bearer URLs: send it only over the pinned agent channel, never log it."""

    backup_id: str
    workspace_uid: str
    object_key: str
    key_id: str
    key: bytes = field(repr=False)
    part_size: int
    part_urls: tuple[str, ...] = field(repr=False)  # part n uploads to part_urls[n - 1]
    chunk_size: int = DEFAULT_CHUNK_SIZE
    expires_at: datetime | None = None  # informational: the URLs carry their expiry
    exclude: tuple[str, ...] = ()  # GNU tar --exclude patterns

    def __post_init__(self) -> None:
        _check_identity(self.backup_id, self.workspace_uid, self.key_id, self.key)
        check_part_size(self.part_size)
        check_part_count(len(self.part_urls))
        check_chunk_size(self.chunk_size)
        for url in self.part_urls:
            _check_url(url, "a part URL")
        if len(self.exclude) > MAX_EXCLUDES or not all(
                isinstance(x, str) and x and "\0" not in x for x in self.exclude):
            raise ContractError("exclude must be a list of non-empty patterns")

    @property
    def binding(self) -> str:
        return backup_binding(self.workspace_uid, self.backup_id)

    @property
    def capacity(self) -> int:
        """The largest object (ciphertext bytes) the plan can upload."""
        return self.part_size * len(self.part_urls)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": PLAN_VERSION, "id": self.backup_id, "workspaceUid": self.workspace_uid,
            "object": self.object_key, "keyId": self.key_id, "key": _b64(self.key),
            "chunkSize": self.chunk_size, "partSize": self.part_size,
            "parts": [{"partNumber": n, "url": url}
                      for n, url in enumerate(self.part_urls, start=1)],
            "exclude": list(self.exclude),
        }
        if self.expires_at is not None:
            doc["expiresAt"] = format_time(self.expires_at)
        return doc

    @classmethod
    def from_json(cls, doc: object) -> BackupPlan:
        plan = _object(doc, "a backup plan")
        _check_version(plan)
        parts = _field(plan, "parts", list)
        try:
            numbered = sorted((int(_field(p, "partNumber", int)), _field(p, "url", str))
                              for p in parts)
        except (TypeError, AttributeError):
            raise ContractError("parts must be objects with partNumber and url") from None
        if [n for n, _ in numbered] != list(range(1, len(numbered) + 1)):
            raise ContractError("part numbers must be 1..n")
        return cls(backup_id=_field(plan, "id", str),
                   workspace_uid=_field(plan, "workspaceUid", str),
                   object_key=_field(plan, "object", str), key_id=_field(plan, "keyId", str),
                   key=_key(plan), part_size=_field(plan, "partSize", int),
                   part_urls=tuple(url for _, url in numbered),
                   chunk_size=_field(plan, "chunkSize", int, optional=True,
                                     default=DEFAULT_CHUNK_SIZE),
                   expires_at=_time(plan, "expiresAt"), exclude=_strings(plan, "exclude"))


@dataclass(frozen=True)
class RestorePlan:
    """POST /v1/start -> restore: one committed backup to download, verify and unpack.
    Holds the data key and a bearer URL, like BackupPlan."""

    backup_id: str
    workspace_uid: str
    object_key: str
    key_id: str
    key: bytes = field(repr=False)
    url: str = field(repr=False)
    size: int
    sha256: str
    expires_at: datetime | None = None

    def __post_init__(self) -> None:
        _check_identity(self.backup_id, self.workspace_uid, self.key_id, self.key)
        _check_url(self.url, "the plan's url")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ContractError("size must be a positive number of bytes")
        _check_sha256(self.sha256)

    @property
    def binding(self) -> str:
        return backup_binding(self.workspace_uid, self.backup_id)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": PLAN_VERSION, "id": self.backup_id, "workspaceUid": self.workspace_uid,
            "object": self.object_key, "url": self.url, "keyId": self.key_id,
            "key": _b64(self.key), "size": self.size, "sha256": self.sha256,
        }
        if self.expires_at is not None:
            doc["expiresAt"] = format_time(self.expires_at)
        return doc

    @classmethod
    def from_json(cls, doc: object) -> RestorePlan:
        plan = _object(doc, "a restore plan")
        _check_version(plan)
        return cls(backup_id=_field(plan, "id", str),
                   workspace_uid=_field(plan, "workspaceUid", str),
                   object_key=_field(plan, "object", str), key_id=_field(plan, "keyId", str),
                   key=_key(plan), url=_field(plan, "url", str),
                   size=_field(plan, "size", int), sha256=_field(plan, "sha256", str).lower(),
                   expires_at=_time(plan, "expiresAt"))


# --- the backup's result and job ----------------------------------------------------------

@dataclass(frozen=True)
class UploadedPart:
    number: int
    etag: str


@dataclass(frozen=True)
class BackupResult:
    """What a finished backup reports (GET /v1/backup -> result); the operator commits
    it. Consistency with the plan (part size, part count, id) is checked at commit."""

    backup_id: str
    parts: tuple[UploadedPart, ...]
    size: int  # ciphertext bytes, the object's size
    sha256: str  # of the object
    key_id: str
    chunk_size: int
    format_version: int
    plaintext_size: int | None = None
    warnings: str = ""  # tar's complaints about files that changed while read

    def __post_init__(self) -> None:
        if not isinstance(self.backup_id, str) or not _BACKUP_ID.fullmatch(self.backup_id):
            raise ContractError("the backup id is 1..64 of [0-9A-Za-z._-]")
        if [p.number for p in self.parts] != list(range(1, len(self.parts) + 1)):
            raise ContractError("parts must be numbered 1..n without gaps")
        check_part_count(len(self.parts))
        if not all(isinstance(p.etag, str) and p.etag for p in self.parts):
            raise ContractError("every part needs its ETag")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ContractError("size must be a positive number of bytes")
        _check_sha256(self.sha256)
        check_key_id(self.key_id)
        check_chunk_size(self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": self.backup_id,
            "parts": [{"partNumber": p.number, "etag": p.etag} for p in self.parts],
            "size": self.size, "sha256": self.sha256, "keyId": self.key_id,
            "chunkSize": self.chunk_size, "formatVersion": self.format_version,
        }
        if self.plaintext_size is not None:
            doc["plaintextSize"] = self.plaintext_size
        if self.warnings:
            doc["warnings"] = self.warnings
        return doc

    @classmethod
    def from_json(cls, doc: object) -> BackupResult:
        result = _object(doc, "a backup result")
        try:
            parts = tuple(UploadedPart(_field(p, "partNumber", int), _field(p, "etag", str))
                          for p in _field(result, "parts", list))
        except (TypeError, AttributeError):
            raise ContractError("parts must be objects with partNumber and etag") from None
        return cls(backup_id=_field(result, "id", str), parts=parts,
                   size=_field(result, "size", int),
                   sha256=_field(result, "sha256", str).lower(),
                   key_id=_field(result, "keyId", str),
                   chunk_size=_field(result, "chunkSize", int),
                   format_version=_field(result, "formatVersion", int),
                   plaintext_size=_field(result, "plaintextSize", int, optional=True),
                   warnings=_field(result, "warnings", str, optional=True, default=""))


class JobState(StrEnum):
    """Where the agent's one backup job stands."""

    IDLE = "idle"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def _enum(doc: Mapping[str, Any], name: str, kind: type[StrEnum],
          default: StrEnum | None) -> Any:
    """doc[name] as a member of `kind`; required when there is no default."""
    value = _field(doc, name, str, optional=default is not None,
                   default=default.value if default is not None else None)
    try:
        return kind(value)
    except ValueError:
        raise ContractError(f"field {name!r} is not one of "
                            f"{', '.join(m.value for m in kind)}") from None


@dataclass(frozen=True)
class BackupJob:
    """GET /v1/backup. `result` is the raw BackupResult document (parsed at commit, so
    a malformed one fails the commit, not the poll); `progress` is informational."""

    state: JobState = JobState.IDLE
    backup_id: str | None = None
    error: str | None = None
    reason: str | None = None
    result: Mapping[str, Any] | None = None
    progress: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "id": self.backup_id, "error": self.error,
                "reason": self.reason,
                "result": dict(self.result) if self.result is not None else None,
                "progress": dict(self.progress) if self.progress is not None else None}

    @classmethod
    def from_json(cls, doc: object) -> BackupJob:
        job = _object(doc, "the backup job")
        return cls(state=_enum(job, "state", JobState, JobState.IDLE),
                   backup_id=_field(job, "id", str, optional=True),
                   error=_field(job, "error", str, optional=True),
                   reason=_field(job, "reason", str, optional=True),
                   result=_field(job, "result", Mapping, optional=True),
                   progress=_field(job, "progress", Mapping, optional=True))


# --- the pre-stop save (POST/GET /v1/save) -------------------------------------------------

MAX_SAVE_SECONDS = 600
MAX_SAVE_MESSAGE = 500


class SaveMode(StrEnum):
    COMMIT = "commit"
    COMMIT_AND_PUSH = "commit-and-push"


class SaveOutcome(StrEnum):
    SAVED = "saved"                      # a commit on a new WIP branch (pushed or not)
    NOTHING_TO_SAVE = "nothing-to-save"  # the working tree matches HEAD
    NO_REPOSITORY = "no-repository"      # no git repository where the clone would be
    FAILED = "failed"
    TIMED_OUT = "timed-out"              # the deadline passed before a commit was made


@dataclass(frozen=True)
class SaveRequest:
    """POST /v1/save: commit uncommitted work to a WIP branch within `timeout_seconds`."""

    save_id: str
    mode: SaveMode
    timeout_seconds: int
    reason: str = ""
    """Why the workspace stops (for the commit message), e.g. inactivity."""

    def __post_init__(self) -> None:
        if not isinstance(self.save_id, str) or not _BACKUP_ID.fullmatch(self.save_id):
            raise ContractError("the save id is 1..64 of [0-9A-Za-z._-]")
        _in_range(self.timeout_seconds, 1, MAX_SAVE_SECONDS, "timeoutSeconds")
        if not re.fullmatch(r"[a-z-]{0,32}", self.reason):
            raise ContractError("reason is 0..32 of [a-z-]")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.save_id, "mode": self.mode.value,
                "timeoutSeconds": self.timeout_seconds, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: object) -> SaveRequest:
        d = _object(doc, "the save request")
        return cls(save_id=_field(d, "id", str), mode=_enum(d, "mode", SaveMode, None),
                   timeout_seconds=_field(d, "timeoutSeconds", int),
                   reason=_field(d, "reason", str, optional=True, default=""))


@dataclass(frozen=True)
class SaveResult:
    """How a save ended. Messages carry no secret (the agent scrubs git's output)."""

    outcome: SaveOutcome
    message: str = ""
    branch: str | None = None
    commit: str | None = None
    pushed: bool = False
    push_error: str | None = None
    """Why a commit that was to be pushed was not."""

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "message": self.message,
                "branch": self.branch, "commit": self.commit, "pushed": self.pushed,
                "pushError": self.push_error}

    @classmethod
    def from_json(cls, doc: object) -> SaveResult:
        d = _object(doc, "the save result")
        return cls(outcome=_enum(d, "outcome", SaveOutcome, None),
                   message=_field(d, "message", str, optional=True, default="")
                   [:MAX_SAVE_MESSAGE],
                   branch=_field(d, "branch", str, optional=True),
                   commit=_field(d, "commit", str, optional=True),
                   pushed=_field(d, "pushed", bool, optional=True, default=False),
                   push_error=_field(d, "pushError", str, optional=True))


@dataclass(frozen=True)
class SaveJob:
    """GET /v1/save: the agent's one save job (`result` once it has ended)."""

    state: JobState = JobState.IDLE
    save_id: str | None = None
    result: SaveResult | None = None

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "id": self.save_id,
                "result": self.result.to_json() if self.result is not None else None}

    @classmethod
    def from_json(cls, doc: object) -> SaveJob:
        d = _object(doc, "the save job")
        result = d.get("result")
        return cls(state=_enum(d, "state", JobState, JobState.IDLE),
                   save_id=_field(d, "id", str, optional=True),
                   result=SaveResult.from_json(result) if result is not None else None)


# --- the status document ------------------------------------------------------------------

class BootStage(StrEnum):
    """The start sequence's stage. The VM's loader answers the first two, before the
    agent: AWAITING_CLAIM on a warm-pool server no workspace has claimed yet,
    AWAITING_AGENT until the operator delivers the agent bundle."""

    AWAITING_CLAIM = "awaiting-claim"
    AWAITING_AGENT = "awaiting-agent"
    WAITING_FOR_START = "waiting-for-start"
    RESTORING = "restoring"
    CLONING = "cloning"
    STARTING_DEVCONTAINER = "starting-devcontainer"
    READY = "ready"
    FAILED = "failed"

    @property
    def booting(self) -> bool:
        """Still on its way to ready (the operator polls again soon)."""
        return self in (BootStage.WAITING_FOR_START, BootStage.RESTORING, BootStage.CLONING,
                        BootStage.STARTING_DEVCONTAINER)


class RestoreState(StrEnum):
    NONE = "none"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


DEVCONTAINER_STATES = frozenset({"absent", "starting", "running", "failed", "refused",
                                 "simulated"})
DEVCONTAINER_POLICIES = frozenset({"generated", "restricted", "trusted"})


@dataclass(frozen=True)
class DevcontainerReport:
    state: str = "absent"
    message: str = ""
    policy: str | None = None  # None until the config is chosen
    removed: tuple[str, ...] = ()  # key paths the vetting took out (names, never values)

    def __post_init__(self) -> None:
        if self.state not in DEVCONTAINER_STATES:
            raise ContractError("devcontainer.state is not a known state")
        if self.policy is not None and self.policy not in DEVCONTAINER_POLICIES:
            raise ContractError("devcontainer.policy is not a known policy")

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "message": self.message, "policy": self.policy,
                "removed": list(self.removed)}

    @classmethod
    def from_json(cls, doc: object) -> DevcontainerReport:
        d = _object(doc, "devcontainer")
        return cls(state=_field(d, "state", str, optional=True, default="absent"),
                   message=_field(d, "message", str, optional=True, default=""),
                   policy=_field(d, "policy", str, optional=True),
                   removed=_strings(d, "removed"))


@dataclass(frozen=True)
class RestoreReport:
    state: RestoreState = RestoreState.NONE
    error: str | None = None
    reason: str | None = None  # one CamelCase word, for the BackupRestored condition

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "error": self.error, "reason": self.reason}

    @classmethod
    def from_json(cls, doc: object) -> RestoreReport:
        d = _object(doc, "restore")
        return cls(state=_enum(d, "state", RestoreState, RestoreState.NONE),
                   error=_field(d, "error", str, optional=True),
                   reason=_field(d, "reason", str, optional=True))


@dataclass(frozen=True)
class Activity:
    """The activity tracker's report (rules in docs/idle.md)."""

    agent_state: str  # working|waiting|idle|absent (an unknown one is kept, not refused)
    agent_state_since: datetime
    last_activity_time: datetime | None = None
    # Newest HTTP/web-terminal/SSH activity: the busy-agent guard looks only at this.
    last_user_activity_time: datetime | None = None
    reasons: tuple[str, ...] = ()
    malformed_hook_events: int = 0
    sessions: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.agent_state, str) or not self.agent_state:
            raise ContractError("activity.agentState must be a non-empty string")

    def to_json(self) -> dict[str, Any]:
        return {"agentState": self.agent_state,
                "agentStateSince": format_time(self.agent_state_since),
                "lastActivityTime": _maybe_time(self.last_activity_time),
                "lastUserActivityTime": _maybe_time(self.last_user_activity_time),
                "reasons": list(self.reasons),
                "malformedHookEvents": self.malformed_hook_events,
                "sessions": dict(self.sessions)}

    @classmethod
    def from_json(cls, doc: object) -> Activity:
        d = _object(doc, "activity")
        sessions = _field(d, "sessions", Mapping, optional=True, default={})
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in sessions.values()):
            raise ContractError("activity.sessions must map names to counts")
        since = _time(d, "agentStateSince", optional=False)
        assert since is not None
        return cls(agent_state=_field(d, "agentState", str), agent_state_since=since,
                   last_activity_time=_time(d, "lastActivityTime"),
                   last_user_activity_time=_time(d, "lastUserActivityTime"),
                   reasons=_strings(d, "reasons"),
                   malformed_hook_events=_field(d, "malformedHookEvents", int, optional=True,
                                                default=0),
                   sessions=dict(sessions))


def _maybe_time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


# --- token usage ----------------------------------------------------------------------

MAX_USAGE_MODELS = 32
MAX_RECENT_SESSIONS = 10
MODEL_NAME = re.compile(r"[0-9A-Za-z._:@/\[\]-]{1,128}")
"""A model name as usage reports carry it (others are summed under "other")."""


def _count(doc: Mapping[str, Any], name: str) -> int:
    value = _field(doc, name, int, optional=True, default=0)
    if value < 0:
        raise ContractError(f"field {name!r} must not be negative")
    return int(value)


@dataclass(frozen=True)
class TokenCounts:
    """Tokens of one kind of use, as the Messages API reports them in `usage`.

    cache_write is every cache write (cache_creation_input_tokens); cache_write_1h the
    part of it written with the one-hour lifetime, which is priced higher.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.input + other.input, self.output + other.output,
                           self.cache_read + other.cache_read,
                           self.cache_write + other.cache_write,
                           self.cache_write_1h + other.cache_write_1h)

    def to_json(self) -> dict[str, int]:
        return {"inputTokens": self.input, "outputTokens": self.output,
                "cacheReadTokens": self.cache_read, "cacheWriteTokens": self.cache_write,
                "cacheWrite1hTokens": self.cache_write_1h}

    @classmethod
    def from_json(cls, doc: object) -> TokenCounts:
        d = _object(doc, "token counts")
        return cls(input=_count(d, "inputTokens"), output=_count(d, "outputTokens"),
                   cache_read=_count(d, "cacheReadTokens"),
                   cache_write=_count(d, "cacheWriteTokens"),
                   cache_write_1h=_count(d, "cacheWrite1hTokens"))


@dataclass(frozen=True)
class SessionUsage:
    """One Claude Code session's tokens (all models)."""

    session_id: str
    tokens: TokenCounts
    last_model: str | None = None
    last_time: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.session_id, **self.tokens.to_json(), "lastModel": self.last_model,
                "lastTime": _maybe_time(self.last_time)}

    @classmethod
    def from_json(cls, doc: object) -> SessionUsage:
        d = _object(doc, "a session's usage")
        return cls(session_id=_field(d, "id", str), tokens=TokenCounts.from_json(d),
                   last_model=_field(d, "lastModel", str, optional=True),
                   last_time=_time(d, "lastTime"))


@dataclass(frozen=True)
class UsageReport:
    """Claude Code's token use on the VM, summed from its transcripts (GET /v1/status ->
    usage; docs/agent-protocol.md). `complete` is False while transcripts are still
    being read (after a start or restore): the sums are then partial."""

    sessions: int = 0
    models: Mapping[str, TokenCounts] = field(default_factory=dict)
    last_model: str | None = None
    last_time: datetime | None = None
    recent_sessions: tuple[SessionUsage, ...] = ()
    complete: bool = True

    def __post_init__(self) -> None:
        if len(self.models) > MAX_USAGE_MODELS or not all(
                isinstance(m, str) and MODEL_NAME.fullmatch(m) for m in self.models):
            raise ContractError(f"usage.models: at most {MAX_USAGE_MODELS} model names")
        if len(self.recent_sessions) > MAX_RECENT_SESSIONS:
            raise ContractError(f"usage.recentSessions: at most {MAX_RECENT_SESSIONS}")

    @property
    def totals(self) -> TokenCounts:
        total = TokenCounts()
        for counts in self.models.values():
            total = total + counts
        return total

    def to_json(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "totals": self.totals.to_json(),
                "models": {m: c.to_json() for m, c in sorted(self.models.items())},
                "lastModel": self.last_model, "lastTime": _maybe_time(self.last_time),
                "recentSessions": [s.to_json() for s in self.recent_sessions],
                "complete": self.complete}

    @classmethod
    def from_json(cls, doc: object) -> UsageReport:
        d = _object(doc, "usage")
        models = _field(d, "models", Mapping, optional=True, default={})
        recent = _field(d, "recentSessions", list, optional=True, default=[])
        return cls(sessions=_count(d, "sessions"),
                   models={str(m): TokenCounts.from_json(c) for m, c in models.items()},
                   last_model=_field(d, "lastModel", str, optional=True),
                   last_time=_time(d, "lastTime"),
                   recent_sessions=tuple(SessionUsage.from_json(s) for s in recent),
                   complete=_field(d, "complete", bool, optional=True, default=True))


@dataclass(frozen=True)
class AgentStatus:
    """GET /v1/status. The VM's loader answers with only version, simulated and
    bootStage (awaiting-claim with the pool class, or awaiting-agent): every other part
    has a default."""

    version: str
    boot_stage: BootStage
    simulated: bool = False
    boot_message: str = ""
    devcontainer: DevcontainerReport = field(default_factory=DevcontainerReport)
    ports: tuple[int, ...] = ()
    # None: the tracker has no report; the operator reads that as unknown, never idle.
    activity: Activity | None = None
    secrets_version: str | None = None
    restore: RestoreReport = field(default_factory=RestoreReport)
    backup_state: JobState = JobState.IDLE
    backup_id: str | None = None
    # None: an agent that does not read Claude Code's transcripts (older, or the loader).
    usage: UsageReport | None = None
    # The agent takes shareLinkKey and sessionKey in PUT /v1/secrets and linkPorts in
    # PUT /v1/config (older agents refuse fields they do not know).
    share_links: bool = False
    # The warm-pool class of a server waiting to be claimed (only the loader sends it).
    pool_class: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {
            "version": self.version, "simulated": self.simulated,
            "bootStage": self.boot_stage.value, "bootMessage": self.boot_message,
            "devcontainer": self.devcontainer.to_json(),
            "ports": sorted(set(self.ports)),
            "activity": self.activity.to_json() if self.activity is not None else None,
            "secrets": {"version": self.secrets_version,
                        **({"shareLinks": True} if self.share_links else {})},
            "restore": self.restore.to_json(),
            "backup": {"state": self.backup_state.value, "id": self.backup_id},
        }
        if self.usage is not None:  # older agents and the loader send none
            doc["usage"] = self.usage.to_json()
        if self.pool_class is not None:
            doc["pool"] = {"class": self.pool_class}
        return doc

    @classmethod
    def from_json(cls, doc: object) -> AgentStatus:
        d = _object(doc, "the status document")
        ports = _field(d, "ports", list, optional=True, default=[])
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in ports):
            raise ContractError("ports must be a list of port numbers")
        secrets = _object(d.get("secrets") or {}, "secrets")
        backup = _object(d.get("backup") or {}, "backup")
        activity = d.get("activity")
        usage = d.get("usage")
        pool = _object(d.get("pool") or {}, "pool")
        return cls(version=_field(d, "version", str),
                   boot_stage=_enum(d, "bootStage", BootStage, None),
                   simulated=_field(d, "simulated", bool, optional=True, default=False),
                   boot_message=_field(d, "bootMessage", str, optional=True, default=""),
                   devcontainer=DevcontainerReport.from_json(d.get("devcontainer") or {}),
                   ports=tuple(ports),
                   activity=Activity.from_json(activity) if activity is not None else None,
                   secrets_version=_field(secrets, "version", str, optional=True),
                   restore=RestoreReport.from_json(d.get("restore") or {}),
                   backup_state=_enum(backup, "state", JobState, JobState.IDLE),
                   backup_id=_field(backup, "id", str, optional=True),
                   usage=UsageReport.from_json(usage) if usage is not None else None,
                   share_links=_field(secrets, "shareLinks", bool, optional=True,
                                      default=False),
                   pool_class=_field(pool, "class", str, optional=True))
