"""Typed, read-only views of Workspace and WorkspaceClass objects.

They are built from the pydantic models of `api.model` (which declare every field,
its default and its validation once) and apply the class defaults a workspace
inherits, so the domain layer never digs through raw dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, get_args

from agentspaces.api import model as m
from agentspaces.api.durations import parse_duration
from agentspaces.api.model import RESERVED_PORTS, duration
from agentspaces.api.pricing import ModelPrice


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str
    namespace: str | None = None

    @classmethod
    def of(cls, ref: m.SecretRefSpec) -> SecretKeyRef:
        namespace = ref.namespace if isinstance(ref, m.NamespacedSecretRefSpec) else None
        return cls(name=ref.name, key=ref.key, namespace=namespace)

    @classmethod
    def optional(cls, ref: m.SecretRefSpec | None) -> SecretKeyRef | None:
        return None if ref is None else cls.of(ref)


@dataclass(frozen=True)
class ServerSettings:
    type: str
    location: str
    image: str
    os_profile: m.OsProfileName | None = None
    """The OS profile the image boots with (vmconfig.osprofile): an image name is its
    own; a numeric id has its class's server.osProfile, None when the class names none
    (admission allows no such id: class_policy refuses it)."""


def os_profile_of(image: str, class_profile: m.OsProfileName | None
                  ) -> m.OsProfileName | None:
    """The profile of `image`: its own name, or for a numeric id the class's osProfile."""
    for name in get_args(m.OsProfileName):
        if image == name:
            return name
    return class_profile


@dataclass(frozen=True)
class IdleSettings:
    timeout: timedelta
    grace: timedelta
    agent_busy_cap: timedelta


@dataclass(frozen=True)
class PortAccess:
    port: int
    public: bool
    link: bool = False
    """visibility link: the password or a share link made for this port."""


@dataclass(frozen=True)
class McpServer:
    name: str
    type: str
    command: str | None = None
    args: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


CredentialKind = Literal["api-key", "oauth-token", "gateway"]


@dataclass(frozen=True)
class Gateway:
    """An LLM gateway's settings (none secret; its token is the credential's Secret)."""

    base_url: str
    headers: tuple[tuple[str, str], ...] = ()
    models: Mapping[str, str] = field(default_factory=dict)
    """Claude Code's model slots (default, opus, sonnet, haiku) that are set."""

    def to_json(self) -> dict[str, Any]:
        """The agent protocol's `gateway` object, without the token."""
        doc: dict[str, Any] = {"baseUrl": self.base_url}
        if self.headers:
            doc["headers"] = dict(self.headers)
        if self.models:
            doc["models"] = dict(self.models)
        return doc


@dataclass(frozen=True)
class AgentCredential:
    """How Claude Code reaches a model: one Secret, and a gateway's settings."""

    kind: CredentialKind
    secret_ref: SecretKeyRef
    gateway: Gateway | None = None
    from_class: bool = False
    """Named by the class: the Secret is in its namespace (default: the operator's)."""

    @classmethod
    def of(cls, spec: m.AgentSpec | m.ClassAgentCredentialsSpec, *,
           from_class: bool) -> AgentCredential | None:
        """The one credential the spec names (admission allows at most one)."""
        if spec.api_key_secret_ref is not None:
            return cls("api-key", SecretKeyRef.of(spec.api_key_secret_ref),
                       from_class=from_class)
        if spec.oauth_token_secret_ref is not None:
            return cls("oauth-token", SecretKeyRef.of(spec.oauth_token_secret_ref),
                       from_class=from_class)
        gateway = spec.gateway
        if gateway is None:
            return None
        models = {slot: name for slot, name in gateway.models.model_dump().items() if name}
        return cls("gateway", SecretKeyRef.of(gateway.auth_token_secret_ref),
                   Gateway(base_url=gateway.base_url, headers=tuple(gateway.headers.items()),
                           models=models), from_class=from_class)


