"""agent.json: load and validate the agent's configuration into a frozen dataclass.

Every problem is reported with the JSON path of the offending field, so a bad
user-data render fails the agent's start with a message that says what to fix.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentspaces_vm.connections import API_LIMITS, ConnectionLimits

log = logging.getLogger(__name__)

SUPPORTED_VERSION = 1
TLS_MODES = ("acme", "internal", "none")
# Where Claude Code in the devcontainer comes from (the class's devcontainer.claudeCode).
CLAUDE_CODE_SOURCES = ("feature", "npm")
DEFAULT_DISCOVERY_ADDRESSES = ("0.0.0.0", "::", "127.0.0.1", "::1")
SSH_PORT = 22
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class ConfigError(ValueError):
    """agent.json is missing, unreadable or invalid; the message names the field."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkspaceRef:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class CaddySettings:
    admin: Address
    bind: str
    tls_mode: str
    http_port: int
    https_port: int
    ui_port: int


@dataclass(frozen=True)
class Paths:
    workspaces: Path
    state: Path

    @property
    def secrets(self) -> Path:
        return self.state / "secrets"


@dataclass(frozen=True)
class Repository:
    url: str
    ref: str | None
    devcontainer_path: str | None
    devcontainer_image: str | None
    # The class lets the repository's devcontainer.json run unvetted (host commands,
    # privileges); off, devcontainer_policy decides what of it runs.
    trust_devcontainer: bool = False


@dataclass(frozen=True)
class PortDiscovery:
    addresses: tuple[str, ...]
    interval_seconds: float


@dataclass(frozen=True)
class Tools:
    git: str
    devcontainer: str
    npm: str = "npm"


@dataclass(frozen=True)
class ContainerUser:
    uid: int
    gid: int


@dataclass(frozen=True)
class AgentConfig:
    version: int
    workspace: WorkspaceRef
    host: str
    api_listen: Address
    local_listen: Address
    tls_cert: Path
    tls_key: Path
    token_sha256: str
    caddy: CaddySettings
    public_ports: tuple[int, ...]
    paths: Paths
    repository: Repository | None
    simulate: bool
    port_discovery: PortDiscovery
    activity_poll_seconds: float
    tools: Tools
    container_user: ContainerUser
    # Claude Code seeds cloud-init writes (settings.json, CLAUDE.md, mcp.json); by
    # default the `claude/` directory next to agent.json.
    claude_seed_dir: Path | None
    api_limits: ConnectionLimits = API_LIMITS
    # "feature": the devcontainer feature; "npm": the agent installs Claude Code on the
    # VM (agentspaces_vm.claude_install) and mounts it into the container.
    claude_code: str = "feature"

    @property
    def internal_ports(self) -> frozenset[int]:
        """Ports the VM's own services use; never routed as workspace ports, neither
        discovered nor public (a public 3001 would put CloudCLI online unauthenticated)."""
        return frozenset({
            self.api_listen.port, self.local_listen.port, self.caddy.admin.port,
            self.caddy.http_port, self.caddy.https_port, self.caddy.ui_port, SSH_PORT,
        })

    def routable_public_ports(self, ports: Iterable[int], where: str) -> tuple[int, ...]:
        """`ports` without the VM's own; what is dropped is logged, never routed."""
        ports = tuple(ports)
        dropped = sorted(set(ports) & self.internal_ports)
        if dropped:
            log.warning("%s: ignoring reserved ports %s", where, ", ".join(map(str, dropped)))
        return tuple(p for p in ports if p not in self.internal_ports)

    @property
    def local_url(self) -> str:
        return f"http://{self.local_listen}"


class _Reader:
    """Typed access to a JSON object that records the path for error messages."""

    def __init__(self, obj: object, path: str) -> None:
        if not isinstance(obj, Mapping):
            raise ConfigError(f"{path or 'agent.json'}: expected an object")
        self.obj: Mapping[str, Any] = obj
        self.path = path

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def child(self, key: str, required: bool = True) -> _Reader | None:
        if key not in self.obj or self.obj[key] is None:
            if required:
                raise ConfigError(f"{self._where(key)}: required")
            return None
        return _Reader(self.obj[key], self._where(key))

    def text(self, key: str, required: bool = True, default: str | None = None,
            allow_empty: bool = False) -> str | None:
        value = self.obj.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{self._where(key)}: required")
            return default
        if not isinstance(value, str) or (not value and not allow_empty):
            raise ConfigError(f"{self._where(key)}: expected a non-empty string")
        return value

    def integer(self, key: str, default: int | None = None, low: int = 1, high: int = 65535) -> int:
        value = self.obj.get(key, default)
        if value is None:
            raise ConfigError(f"{self._where(key)}: required")
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{self._where(key)}: expected an integer in {low}..{high}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.obj.get(key, default)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not low <= value <= high):
            raise ConfigError(f"{self._where(key)}: expected a number in {low}..{high}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.obj.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self._where(key)}: expected true or false")
        return value

    def texts(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.obj.get(key)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self._where(key)}: expected a list of strings")
        return tuple(value)

    def address(self, key: str) -> Address:
        text = self.text(key)
        assert text is not None
        try:
            return parse_address(text)
        except ValueError as exc:
            raise ConfigError(f"{self._where(key)}: {exc}") from None


