"""The Hetzner server of a workspace: find or create exactly one, and delete it.

Idempotence rules: the server name is the workspace's DNS label (deterministic) and
its labels carry the Workspace uid. Before creating we look the uid up; a
`uniqueness_error` (e.g. the create succeeded but the response was lost and hcloud
retried, or we restarted in between) means "look up by name and adopt it if the uid
matches", and a server at our name with another uid is never touched. The id goes to
status before anything else happens. A workspace whose class keeps a warm pool takes a
ready server of it instead of creating one, when it boots what the pool boots
(reconcile/warm_pool.py).

Status is not proof of ownership (anyone who may write it could point it elsewhere):
a server is used, kept or deleted only if its uid label is this Workspace's. One that is
not is refused, its id cleared from status and a ServerNotOurs condition and event say
why. Each new server gets fresh agent credentials, made just before its create call.
"""

from __future__ import annotations

from dataclasses import replace

from agentspaces.api.enums import ConditionType as T
from agentspaces.api.enums import Reason
from agentspaces.api.status import ServerStatus
from agentspaces.clouds.errors import CloudError
from agentspaces.clouds.hetzner import (
    ServerInfo,
    ServerProvider,
    ServerRequest,
    workspace_labels,
)
from agentspaces.reconcile import boot_image, warm_pool
from agentspaces.reconcile.outcome import Outcome, Wait, cloud_failure
from agentspaces.reconcile.owned_secrets import (
    bind_agent_credentials,
    credentials_for_new_server,
)
from agentspaces.reconcile.scope import Scope
from agentspaces.runtime import ServerInventory
from agentspaces.vmconfig.userdata import UserDataTooLarge, render_user_data


def provider(scope: Scope) -> ServerProvider:
    return scope.runtime.servers(scope.creds.hetzner_token, scope.klass.hetzner_endpoint)


def record_server(scope: Scope, server: ServerInfo) -> None:
    scope.status.server = ServerStatus(
        id=server.id, name=server.name, ipv4=server.ipv4, ipv6=server.ipv6,
        type=server.server_type, location=server.location, created_at=server.created)


def refuse_foreign(scope: Scope, server: ServerInfo) -> None:
    """Status named a server that is not this workspace's: forget it, touch nothing."""
    message = (f"status named server {server.id} ({server.name}), which does not carry this "
               "workspace's uid label; it is left alone and the id was cleared")
    status = scope.status
    status.server = None
    status.dns = None
    status.secrets_version = None
    status.agent_endpoint = None
    status.condition(T.SERVER_READY, False, Reason.SERVER_NOT_OURS, message)
    scope.emit("Warning", Reason.SERVER_NOT_OURS, message)


async def _adopt_or_create(scope: Scope) -> ServerInfo | Outcome:
    servers = provider(scope)
    ours = await servers.find_by_uid(scope.ref.uid)
    if ours:
        ours.sort(key=lambda s: s.id)
        keep, extra = ours[0], ours[1:]
        for duplicate in extra:  # labelled with our uid: ours to clean up
            scope.emit("Warning", "DuplicateServer",
                       f"deleting duplicate server {duplicate.id} ({duplicate.name})")
            await servers.delete(duplicate.id)
        scope.emit("Normal", Reason.SERVER_ADOPTED, f"adopted server {keep.id} ({keep.name})")
        await bind_agent_credentials(scope, keep.id)
        return keep

    claimed = await warm_pool.claim(scope)
    if claimed is not None:
        return claimed
    spec = replace(scope.spec, server=await boot_image.server_settings(scope))
    fresh = await credentials_for_new_server(scope)
    request = ServerRequest(
        name=scope.label, server_type=spec.server.type, location=spec.server.location,
        image=spec.server.image,
        labels=workspace_labels(scope.ref.uid, scope.ref.name, scope.ref.namespace,
                                scope.klass.label_name),
        user_data=render_user_data(scope.ref, spec, scope.klass, host=scope.host,
                                   agent_credentials=fresh))
    try:
        created = await servers.create(request)
    except CloudError as err:
        if err.code != "uniqueness_error":
            raise
        existing = await servers.find_by_name(scope.label)
        if existing is not None and existing.workspace_uid == scope.ref.uid:
            scope.emit("Normal", Reason.SERVER_ADOPTED, f"adopted server {existing.id} "
                       "after a lost create response")
            await bind_agent_credentials(scope, existing.id)
            return existing
        scope.status.condition(
            T.SERVER_READY, False, Reason.SERVER_NAME_TAKEN,
            f"a server named {scope.label} exists and does not belong to this workspace")
        scope.emit("Warning", Reason.SERVER_NAME_TAKEN, f"server name {scope.label} is taken")
        return Outcome.after(Wait.PERMANENT, "name taken")
    scope.emit("Normal", "ServerCreated", f"created server {created.id} ({created.name})")
    await bind_agent_credentials(scope, created.id)
    return created