@dataclass(frozen=True)
class TlsSettings:
    mode: str  # acme | internal | none
    http_port: int
    https_port: int


@dataclass(frozen=True)
class DnsSettings:
    zone_name: str
    base_domain: str
    token_ref: SecretKeyRef
    endpoint: str
    proxied: bool
    ttl: int
    txt_registry: bool
    txt_owner_id: str | None


@dataclass(frozen=True)
class WakeGateway:
    """spec.wakeGateway: where a stopped workspace's names point, so its URL wakes it."""

    ipv4: str
    ipv6: str | None = None


@dataclass(frozen=True)
class StorageSettings:
    endpoint: str
    bucket: str
    region: str
    addressing_style: str
    prefix: str
    keep: int
    credentials_ref: SecretKeyRef
    vm_endpoint: str | None = None
    """spec.storage.vmEndpoint: where the VMs reach the bucket, if not at `endpoint`."""

    @property
    def presign_endpoint(self) -> str:
        """The endpoint the VMs' presigned URLs are signed for."""
        return self.vm_endpoint or self.endpoint


@dataclass(frozen=True)
class ClassLimits:
    """What a workspace of the class may ask for (None: no limit of that kind)."""

    server_types: frozenset[str] | None = None
    images: frozenset[str] | None = None
    idle_timeout: timedelta | None = None
    agent_busy_cap: timedelta | None = None
    lifetime: timedelta | None = None

    @classmethod
    def of(cls, limits: m.LimitsSpec) -> ClassLimits:
        def names(values: list[str] | None) -> frozenset[str] | None:
            return None if values is None else frozenset(values)

        return cls(server_types=names(limits.server_types), images=names(limits.images),
                   idle_timeout=duration(limits.idle_timeout),
                   agent_busy_cap=duration(limits.agent_busy_cap),
                   lifetime=duration(limits.lifetime))


@dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NamespaceSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()


@dataclass(frozen=True)
class AllowedNamespaces:
    """spec.allowedNamespaces; unset is `All`."""

    source: m.NamespaceFrom = "All"
    names: frozenset[str] = frozenset()
    selector: NamespaceSelector | None = None

    @classmethod
    def of(cls, spec: m.AllowedNamespacesSpec | None) -> AllowedNamespaces:
        if spec is None:
            return cls()
        selector = None if spec.selector is None else NamespaceSelector(
            match_labels=tuple(sorted(spec.selector.match_labels.items())),
            match_expressions=tuple(LabelRequirement(e.key, e.operator, frozenset(e.values))
                                    for e in spec.selector.match_expressions))
        return cls(source=spec.from_, names=frozenset(spec.names or ()), selector=selector)


DEFAULT_PRE_STOP_TIMEOUT = parse_duration(m.DEFAULT_PRE_STOP_TIMEOUT)


