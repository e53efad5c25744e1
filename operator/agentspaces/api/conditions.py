"""Condition types and reasons: the whole status vocabulary in one place.

Reasons are one CamelCase word (Kubernetes API conventions). Every condition is set
to Unknown on the first visit so `kubectl get -o yaml` always shows all of them.
"""

from __future__ import annotations

# --- types ---------------------------------------------------------------------------
READY = "Ready"
CREDENTIALS_AVAILABLE = "CredentialsAvailable"
SERVER_READY = "ServerReady"
DNS_READY = "DNSReady"
AGENT_READY = "AgentReady"
BACKUP_SUCCEEDED = "BackupSucceeded"
BACKUP_RESTORED = "BackupRestored"
IDLE = "Idle"

ALL_TYPES = (READY, CREDENTIALS_AVAILABLE, SERVER_READY, DNS_READY, AGENT_READY,
             BACKUP_SUCCEEDED, BACKUP_RESTORED, IDLE)

# --- reasons -------------------------------------------------------------------------
FIRST_VISIT = "Reconciling"

# CredentialsAvailable
CLASS_NOT_FOUND = "ClassNotFound"
CLASS_INVALID = "ClassInvalid"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_KEY_MISSING = "SecretKeyMissing"
CREDENTIALS_INVALID = "CredentialsInvalid"
CREDENTIALS_FOUND = "CredentialsFound"

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
RATE_LIMITED = "RateLimited"
CLOUD_API_ERROR = "CloudAPIError"
SERVER_DELETED = "ServerDeleted"
SERVER_MISSING = "ServerMissing"
STOPPED = "Stopped"

# DNSReady
DNS_RECORDS_READY = "RecordsReady"
DNS_NAME_TAKEN = "NameTaken"
DNS_ZONE_NOT_FOUND = "ZoneNotFound"
DNS_WAITING_FOR_SERVER = "WaitingForServer"
DNS_RECORDS_REMOVED = "RecordsRemoved"

# AgentReady
AGENT_BOOTING = "Booting"
AGENT_READY_REASON = "AgentReady"
AGENT_UNREACHABLE = "Unreachable"
AGENT_CERTIFICATE_MISMATCH = "CertificateMismatch"
AGENT_SIMULATED = "Simulated"

# BackupSucceeded / BackupRestored
BACKUP_DONE = "BackupCompleted"
BACKUP_FAILED = "BackupFailed"
BACKUP_DISABLED = "PersistenceDisabled"
NO_BACKUP = "NoBackup"
RESTORED = "Restored"
RESTORE_FAILED = "RestoreFailed"
BACKUP_TAMPERED = "BackupCorrupt"
WRONG_KEY = "WrongKey"
DATA_KEY_MISSING = "DataKeyMissing"

# Idle
ACTIVE = "Active"
AGENT_WORKING = "AgentWorking"
IDLE_TIMEOUT = "IdleTimeout"
BUSY_CAP_EXCEEDED = "AgentBusyCapExceeded"
LIFETIME_EXCEEDED = "LifetimeExceeded"

# Ready summary
READY_REASON = "WorkspaceReady"
NOT_RUNNING = "Stopped"
PROGRESSING = "Progressing"
