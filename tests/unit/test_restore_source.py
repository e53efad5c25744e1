"""restore-from: only a retained key of this namespace, pointing at a workspace's
backups of this namespace, opened by the class key."""

from __future__ import annotations

import os

import pytest

from agentspaces.kube import SecretData
from agentspaces.persistence import keys
from agentspaces.reconcile.restore_source import (
    BACKUP_PREFIX_ANNOTATION,
    RETAINED_KEY_LABELS,
    Refused,
    RetainedSource,
    check,
)

CLASS_KEY = os.urandom(32)
UID = "0b1c2d3e-aaaa-bbbb-cccc-1234567890ab"
OWN_PREFIX = f"agentspaces/team-a/keeper-{UID}/"


def _retained(prefix: str, labels: dict[str, str] | None = None,
              class_key: bytes = CLASS_KEY) -> SecretData:
    _, wrapped = keys.create_data_key(class_key)
    return SecretData(data=keys.encode_key_secret(wrapped), resource_version="1",
                      owner_uids=(), labels=RETAINED_KEY_LABELS if labels is None else labels,
                      annotations={BACKUP_PREFIX_ANNOTATION: prefix})


def test_a_retained_key_of_this_namespace_is_accepted() -> None:
    result = check(_retained(OWN_PREFIX), "keeper-backup-key", "team-a", "agentspaces/",
                   CLASS_KEY)
    assert isinstance(result, RetainedSource) and result.prefix == OWN_PREFIX


@pytest.mark.parametrize(("prefix", "labels", "class_key", "why"), [
    (f"agentspaces/team-b/victim-{UID}/", None, CLASS_KEY, "not a workspace's backups"),
    ("agentspaces/", None, CLASS_KEY, "not a workspace's backups"),
    ("", None, CLASS_KEY, "not a workspace's backups"),
    ("other-app/secrets/", None, CLASS_KEY, "not a workspace's backups"),
    (f"agentspaces/team-a/../team-b/victim-{UID}/", None, CLASS_KEY,
     "not a workspace's backups"),
    (f"agentspaces/team-a/x-{UID}/../../team-b/", None, CLASS_KEY,
     "not a workspace's backups"),
    (OWN_PREFIX, {}, CLASS_KEY, "not a retained backup key"),
    (OWN_PREFIX, None, os.urandom(32), "the class key does not open"),
], ids=["other-namespace", "whole-bucket", "empty", "foreign-prefix", "dot-dot",
        "trailing-escape", "hand-made-secret", "foreign-key"])
def test_anything_else_is_refused_with_the_reason(prefix: str, labels: dict[str, str] | None,
                                                  class_key: bytes, why: str) -> None:
    result = check(_retained(prefix, labels, class_key), "keeper-backup-key", "team-a",
                   "agentspaces/", CLASS_KEY)
    assert isinstance(result, Refused) and why in result.why
    assert "team-a/keeper-backup-key" in result.why


def test_a_missing_secret_is_refused() -> None:
    result = check(None, "nope", "team-a", "agentspaces/", CLASS_KEY)
    assert isinstance(result, Refused) and "not found" in result.why
