"""The status vocabulary: phases, who stopped a workspace, condition types and reasons.

Reasons are one CamelCase word (Kubernetes API conventions). Members that share a
value (e.g. the NameTaken of a server, a DNS name and a firewall) are aliases.
"""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """A human summary derived from the conditions."""

    PENDING = "Pending"
    CREATING = "Creating"
    STARTING = "Starting"
    RUNNING = "Running"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    DELETING = "Deleting"
    FAILED = "Failed"


class StoppedBy(StrEnum):
    USER = "user"
    INACTIVITY = "inactivity"
    LIFETIME = "lifetime"


class AgentState(StrEnum):
    """What the AI agent is doing, as the workspace agent reports it."""

    WORKING = "working"
    WAITING = "waiting"
    IDLE = "idle"
    ABSENT = "absent"
    UNKNOWN = "unknown"


class PreStopOutcome(StrEnum):
    """How the save before an automatic stop ended (status.preStop.outcome)."""

    RUNNING = "Running"
    SAVED = "Saved"                  # a commit on a WIP branch; `pushed` says if it left
    NOTHING_TO_SAVE = "NothingToSave"
    SKIPPED = "Skipped"              # not asked for, not an automatic stop, no repository
    FAILED = "Failed"
    TIMED_OUT = "TimedOut"


class UrlState(StrEnum):
    LIVE = "live"
    STOPPED = "stopped"
    GATEWAY = "gateway"  # stopped; its names point at the wake gateway, opening it wakes it


class DnsTarget(StrEnum):
    """Where a workspace's address records point (status.dns.target)."""

    SERVER = "Server"
    GATEWAY = "Gateway"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    READY = "Ready"
    ACCEPTED = "Accepted"
    CREDENTIALS_AVAILABLE = "CredentialsAvailable"
    SERVER_READY = "ServerReady"
    DNS_READY = "DNSReady"
    AGENT_READY = "AgentReady"
    BACKUP_SUCCEEDED = "BackupSucceeded"
    BACKUP_RESTORED = "BackupRestored"
    IDLE = "Idle"
    DEVCONTAINER_RESTRICTED = "DevcontainerRestricted"
    # Set only while the class restricts the agent port (agent.sourceRanges).
    FIREWALL_READY = "FirewallReady"

    @classmethod
    def initial(cls) -> tuple[ConditionType, ...]:
        """The conditions set to Unknown on the first visit, so `kubectl get -o yaml`
        always shows them."""
        return tuple(t for t in cls if t is not cls.FIREWALL_READY)


