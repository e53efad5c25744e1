"""The Workspace and WorkspaceClass specs, each field declared once.

One pydantic declaration per field gives its type, default, validation and
description. The operator parses the apiserver's JSON through these models (and the
typed views in `api.types` are built from them); `api.crd` walks the same models to
emit the CRDs' structural OpenAPI schema, so admission and parsing cannot drift.

Fields a Workspace inherits from its class have no default here on the Workspace side:
the class model carries the default, and the CEL rules that compare a class's own
settings with its limits read those defaults from the class model.

Schema metadata pydantic has no word for travels as Annotated markers (`Cel`,
`DurationAtLeast`) or as `json_schema_extra` (list types, int64 formats).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict
from pydantic_core import CoreSchema, core_schema

from agentspaces.api.durations import parse_duration

GROUP = "agentspaces.dev"
VERSION = "v1alpha1"
OPERATOR_FINALIZER = f"{GROUP}/finalizer"
"""Kopf's finalizer on Workspaces and NamespacedWorkspaceClasses (handlers.py)."""
IN_USE_FINALIZER = f"{GROUP}/in-use"
"""On a Secret a cleanup needs: kept until the Workspaces using it are gone."""
API_VERSION = f"{GROUP}/{VERSION}"

# Go-style durations as accepted by CEL's duration(): "90s", "30m", "1h30m".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
HTTP_URL_PATTERN = r"^https?://"
# https://host/path, ssh://git@host/path or scp-style git@host:path
REPOSITORY_URL_PATTERN = (
    r"^(https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+"
    r"|ssh://[A-Za-z0-9._-]+@[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/-]+"
    r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._~/-]+)$"
)
# Hetzner server type names: cx23, cpx32, cax11, ccx13 ... The live list is checked
# at reconcile time (ServerTypeNotFound); the pattern catches typos at admission.
SERVER_TYPE_PATTERN = r"^(cx|cpx|cax|ccx)[0-9]{2,3}$"
# The OS images the VM's user-data is written for (vmconfig.osprofile has one profile
# per name). An image is one of these names or a numeric id (a snapshot or backup in
# the project), which boots with the profile its class names in server.osProfile.
OsProfileName = Literal["ubuntu-24.04", "debian-13"]
OS_PROFILES: tuple[str, ...] = get_args(OsProfileName)
NUMERIC_IMAGE_PATTERN = r"^[0-9]+$"
IMAGE_PATTERN = ("^(" + "|".join(name.replace(".", r"\.") for name in OS_PROFILES)
                 + "|[0-9]+)$")
SSH_KEY_PATTERN = (
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521"
    r"|sk-ssh-ed25519@openssh.com|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/=]+( .*)?$"
)
# Ports the VM's own services listen on (SSH, Caddy's HTTP/HTTPS and admin API, the
# CloudCLI UI, the agent's local listener and its default API port): publishing one
# would expose that service, so admission refuses them. vmconfig.claude.reserved_ports
# adds the class's own ports, which the operator checks (a test keeps both in step).
RESERVED_PORTS = (22, 80, 443, 2019, 3001, 9180, 9443)
RESERVED_PORTS_MESSAGE = ("ports " + ", ".join(map(str, RESERVED_PORTS))
                          + " are the VM's own services and cannot be published")
# The owner's text that travels in the VM's user-data (Hetzner: at most 32 KiB, of
# which the fixed files take about 20). Admission refuses more than this in total; a
# spec that still does not fit (text that compresses badly) is reported by the
# operator as UserDataTooLarge, and no server is created.
USER_TEXT_BUDGET = 10240
# A WorkspaceClass's extra CA certificates (spec.trust.caBundle): PEM, at most this many
# characters. They reach the VM over the agent's channel, not in the user-data.
CA_BUNDLE_LIMIT = 65536
WARM_POOL_MAX = 20
"""Servers one class keeps waiting: each is billed, and Hetzner caps servers per project."""
PEM_CERTIFICATE_BEGIN = "-----BEGIN CERTIFICATE-----"


# -- schema markers -------------------------------------------------------------------

@dataclass(frozen=True)
class Cel:
    """A CEL rule the apiserver checks at admission (`x-kubernetes-validations`)."""

    rule: str
    message: str

    def schema(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}


@dataclass(frozen=True)
class DurationAtLeast:
    """A Go duration no shorter than `minimum`: a CEL rule at admission and the same
    check when the operator parses the object."""

    minimum: str

    @property
    def cel(self) -> Cel:
        return Cel(f"duration(self) >= duration('{self.minimum}')",
                   f"must be a duration of at least {self.minimum}, e.g. 30m or 1h30m")

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        floor = parse_duration(self.minimum)

        def check(text: str) -> str:
            if parse_duration(text) < floor:
                raise ValueError(f"{text!r} is shorter than {self.minimum}")
            return text

        return core_schema.no_info_after_validator_function(check, handler(source))


def list_map(*keys: str) -> JsonDict:
    """A list the apiserver merges by these keys (server-side apply)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


LIST_SET: JsonDict = {"x-kubernetes-list-type": "set"}


class ApiModel(BaseModel):
    # camelCase on the wire, snake_case in Python; the apiserver prunes unknown fields,
    # so ignoring extras only matters for hand-made dicts in tests.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True,
                              extra="ignore", frozen=True)

    cel_rules: ClassVar[tuple[Cel, ...]] = ()
    """Object-level CEL rules (`x-kubernetes-validations` on the object)."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Self:
        """Validate the API's JSON; a ValueError names every offending field."""
        try:
            return cls.model_validate(dict(raw or {}))
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in e['loc']) or '(object)'}: {e['msg']}"
                for e in err.errors())
            raise ValueError(f"invalid {cls.api_name()}: {problems}") from None

    @classmethod
    def api_name(cls) -> str:
        return cls.__name__

    def dump(self) -> dict[str, Any]:
        """The API's JSON form of what was set (defaults left to the apiserver)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


def default_of(model: type[BaseModel], name: str) -> Any:
    """A field's declared default (the one place it is written down)."""
    return model.model_fields[name].default


# -- shared field types ------------------------------------------------------------

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Port = Annotated[int, Field(ge=1, le=65535)]
EmulatorEndpoint = Annotated[str, Field(
    description="API endpoint; change only for the local emulator.",
    pattern=HTTP_URL_PATTERN)]