@dataclass(frozen=True)
class WorkspaceClass:
    name: str
    hetzner_token_ref: SecretKeyRef
    hetzner_endpoint: str
    server: ServerSettings
    dns: DnsSettings
    tls: TlsSettings
    storage: StorageSettings | None
    encryption_key_ref: SecretKeyRef | None
    idle: IdleSettings
    lifetime_max: timedelta | None
    agent_port: int
    pre_stop: m.PreStopMode = m.DEFAULT_PRE_STOP
    pre_stop_timeout: timedelta = DEFAULT_PRE_STOP_TIMEOUT
    agent_source_ranges: tuple[str, ...] = ()
    """Where the agent port admits connections from (a firewall); empty: anywhere."""
    limits: ClassLimits = field(default_factory=ClassLimits)
    # spec.devcontainer.trustRepository: run a repository's devcontainer.json unvetted.
    trust_repository_devcontainer: bool = False
    # spec.devcontainer.claudeCode: the devcontainer feature, or the VM's npm install.
    claude_code: m.ClaudeCodeSource = "feature"
    agent_credential: AgentCredential | None = None
    """spec.agentCredentials: for workspaces that name no credential of their own."""
    image_os_profile: m.OsProfileName | None = None
    """spec.server.osProfile: the OS of the class's numeric image ids."""
    workspace_image: str | None = None
    """spec.server.workspaceImage: the WorkspaceImage new servers boot from when Ready."""
    ca_bundle: str | None = None
    """spec.trust.caBundle: PEM CA certificates the VMs trust besides the system's."""
    token_prices: tuple[ModelPrice, ...] = ()
    """spec.pricing.models: looked up before the default token prices."""
    wake_gateway: WakeGateway | None = None
    warm_pool_size: int = 0
    """spec.warmPool.size: servers kept booted for new workspaces (cluster classes)."""
    allowed_namespaces: AllowedNamespaces = field(default_factory=AllowedNamespaces)
    kind: m.ClassKind = m.CLASS_KIND
    namespace: str | None = None
    """A NamespacedWorkspaceClass's namespace (where all its Secrets are); None for the
    cluster's WorkspaceClass."""

    @property
    def namespaced(self) -> bool:
        return self.kind == m.NAMESPACED_CLASS_KIND

    @property
    def title(self) -> str:
        """The kind and name, as messages name the class."""
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespaced \
            else f"{self.kind} {self.name}"

    @property
    def label_name(self) -> str:
        """What names the class on cloud resources (server labels, its firewall): a
        namespaced class's name with its namespace, so two tenants' classes of one name
        never share a firewall. "_" is in no Kubernetes name, so no cluster class's
        name is ever one of these."""
        return f"{self.namespace}_{self.name}" if self.namespaced else self.name

    @property
    def reserved_ports(self) -> frozenset[int]:
        """Ports of the VM's own services, including this class's own choices."""
        return frozenset({*RESERVED_PORTS, self.tls.http_port, self.tls.https_port,
                          self.agent_port})

    @classmethod
    def from_body(cls, body: Mapping[str, Any], kind: m.ClassKind | None = None
                  ) -> WorkspaceClass:
        """The class object's view (of `kind`, by default the body's own); ValueError
        names what is invalid."""
        metadata = body.get("metadata") or {}
        if kind is None:
            kind = (m.NAMESPACED_CLASS_KIND if body.get("kind") == m.NAMESPACED_CLASS_KIND
                    else m.CLASS_KIND)
        model = (m.NamespacedWorkspaceClassSpecModel if kind == m.NAMESPACED_CLASS_KIND
                 else m.WorkspaceClassSpecModel)
        spec = model.parse(body.get("spec"))
        if kind == m.NAMESPACED_CLASS_KIND and not metadata.get("namespace"):
            raise ValueError("a NamespacedWorkspaceClass without metadata.namespace")
        dns, storage, idle = spec.dns, spec.storage, spec.idle
        return cls(
            name=metadata.get("name", ""),
            kind=kind,
            namespace=metadata.get("namespace") if kind == m.NAMESPACED_CLASS_KIND else None,
            hetzner_token_ref=SecretKeyRef.of(spec.hetzner.token_secret_ref),
            hetzner_endpoint=spec.hetzner.endpoint,
            server=ServerSettings(type=spec.server.type, location=spec.server.location,
                                  image=spec.server.image,
                                  os_profile=os_profile_of(spec.server.image,
                                                           spec.server.os_profile)),
            image_os_profile=spec.server.os_profile,
            workspace_image=spec.server.workspace_image,
            warm_pool_size=spec.warm_pool.size,
            dns=DnsSettings(
                zone_name=dns.zone_name,
                base_domain=dns.base_domain or dns.zone_name,
                token_ref=SecretKeyRef.of(dns.token_secret_ref),
                endpoint=dns.endpoint,
                proxied=dns.proxied,
                ttl=dns.ttl,
                txt_registry=dns.txt_registry.enabled,
                txt_owner_id=dns.txt_registry.owner_id,
            ),
            tls=TlsSettings(mode=spec.tls.mode, http_port=spec.tls.http_port,
                            https_port=spec.tls.https_port),
            storage=None if storage is None else StorageSettings(
                endpoint=storage.endpoint,
                bucket=storage.bucket,
                region=storage.region,
                addressing_style=storage.addressing_style,
                prefix=storage.prefix,
                keep=storage.keep,
                credentials_ref=SecretKeyRef.of(storage.credentials_secret_ref),
                vm_endpoint=storage.vm_endpoint,
            ),
            encryption_key_ref=None if spec.encryption is None
            else SecretKeyRef.of(spec.encryption.key_secret_ref),
            idle=IdleSettings(timeout=parse_duration(idle.timeout),
                              grace=parse_duration(idle.grace),
                              agent_busy_cap=parse_duration(idle.agent_busy_cap)),
            lifetime_max=duration(spec.lifetime.max),
            pre_stop=spec.lifecycle.pre_stop,
            pre_stop_timeout=parse_duration(spec.lifecycle.pre_stop_timeout),
            agent_port=spec.agent.port,
            agent_source_ranges=tuple(spec.agent.source_ranges),
            limits=ClassLimits.of(spec.limits),
            trust_repository_devcontainer=spec.devcontainer.trust_repository,
            claude_code=spec.devcontainer.claude_code,
            agent_credential=None if spec.agent_credentials is None
            else AgentCredential.of(spec.agent_credentials, from_class=True),
            ca_bundle=spec.trust.ca_bundle,
            token_prices=tuple(_model_price(p) for p in spec.pricing.models),
            wake_gateway=None if spec.wake_gateway is None
            else WakeGateway(spec.wake_gateway.ipv4, spec.wake_gateway.ipv6),
            allowed_namespaces=AllowedNamespaces.of(spec.allowed_namespaces),
        )


