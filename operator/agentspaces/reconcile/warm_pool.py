"""A WorkspaceClass's warm pool: `spec.warmPool.size` servers booted to the agent's
loader with no workspace, user secret or repository on them; a new workspace that boots
what the pool boots takes one (`claim`, from the server step) and the pool refills.

Each pool server's agent credentials are made before its create and kept in a Secret of
the operator's namespace, owned by the class (`pool_policy.secret_name`), bound to the
server's id once it exists, as a workspace's are. A claim copies them into the
workspace's own agent Secret, then renames and relabels the server in one Hetzner
request: from then on it is the workspace's (its uid label) and the agent step tells the
loader whose it is (`PUT /v1/claim`). Claims and visits of one class take one lock, and
only a server whose loader answered "awaiting-claim" on the last visit is offered, so
no server is handed out twice within this process; peering keeps a second operator
from acting at the same time. docs/warm-pool.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from agentspaces import metrics
from agentspaces.agent_client import AgentError, AgentUnreachable
from agentspaces.api.model import CLASS_KIND, GROUP, VERSION
from agentspaces.api.status import MoneyStatus, PoolServerStatus, WarmPoolStatus
from agentspaces.api.types import ServerSettings, WorkspaceClass
from agentspaces.clouds.errors import CloudError
from agentspaces.clouds.hetzner import (
    ServerInfo,
    ServerProvider,
    ServerRequest,
    class_label,
    workspace_labels,
)
from agentspaces.kube import KubeError, Owner, SecretData
from agentspaces.pki import AgentCredentials, CredentialsError, generate
from agentspaces.reconcile import boot_image
from agentspaces.reconcile import pool_policy as policy
from agentspaces.reconcile.credentials import CredentialsProblem, class_hetzner_token
from agentspaces.reconcile.owned_secrets import SERVER_KEY, adopt_agent_credentials
from agentspaces.reconcile.scope import Scope
from agentspaces.runtime import PoolState, Runtime
from agentspaces.vmconfig.userdata import render_pool_user_data
from agentspaces_vm.contracts import BootStage

log = logging.getLogger(__name__)

Emit = Callable[[str, str, str], None]
POLL_FILLING = 10.0
"""While a pool server boots: how soon it is looked at again."""
POLL_STEADY = 60.0
RETRY_PROBLEM = 60.0
SECRET_LABEL = "agentspaces.dev/pool"


def _pool_key(server_id: int) -> str:
    return f"pool:{server_id}"


def _secret_owner(klass: WorkspaceClass, uid: str) -> Owner:
    return Owner(api_version=f"{GROUP}/{VERSION}", kind=CLASS_KIND, name=klass.name, uid=uid)


def _credentials(secret: SecretData | None, server_id: int) -> AgentCredentials | None:
    """The credentials in a slot's Secret if they are `server_id`'s."""
    if secret is None or secret.data.get(SERVER_KEY) != str(server_id):
        return None
    try:
        return AgentCredentials.from_secret_data(dict(secret.data))
    except CredentialsError:
        return None


async def visit(rt: Runtime, body: Mapping[str, Any], emit: Emit, *,
                deleting: bool = False) -> float | None:
    """One pass over the class's pool (every server of it when `deleting`), its status
    written when it changed; the delay until the next pass, None when there is none."""
    meta = body.get("metadata") or {}
    name, uid = str(meta.get("name", "")), str(meta.get("uid", ""))
    before = (body.get("status") or {}).get("warmPool")
    status: WarmPoolStatus | None
    delay: float | None
    try:
        klass = WorkspaceClass.from_body(body)
    except ValueError as err:
        if before is None:
            return None
        status, delay = WarmPoolStatus(size=0, message=f"class invalid: {err}"[:1024]), \
            RETRY_PROBLEM
    else:
        size = 0 if deleting else klass.warm_pool_size
        if size == 0 and before is None and not deleting:
            return None  # never had a pool: no Hetzner call
        async with rt.pools.setdefault(name, PoolState()).lock:
            status, delay = await _reconcile(rt, klass, uid, size, emit)
    if not deleting:
        await _write_status(rt, name, status, before)
    if delay is None:
        rt.pools.pop(name, None)
    return delay


async def _write_status(rt: Runtime, name: str, status: WarmPoolStatus | None,
                        before: object) -> None:
    after = status.model_dump(mode="json", by_alias=True, exclude_none=True) \
        if status is not None else None
    if name in rt.pools:
        rt.pools[name].status = status
    if after != before:
        await rt.kube.patch_workspace_class_status(name, {"warmPool": after})


async def _reconcile(rt: Runtime, klass: WorkspaceClass, uid: str, size: int, emit: Emit
                     ) -> tuple[WarmPoolStatus | None, float | None]:
    token = await class_hetzner_token(rt.kube, klass, rt.settings.namespace)
    if isinstance(token, CredentialsProblem):
        if size == 0:  # servers to delete, and no way to reach them
            emit("Warning", "PoolCleanupBlocked",
                 f"{token.message}: cannot delete the warm pool's servers; retrying "
                 "(remove the finalizer to leave them)")
        return WarmPoolStatus(size=size, message=token.message), RETRY_PROBLEM
    cloud = rt.servers(token, klass.hetzner_endpoint)
    state = rt.pools[klass.name]
    image, _ = await boot_image.class_image(rt.kube, klass, token)
    want = image or klass.server
    try:
        listed = await cloud.find_by_selector(policy.selector(klass.name))
        secrets = await _slot_secrets(rt, klass, listed)
        ready, unusable = await _probe(rt, klass, listed, secrets)
        plan = policy.plan(klass.name, size, want, want.image, listed, ready, rt.clock(),
                           unusable)
        for server in plan.delete:
            await cloud.delete(server.id)
            emit("Normal", "PoolServerDeleted", f"warm-pool server {server.id} "
                 f"({server.name}) deleted: {plan.reasons[server.id]}")
            rt.forget(_pool_key(server.id))
            slot = policy.slot_of(klass.name, server)
            if slot is not None and slot not in plan.keep:
                await _drop_secret(rt, klass, slot)
        created = [await _create(rt, cloud, klass, uid, want, slot, emit)
                   for slot in plan.create]
    except (CloudError, KubeError) as err:
        log.warning("warm pool of %s: %s", klass.name, err)
        return WarmPoolStatus(size=size, message=f"cannot reach the pool: {err}"[:1024]), \
            RETRY_PROBLEM
    state.ready = ready & {s.id for s in plan.keep.values()}
    servers = [*plan.keep.values(), *(s for s in created if s is not None)]
    if size == 0 and not servers:
        return None, None
    status = WarmPoolStatus(
        size=size, ready=len(state.ready), booting=len(servers) - len(state.ready),
        servers=[PoolServerStatus(name=s.name, id=s.id, created_at=s.created,
                                  state="ready" if s.id in state.ready else "booting")
                 for s in sorted(servers, key=lambda s: s.name)],
        hourly=await _hourly(rt, token, klass, servers))
    short = size - len(servers)
    if short > 0:
        status.message = f"{short} server(s) still to create"
    filling = min(POLL_FILLING, rt.settings.pool_interval)
    return status, filling if short > 0 or status.booting else POLL_STEADY


async def _slot_secrets(rt: Runtime, klass: WorkspaceClass, listed: list[ServerInfo]
                        ) -> dict[int, SecretData | None]:
    slots = {s for s in (policy.slot_of(klass.name, x) for x in listed) if s is not None}
    return {slot: await rt.kube.read_secret(rt.settings.namespace,
                                            policy.secret_name(klass.name, slot))
            for slot in sorted(slots)}


async def _probe(rt: Runtime, klass: WorkspaceClass, listed: list[ServerInfo],
                 secrets: Mapping[int, SecretData | None]) -> tuple[set[int], dict[int, str]]:
    """Which servers' loaders wait for a claim; which can never be claimed, and why."""
    unusable: dict[int, str] = {}
    asks: list[tuple[ServerInfo, AgentCredentials]] = []
    for server in listed:
        slot = policy.slot_of(klass.name, server)
        if slot is None or server.status == "deleting":
            continue
        creds = _credentials(secrets.get(slot), server.id)
        if creds is None:
            unusable[server.id] = "its agent credentials are gone"
        elif server.status == "running" and server.ipv4:
            asks.append((server, creds))

    async def waiting(server: ServerInfo, creds: AgentCredentials) -> int | None:
        client = rt.agent_client(_pool_key(server.id),
                                 f"https://{server.ipv4}:{klass.agent_port}",
                                 creds.token, creds.cert_pem)
        try:
            async with rt.agent_slots:
                doc = await client.agent_status()
        except (AgentError, AgentUnreachable):
            return None
        except Exception as err:  # a certificate mismatch and the like: not claimable
            log.info("warm-pool server %s: %s", server.id, type(err).__name__)
            return None
        if doc.boot_stage is BootStage.AWAITING_CLAIM:
            return server.id
        unusable[server.id] = f"its loader reports {doc.boot_stage}, not awaiting-claim"
        return None

    answers = await asyncio.gather(*(waiting(s, c) for s, c in asks))
    return {i for i in answers if i is not None}, unusable


