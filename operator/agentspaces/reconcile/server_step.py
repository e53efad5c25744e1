"""The Hetzner server of a workspace: find or create exactly one, and delete it.

Idempotence rules: the server name is the workspace's DNS label (deterministic) and
its labels carry the Workspace uid. Before creating we look the uid up; a
`uniqueness_error` (e.g. the create succeeded but the response was lost and hcloud
retried, or we restarted in between) means "look up by name and adopt it if the uid
matches", and a server at our name with another uid is never touched. The id goes to
status before anything else happens.

Status is not proof of ownership (anyone who may write it could point it elsewhere):
a server is used, kept or deleted only if its uid label is this Workspace's. One that is
not is refused, its id cleared from status and a ServerNotOurs condition and event say
why. Each new server gets fresh agent credentials, made just before its create call.
"""

from __future__ import annotations

from collections.abc import Callable

from agentspaces.api import conditions as C
from agentspaces.clouds.hetzner import (
    CloudError,
    CloudPermanent,
    CloudRateLimited,
    ServerInfo,
    ServerProvider,
    ServerRequest,
    workspace_labels,
)
from agentspaces.pki import AgentCredentials
from agentspaces.reconcile.owned_secrets import (
    bind_agent_credentials,
    credentials_for_new_server,
)
from agentspaces.reconcile.scope import Outcome, Scope
from agentspaces.reconcile.status import iso, parse_time

RATE_LIMIT_WAIT = 30.0
PERMANENT_WAIT = 300.0

# Hetzner error codes -> ServerReady reasons for errors a user must fix.
_PERMANENT_REASONS = {
    "invalid_input": C.INVALID_INPUT,
    "resource_limit_exceeded": C.RESOURCE_LIMIT_EXCEEDED,
    "server_type_not_found": C.SERVER_TYPE_NOT_FOUND,
    "invalid_server_type": C.SERVER_TYPE_NOT_FOUND,
    "location_not_found": C.LOCATION_NOT_FOUND,
    "image_not_found": C.IMAGE_NOT_FOUND,
    "unauthorized": C.CREDENTIALS_INVALID,
    "forbidden": C.CREDENTIALS_INVALID,
    "token_readonly": C.CREDENTIALS_INVALID,
}


def provider(scope: Scope) -> ServerProvider:
    assert scope.creds is not None
    return scope.runtime.servers(scope.creds.hetzner_token, scope.creds.klass.hetzner_endpoint)


def record_server(scope: Scope, server: ServerInfo) -> None:
    scope.status.update("server", id=server.id, name=server.name, ipv4=server.ipv4,
                        ipv6=server.ipv6, type=server.server_type, location=server.location,
                        createdAt=server.created)


def cloud_failure(scope: Scope, condition: str, err: CloudError, what: str) -> Outcome:
    """Record a cloud error on `condition` and pick the requeue delay."""
    if isinstance(err, CloudRateLimited):
        scope.status.condition(condition, False, C.RATE_LIMITED,
                               f"{what}: provider rate limit reached, retrying")
        return Outcome.after(RATE_LIMIT_WAIT, "rate limited")
    if isinstance(err, CloudPermanent):
        reason = _PERMANENT_REASONS.get(err.code, C.CLOUD_API_ERROR)
        scope.status.condition(condition, False, reason, f"{what}: {err.message}")
        if reason == C.CREDENTIALS_INVALID:
            scope.status.condition(C.CREDENTIALS_AVAILABLE, False, C.CREDENTIALS_INVALID,
                                   f"{what}: the API token was refused ({err.code})")
        scope.emit("Warning", reason, f"{what}: {err.message}")
        return Outcome.after(PERMANENT_WAIT, err.code)
    scope.status.condition(condition, False, C.CLOUD_API_ERROR, f"{what}: {err.message}")
    return Outcome.after(scope.runtime.settings.boot_poll * 2, "transient cloud error")


