"""The typed status of a Workspace (and of a WorkspaceClass), declared once.

The CRD's status schema is generated from these models (`api.crd`); the operator reads
and writes status only through them (`reconcile.status.StatusDraft`). Python names are
the snake_case of the API's camelCase names. Defaults here (None, empty lists) are the
"not set" of Python only: the generated schema carries no status defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.json_schema import JsonDict

from agentspaces.api.enums import (
    AgentState,
    ConditionStatus,
    DnsTarget,
    Phase,
    PreStopOutcome,
    StoppedBy,
    UrlState,
)
from agentspaces_vm.contracts import format_time, parse_time


def _parse(value: Any) -> Any:
    return parse_time(value) if isinstance(value, str) else value


Timestamp = Annotated[datetime, BeforeValidator(_parse),
                      PlainSerializer(format_time, return_type=str, when_used="json")]
"""A time as the API stores it: RFC 3339 UTC, second resolution."""

INT64: JsonDict = {"format": "int64"}
LIST_MAP: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


def list_map_of(key: str) -> JsonDict:
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class StatusModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore",
                              use_enum_values=False, validate_default=False)


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str = Field(description="Condition type.", max_length=64)
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str | None = Field(None, description="One CamelCase word.", max_length=128)
    message: str | None = Field(None, description="Human-readable detail.", max_length=4096)
    last_transition_time: Timestamp | None = Field(
        None, alias="lastTransitionTime", description="When status last changed.")
    observed_generation: int | None = Field(None, alias="observedGeneration",
                                            json_schema_extra=INT64)


class ServerStatus(StatusModel):
    """The Hetzner server, while one exists."""

    id: int | None = Field(None, json_schema_extra=INT64)
    name: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    type: str | None = None
    location: str | None = None
    created_at: Timestamp | None = Field(None, alias="createdAt")


class UrlsStatus(StatusModel):
    """Where to reach the workspace."""

    workspace: str | None = None
    ui: str | None = None
    ports: str | None = Field(None,
                              description="Pattern for port URLs; {port} is the port number.")
    state: UrlState | None = Field(
        None, description="live while running; gateway while stopped with its names at the "
        "wake gateway (opening the URL wakes it); stopped otherwise.")


class DnsRecordStatus(StatusModel):
    """One owned record."""

    id: str | None = None
    name: str | None = None
    type: str | None = None
    content: str | None = None


class DnsStatus(StatusModel):
    """Records the operator owns."""

    zone_id: str | None = Field(None, alias="zoneId")
    records: list[DnsRecordStatus] = Field(default_factory=list)
    target: DnsTarget | None = Field(None, description="What the address records point at: "
                                     "the Server, or the class's wake Gateway while stopped.")
    changed_at: Timestamp | None = Field(
        None, alias="changedAt", description="When the records last switched target; "
        "resolvers may use the old target for up to the class's dns.ttl after it.")


class ActivityStatus(StatusModel):
    """What the workspace agent last reported."""

    idle: bool | None = None
    idle_since: Timestamp | None = Field(None, alias="idleSince")
    last_activity_time: Timestamp | None = Field(None, alias="lastActivityTime")
    agent_state: AgentState | None = Field(None, alias="agentState",
                                           description="What the AI agent is doing.")
    agent_state_since: Timestamp | None = Field(None, alias="agentStateSince")
    reasons: list[str] = Field(default_factory=list, max_length=16)


class BackupStatus(StatusModel):
    """The last committed backup."""

    time: Timestamp | None = None
    object: str | None = None
    size: int | None = Field(None, json_schema_extra=INT64)
    sha256: str | None = None


class RestoreStatus(StatusModel):
    """The backup the running server was restored from."""

    object: str | None = None
    time: Timestamp | None = None
    prefix: str | None = Field(None, description="A retained workspace's backups to restore "
                               "from (agentspaces.dev/restore-from).")


class PreStopStatus(StatusModel):
    """The save before the last automatic stop (lifecycle.preStop)."""

    outcome: PreStopOutcome | None = None
    message: str | None = Field(None, max_length=1024)
    branch: str | None = Field(None, description="The WIP branch the work was committed to.")
    commit: str | None = None
    pushed: bool | None = Field(None, description="The branch reached the repository's "
                                "remote.")
    time: Timestamp | None = Field(None, description="When the outcome was recorded.")
    started_at: Timestamp | None = Field(None, alias="startedAt")
    id: str | None = Field(None, description="The agent's save job.")


class TokenCountsStatus(StatusModel):
    """Tokens by kind, as the Messages API reports them."""

    input_tokens: int | None = Field(None, alias="inputTokens", json_schema_extra=INT64)
    output_tokens: int | None = Field(None, alias="outputTokens", json_schema_extra=INT64)
    cache_read_tokens: int | None = Field(None, alias="cacheReadTokens",
                                          json_schema_extra=INT64)
    cache_write_tokens: int | None = Field(None, alias="cacheWriteTokens",
                                           json_schema_extra=INT64)


class ModelUsageStatus(TokenCountsStatus):
    """One model's tokens and their estimated cost."""

    model: str = Field(max_length=128)
    estimated_cost: str | None = Field(None, alias="estimatedCost",
                                       description="USD; unset when no price is known.")