async def reconcile(scope: Scope) -> Outcome | None:
    """A running server on `scope.server`, or the Outcome to wait for."""
    try:
        found = await _find_or_create(scope)
    except CloudError as err:
        return cloud_failure(scope, T.SERVER_READY, err, "server")
    except UserDataTooLarge as err:
        # Rendered just before the create call: nothing was created.
        if scope.status.reason(T.SERVER_READY) != Reason.USER_DATA_TOO_LARGE:
            scope.emit("Warning", Reason.USER_DATA_TOO_LARGE, str(err))
        scope.status.condition(T.SERVER_READY, False, Reason.USER_DATA_TOO_LARGE, str(err))
        polls = Wait.USER_DATA_TOO_LARGE_POLLS
        return Outcome.after(scope.runtime.settings.poll_interval * polls,
                             Reason.USER_DATA_TOO_LARGE)
    if isinstance(found, Outcome):
        return found
    scope.server = found
    return None


async def _find_or_create(scope: Scope) -> ServerInfo | Outcome:
    servers = provider(scope)
    status = scope.status
    server_id = status.server.id if status.server is not None else None
    boot_poll = scope.runtime.settings.boot_poll

    if server_id is not None and status.is_true(T.SERVER_READY):
        inventory = scope.runtime.inventory(scope.creds.hetzner_token,
                                            scope.klass.hetzner_endpoint)
        cached = await _from_inventory(scope, inventory, server_id)
        if cached is not None:
            return cached
        # Missing from a fresh inventory: confirm with one GET before recreating.
        current = await servers.get(server_id)
        if current is not None and current.workspace_uid == scope.ref.uid:
            inventory.confirm(current)
    elif server_id is not None:
        current = await servers.get(server_id)
    else:
        found = await _adopt_or_create(scope)
        if isinstance(found, Outcome):
            return found
        record_server(scope, found)
        status.condition(T.SERVER_READY, False, Reason.SERVER_CREATING,
                         f"server {found.id} is {found.status}")
        # Write the id to status before doing anything else with the server.
        return Outcome.after(min(Wait.RECORDED, boot_poll), "server recorded")

    if current is not None and current.workspace_uid != scope.ref.uid:
        refuse_foreign(scope, current)
        return Outcome.after(Wait.REFUSED_SERVER, "server in status is not ours")
    if current is None:
        scope.emit("Warning", Reason.SERVER_MISSING,
                   f"server {server_id} disappeared outside the operator; recreating")
        status.server = None
        status.dns = None
        status.secrets_version = None
        status.condition(T.SERVER_READY, False, Reason.SERVER_MISSING,
                         f"server {server_id} no longer exists; a new one will be created")
        return Outcome.after(Wait.REFUSED_SERVER, "server missing")
    record_server(scope, current)
    if current.status != "running" or not current.ipv4:
        status.condition(T.SERVER_READY, False, Reason.SERVER_STARTING,
                         f"server {current.id} is {current.status}")
        return Outcome.after(boot_poll, "server starting")
    if not status.is_true(T.SERVER_READY):
        status.started_at = scope.now()
    status.condition(T.SERVER_READY, True, Reason.SERVER_RUNNING,
                     f"server {current.id} running at {current.ipv4}")
    return current


async def _from_inventory(scope: Scope, inventory: ServerInventory,
                          server_id: int) -> ServerInfo | None:
    """The server from the shared inventory, or None if a fresh list lacks it."""
    fetched, servers = await inventory.snapshot()
    if server_id in servers:
        listed = servers[server_id]
        # Not ours: None sends the caller to its GET, which refuses it.
        return listed if listed.workspace_uid == scope.ref.uid else None
    recorded = scope.status.server
    assert recorded is not None  # the caller read server_id from it
    if fetched is None or (recorded.created_at is not None
                           and fetched <= recorded.created_at):
        # The list predates the server; trust status until the next inventory.
        return ServerInfo(id=server_id, name=recorded.name or "", status="running",
                          ipv4=recorded.ipv4, ipv6=recorded.ipv6,
                          server_type=recorded.type or "", location=recorded.location or "",
                          created=recorded.created_at)
    return None


async def delete(scope: Scope) -> Outcome | None:
    """Delete the workspace's server(s) and wait until gone; None when none is left.
    Only servers labelled with this workspace's uid are ever deleted."""
    servers = provider(scope)
    status = scope.status
    server_id = status.server.id if status.server is not None else None
    try:
        targets: list[ServerInfo] = []
        if server_id is not None:
            current = await servers.get(server_id)
            if current is not None and current.workspace_uid != scope.ref.uid:
                refuse_foreign(scope, current)
                return Outcome.after(Wait.REFUSED_SERVER, "server in status is not ours")
            targets = [current] if current is not None else []
        else:
            targets = await servers.find_by_uid(scope.ref.uid)
        remaining = []
        for current in targets:
            if current.workspace_uid != scope.ref.uid:
                continue  # never touch what is not ours
            remaining.append(current)
            if current.status != "deleting":
                await servers.delete(current.id)
                scope.emit("Normal", Reason.SERVER_DELETED, f"deleting server {current.id}")
    except CloudError as err:
        return cloud_failure(scope, T.SERVER_READY, err, "server delete")
    if remaining:
        status.condition(T.SERVER_READY, False, Reason.SERVER_DELETING,
                         f"waiting for server {remaining[0].id} to be deleted")
        return Outcome.after(scope.runtime.settings.boot_poll, "server deleting")
    status.server = None
    return None