def refuse_foreign(scope: Scope, server: ServerInfo) -> None:
    """Status named a server that is not this workspace's: forget it, touch nothing."""
    message = (f"status named server {server.id} ({server.name}), which does not carry this "
               "workspace's uid label; it is left alone and the id was cleared")
    scope.status.set("server", None)
    scope.status.set("dns", None)
    scope.status.set("secretsVersion", None)
    scope.status.set("agentEndpoint", None)
    scope.status.condition(C.SERVER_READY, False, C.SERVER_NOT_OURS, message)
    scope.emit("Warning", C.SERVER_NOT_OURS, message)


async def _adopt_or_create(scope: Scope, render_user_data: Callable[[AgentCredentials], str]
                           ) -> ServerInfo | Outcome:
    assert scope.creds is not None
    servers = provider(scope)
    ours = await servers.find_by_uid(scope.ref.uid)
    if ours:
        ours.sort(key=lambda s: s.id)
        keep, extra = ours[0], ours[1:]
        for duplicate in extra:  # labelled with our uid: ours to clean up
            scope.emit("Warning", "DuplicateServer",
                       f"deleting duplicate server {duplicate.id} ({duplicate.name})")
            await servers.delete(duplicate.id)
        scope.emit("Normal", C.SERVER_ADOPTED, f"adopted server {keep.id} ({keep.name})")
        await bind_agent_credentials(scope, keep.id)
        return keep

    spec = scope.creds.spec
    fresh = await credentials_for_new_server(scope)
    request = ServerRequest(
        name=scope.label, server_type=spec.server.type, location=spec.server.location,
        image=spec.server.image,
        labels=workspace_labels(scope.ref.uid, scope.ref.name, scope.ref.namespace,
                                scope.creds.klass.name),
        user_data=render_user_data(fresh))
    try:
        created = await servers.create(request)
    except CloudPermanent as err:
        if err.code != "uniqueness_error":
            raise
        existing = await servers.find_by_name(scope.label)
        if existing is not None and existing.workspace_uid == scope.ref.uid:
            scope.emit("Normal", C.SERVER_ADOPTED, f"adopted server {existing.id} after a "
                       "lost create response")
            await bind_agent_credentials(scope, existing.id)
            return existing
        scope.status.condition(
            C.SERVER_READY, False, C.SERVER_NAME_TAKEN,
            f"a server named {scope.label} exists and does not belong to this workspace")
        scope.emit("Warning", C.SERVER_NAME_TAKEN, f"server name {scope.label} is taken")
        return Outcome.after(PERMANENT_WAIT, "name taken")
    scope.emit("Normal", "ServerCreated", f"created server {created.id} ({created.name})")
    await bind_agent_credentials(scope, created.id)
    return created


async def ensure_server(scope: Scope, render_user_data: Callable[[AgentCredentials], str]
                        ) -> ServerInfo | Outcome:
    """A running server for the workspace, or the Outcome to wait for."""
    assert scope.creds is not None
    servers = provider(scope)
    status = scope.status
    server_id = status.get("server", "id")

    try:
        if server_id is not None and status.is_true(C.SERVER_READY):
            cached = await _from_inventory(scope, int(server_id))
            if cached is not None:
                return cached
            # Missing from a fresh inventory: confirm with one GET before recreating.
            current = await servers.get(int(server_id))
        elif server_id is not None:
            current = await servers.get(int(server_id))
        else:
            found = await _adopt_or_create(scope, render_user_data)
            if isinstance(found, Outcome):
                return found
            record_server(scope, found)
            status.condition(C.SERVER_READY, False, C.SERVER_CREATING,
                             f"server {found.id} is {found.status}")
            # Write the id to status before doing anything else with the server.
            return Outcome.after(min(2.0, scope.runtime.settings.boot_poll), "server recorded")
    except CloudError as err:
        return cloud_failure(scope, C.SERVER_READY, err, "server")

    if current is not None and current.workspace_uid != scope.ref.uid:
        refuse_foreign(scope, current)
        return Outcome.after(1.0, "server in status is not ours")
    if current is None:
        scope.emit("Warning", C.SERVER_MISSING,
                   f"server {server_id} disappeared outside the operator; recreating")
        status.set("server", None)
        status.set("dns", None)
        status.set("secretsVersion", None)
        status.condition(C.SERVER_READY, False, C.SERVER_MISSING,
                         f"server {server_id} no longer exists; a new one will be created")
        return Outcome.after(1.0, "server missing")
    record_server(scope, current)
    if current.status != "running" or not current.ipv4:
        status.condition(C.SERVER_READY, False, C.SERVER_STARTING,
                         f"server {current.id} is {current.status}")
        return Outcome.after(scope.runtime.settings.boot_poll, "server starting")
    if not status.is_true(C.SERVER_READY):
        status.set("startedAt", iso(scope.runtime.clock()))
    status.condition(C.SERVER_READY, True, C.SERVER_RUNNING,
                     f"server {current.id} running at {current.ipv4}")
    return current