class TokenUsageStatus(TokenCountsStatus):
    """Claude Code's token use, summed by the agent from the transcripts on the
    workspace, and its cost at the class's prices (docs/usage.md)."""

    sessions: int | None = Field(None, description="Claude Code sessions with usage.")
    total_tokens: int | None = Field(None, alias="totalTokens", json_schema_extra=INT64)
    last_model: str | None = Field(None, alias="lastModel", max_length=128)
    last_time: Timestamp | None = Field(None, alias="lastTime",
                                        description="The newest answer counted.")
    estimated_cost: str | None = Field(None, alias="estimatedCost",
                                       description="Decimal, in `currency`.")
    currency: str | None = Field(None, description="USD.")
    unpriced_models: list[str] = Field(
        default_factory=list, alias="unpricedModels", max_length=32,
        description="Models with tokens but no price: not in estimatedCost.")
    models: list[ModelUsageStatus] = Field(default_factory=list, max_length=32,
                                           json_schema_extra=list_map_of("model"))


class MoneyStatus(StatusModel):
    """An amount with and without VAT, as a decimal string."""

    net: str | None = None
    gross: str | None = None


class VmCostStatus(StatusModel):
    """What the workspace's servers cost at the Hetzner project's prices (GET /pricing:
    server type and primary IPv4), billed per started hour up to the monthly price."""

    currency: str | None = Field(None, description="The Hetzner project's currency.")
    server_type: str | None = Field(None, alias="serverType")
    location: str | None = None
    hourly: MoneyStatus | None = None
    monthly: MoneyStatus | None = Field(None, description="A month's cap.")
    server_id: int | None = Field(None, alias="serverId", json_schema_extra=INT64,
                                  description="The server billed now; unset while none.")
    run_started_at: Timestamp | None = Field(None, alias="runStartedAt",
                                             description="That server's creation.")
    previous: MoneyStatus | None = Field(None, description="Servers already deleted.")
    previous_hours: int | None = Field(None, alias="previousHours")
    billed_hours: int | None = Field(None, alias="billedHours")
    accrued: MoneyStatus | None = Field(None, description="All servers so far.")
    accrued_at: Timestamp | None = Field(None, alias="accruedAt",
                                         description="When accrued last changed.")
    summary: str | None = Field(None, description="accrued.net and the currency, for "
                                "kubectl.")
    month: str | None = Field(None, description="The month of monthPrevious (UTC), "
                                                "YYYY-MM.")
    month_previous: MoneyStatus | None = Field(
        None, alias="monthPrevious",
        description="Servers deleted in that month: their cost within it (a namespace's "
                    "WorkspaceQuota budget counts it).")