async def _create(rt: Runtime, cloud: ServerProvider, klass: WorkspaceClass, uid: str,
                  want: ServerSettings, slot: int, emit: Emit) -> ServerInfo | None:
    """Slot `slot`'s server, with credentials made (or reused: a create whose answer
    was lost) before the create call and bound to it after."""
    namespace, secret = rt.settings.namespace, policy.secret_name(klass.name, slot)
    name = policy.slot_name(klass.name, slot)
    stored = await rt.kube.read_secret(namespace, secret)
    creds: AgentCredentials | None = None
    if stored is not None and not stored.data.get(SERVER_KEY):
        try:
            creds = AgentCredentials.from_secret_data(dict(stored.data))
        except CredentialsError:
            creds = None
    if creds is None:
        creds = generate(name, rt.clock())
        data = {**creds.to_secret_data(), SERVER_KEY: ""}
        if stored is None:
            await rt.kube.create_secret(namespace, secret, data, _secret_owner(klass, uid),
                                        {SECRET_LABEL: class_label(klass.name)})
        else:
            await rt.kube.replace_secret_data(namespace, secret, data)
    request = ServerRequest(
        name=name, server_type=want.type, location=want.location, image=want.image,
        labels=policy.labels(klass.name, slot, want.image),
        user_data=render_pool_user_data(klass, want, agent_credentials=creds))
    try:
        server = await cloud.create(request)
    except CloudError as err:
        if err.code != "uniqueness_error":
            raise
        existing = await cloud.find_by_name(name)
        if existing is None or policy.slot_of(klass.name, existing) != slot:
            emit("Warning", "PoolNameTaken", f"a server named {name} exists and is not this "
                 "pool's: slot {slot} stays empty")
            return None
        server = existing
    else:
        emit("Normal", "PoolServerCreated", f"warm-pool server {server.id} ({name}) created")
    await rt.kube.replace_secret_data(namespace, secret,
                                      {**creds.to_secret_data(), SERVER_KEY: str(server.id)})
    return server