ServerType = Annotated[str, Field(description="Server type, e.g. cx23 or cpx32.",
                                  pattern=SERVER_TYPE_PATTERN)]
Location = Annotated[Literal["fsn1", "nbg1", "hel1", "ash", "hil", "sin"],
                     Field(description="Location.")]
Image = Annotated[str, Field(
    description="Image: " + " or ".join(OS_PROFILES) + " (the OS profiles the VM bootstrap "
                "is written for), or a numeric id of a snapshot or backup (the class must "
                "list it in limits.images and name its server.osProfile).",
    max_length=63, pattern=IMAGE_PATTERN)]
IdleTimeout = Annotated[Duration, DurationAtLeast("1m"),
                        Field(description="Stop after this long with no activity.")]
IdleGrace = Annotated[Duration, DurationAtLeast("0s"), Field(
    description="Extra time after the AI agent stops working before idleness counts.")]
AgentBusyCap = Annotated[Duration, DurationAtLeast("1m"), Field(
    description="An agent reported as working for longer than this counts as idle "
                "(runaway guard).")]
AtLeastAMinute = Annotated[Duration, DurationAtLeast("1m")]


# -- secret references ---------------------------------------------------------------
# One key of a Secret. The key's default depends on what the Secret holds, so each
# use has its own small class; namespaced ones (the cluster-scoped class's) may name
# the namespace, defaulting to the operator's own.

SecretName = Annotated[str, Field(description="Name of the Secret.",
                                  pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
SecretKey = Annotated[str, Field(description="Key within the Secret.", max_length=253,
                                 pattern=r"^[-._a-zA-Z0-9]+$")]


class SecretRefSpec(ApiModel):
    name: SecretName
    key: SecretKey


class NamespacedSecretRefSpec(SecretRefSpec):
    namespace: str | None = Field(
        None, description="Namespace of the Secret; defaults to the operator's namespace.",
        pattern=DNS_LABEL_PATTERN, max_length=63)


class RepositoryTokenRef(SecretRefSpec):
    key: SecretKey = "token"


class ApiKeyRef(SecretRefSpec):
    key: SecretKey = "apiKey"


class OauthTokenRef(SecretRefSpec):
    key: SecretKey = "oauthToken"


class GatewayTokenRef(SecretRefSpec):
    key: SecretKey = "authToken"


class RegistryCredentialsRef(ApiModel):
    """A Secret of type kubernetes.io/dockerconfigjson (its key `.dockerconfigjson`), as
    `kubectl create secret docker-registry` makes it."""

    name: SecretName


class ClassTokenRef(NamespacedSecretRefSpec):
    key: SecretKey = "token"


class StorageCredentialsRef(NamespacedSecretRefSpec):
    key: SecretKey = "accessKeyId"


class EncryptionKeyRef(NamespacedSecretRefSpec):
    key: SecretKey = "key"


class ClassApiKeyRef(NamespacedSecretRefSpec):
    key: SecretKey = "apiKey"


class ClassOauthTokenRef(NamespacedSecretRefSpec):
    key: SecretKey = "oauthToken"


class ClassGatewayTokenRef(NamespacedSecretRefSpec):
    key: SecretKey = "authToken"


# -- Workspace spec ------------------------------------------------------------------
# The two class kinds a Workspace may name (spec.classKind): the cluster-scoped class
# an administrator offers, and a tenant's own in the Workspace's namespace.
ClassKind = Literal["WorkspaceClass", "NamespacedWorkspaceClass"]
CLASS_KIND: Literal["WorkspaceClass"] = "WorkspaceClass"
NAMESPACED_CLASS_KIND: Literal["NamespacedWorkspaceClass"] = "NamespacedWorkspaceClass"

class RepositorySpec(ApiModel):
    """Repository cloned into /workspaces."""

    url: str = Field(description="Clone URL (https or ssh).", pattern=REPOSITORY_URL_PATTERN,
                     max_length=2048)
    # git would read a leading '-' as an option
    ref: Annotated[str | None, Cel("!self.startsWith('-')",
                                   "repository.ref must not start with '-'")] = Field(
        None, description="Branch, tag or commit; the default branch when empty.",
        max_length=255, pattern=r"^[A-Za-z0-9._/-]+$")
    credentials_secret_ref: RepositoryTokenRef | None = Field(
        None, description="Secret in the workspace's namespace holding a token for private "
                          "repositories.")


class DevcontainerSpec(ApiModel):
    """Devcontainer to run. Without either field the repository's own .devcontainer is
    used, or a default one when it has none."""

    cel_rules = (
        Cel("!(has(self.path) && has(self.image))",
            "set devcontainer.path or devcontainer.image, not both"),
        Cel("!has(self.path) || !self.path.contains('..')",
            "devcontainer.path must stay inside the repository"),
    )

    path: str | None = Field(None, description="Path to devcontainer.json inside the "
                             "repository.", max_length=512, pattern=r"^[A-Za-z0-9._/-]+\.json$")
    image: str | None = Field(None, description="Container image to use instead of a "
                              "devcontainer.json.", max_length=512)
    registry_credentials_secret_ref: RegistryCredentialsRef | None = Field(
        None, description="Secret of type kubernetes.io/dockerconfigjson in the workspace's "
                          "namespace: registry logins for pulling the devcontainer's images "
                          "(delivered to the VM after boot, readable only by root).")


class ServerSpec(ApiModel):
    """Hetzner Cloud server settings."""

    type: ServerType | None = None
    location: Location | None = None
    image: Image | None = None


class McpServerSpec(ApiModel):
    """One MCP server for Claude Code's .mcp.json."""

    cel_rules = (
        Cel("self.type != 'stdio' || has(self.command)", "stdio MCP servers need a command"),
        Cel("self.type == 'stdio' || has(self.url)", "http and sse MCP servers need a url"),
    )

    type: Literal["stdio", "http", "sse"] = Field("stdio", description="Transport.")
    command: str | None = Field(None, description="Command for stdio servers.",
                                max_length=1024)
    args: list[Annotated[str, Field(max_length=1024)]] = Field(default_factory=list,
                                                               max_length=64)
    url: str | None = Field(None, description="URL for http/sse servers.",
                            pattern=HTTP_URL_PATTERN, max_length=2048)
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict, max_length=64,
        description="Environment for stdio servers (not for secrets).")


# -- Claude Code's credentials ---------------------------------------------------------
# At most one way to reach a model: an Anthropic API key, a Claude subscription token or
# an LLM gateway. The values are delivered to the VM after boot over the agent's channel
# and can be rotated in place (docs/vm.md, "Claude Code's credentials").

CREDENTIAL_FIELDS = ("apiKeySecretRef", "oauthTokenSecretRef", "gateway")
# http:// only to the VM itself (a gateway running in the workspace): elsewhere the
# token would cross the network in the clear.
GATEWAY_URL_PATTERN = (r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
                       r"(/[A-Za-z0-9._~%/-]*)?$")
LOOPBACK_URL_PREFIXES = ("http://localhost", "http://127.0.0.1", "http://[::1]")
GATEWAY_URL_MESSAGE = ("gateway.baseUrl must use https (http only to the VM itself: "
                       "localhost, 127.0.0.1 or [::1])")
# Claude Code's own credential headers come from the token; the gateway gets no other.
RESERVED_HEADERS = ("authorization", "x-api-key")
# HTTP's token characters, less ' and ` (they would end a CEL string).
_HEADER_PUNCTUATION = "!#$%&*+.^_|~-"
HEADER_NAME_PATTERN = f"^[A-Za-z0-9{_HEADER_PUNCTUATION}]{{1,128}}$"


def _one_of(fields: tuple[str, ...], at_least: int) -> Cel:
    count = "[" + ", ".join(f"has(self.{f})" for f in fields) + "].filter(x, x).size()"
    names = ", ".join(fields[:-1]) + " and " + fields[-1]
    if at_least:
        return Cel(f"{count} == 1", f"set exactly one of {names}")
    return Cel(f"{count} <= 1", f"set at most one of {names}")


GatewayUrl = Annotated[str, Field(pattern=GATEWAY_URL_PATTERN, max_length=2048), Cel(
    "self.startsWith('https://') || " + str(list(LOOPBACK_URL_PREFIXES)).replace('"', "'")
    + ".exists(p, self == p || self.startsWith(p + ':') || self.startsWith(p + '/'))",
    GATEWAY_URL_MESSAGE)]
ModelName = Annotated[str, Field(max_length=256, pattern=r"^[A-Za-z0-9._:@/()\[\]+-]+$")]
HeaderValue = Annotated[str, Field(max_length=1024, pattern=r"^[\x20-\x7e]*$")]
_HEADER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                               "0123456789" + _HEADER_PUNCTUATION)
GatewayHeaders = Annotated[
    dict[str, HeaderValue],
    Field(max_length=16, description="Extra request headers for the gateway, e.g. a "
                                     "team or project id (not for secrets: they are "
                                     "written to Claude Code's settings.json)."),
    Cel(f"self.all(k, k.matches('{HEADER_NAME_PATTERN}'))",
        "gateway.headers: names must be HTTP header names"),
    Cel("self.all(k, !(k.lowerAscii() in " + str(list(RESERVED_HEADERS)).replace('"', "'")
        + "))", "gateway.headers must not set Authorization or X-Api-Key: the token is "
                "sent as Authorization")]