def parse_address(text: str) -> Address:
    """`host:port` or `[v6]:port` with an explicit host and a port in 1..65535."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", text)
    if not match:
        raise ValueError(f"expected host:port, got {text!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return Address(host, port)


def validate_ports(value: object, where: str) -> tuple[int, ...]:
    """A list of distinct TCP ports, returned sorted. Shared with PUT /v1/config."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of ports")
    ports = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 65535:
            raise ConfigError(f"{where}: {item!r} is not a port in 1..65535")
        ports.add(item)
    return tuple(sorted(ports))


CA_BUNDLE_LIMIT = 128 * 1024  # the class allows 64 KiB of PEM; re-encoding may add a little
_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----")


def validate_ca_bundle(value: object, where: str) -> tuple[str, ...]:
    """The class's extra CA certificates (PUT /v1/config `caBundle`): each PEM block,
    re-wrapped. Nothing but certificates may be in the text (it goes into the system
    trust store); None or absent is no bundle."""
    if value is None:
        return ()
    if not isinstance(value, str) or len(value) > CA_BUNDLE_LIMIT:
        raise ConfigError(f"{where}: expected PEM certificates, at most {CA_BUNDLE_LIMIT} "
                          "characters")
    certificates: list[str] = []
    for match in _PEM_CERTIFICATE.finditer(value):
        body = re.sub(r"\s+", "", match.group(1))
        try:
            der = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            der = b""
        if not der.startswith(b"\x30"):  # an X.509 certificate is a DER SEQUENCE
            raise ConfigError(f"{where}: certificate {len(certificates) + 1} is not base64 DER")
        lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
        certificates.append(f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n")
    if not certificates or _PEM_CERTIFICATE.sub("", value).strip():
        raise ConfigError(f"{where}: expected PEM certificates and nothing else")
    return tuple(certificates)


def _seed_dir(explicit: str | None, base_dir: Path | None) -> Path | None:
    if explicit is not None:
        if not Path(explicit).is_absolute():
            raise ConfigError("claudeSeedDir: expected an absolute path")
        return Path(explicit)
    return base_dir / "claude" if base_dir is not None else None


def parse_config(doc: object, base_dir: Path | None = None) -> AgentConfig:
    """Validate a decoded agent.json; raise ConfigError naming the first bad field.

    `base_dir` is the directory agent.json was read from (it locates the Claude seeds).
    """
    root = _Reader(doc, "")
    version = root.integer("version", low=1, high=1_000_000)
    if version != SUPPORTED_VERSION:
        raise ConfigError(f"version: this agent understands version {SUPPORTED_VERSION}, "
                          f"got {version}")
    ws = root.child("workspace")
    assert ws is not None
    host = (root.text("host") or "").lower().rstrip(".")
    if not _HOST.match(host):
        raise ConfigError(f"host: {host!r} is not a DNS name")
    listen = root.child("listen")
    tls = root.child("tls")
    caddy = root.child("caddy")
    paths = root.child("paths")
    assert listen and tls and caddy and paths
    token_sha256 = (root.text("tokenSha256") or "").lower()
    if not _HEX64.match(token_sha256):
        raise ConfigError("tokenSha256: expected 64 hex digits")
    tls_mode = caddy.text("tlsMode")
    if tls_mode not in TLS_MODES:
        raise ConfigError(f"caddy.tlsMode: expected one of {', '.join(TLS_MODES)}")
    caddy_settings = CaddySettings(
        admin=caddy.address("admin"),
        bind=caddy.text("bind", required=False, default="", allow_empty=True) or "",
        tls_mode=tls_mode,
        http_port=caddy.integer("httpPort", default=80),
        https_port=caddy.integer("httpsPort", default=443),
        ui_port=caddy.integer("uiPort", default=3001),
    )
    public_ports = validate_ports(root.obj.get("publicPorts", []), "publicPorts")
    discovery = root.child("portDiscovery", required=False) or _Reader({}, "portDiscovery")
    tools = root.child("tools", required=False) or _Reader({}, "tools")
    user = root.child("containerUser", required=False) or _Reader({}, "containerUser")
    config = AgentConfig(
        version=version,
        workspace=WorkspaceRef(
            name=ws.text("name") or "", namespace=ws.text("namespace") or "",
            uid=ws.text("uid", required=False, default="") or ""),
        host=host,
        api_listen=listen.address("api"),
        local_listen=listen.address("local"),
        tls_cert=Path(tls.text("cert") or ""),
        tls_key=Path(tls.text("key") or ""),
        token_sha256=token_sha256,
        caddy=caddy_settings,
        public_ports=public_ports,
        paths=Paths(workspaces=Path(paths.text("workspaces") or ""),
                    state=Path(paths.text("state") or "")),
        repository=_repository(root.child("repository", required=False)),
        simulate=root.flag("simulate", False),
        port_discovery=PortDiscovery(
            addresses=discovery.texts("addresses", DEFAULT_DISCOVERY_ADDRESSES),
            interval_seconds=discovery.number("intervalSeconds", 2.0, 0.05, 300.0)),
        activity_poll_seconds=root.number("activityPollSeconds", 5.0, 0.05, 300.0),
        tools=Tools(git=tools.text("git", required=False, default="git") or "git",
                    devcontainer=tools.text("devcontainer", required=False,
                                           default="devcontainer") or "devcontainer",
                    npm=tools.text("npm", required=False, default="npm") or "npm"),
        container_user=ContainerUser(uid=user.integer("uid", default=1000, low=0, high=2**31),
                                     gid=user.integer("gid", default=1000, low=0, high=2**31)),
        claude_seed_dir=_seed_dir(root.text("claudeSeedDir", required=False), base_dir),
        api_limits=_api_limits(root.child("apiLimits", required=False)),
        claude_code=_claude_code(root.text("claudeCode", required=False, default="feature")),
    )
    _check_paths(config)
    config = replace(config, public_ports=config.routable_public_ports(public_ports,
                                                                       "publicPorts"))
    if not config.local_listen.host.startswith("127.") and config.local_listen.host != "::1":
        raise ConfigError("listen.local: must be a loopback address (it serves unauthenticated "
                          "Caddy permission checks)")
    return config


def _claude_code(value: str | None) -> str:
    if value not in CLAUDE_CODE_SOURCES:
        raise ConfigError(f"claudeCode: expected one of {', '.join(CLAUDE_CODE_SOURCES)}")
    return value


def _api_limits(reader: _Reader | None) -> ConnectionLimits:
    """Optional `apiLimits` (tests shorten the deadlines); defaults are API_LIMITS."""
    if reader is None:
        return API_LIMITS
    d = API_LIMITS
    return ConnectionLimits(
        max_connections=reader.integer("maxConnections", d.max_connections, 1, 4096),
        per_address=reader.integer("perAddress", d.per_address, 1, 4096),
        header_seconds=reader.number("headerSeconds", d.header_seconds, 0.1, 300.0),
        idle_seconds=reader.number("idleSeconds", d.idle_seconds, 0.1, 300.0),
        body_floor_seconds=reader.number("bodyFloorSeconds", d.body_floor_seconds, 0.1, 300.0),
        body_bytes_per_second=reader.integer("bodyBytesPerSecond", d.body_bytes_per_second,
                                             1024, 1 << 30),
        write_seconds=reader.number("writeSeconds", d.write_seconds, 0.1, 300.0),
    )


def _repository(reader: _Reader | None) -> Repository | None:
    if reader is None:
        return None
    url = reader.text("url") or ""
    if not re.match(r"^(https://|http://|file://|ssh://|git@)", url):
        raise ConfigError("repository.url: expected an https://, ssh://, git@ or file:// URL")
    ref = reader.text("ref", required=False)
    if ref is not None and (ref.startswith("-") or any(c.isspace() for c in ref)):
        raise ConfigError("repository.ref: expected a branch, tag or commit")
    return Repository(
        url=url,
        ref=ref,
        devcontainer_path=reader.text("devcontainerPath", required=False),
        devcontainer_image=reader.text("devcontainerImage", required=False),
        trust_devcontainer=reader.flag("trustDevcontainer", False),
    )


def _check_paths(config: AgentConfig) -> None:
    for where, path in (("tls.cert", config.tls_cert), ("tls.key", config.tls_key),
                        ("paths.workspaces", config.paths.workspaces),
                        ("paths.state", config.paths.state)):
        if not path.is_absolute():
            raise ConfigError(f"{where}: expected an absolute path")
    repo = config.repository
    inside = Path(repo.devcontainer_path) if repo and repo.devcontainer_path else None
    if inside is not None and (inside.is_absolute() or ".." in inside.parts):
        raise ConfigError("repository.devcontainerPath: expected a path inside the repository")


def load_config(path: Path) -> AgentConfig:
    """Read and validate agent.json."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_config(doc, base_dir=path.resolve().parent)