class Reason(StrEnum):
    FIRST_VISIT = "Reconciling"

    # CredentialsAvailable
    CLASS_NOT_FOUND = "ClassNotFound"
    CLASS_INVALID = "ClassInvalid"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_MISSING = "SecretKeyMissing"
    CREDENTIALS_INVALID = "CredentialsInvalid"
    CREDENTIALS_FOUND = "CredentialsFound"
    SECRET_CONFLICT = "SecretConflict"  # a Secret at one of the workspace's names is not ours
    INVALID_CA_BUNDLE = "InvalidCaBundle"  # the class's trust.caBundle does not parse

    # Accepted: NotAllowedByClass and ClassNotAllowed (the namespace may not use the
    # class) keep a server from being created; ReservedPort only leaves the port
    # unpublished.
    SPEC_ACCEPTED = "Accepted"
    NOT_ALLOWED_BY_CLASS = "NotAllowedByClass"
    CLASS_NOT_ALLOWED = "ClassNotAllowed"
    RESERVED_PORT = "ReservedPort"

    # ServerReady
    SERVER_CREATING = "Creating"
    SERVER_STARTING = "Starting"
    SERVER_RUNNING = "Running"
    SERVER_ADOPTED = "Adopted"
    SERVER_NAME_TAKEN = "NameTaken"
    SERVER_TYPE_NOT_FOUND = "ServerTypeNotFound"
    LOCATION_NOT_FOUND = "LocationNotFound"
    IMAGE_NOT_FOUND = "ImageNotFound"
    INVALID_INPUT = "InvalidInput"
    RESOURCE_LIMIT_EXCEEDED = "ResourceLimitExceeded"
    USER_DATA_TOO_LARGE = "UserDataTooLarge"
    RATE_LIMITED = "RateLimited"
    WAITING_FOR_CLOUD_BUDGET = "WaitingForCloudBudget"  # clouds/budget.py refused a call
    # A namespace's WorkspaceQuota holds a start back (reconcile/quota.py).
    QUOTA_EXCEEDED = "QuotaExceeded"
    BUDGET_EXCEEDED = "BudgetExceeded"
    CLOUD_API_ERROR = "CloudAPIError"
    SERVER_DELETED = "ServerDeleted"
    SERVER_DELETING = "Deleting"
    SERVER_MISSING = "ServerMissing"
    SERVER_NOT_OURS = "ServerNotOurs"  # status named a server without this workspace's uid
    STOPPED = "Stopped"

    # DNSReady
    DNS_RECORDS_READY = "RecordsReady"
    DNS_NAME_TAKEN = "NameTaken"
    DNS_ZONE_NOT_FOUND = "ZoneNotFound"
    DNS_WAITING_FOR_SERVER = "WaitingForServer"
    DNS_RECORDS_REMOVED = "RecordsRemoved"
    DNS_AT_GATEWAY = "PointsAtGateway"  # stopped: the names lead to the wake gateway

    # FirewallReady
    FIREWALL_APPLIED = "Applied"
    FIREWALL_NAME_TAKEN = "NameTaken"
    FIREWALL_NOT_CONFIGURED = "NotConfigured"

    # AgentReady
    AGENT_BOOTING = "Booting"
    AGENT_READY = "AgentReady"
    AGENT_UNREACHABLE = "Unreachable"
    AGENT_CERTIFICATE_MISMATCH = "CertificateMismatch"
    AGENT_SIMULATED = "Simulated"
    DEVCONTAINER_REFUSED = "DevcontainerRefused"
    BOOT_FAILED = "BootFailed"

    # DevcontainerRestricted: True when keys of the repository's devcontainer.json were
    # removed because the class does not trust the repository.
    KEYS_REMOVED = "KeysRemoved"
    NOTHING_REMOVED = "NothingRemoved"
    REPOSITORY_TRUSTED = "RepositoryTrusted"
    NOT_FROM_REPOSITORY = "NotFromRepository"

    # BackupSucceeded / BackupRestored
    BACKUP_DONE = "BackupCompleted"
    BACKUP_FAILED = "BackupFailed"
    BACKUP_DISABLED = "PersistenceDisabled"
    NO_BACKUP = "NoBackup"
    RESTORED = "Restored"
    RESTORE_FAILED = "RestoreFailed"
    BACKUP_TAMPERED = "BackupCorrupt"
    MANIFEST_TAMPERED = "BackupTampered"  # a manifest fails its MAC or workspace binding
    BACKUP_ROLLED_BACK = "BackupRolledBack"  # the newest backup is older than status.backup
    WRONG_KEY = "WrongKey"
    DATA_KEY_MISSING = "DataKeyMissing"
    RESTORE_SOURCE_REFUSED = "RestoreSourceRefused"

    # Idle
    ACTIVE = "Active"
    AGENT_WORKING = "AgentWorking"
    IDLE_TIMEOUT = "IdleTimeout"
    BUSY_CAP_EXCEEDED = "AgentBusyCapExceeded"
    LIFETIME_EXCEEDED = "LifetimeExceeded"

    # Events of the pre-stop save (status.preStop has the details)
    PRE_STOP_SAVED = "PreStopSaved"
    PRE_STOP_SKIPPED = "PreStopSkipped"
    PRE_STOP_FAILED = "PreStopFailed"

    # Ready summary
    READY = "WorkspaceReady"
    NOT_RUNNING = "Stopped"
    PROGRESSING = "Progressing"
