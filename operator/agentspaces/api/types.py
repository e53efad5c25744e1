"""Typed, read-only views of Workspace and WorkspaceClass objects.

They read the fields `api.schema` declares (a unit test walks both to keep them in
step) and apply the class defaults a workspace inherits, so the domain layer never
digs through raw dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from agentspaces.api.durations import parse_duration
from agentspaces.api.schema import RESERVED_PORTS


def _get(obj: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return default
        cur = cur[key]
    return cur


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str
    namespace: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, default_key: str) -> SecretKeyRef | None:
        if not raw or not raw.get("name"):
            return None
        return cls(name=raw["name"], key=raw.get("key") or default_key,
                   namespace=raw.get("namespace"))


@dataclass(frozen=True)
class ServerSettings:
    type: str
    location: str
    image: str


@dataclass(frozen=True)
class IdleSettings:
    timeout: timedelta
    grace: timedelta
    agent_busy_cap: timedelta


@dataclass(frozen=True)
class PortAccess:
    port: int
    public: bool


@dataclass(frozen=True)
class McpServer:
    name: str
    type: str
    command: str | None = None
    args: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


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
class StorageSettings:
    endpoint: str
    bucket: str
    region: str
    addressing_style: str
    prefix: str
    keep: int
    credentials_ref: SecretKeyRef


@dataclass(frozen=True)
class ClassLimits:
    """What a workspace of the class may ask for (None: no limit of that kind)."""

    server_types: frozenset[str] | None = None
    images: frozenset[str] | None = None
    idle_timeout: timedelta | None = None
    agent_busy_cap: timedelta | None = None
    lifetime: timedelta | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> ClassLimits:
        raw = raw or {}

        def names(key: str) -> frozenset[str] | None:
            return frozenset(raw[key]) if key in raw else None

        def cap(key: str) -> timedelta | None:
            return parse_duration(raw[key]) if raw.get(key) else None

        return cls(server_types=names("serverTypes"), images=names("images"),
                   idle_timeout=cap("idleTimeout"), agent_busy_cap=cap("agentBusyCap"),
                   lifetime=cap("lifetime"))


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
    agent_source_ranges: tuple[str, ...] = ()
    """Where the agent port admits connections from (a firewall); empty: anywhere."""
    limits: ClassLimits = field(default_factory=ClassLimits)
    # spec.devcontainer.trustRepository: run a repository's devcontainer.json unvetted.
    trust_repository_devcontainer: bool = False

    @property
    def reserved_ports(self) -> frozenset[int]:
        """Ports of the VM's own services, including this class's own choices."""
        return frozenset({*RESERVED_PORTS, self.tls.http_port, self.tls.https_port,
                          self.agent_port})

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkspaceClass:
        spec = body.get("spec") or {}
        hetzner = spec.get("hetzner") or {}
        dns = spec.get("dns") or {}
        storage = spec.get("storage")
        idle = spec.get("idle") or {}
        zone = dns.get("zoneName", "")
        token_ref = SecretKeyRef.parse(hetzner.get("tokenSecretRef"), "token")
        dns_token_ref = SecretKeyRef.parse(dns.get("tokenSecretRef"), "token")
        if token_ref is None or dns_token_ref is None:
            raise ValueError("WorkspaceClass needs hetzner.tokenSecretRef and dns.tokenSecretRef")
        lifetime = _get(spec, "lifetime", "max")
        return cls(
            name=_get(body, "metadata", "name", default=""),
            hetzner_token_ref=token_ref,
            hetzner_endpoint=hetzner.get("endpoint") or "https://api.hetzner.cloud/v1",
            server=ServerSettings(
                type=_get(spec, "server", "type", default="cx23"),
                location=_get(spec, "server", "location", default="fsn1"),
                image=_get(spec, "server", "image", default="ubuntu-24.04"),
            ),
            dns=DnsSettings(
                zone_name=zone,
                base_domain=dns.get("baseDomain") or zone,
                token_ref=dns_token_ref,
                endpoint=dns.get("endpoint") or "https://api.cloudflare.com/client/v4",
                proxied=bool(dns.get("proxied", False)),
                ttl=int(dns.get("ttl", 60)),
                txt_registry=bool(_get(dns, "txtRegistry", "enabled", default=False)),
                txt_owner_id=_get(dns, "txtRegistry", "ownerId"),
            ),
            tls=TlsSettings(
                mode=_get(spec, "tls", "mode", default="acme"),
                http_port=int(_get(spec, "tls", "httpPort", default=80)),
                https_port=int(_get(spec, "tls", "httpsPort", default=443)),
            ),
            storage=None if not storage else StorageSettings(
                endpoint=storage["endpoint"],
                bucket=storage["bucket"],
                region=storage.get("region") or "auto",
                addressing_style=storage.get("addressingStyle") or "path",
                prefix=storage.get("prefix", "agentspaces/"),
                keep=int(storage.get("keep", 3)),
                credentials_ref=SecretKeyRef.parse(storage.get("credentialsSecretRef"),
                                                   "accessKeyId")  # type: ignore[arg-type]
            ),
            encryption_key_ref=SecretKeyRef.parse(_get(spec, "encryption", "keySecretRef"),
                                                  "key"),
            idle=IdleSettings(
                timeout=parse_duration(idle.get("timeout", "30m")),
                grace=parse_duration(idle.get("grace", "5m")),
                agent_busy_cap=parse_duration(idle.get("agentBusyCap", "6h")),
            ),
            lifetime_max=parse_duration(lifetime) if lifetime else None,
            agent_port=int(_get(spec, "agent", "port", default=9443)),
            agent_source_ranges=tuple(_get(spec, "agent", "sourceRanges", default=[]) or ()),
            limits=ClassLimits.parse(spec.get("limits")),
            trust_repository_devcontainer=bool(
                _get(spec, "devcontainer", "trustRepository", default=False)),
        )


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
    agent_kind: str
    api_key_ref: SecretKeyRef | None
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

    @property
    def public_ports(self) -> tuple[int, ...]:
        return tuple(sorted(p.port for p in self.ports if p.public))

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], klass: WorkspaceClass) -> WorkspaceSpec:
        repo = spec.get("repository") or {}
        agent = spec.get("agent") or {}
        idle = spec.get("idle") or {}
        persistence = spec.get("persistence") or {}
        lifetime = _get(spec, "lifetime", "max")
        schedule = persistence.get("schedule")
        ports = [PortAccess(port=int(p["port"]), public=p.get("visibility") == "public")
                 for p in _get(spec, "access", "ports", default=[]) or []]
        mcp = tuple(
            McpServer(name=name, type=raw.get("type", "stdio"), command=raw.get("command"),
                      args=tuple(raw.get("args") or ()), url=raw.get("url"),
                      env=dict(raw.get("env") or {}))
            for name, raw in sorted((agent.get("mcpServers") or {}).items())
        )
        return cls(
            class_name=spec.get("className", ""),
            running=bool(spec.get("running", True)),
            repository_url=repo.get("url", ""),
            repository_ref=repo.get("ref") or None,
            repository_credentials_ref=SecretKeyRef.parse(repo.get("credentialsSecretRef"),
                                                          "token"),
            devcontainer_path=_get(spec, "devcontainer", "path"),
            devcontainer_image=_get(spec, "devcontainer", "image"),
            server=ServerSettings(
                type=_get(spec, "server", "type") or klass.server.type,
                location=_get(spec, "server", "location") or klass.server.location,
                image=_get(spec, "server", "image") or klass.server.image,
            ),
            agent_kind=agent.get("kind", "claude-code"),
            api_key_ref=SecretKeyRef.parse(agent.get("apiKeySecretRef"), "apiKey"),
            mcp_servers=mcp,
            instructions=agent.get("instructions", ""),
            idle=IdleSettings(
                timeout=parse_duration(idle["timeout"]) if "timeout" in idle
                else klass.idle.timeout,
                grace=parse_duration(idle["grace"]) if "grace" in idle else klass.idle.grace,
                agent_busy_cap=parse_duration(idle["agentBusyCap"]) if "agentBusyCap" in idle
                else klass.idle.agent_busy_cap,
            ),
            lifetime_max=parse_duration(lifetime) if lifetime
            else klass.lifetime_max or klass.limits.lifetime,
            ports=tuple(p for p in ports if p.port not in klass.reserved_ports),
            refused_ports=tuple(sorted(p.port for p in ports
                                       if p.port in klass.reserved_ports)),
            persistence_enabled=bool(persistence.get("enabled", True))
            and klass.storage is not None,
            persistence_on_delete=persistence.get("onDelete", "Retain"),
            backup_interval=parse_duration(schedule) if schedule else None,
            ssh_keys=tuple(spec.get("sshKeys") or ()),
        )


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