def _model_price(spec: m.ModelPriceSpec) -> ModelPrice:
    def text(value: float | None) -> str | None:
        return None if value is None else repr(value)  # 0.1 stays 0.1, not a binary float

    return ModelPrice.of(spec.model, repr(spec.input), repr(spec.output),
                         text(spec.cache_write), text(spec.cache_read))


@dataclass(frozen=True)
class WorkspaceSpec:
    """A Workspace's spec with its class's defaults applied."""

    class_name: str
    running: bool
    repository_url: str
    repository_ref: str | None
    repository_credentials_ref: SecretKeyRef | None
    devcontainer_path: str | None
    devcontainer_image: str | None
    server: ServerSettings
    own_image: bool
    """spec.server.image is the Workspace's own: it boots that, not the class's
    WorkspaceImage."""
    agent_kind: str
    agent_credential: AgentCredential | None
    """The workspace's own (spec.agent), else the class's (spec.agentCredentials)."""
    mcp_servers: tuple[McpServer, ...]
    instructions: str
    idle: IdleSettings
    lifetime_max: timedelta | None
    ports: tuple[PortAccess, ...]
    """The ports that may be published: reserved ones are left out (see refused_ports)."""
    persistence_enabled: bool
    persistence_on_delete: str
    backup_interval: timedelta | None
    ssh_keys: tuple[str, ...]
    refused_ports: tuple[int, ...] = ()
    """Requested ports that are the VM's own (never published; Accepted says so)."""
    pre_stop: m.PreStopMode = m.DEFAULT_PRE_STOP
    """lifecycle.preStop: what is saved before an idle or lifetime stop."""
    pre_stop_timeout: timedelta = DEFAULT_PRE_STOP_TIMEOUT
    registry_credentials_ref: SecretKeyRef | None = None
    """devcontainer.registryCredentialsSecretRef: its `.dockerconfigjson` key."""
    wake_on_request: bool = True
    """wake.onRequest: a stopped workspace's URL wakes it (with the class's wakeGateway)."""
    class_kind: m.ClassKind = m.CLASS_KIND

    @property
    def public_ports(self) -> tuple[int, ...]:
        return tuple(sorted(p.port for p in self.ports if p.public))

    @property
    def link_ports(self) -> tuple[int, ...]:
        """Ports that share links open (visibility link)."""
        return tuple(sorted(p.port for p in self.ports if p.link))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], klass: WorkspaceClass) -> WorkspaceSpec:
        """The workspace's spec over its class's defaults; ValueError names what is
        invalid."""
        ws = m.WorkspaceSpecModel.parse(spec)
        image = ws.server.image or klass.server.image
        repo, agent, idle, persistence = ws.repository, ws.agent, ws.idle, ws.persistence
        ports = [PortAccess(port=p.port, public=p.visibility == "public",
                            link=p.visibility == "link") for p in ws.access.ports]
        return cls(
            class_name=ws.class_name,
            running=ws.running,
            repository_url=repo.url,
            repository_ref=repo.ref or None,
            repository_credentials_ref=SecretKeyRef.optional(repo.credentials_secret_ref),
            devcontainer_path=ws.devcontainer.path,
            devcontainer_image=ws.devcontainer.image,
            own_image=bool(ws.server.image),
            server=ServerSettings(
                type=ws.server.type or klass.server.type,
                location=ws.server.location or klass.server.location,
                image=image,
                os_profile=os_profile_of(image, klass.image_os_profile),
            ),
            agent_kind=agent.kind,
            agent_credential=AgentCredential.of(agent, from_class=False)
            or klass.agent_credential,
            mcp_servers=tuple(
                McpServer(name=name, type=raw.type, command=raw.command, args=tuple(raw.args),
                          url=raw.url, env=dict(raw.env))
                for name, raw in sorted(agent.mcp_servers.items())),
            instructions=agent.instructions or "",
            idle=IdleSettings(
                timeout=_own_or(idle.timeout, klass.idle.timeout),
                grace=_own_or(idle.grace, klass.idle.grace),
                agent_busy_cap=_own_or(idle.agent_busy_cap, klass.idle.agent_busy_cap),
            ),
            lifetime_max=duration(ws.lifetime.max) or klass.lifetime_max
            or klass.limits.lifetime,
            pre_stop=ws.lifecycle.pre_stop or klass.pre_stop,
            pre_stop_timeout=_own_or(ws.lifecycle.pre_stop_timeout, klass.pre_stop_timeout),
            ports=tuple(p for p in ports if p.port not in klass.reserved_ports),
            refused_ports=tuple(sorted(p.port for p in ports
                                       if p.port in klass.reserved_ports)),
            persistence_enabled=persistence.enabled and klass.storage is not None,
            persistence_on_delete=persistence.on_delete,
            backup_interval=duration(persistence.schedule),
            ssh_keys=tuple(ws.ssh_keys),
            registry_credentials_ref=_registry_ref(
                ws.devcontainer.registry_credentials_secret_ref),
            wake_on_request=ws.wake.on_request,
            class_kind=ws.class_kind or m.CLASS_KIND,
        )


DOCKER_CONFIG_KEY = ".dockerconfigjson"
"""The key of a kubernetes.io/dockerconfigjson Secret."""


def _registry_ref(ref: m.RegistryCredentialsRef | None) -> SecretKeyRef | None:
    return None if ref is None else SecretKeyRef(name=ref.name, key=DOCKER_CONFIG_KEY)


def _own_or(own: str | None, inherited: timedelta) -> timedelta:
    """The workspace's own duration, or the one it inherits from its class."""
    return inherited if own is None else parse_duration(own)


def wants_running(spec: Mapping[str, Any]) -> bool:
    """spec.running, the user's intent (its default from the model), read even when
    the rest of the spec is invalid."""
    return m.RunIntent.parse(spec).running


@dataclass(frozen=True)
class WorkspaceRef:
    """Identity of one Workspace object."""

    namespace: str
    name: str
    uid: str
    generation: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkspaceRef:
        meta = body.get("metadata") or {}
        return cls(namespace=meta.get("namespace", ""), name=meta.get("name", ""),
                   uid=meta.get("uid", ""), generation=int(meta.get("generation") or 0))