class GatewayModelsSpec(ApiModel):
    """Model names as the gateway knows them; Claude Code's own where unset."""

    default: ModelName | None = Field(None, description="The model sessions start with "
                                      "(ANTHROPIC_MODEL).")
    opus: ModelName | None = Field(None, description="What Claude Code's opus alias "
                                   "means (ANTHROPIC_DEFAULT_OPUS_MODEL).")
    sonnet: ModelName | None = Field(None, description="What Claude Code's sonnet alias "
                                     "means (ANTHROPIC_DEFAULT_SONNET_MODEL).")
    haiku: ModelName | None = Field(None, description="What Claude Code's haiku alias "
                                    "means, also used for its background tasks "
                                    "(ANTHROPIC_DEFAULT_HAIKU_MODEL).")


class GatewaySettingsSpec(ApiModel):
    """An LLM gateway or proxy that speaks the Anthropic Messages API."""

    base_url: GatewayUrl = Field(description="The gateway's address, without /v1/messages "
                                             "(ANTHROPIC_BASE_URL); https.")
    headers: GatewayHeaders = Field(default_factory=dict)
    models: GatewayModelsSpec = Field(default_factory=GatewayModelsSpec)

    @field_validator("base_url")
    @classmethod
    def _https_or_loopback(cls, url: str) -> str:
        """The admission rules, also when the operator parses the spec."""
        if not url.startswith("https://") and not any(
                url == prefix or url.startswith((prefix + ":", prefix + "/"))
                for prefix in LOOPBACK_URL_PREFIXES):
            raise ValueError(GATEWAY_URL_MESSAGE)
        return url

    @field_validator("headers")
    @classmethod
    def _header_names(cls, headers: dict[str, str]) -> dict[str, str]:
        for name in headers:
            if not name or len(name) > 128 or not set(name) <= _HEADER_NAME_CHARS:
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"must not set {name}: the token is sent as Authorization")
        return headers


class GatewaySpec(GatewaySettingsSpec):
    auth_token_secret_ref: GatewayTokenRef = Field(
        description="Secret in the workspace's namespace with the gateway's token, sent as "
                    "Authorization: Bearer.")


def _check_one_of(model: BaseModel, at_least: int) -> None:
    """The admission rule `_one_of`, also when the operator parses the object."""
    count = sum(getattr(model, name) is not None
                for name in ("api_key_secret_ref", "oauth_token_secret_ref", "gateway"))
    if count > 1 or count < at_least:
        raise ValueError(_one_of(CREDENTIAL_FIELDS, at_least).message)