class AgentEndpointStatus(StatusModel):
    """How the operator reaches the workspace agent."""

    url: str | None = None
    certificate_sha256: str | None = Field(None, alias="certificateSHA256",
                                           description="Pinned agent certificate fingerprint.")


class ShareLinksStatus(StatusModel):
    """Which share-link annotations the operator has acted on (no link or key here)."""

    revoke_handled: str | None = Field(
        None, alias="revokeHandled", max_length=80,
        description="Last agentspaces.dev/revoke-share-links value acted on (longer "
        "values as a sha256 prefix).")
    create_handled: dict[str, str] = Field(
        default_factory=dict, alias="createHandled", max_length=64,
        description="Per port, the last agentspaces.dev/share-link.<port> value acted on.")


class WorkspaceStatus(StatusModel):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(None, alias="observedGeneration",
                                            json_schema_extra=INT64)
    phase: Phase | None = Field(None, description="Human summary derived from the conditions.")
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=LIST_MAP)
    hostname: str | None = Field(None, description="DNS label that names this workspace.")
    server: ServerStatus | None = None
    urls: UrlsStatus | None = None
    dns: DnsStatus | None = None
    activity: ActivityStatus | None = None
    backup: BackupStatus | None = None
    restore: RestoreStatus | None = None
    agent_endpoint: AgentEndpointStatus | None = Field(None, alias="agentEndpoint")
    pending_backup: dict[str, Any] | None = Field(
        None, alias="pendingBackup", description="The backup in flight (no secrets).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    started_at: Timestamp | None = Field(None, alias="startedAt")
    stopping_since: Timestamp | None = Field(None, alias="stoppingSince")
    pre_stop: PreStopStatus | None = Field(None, alias="preStop")
    stopped_at: Timestamp | None = Field(None, alias="stoppedAt")
    stopped_by: StoppedBy | None = Field(None, alias="stoppedBy",
                                         description="Why the workspace stopped.")
    wake_handled: str | None = Field(None, alias="wakeHandled", max_length=256,
                                     description="Last agentspaces.dev/wake value acted on.")
    secrets_version: str | None = Field(
        None, alias="secretsVersion",
        description="Hash of the secrets last delivered to the agent.")
    failed_agent_polls: int | None = Field(None, alias="failedAgentPolls")
    usage: TokenUsageStatus | None = None
    vm_cost: VmCostStatus | None = Field(None, alias="vmCost")
    share_links: ShareLinksStatus | None = Field(None, alias="shareLinks")

    def dump(self) -> dict[str, Any]:
        """The API's JSON form (camelCase, unset fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


PoolServerState = Literal["booting", "ready"]


class PoolServerStatus(StatusModel):
    """One warm-pool server."""

    name: str
    id: int = Field(json_schema_extra=INT64)
    state: PoolServerState = Field(
        description="booting: created, its loader not answering yet; ready: waiting for a "
                    "workspace to claim it.")
    created_at: Timestamp | None = Field(None, alias="createdAt")


class WarmPoolStatus(StatusModel):
    """The class's warm pool as last seen."""

    size: int = Field(description="spec.warmPool.size when last reconciled.")
    ready: int = 0
    booting: int = 0
    servers: list[PoolServerStatus] = Field(default_factory=list)
    hourly: MoneyStatus | None = Field(
        None, description="What the pool's servers cost per hour together (Hetzner "
                          "/pricing, IPv4 included), in the project's currency.")
    message: str | None = Field(None, description="Why the pool is short, when it is.")


class WorkspaceClassStatus(StatusModel):
    """Observed state of the class."""

    observed_generation: int | None = Field(None, alias="observedGeneration",
                                            json_schema_extra=INT64)
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra=LIST_MAP)
    warm_pool: WarmPoolStatus | None = Field(None, alias="warmPool")
