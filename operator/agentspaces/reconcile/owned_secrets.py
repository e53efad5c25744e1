"""Secrets a Workspace owns: its access password and keys, and its agent credentials.

They are generated once, stored in Secrets owned by the Workspace (garbage-collected
with it) and read back on every reconcile, so an operator restart never regenerates
them. `<name>-access` is for the user (`kubectl get secret <name>-access`): the
password, the share-link key (share_link_step rotates it to revoke every link) and
the session key that signs browser sessions on the VM and the wake gateway.
`<name>-agent` holds the agent's TLS key, pinned certificate and bearer token and is
only for the operator.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets as pysecrets
from dataclasses import dataclass, field

from agentspaces.api.share_links import KEY_FIELD, SESSION_KEY_FIELD
from agentspaces.kube import SecretData
from agentspaces.pki import AgentCredentials, generate
from agentspaces.reconcile.scope import Scope
from agentspaces.reconcile.secret_ownership import (
    KEPT_UNTIL_FINALIZED,
    ours_or_none,
    workspace_labels,
)
from agentspaces.reconcile.share_link_step import reconcile as act_on_share_links
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.share_links import decode_key, new_key

ACCESS_SUFFIX = "access"
AGENT_SUFFIX = "agent"
ACCESS_USERNAME = "agent"


@dataclass(frozen=True)
class Access:
    username: str
    password: str
    scrypt_hash: str  # what the VM checks passwords against (agentspaces_vm.password_hash)
    share_link_key: str = field(default="", repr=False)
    session_key: str = field(default="", repr=False)


async def ensure(scope: Scope) -> None:
    """Both Secrets, read back or created, on the scope for the steps after
    (`scope.access`, `scope.agent_credentials`), after the share-link annotations are
    acted on (a new link key goes out with this reconcile's delivery). Raises
    SecretConflict when a Secret at one of the names is someone else's."""
    await ensure_access_and_share_links(scope)
    scope.agent_credentials = await ensure_agent_credentials(scope)


async def ensure_access_and_share_links(scope: Scope) -> Access:
    """The access Secret (on `scope.access`) once the share-link annotations are acted
    on; also for a stopped workspace, whose links the wake gateway checks against it."""
    access = await ensure_access(scope)
    scope.access = await act_on_share_links(scope, access, scope.secret_name(ACCESS_SUFFIX))
    return scope.access


async def ensure_access(scope: Scope) -> Access:
    kube = scope.runtime.kube
    name = scope.secret_name(ACCESS_SUFFIX)
    secret = await _ours_or_none(scope, name)
    if secret is None or not secret.data.get("password"):
        password = pysecrets.token_urlsafe(18)
        secret = await kube.create_secret(
            scope.ref.namespace, name,
            {"username": ACCESS_USERNAME, "password": password,
             **await _hash_fields(password), **_new_keys({})},
            scope.owner, workspace_labels(scope, "access"))
    data = dict(secret.data)
    missing_keys = _new_keys(data)
    # A user may rotate the password by editing the Secret: rehash when the cheap
    # fingerprint no longer matches (scrypt itself is too slow to check every poll).
    # (A Secret from before scrypt gets its scryptHash here; its old bcryptHash stays,
    # unused: the update merges, and nothing reads that field any more.)
    if data.get("passwordSha256") != _fingerprint(data["password"]) or not data.get(
            "scryptHash"):
        data.update(await _hash_fields(data["password"]))
        data.update(missing_keys)
        await kube.replace_secret_data(scope.ref.namespace, name, data)
    elif missing_keys:  # a Secret from before share links, or a key a user emptied
        data.update(missing_keys)
        await kube.replace_secret_data(scope.ref.namespace, name, data)
    return Access(username=data.get("username") or ACCESS_USERNAME,
                  password=data["password"], scrypt_hash=data["scryptHash"],
                  share_link_key=data[KEY_FIELD], session_key=data[SESSION_KEY_FIELD])


def _new_keys(data: dict[str, str]) -> dict[str, str]:
    """Fresh keys for those of the two that `data` lacks (or holds unusable)."""
    return {name: new_key() for name in (KEY_FIELD, SESSION_KEY_FIELD)
            if decode_key(data.get(name) or "") is None}


async def _ours_or_none(scope: Scope, name: str) -> SecretData | None:
    """The Secret if it belongs to this Workspace; a leftover of a deleted namesake is
    removed, and anyone else's raises SecretConflict (see secret_ownership)."""
    return await ours_or_none(scope, name, role=name.removeprefix(scope.secret_name("")))


def _fingerprint(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


async def _hash_fields(password: str) -> dict[str, str]:
    hashed = await asyncio.to_thread(hash_password, password)
    return {"scryptHash": hashed, "passwordSha256": _fingerprint(password)}


async def ensure_agent_credentials(scope: Scope) -> AgentCredentials:
    kube = scope.runtime.kube
    name = scope.secret_name(AGENT_SUFFIX)
    secret = await _ours_or_none(scope, name)
    if secret is not None:
        try:
            return AgentCredentials.from_secret_data(dict(secret.data))
        except (KeyError, ValueError):
            pass  # unreadable: replace below; the VM gets new ones with its next boot
    creds = generate(scope.host, scope.runtime.clock())
    if secret is None:
        created = await kube.create_secret(scope.ref.namespace, name, creds.to_secret_data(),
                                           scope.owner, workspace_labels(scope, "agent"),
                                           finalizers=KEPT_UNTIL_FINALIZED)
        return AgentCredentials.from_secret_data(dict(created.data))
    await kube.replace_secret_data(scope.ref.namespace, name, creds.to_secret_data())
    return creds


SERVER_KEY = "serverId"
"""In `<name>-agent`: the server the stored credentials belong to; absent until the
server they were made for exists."""


async def credentials_for_new_server(scope: Scope) -> AgentCredentials:
    """Credentials for a server about to be created: always fresh, so no key, certificate
    or token is shared by two servers. Only stored ones bound to no server yet are
    reused: they were made for a create whose answer may have been lost, and that server
    (adopted later) runs with them."""
    kube = scope.runtime.kube
    name = scope.secret_name(AGENT_SUFFIX)
    secret = await _ours_or_none(scope, name)
    if secret is not None and not secret.data.get(SERVER_KEY):
        try:
            return AgentCredentials.from_secret_data(dict(secret.data))
        except (KeyError, ValueError):
            pass  # unreadable: replaced below
    creds = generate(scope.host, scope.runtime.clock())
    # The data is merged into the Secret, so the old binding is cleared explicitly.
    data = {**creds.to_secret_data(), SERVER_KEY: ""}
    if secret is None:
        await kube.create_secret(scope.ref.namespace, name, data, scope.owner,
                                 workspace_labels(scope, "agent"),
                                 finalizers=KEPT_UNTIL_FINALIZED)
    else:
        await kube.replace_secret_data(scope.ref.namespace, name, data)
    return creds


async def bind_agent_credentials(scope: Scope, server_id: int) -> None:
    """Record that the stored credentials are `server_id`'s, so the next server gets new
    ones. Credentials already bound (to this or another server) are left as they are."""
    name = scope.secret_name(AGENT_SUFFIX)
    secret = await _ours_or_none(scope, name)
    if secret is None or secret.data.get(SERVER_KEY):
        return
    await scope.runtime.kube.replace_secret_data(
        scope.ref.namespace, name, {**dict(secret.data), SERVER_KEY: str(server_id)})


async def adopt_agent_credentials(scope: Scope, creds: AgentCredentials,
                                  server_id: int) -> None:
    """Store a warm-pool server's credentials as this workspace's, bound to that server
    (before the server is relabelled as ours: a claim cut short leaves credentials bound
    to a server that is not ours, which the next create replaces)."""
    kube = scope.runtime.kube
    name = scope.secret_name(AGENT_SUFFIX)
    data = {**creds.to_secret_data(), SERVER_KEY: str(server_id)}
    if await _ours_or_none(scope, name) is None:
        await kube.create_secret(scope.ref.namespace, name, data, scope.owner,
                                 workspace_labels(scope, "agent"),
                                 finalizers=KEPT_UNTIL_FINALIZED)
    else:
        await kube.replace_secret_data(scope.ref.namespace, name, data)
    scope.agent_credentials = creds