class AgentSpec(ApiModel):
    """The AI coding agent."""

    cel_rules = (_one_of(CREDENTIAL_FIELDS, 0),)

    kind: Literal["claude-code"] = Field("claude-code", description="Agent kind.")
    api_key_secret_ref: ApiKeyRef | None = Field(
        None, description="Secret in the workspace's namespace with the Anthropic API key.")
    oauth_token_secret_ref: OauthTokenRef | None = Field(
        None, description="Secret in the workspace's namespace with a Claude subscription "
                          "token, made by `claude setup-token` (CLAUDE_CODE_OAUTH_TOKEN).")
    gateway: GatewaySpec | None = Field(
        None, description="Reach the model through an LLM gateway instead of Anthropic's "
                          "API. Without any of apiKeySecretRef, oauthTokenSecretRef and "
                          "gateway the class's agentCredentials apply, if it has any.")
    mcp_servers: dict[str, McpServerSpec] = Field(
        default_factory=dict, max_length=32, description="MCP servers written to .mcp.json.")
    instructions: str | None = Field(None, description="Extra text appended to the "
                                     "generated CLAUDE.md.", max_length=8192)

    @model_validator(mode="after")
    def _at_most_one_credential(self) -> Self:
        _check_one_of(self, 0)
        return self


class IdleSpec(ApiModel):
    """When an unattended workspace is stopped (see README: what counts as activity)."""

    timeout: IdleTimeout | None = None
    grace: IdleGrace | None = None
    agent_busy_cap: AgentBusyCap | None = None


class LifetimeSpec(ApiModel):
    max: AtLeastAMinute | None = Field(
        None, description="Stop after running this long, active or not.")


# The pre-stop save (docs/idle.md, "Before an automatic stop"): commit uncommitted work
# to a new WIP branch, and push it, before an idle or lifetime stop.
PreStopMode = Literal["none", "commit", "commit-and-push"]
DEFAULT_PRE_STOP: PreStopMode = "commit"
DEFAULT_PRE_STOP_TIMEOUT = "60s"
PRE_STOP_TIMEOUT_MAX = "5m"


def _at_most(limit: str) -> Callable[[str], str]:
    ceiling = parse_duration(limit)

    def check(text: str) -> str:
        if parse_duration(text) > ceiling:
            raise ValueError(f"{text!r} is longer than {limit}")
        return text

    return check


PreStopTimeout = Annotated[
    Duration, DurationAtLeast("5s"),
    Cel(f"duration(self) <= duration('{PRE_STOP_TIMEOUT_MAX}')",
        f"must be a duration of at most {PRE_STOP_TIMEOUT_MAX}"),
    AfterValidator(_at_most(PRE_STOP_TIMEOUT_MAX)),
    Field(description="How long the pre-stop save may take (5s to 5m); the stop goes on "
                      "when it is over, whatever happened.")]
PRE_STOP_DESCRIPTION = (
    "Before an idle or lifetime stop: none; commit (uncommitted work, untracked files "
    "included, becomes a commit on a new branch agentspaces/wip/<name>-<UTC time>, kept "
    "in the backup); or commit-and-push (that branch is also pushed to the repository "
    "URL with the repository token). The branch you were on is never changed.")


class LifecycleSpec(ApiModel):
    """What happens just before an automatic stop; defaults from the class."""

    pre_stop: PreStopMode | None = Field(None, description=PRE_STOP_DESCRIPTION)
    pre_stop_timeout: PreStopTimeout | None = None


class PortSpec(ApiModel):
    """Visibility of one port served at https://{port}.{host}."""

    port: Annotated[Port, Cel(f"!(self in {list(RESERVED_PORTS)})", RESERVED_PORTS_MESSAGE)]
    visibility: Literal["private", "link", "public"] = Field(
        "private", description="private: the workspace password only; link: the password or "
        "a share link made for this port; public: open to anyone.")


class AccessSpec(ApiModel):
    """Who can reach the workspace's URLs."""

    auth: Literal["basic"] = Field("basic", description="Authentication in front of private "
                                   "URLs.")
    ports: list[PortSpec] = Field(default_factory=list, max_length=64,
                                  json_schema_extra=list_map("port"))


class WakeSpec(ApiModel):
    """What wakes a stopped workspace besides kubectl."""

    on_request: bool = Field(
        True, description="Opening the workspace's URL in a browser, signed in (or with a "
        "share link that allows it), wakes it through the class's wake gateway. Needs the "
        "class's wakeGateway; without one a stopped workspace's names are removed.")


class PersistenceSpec(ApiModel):
    """Encrypted backups of /workspaces across stop/start."""

    enabled: bool = True
    on_delete: Literal["Delete", "Retain"] = Field(
        "Retain", description="What happens to backups and the data key when the Workspace "
                              "is deleted.")
    schedule: Annotated[Duration, DurationAtLeast("15m")] | None = Field(
        None, description="Also back up every so often while running.")


SshKey = Annotated[str, Field(pattern=SSH_KEY_PATTERN, max_length=16384)]


class RunIntent(ApiModel):
    """spec.running alone, for code that needs only the user's intent (it parses even
    when the rest of the spec would not)."""

    running: bool = Field(True, description="User intent: false stops the workspace "
                                            "(keeps data).")


def _mcp_text(s: str) -> str:
    return (f"(has({s}.command) ? size({s}.command) : 0)"
            f" + (has({s}.url) ? size({s}.url) : 0)"
            f" + (has({s}.args) ? {s}.args.map(a, size(a)).sum() : 0)"
            f" + (has({s}.env) ? {s}.env.map(e, size(e) + size({s}.env[e])).sum() : 0)")


USER_TEXT_RULE = Cel(
    "(has(self.agent) && has(self.agent.instructions) ? size(self.agent.instructions) : 0)"
    " + (has(self.sshKeys) ? self.sshKeys.map(k, size(k)).sum() : 0)"
    " + (has(self.agent) && has(self.agent.mcpServers) ? "
    "self.agent.mcpServers.map(n, size(n) + " + _mcp_text("self.agent.mcpServers[n]")
    + ").sum() : 0)" + f" <= {USER_TEXT_BUDGET}",
    f"agent.instructions, agent.mcpServers and sshKeys together must stay within "
    f"{USER_TEXT_BUDGET} characters: they travel in the VM's user-data, which Hetzner "
    "limits to 32 KiB")