async def _from_inventory(scope: Scope, server_id: int) -> ServerInfo | None:
    """The server from the shared inventory, or None if a fresh list lacks it."""
    assert scope.creds is not None
    inventory = scope.runtime.inventory(scope.creds.hetzner_token,
                                        scope.creds.klass.hetzner_endpoint)
    fetched, servers = await inventory.snapshot()
    if server_id in servers:
        listed = servers[server_id]
        # Not ours: None sends the caller to its GET, which refuses it.
        return listed if listed.workspace_uid == scope.ref.uid else None
    created = parse_time(scope.status.get("server", "createdAt"))
    if fetched is None or (created is not None and fetched <= created):
        # The list predates the server; trust status until the next inventory.
        return _status_server(scope)
    return None


def _status_server(scope: Scope) -> ServerInfo:
    s = scope.status.get("server") or {}
    return ServerInfo(id=int(s["id"]), name=s.get("name", ""), status="running",
                      ipv4=s.get("ipv4"), ipv6=s.get("ipv6"), server_type=s.get("type", ""),
                      location=s.get("location", ""), created=s.get("createdAt"))


async def delete_server(scope: Scope) -> Outcome | None:
    """Delete the workspace's server(s) and wait until gone; None when none is left.
    Only servers labelled with this workspace's uid are ever deleted."""
    servers = provider(scope)
    status = scope.status
    try:
        server_id = status.get("server", "id")
        targets: list[ServerInfo] = []
        if server_id is not None:
            current = await servers.get(int(server_id))
            if current is not None and current.workspace_uid != scope.ref.uid:
                refuse_foreign(scope, current)
                return Outcome.after(1.0, "server in status is not ours")
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
                scope.emit("Normal", C.SERVER_DELETED, f"deleting server {current.id}")
    except CloudError as err:
        return cloud_failure(scope, C.SERVER_READY, err, "server delete")
    if remaining:
        status.condition(C.SERVER_READY, False, "Deleting",
                         f"waiting for server {remaining[0].id} to be deleted")
        return Outcome.after(scope.runtime.settings.boot_poll, "server deleting")
    status.set("server", None)
    return None


# --- step contract -------------------------------------------------------------------

async def reconcile(scope: Scope) -> Outcome | None:
    """A running server on `scope.server`, or the Outcome to wait for."""
    from agentspaces.vmconfig.userdata import UserDataTooLarge, render_user_data

    try:
        server = await ensure_server(scope, lambda fresh: render_user_data(
            scope.ref, scope.spec, scope.klass, host=scope.host, agent_credentials=fresh))
    except UserDataTooLarge as err:
        # Rendered just before the create call: nothing was created.
        if scope.status.reason(C.SERVER_READY) != C.USER_DATA_TOO_LARGE:
            scope.emit("Warning", C.USER_DATA_TOO_LARGE, str(err))
        scope.status.condition(C.SERVER_READY, False, C.USER_DATA_TOO_LARGE, str(err))
        return Outcome.after(scope.runtime.settings.poll_interval * 10,
                             C.USER_DATA_TOO_LARGE)
    if isinstance(server, Outcome):
        return server
    scope.server = server
    return None


async def delete(scope: Scope) -> Outcome | None:
    return await delete_server(scope)