async def _drop_secret(rt: Runtime, klass: WorkspaceClass, slot: int) -> None:
    await rt.kube.delete_secret(rt.settings.namespace, policy.secret_name(klass.name, slot))


async def _hourly(rt: Runtime, token: str, klass: WorkspaceClass,
                  servers: list[ServerInfo]) -> MoneyStatus | None:
    try:
        prices = await rt.prices(token, klass.hetzner_endpoint).get()
    except CloudError:
        return None
    if prices is None or not servers:
        return None
    total = None
    for server in servers:
        price = prices.server(server.server_type, server.location, ipv4=True)
        if price is None:
            return None
        total = price.hourly if total is None else total + price.hourly
    return None if total is None else MoneyStatus(net=str(total.net), gross=str(total.gross))


# -- claim (from the server step) -------------------------------------------------------

async def claim(scope: Scope) -> ServerInfo | None:
    """A ready server of the class's pool, now this workspace's; None when the class has
    no pool, the workspace boots something else or no server is ready."""
    klass, spec = scope.klass, scope.spec
    if klass.warm_pool_size == 0 or klass.namespaced or \
            not policy.claimable(klass.server, spec.server, spec.own_image):
        return None
    runtime = scope.runtime
    state = runtime.pools.get(klass.name)
    if state is None or not state.ready:
        return None
    cloud = runtime.servers(scope.creds.hetzner_token, klass.hetzner_endpoint)
    async with state.lock:
        for server_id in sorted(state.ready):
            state.ready.discard(server_id)  # offered once, whatever happens next
            server = await cloud.get(server_id)
            slot = policy.slot_of(klass.name, server) if server is not None else None
            if server is None or slot is None or \
                    (server.server_type, server.location) != (spec.server.type,
                                                              spec.server.location):
                continue  # claimed meanwhile, or of the class's previous settings
            creds = _credentials(await runtime.kube.read_secret(
                runtime.settings.namespace, policy.secret_name(klass.name, slot)), server_id)
            if creds is None:
                continue
            await adopt_agent_credentials(scope, creds, server_id)
            try:
                claimed = await cloud.relabel(
                    server_id, scope.label,
                    workspace_labels(scope.ref.uid, scope.ref.name, scope.ref.namespace,
                                     klass.label_name))
            except CloudError as err:
                if err.code == "uniqueness_error":
                    return None  # the create path says the name is taken
                raise
            runtime.forget(_pool_key(server_id))
            runtime.inventory(scope.creds.hetzner_token, klass.hetzner_endpoint).note(claimed)
            await _claimed(runtime, klass.name, state, server_id)
            metrics.SERVER_BOOTS.labels("pool").inc()
            scope.emit("Normal", "PoolClaim", f"claimed warm-pool server {server_id} "
                       f"({server.name})")
            return claimed
    return None


async def _claimed(runtime: Runtime, class_name: str, state: PoolState,
                   server_id: int) -> None:
    """The class status without the claimed server (the next visit refills its slot)."""
    last = state.status
    if not isinstance(last, WarmPoolStatus):
        return
    now = last.model_copy(deep=True)
    now.servers = [s for s in now.servers if s.id != server_id]
    now.ready = sum(1 for s in now.servers if s.state == "ready")
    now.booting = len(now.servers) - now.ready
    now.message = f"{now.size - len(now.servers)} server(s) to create after a claim"
    try:
        await _write_status(runtime, class_name, now,
                            last.model_dump(mode="json", by_alias=True, exclude_none=True))
    except KubeError as err:  # the claim stands; the next visit writes status again
        log.warning("warm pool of %s: status after a claim: %s", class_name, err)