class WorkspaceSpecModel(RunIntent):
    """Desired state of a workspace. The operator never writes spec."""

    cel_rules = (USER_TEXT_RULE,)

    class_name: str = Field(description="Name of the class (see classKind).",
                            pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    class_kind: ClassKind | None = Field(
        None, description=f"{CLASS_KIND} (the default): the cluster's class of that name; "
                          f"{NAMESPACED_CLASS_KIND}: the one in this Workspace's own "
                          "namespace, with that namespace's own cloud credentials.")
    repository: RepositorySpec
    devcontainer: DevcontainerSpec = Field(default_factory=DevcontainerSpec)
    server: ServerSpec = Field(default_factory=ServerSpec)
    agent: AgentSpec = Field(default_factory=AgentSpec)
    idle: IdleSpec = Field(default_factory=IdleSpec)
    lifetime: LifetimeSpec = Field(default_factory=LifetimeSpec, description="Hard limits.")
    lifecycle: LifecycleSpec = Field(default_factory=LifecycleSpec)
    access: AccessSpec = Field(default_factory=AccessSpec)
    wake: WakeSpec = Field(default_factory=WakeSpec)
    persistence: PersistenceSpec = Field(default_factory=PersistenceSpec)
    ssh_keys: list[SshKey] = Field(default_factory=list, max_length=32,
                                   description="OpenSSH public keys allowed to log in to "
                                               "the VM.")

    @classmethod
    def api_name(cls) -> str:
        return "Workspace spec"


# -- WorkspaceClass spec ---------------------------------------------------------------

class HetznerSpec(ApiModel):
    """Hetzner Cloud project."""

    token_secret_ref: ClassTokenRef = Field(description="API token (read & write).")
    endpoint: EmulatorEndpoint = "https://api.hetzner.cloud/v1"


class ClassServerSpec(ApiModel):
    """Hetzner Cloud server settings."""

    type: ServerType = "cx23"
    location: Location = "fsn1"
    image: Image = "ubuntu-24.04"
    workspace_image: str | None = Field(
        None, pattern=DNS_LABEL_PATTERN, max_length=63,
        description="A WorkspaceImage of this class's Hetzner project: new servers boot "
                    "from its snapshot while it is Ready, from `image` otherwise (so set "
                    "`image` to the WorkspaceImage's base image). A workspace that names "
                    "its own server.image boots that.")
    os_profile: OsProfileName | None = Field(
        None, description="The OS of this class's numeric image ids (server.image, "
                          "limits.images, a workspace's server.image): which user-data they "
                          "boot with. Required when any of them is numeric; an image name is "
                          "its own profile.")


class TxtRegistrySpec(ApiModel):
    """Also write external-dns style ownership TXT records."""

    enabled: bool = False
    owner_id: str | None = Field(None, description="Owner id written into the TXT records.",
                                 max_length=63, pattern=r"^[A-Za-z0-9._-]+$")


class DnsSpec(ApiModel):
    """Cloudflare DNS for the workspace hostnames."""

    cel_rules = (Cel("!has(self.baseDomain) || self.baseDomain == self.zoneName || "
                     "self.baseDomain.endsWith('.' + self.zoneName)",
                     "dns.baseDomain must be inside dns.zoneName"),)

    zone_name: str = Field(description="Cloudflare zone, e.g. example.com.",
                           pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    base_domain: str | None = Field(None, description="Domain the workspace hosts live "
                                    "under; the zone name when empty.",
                                    pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)
    token_secret_ref: ClassTokenRef = Field(description="API token with Zone.DNS Edit on the "
                                            "zone.")
    endpoint: EmulatorEndpoint = "https://api.cloudflare.com/client/v4"
    proxied: bool = Field(False, description="Proxy records through Cloudflare.")
    txt_registry: TxtRegistrySpec = Field(default_factory=TxtRegistrySpec)
    ttl: int = Field(60, ge=1, le=86400)


class TlsSpec(ApiModel):
    """How workspace hosts get certificates."""

    mode: Literal["acme", "internal", "none"] = Field(
        "acme", description="acme: Caddy obtains certificates on demand; internal: Caddy's "
                            "own CA (sandbox); none: plain HTTP (sandbox only).")
    http_port: Port = 80
    https_port: Port = 443


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
IPV4_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}$"
IPV6_PATTERN = r"^[0-9A-Fa-f:.]{2,45}$"


class WakeGatewaySpec(ApiModel):
    """The always-on wake gateway (manifests/gateway.yaml) that a stopped workspace's
    names point at, so its URL can wake it."""

    ipv4: str = Field(description="The gateway's public IPv4 address.", pattern=IPV4_PATTERN)
    ipv6: str | None = Field(None, description="Its public IPv6 address, if it has one.",
                             pattern=IPV6_PATTERN)


class StorageSpec(ApiModel):
    """S3-compatible bucket (Cloudflare R2) for backups."""

    endpoint: str = Field(description="https://<account>.r2.cloudflarestorage.com",
                          pattern=HTTP_URL_PATTERN)
    vm_endpoint: str | None = Field(
        None, description="The bucket's address as the VMs reach it, when it differs from "
                          "endpoint (a private network or a proxy): the presigned URLs the "
                          "VMs get for backups and restores are signed for it; the "
                          "operator's own calls use endpoint.",
        pattern=HTTP_URL_PATTERN, max_length=2048)
    bucket: str = Field(description="Bucket name.",
                        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = Field("auto", description="Region; R2 uses auto.", max_length=32)
    addressing_style: Literal["path", "virtual"] = Field("path", description="S3 addressing.")
    prefix: str = Field("agentspaces/", description="Key prefix for all backups.",
                        max_length=256, pattern=r"^[A-Za-z0-9._/-]*$")
    keep: int = Field(3, ge=1, le=100, description="Backups kept per workspace.")
    credentials_secret_ref: StorageCredentialsRef = Field(
        description="Secret with accessKeyId and secretAccessKey.")

    @field_validator("region")
    @classmethod
    def _empty_region_is_the_default(cls, value: str) -> str:
        return value or str(default_of(cls, "region"))


CaBundle = Annotated[str, Cel(f"self.contains('{PEM_CERTIFICATE_BEGIN}')",
                             f"trust.caBundle must hold PEM certificates ({PEM_CERTIFICATE_BEGIN}"
                             " ...)")]


class TrustSpec(ApiModel):
    """Certificate authorities the VMs trust besides the system's."""

    ca_bundle: CaBundle | None = Field(
        None, max_length=CA_BUNDLE_LIMIT,
        description="PEM CA certificates for git servers, container registries and mirrors "
                    "with a private CA. The VM adds them to its system trust store (git, "
                    "Docker pulls, the devcontainer CLI, npm) before the clone. Not secret.")

    @field_validator("ca_bundle")
    @classmethod
    def _holds_a_certificate(cls, value: str | None) -> str | None:
        """The admission rule, also when the operator parses the class."""
        if value is not None and PEM_CERTIFICATE_BEGIN not in value:
            raise ValueError(f"must hold PEM certificates ({PEM_CERTIFICATE_BEGIN} ...)")
        return value


class EncryptionSpec(ApiModel):
    """Envelope encryption of backups."""

    key_secret_ref: EncryptionKeyRef = Field(
        description="32-byte class key (base64) that wraps every workspace data key.")


class ClassIdleSpec(ApiModel):
    """When an unattended workspace is stopped (see README: what counts as activity)."""

    timeout: IdleTimeout = "30m"
    grace: IdleGrace = "5m"
    agent_busy_cap: AgentBusyCap = "6h"


class ClassLifetimeSpec(ApiModel):
    max: AtLeastAMinute | None = Field(None, description="Default maximum running time.")


class ClassLifecycleSpec(ApiModel):
    """What happens just before an automatic stop, unless a Workspace says otherwise."""

    pre_stop: PreStopMode = Field(DEFAULT_PRE_STOP, description=PRE_STOP_DESCRIPTION)
    pre_stop_timeout: PreStopTimeout = DEFAULT_PRE_STOP_TIMEOUT


Cidr = Annotated[str, Field(max_length=43), Cel(
    "isCIDR(self) && cidr(self) == cidr(self).masked()",
    "must be a CIDR with no host bits set, e.g. 203.0.113.7/32 or 2001:db8::/64")]


class ClassAgentSpec(ApiModel):
    """Workspace agent polling."""

    port: Port = 9443
    source_ranges: list[Cidr] = Field(
        default_factory=list, max_length=100, json_schema_extra=LIST_SET,
        description="The operator's egress addresses (CIDRs, IPv4 and IPv6). Set: a Hetzner "
                    "Cloud Firewall admits the agent port only from these. Unset: the agent "
                    "port is open to the internet.")


class ClassGatewaySpec(GatewaySettingsSpec):
    auth_token_secret_ref: ClassGatewayTokenRef = Field(
        description="Secret with the gateway's token, sent as Authorization: Bearer.")


class ClassAgentCredentialsSpec(ApiModel):
    """How Claude Code reaches a model in the class's workspaces that name no credential
    of their own (spec.agent). Delivered to each of their VMs, where their users can
    read it."""

    cel_rules = (_one_of(CREDENTIAL_FIELDS, 1),)

    api_key_secret_ref: ClassApiKeyRef | None = Field(
        None, description="Secret with an Anthropic API key.")
    oauth_token_secret_ref: ClassOauthTokenRef | None = Field(
        None, description="Secret with a Claude subscription token (`claude setup-token`).")
    gateway: ClassGatewaySpec | None = Field(None, description="An LLM gateway.")

    @model_validator(mode="after")
    def _exactly_one_credential(self) -> Self:
        _check_one_of(self, 1)
        return self


ClaudeCodeSource = Literal["feature", "npm"]


class ClassDevcontainerSpec(ApiModel):
    """How far a repository's devcontainer.json is trusted, and where Claude Code in the
    container comes from."""

    trust_repository: bool = Field(
        False, description="Run the repository's devcontainer.json as written: host commands "
                           "(initializeCommand), privileges, runArgs, host mounts, docker "
                           "compose. Off: only what acts inside the container is used "
                           "(docs/vm.md).")
    claude_code: ClaudeCodeSource = Field(
        "feature", description="How Claude Code gets into the devcontainer. feature: the "
                               "devcontainer feature from ghcr.io, added to every config. "
                               "npm: the VM installs the product's pinned Claude Code build "
                               "from the npm registry (integrity checked) and mounts its "
                               "binary read-only at /usr/local/bin/claude, for when ghcr.io "
                               "is unreachable; the container image must be glibc-based "
                               "(docs/vm.md).")


class LimitsSpec(ApiModel):
    """What a Workspace of this class may ask for. The operator refuses (condition
    Accepted=False, reason NotAllowedByClass) and creates no server otherwise."""

    # None (unset) is no limit; an empty list allows nothing.
    server_types: list[Annotated[str, Field(description="A server type.", max_length=16,
                                            pattern=SERVER_TYPE_PATTERN)]] | None = Field(
        None, max_length=64, json_schema_extra=LIST_SET,
        description="Allowed server types; any when unset.")
    images: list[Annotated[str, Field(description="A supported image name or a numeric id.",
                                      max_length=63, pattern=IMAGE_PATTERN)]] | None = Field(
        None, max_length=64, json_schema_extra=LIST_SET,
        description="Allowed images (names or numeric ids). When unset, any supported image "
                    "name but no numeric id (snapshots and backups are reachable only by id).")
    idle_timeout: AtLeastAMinute | None = Field(
        None, description="Longest idle.timeout a workspace may set.")
    agent_busy_cap: AtLeastAMinute | None = Field(
        None, description="Longest idle.agentBusyCap a workspace may set.")
    lifetime: AtLeastAMinute | None = Field(
        None, description="Longest lifetime.max a workspace may set; also the lifetime of "
                          "workspaces that set none.")


TokenPrice = Annotated[float, Field(ge=0, le=100000)]


class ModelPriceSpec(ApiModel):
    """USD per million tokens for the Claude models whose name starts with `model`."""

    model: str = Field(description="A model name or its prefix, e.g. claude-opus-5-5; the "
                                   "longest matching prefix wins.",
                       pattern=r"^[0-9A-Za-z._:@/-]+$", max_length=128)
    input: TokenPrice = Field(description="Input tokens.")
    output: TokenPrice = Field(description="Output tokens.")
    cache_write: TokenPrice | None = Field(
        None, description="Five-minute cache writes; 1.25x input when unset (one-hour "
                          "writes cost 2x input).")
    cache_read: TokenPrice | None = Field(None, description="Cache reads; 0.1x input when "
                                          "unset.")


class PricingSpec(ApiModel):
    """Prices for the token cost estimate in Workspace status (status.usage)."""

    models: list[ModelPriceSpec] = Field(
        default_factory=list, max_length=64, json_schema_extra=list_map("model"),
        description="Looked up before the built-in table of Anthropic's list prices "
                    "(docs/usage.md); prices are USD.")


# -- which namespaces may use a class (spec.allowedNamespaces) ----------------------
# Kubernetes' own label syntax: a key is an optional DNS subdomain prefix and '/', then
# a name of at most 63 characters; a value is such a name or empty.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = ("^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                     + LABEL_NAME + "$")
LABEL_VALUE_PATTERN = f"^({LABEL_NAME})?$"
LabelKey = Annotated[str, Field(max_length=317, pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]
NamespaceFrom = Literal["All", "List", "Selector"]
MATCH_LABELS_KEYS_MESSAGE = "matchLabels keys must be label keys, e.g. team or example.com/team"


class LabelRequirementSpec(ApiModel):
    """One requirement on a namespace's labels, as in a Kubernetes label selector."""

    cel_rules = (
        Cel("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
            "In and NotIn need values; Exists and DoesNotExist take none"),
    )

    key: LabelKey = Field(description="The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In: the label is one of values; NotIn: it is absent or none of them; "
                    "Exists / DoesNotExist: the label is set / is not.")
    values: list[LabelValue] = Field(default_factory=list, max_length=64,
                                     json_schema_extra=LIST_SET)

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> Self:
        """The admission rule, also when the operator parses the class."""
        if (self.operator in ("In", "NotIn")) != bool(self.values):
            raise ValueError(self.cel_rules[0].message)
        return self


class NamespaceSelectorSpec(ApiModel):
    """A label selector over Namespaces: every matchLabels entry and every
    matchExpressions requirement must hold; an empty selector selects every namespace."""

    match_labels: Annotated[dict[str, LabelValue], Cel(
        f"self.all(k, k.matches('{LABEL_KEY_PATTERN}') && size(k) <= 317)",
        MATCH_LABELS_KEYS_MESSAGE)] = Field(default_factory=dict, max_length=32)
    match_expressions: list[LabelRequirementSpec] = Field(default_factory=list,
                                                          max_length=16)

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        if any(len(k) > 317 or not re.match(LABEL_KEY_PATTERN, k) for k in labels):
            raise ValueError(MATCH_LABELS_KEYS_MESSAGE)
        return labels


ALLOWED_NAMESPACES_RULES = (
    Cel("self.from == 'List' ? has(self.names) : !has(self.names)",
        "allowedNamespaces.names is required with from: List and allowed only with it"),
    Cel("self.from == 'Selector' ? has(self.selector) : !has(self.selector)",
        "allowedNamespaces.selector is required with from: Selector and allowed only with "
        "it"),
)


class AllowedNamespacesSpec(ApiModel):
    """Which namespaces' Workspaces may use this class. Checked at admission (the
    shipped ValidatingAdmissionPolicy) and by the operator before any server is
    created; revoking it stops new starts, never a running server."""

    cel_rules = ALLOWED_NAMESPACES_RULES

    from_: NamespaceFrom = Field(
        "All", alias="from",
        description="All: every namespace; List: the namespaces in names; Selector: the "
                    "namespaces whose labels match selector.")
    names: list[Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]] | None = \
        Field(None, min_length=1, max_length=256, json_schema_extra=LIST_SET,
              description="Namespace names (from: List).")
    selector: NamespaceSelectorSpec | None = Field(
        None, description="Namespace labels (from: Selector).")

    @model_validator(mode="after")
    def _fields_fit_from(self) -> Self:
        """ALLOWED_NAMESPACES_RULES, also when the operator parses the class."""
        if (self.from_ == "List") != (self.names is not None):
            raise ValueError(ALLOWED_NAMESPACES_RULES[0].message)
        if (self.from_ == "Selector") != (self.selector is not None):
            raise ValueError(ALLOWED_NAMESPACES_RULES[1].message)
        return self


def _own_or_default(section: str, field: str, default: str) -> str:
    """CEL for the class's own setting, or the default the operator applies."""
    return (f"(has(self.{section}) && has(self.{section}.{field}) ? "
            f"self.{section}.{field} : '{default}')")


def _limit_rule(limit: str, check: str, message: str) -> Cel:
    """The class's own defaults must respect its own limits: a workspace inherits them."""
    return Cel(f"!has(self.limits) || !has(self.limits.{limit}) || {check}", message)


def _class_limit_rules() -> tuple[Cel, ...]:
    server_type = default_of(ClassServerSpec, "type")
    image = default_of(ClassServerSpec, "image")
    timeout = default_of(ClassIdleSpec, "timeout")
    busy_cap = default_of(ClassIdleSpec, "agent_busy_cap")
    return (
        _limit_rule("serverTypes", f"{_own_or_default('server', 'type', server_type)} in "
                    "self.limits.serverTypes", "server.type must be one of limits.serverTypes"),
        _limit_rule("images", f"{_own_or_default('server', 'image', image)} in "
                    "self.limits.images", "server.image must be one of limits.images"),
        _limit_rule("idleTimeout", f"duration({_own_or_default('idle', 'timeout', timeout)})"
                    " <= duration(self.limits.idleTimeout)",
                    f"idle.timeout ({timeout} when unset) must not exceed limits.idleTimeout"),
        _limit_rule("agentBusyCap",
                    f"duration({_own_or_default('idle', 'agentBusyCap', busy_cap)}) <= "
                    "duration(self.limits.agentBusyCap)",
                    f"idle.agentBusyCap ({busy_cap} when unset) must not exceed "
                    "limits.agentBusyCap"),
        _limit_rule("lifetime", "!has(self.lifetime) || !has(self.lifetime.max) || "
                    "duration(self.lifetime.max) <= duration(self.limits.lifetime)",
                    "lifetime.max must not exceed limits.lifetime"),
    )


NUMERIC_IMAGE_NEEDS_PROFILE = Cel(
    "(has(self.server) && has(self.server.osProfile)) || !("
    f"(has(self.server) && has(self.server.image) && "
    f"self.server.image.matches('{NUMERIC_IMAGE_PATTERN}')) || "
    f"(has(self.limits) && has(self.limits.images) && "
    f"self.limits.images.exists(i, i.matches('{NUMERIC_IMAGE_PATTERN}'))))",
    "a numeric image id (server.image or limits.images) needs server.osProfile ("
    + " or ".join(OS_PROFILES) + "): the OS that image runs")


class WarmPoolSpec(ApiModel):
    """Servers kept booted and waiting, so a new workspace starts on one of them."""

    size: int = Field(0, ge=0, le=WARM_POOL_MAX,
                      description="How many servers wait, booted from the class's server "
                                  "settings (its workspaceImage when Ready) with no "
                                  "workspace, user secret or repository on them; a new "
                                  "workspace with the class's server settings claims one "
                                  "and the pool refills. Each is billed like any server. "
                                  "0: no pool.")


class WorkspaceClassSpecModel(ApiModel):
    """Provider credentials and defaults shared by many workspaces."""

    cel_rules = (
        Cel("!has(self.storage) || has(self.encryption)",
            "storage needs encryption.keySecretRef: backups are always encrypted"),
        NUMERIC_IMAGE_NEEDS_PROFILE,
        *_class_limit_rules(),
    )

    hetzner: HetznerSpec
    server: ClassServerSpec = Field(default_factory=ClassServerSpec)
    dns: DnsSpec
    tls: TlsSpec = Field(default_factory=TlsSpec)
    wake_gateway: WakeGatewaySpec | None = Field(
        None, description="Where stopped workspaces' names point (see Workspace "
        "spec.wake.onRequest); without it they are removed on stop.")
    storage: StorageSpec | None = None
    encryption: EncryptionSpec | None = None
    trust: TrustSpec = Field(default_factory=TrustSpec)
    idle: ClassIdleSpec = Field(default_factory=ClassIdleSpec)
    lifetime: ClassLifetimeSpec = Field(default_factory=ClassLifetimeSpec,
                                        description="Default hard limits.")
    lifecycle: ClassLifecycleSpec = Field(default_factory=ClassLifecycleSpec)
    agent: ClassAgentSpec = Field(default_factory=ClassAgentSpec)
    agent_credentials: ClassAgentCredentialsSpec | None = None
    devcontainer: ClassDevcontainerSpec = Field(default_factory=ClassDevcontainerSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    warm_pool: WarmPoolSpec = Field(default_factory=WarmPoolSpec)
    allowed_namespaces: AllowedNamespacesSpec | None = Field(
        None, description="Which namespaces' Workspaces may use this class; every namespace "
                          "when unset (set List or Selector on a shared cluster).")

    @model_validator(mode="after")
    def _numeric_images_need_a_profile(self) -> Self:
        """NUMERIC_IMAGE_NEEDS_PROFILE, also when the operator parses the class."""
        ids = [image for image in (self.server.image, *(self.limits.images or ()))
               if image.isdigit()]
        if ids and self.server.os_profile is None:
            raise ValueError(NUMERIC_IMAGE_NEEDS_PROFILE.message)
        return self

    @classmethod
    def api_name(cls) -> str:
        return "WorkspaceClass spec"


# Every Secret reference of a class, as CEL paths below the spec (optional parents
# guarded by has()): a namespaced class names none outside its own namespace.
CLASS_SECRET_REFS = (
    ("hetzner", "tokenSecretRef"), ("dns", "tokenSecretRef"),
    ("storage", "credentialsSecretRef"), ("encryption", "keySecretRef"),
    ("agentCredentials", "apiKeySecretRef"), ("agentCredentials", "oauthTokenSecretRef"),
    ("agentCredentials", "gateway", "authTokenSecretRef"),
)


def _no_namespace_rule(path: tuple[str, ...]) -> Cel:
    guards = [f"has(self.{'.'.join(path[:i])})" for i in range(1, len(path) + 1)]
    field = ".".join(path)
    return Cel(f"!({' && '.join(guards)}) || !has(self.{field}.namespace)",
               f"{field}.namespace: a {NAMESPACED_CLASS_KIND}'s Secrets are in its own "
               "namespace; leave namespace out")


NO_WARM_POOL = Cel(
    "!has(self.warmPool) || !has(self.warmPool.size) || self.warmPool.size == 0",
    f"warmPool: warm pools are for WorkspaceClasses; a {NAMESPACED_CLASS_KIND} has none")
ONLY_OWN_NAMESPACE = Cel(
    "!has(self.allowedNamespaces)",
    f"allowedNamespaces: a {NAMESPACED_CLASS_KIND} is only for its own namespace")
NO_SHARED_WAKE_GATEWAY = Cel(
    "!has(self.wakeGateway)",
    f"wakeGateway: the wake gateway serves WorkspaceClasses only; a {NAMESPACED_CLASS_KIND}'s "
    "stopped workspaces have no names")


class NamespacedWorkspaceClassSpecModel(WorkspaceClassSpecModel):
    """A tenant's own class: the WorkspaceClass spec, usable only by Workspaces in its
    namespace, every Secret it names read from that namespace."""

    cel_rules = (
        *WorkspaceClassSpecModel.cel_rules,
        *(_no_namespace_rule(path) for path in CLASS_SECRET_REFS),
        ONLY_OWN_NAMESPACE, NO_SHARED_WAKE_GATEWAY, NO_WARM_POOL,
    )

    @model_validator(mode="after")
    def _own_namespace_only(self) -> Self:
        """The admission rules, also when the operator parses the class."""
        if self.allowed_namespaces is not None:
            raise ValueError(ONLY_OWN_NAMESPACE.message)
        if self.wake_gateway is not None:
            raise ValueError(NO_SHARED_WAKE_GATEWAY.message)
        if self.warm_pool.size:
            raise ValueError(NO_WARM_POOL.message)
        dumped = self.model_dump(by_alias=True)
        for path in CLASS_SECRET_REFS:
            node: Any = dumped
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and node.get("namespace") is not None:
                raise ValueError(_no_namespace_rule(path).message)
        return self

    @classmethod
    def api_name(cls) -> str:
        return f"{NAMESPACED_CLASS_KIND} spec"


def duration(text: str | None) -> timedelta | None:
    """A validated duration field as a timedelta (None when unset)."""
    return parse_duration(text) if text else None
