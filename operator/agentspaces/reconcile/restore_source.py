"""Which retained backups a new Workspace may restore (`agentspaces.dev/restore-from`).

The annotation names a key Secret in the Workspace's own namespace; that Secret says
where the backups are (`agentspaces.dev/backup-prefix`). Namespace users can create
Secrets with any labels and annotations, so the prefix is checked, not trusted: it
must be the backup prefix of a workspace of this namespace under the class's storage
prefix, and the Secret must carry the labels the operator puts on a retained key. The
wrapped data key must open with the class key, which a namespace user cannot forge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentspaces.kube import SecretData
from agentspaces.persistence import keys

BACKUP_PREFIX_ANNOTATION = "agentspaces.dev/backup-prefix"
# What the operator sets on a key Secret it keeps for a deleted Workspace.
RETAINED_KEY_LABELS = {"app.kubernetes.io/managed-by": "agentspaces",
                       "agentspaces.dev/role": "backup-key",
                       "agentspaces.dev/retained": "true"}
# "<name>-<uid>/", the last part of backups.BackupLocation.for_workspace.
_WORKSPACE_PART = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}"
    r"-[0-9a-f]{12}/$")


@dataclass(frozen=True)
class RetainedSource:
    prefix: str
    data_key: keys.DataKey


@dataclass(frozen=True)
class Refused:
    why: str


def check(secret: SecretData | None, source: str, namespace: str, storage_prefix: str,
          class_key: bytes) -> RetainedSource | Refused:
    """The backups `source` may be restored from, or why not (never raises)."""
    where = f"Secret {namespace}/{source}"
    if secret is None:
        return Refused(f"{where} not found")
    missing = sorted(k for k, v in RETAINED_KEY_LABELS.items() if secret.labels.get(k) != v)
    if missing:
        return Refused(f"{where} is not a retained backup key (labels {', '.join(missing)} "
                       "are not the operator's)")
    prefix = secret.annotations.get(BACKUP_PREFIX_ANNOTATION, "")
    own = f"{storage_prefix}{namespace}/"
    if not prefix.startswith(own) or not _WORKSPACE_PART.match(prefix[len(own):]):
        return Refused(f"{where}: backup prefix {prefix!r} is not a workspace's backups in "
                       f"namespace {namespace} (expected {own}<name>-<uid>/)")
    try:
        data_key = keys.open_data_key(class_key, keys.decode_key_secret(secret.data))
    except (keys.ClassKeyMismatch, keys.InvalidKey) as err:
        return Refused(f"{where}: the class key does not open its data key "
                       f"({type(err).__name__})")
    return RetainedSource(prefix, data_key)
