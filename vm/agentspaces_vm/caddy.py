"""Caddy: render the full JSON config from the template, and push it to the admin API.

`render_config` is pure: template text + inputs -> config dict. The template holds the
static parts (logging, metrics, server timeouts, the on-demand TLS skeleton); string
values of the form "{{name}}" are the places this module fills. Routes:

- the workspace host -> CloudCLI on 127.0.0.1:{uiPort} (the bind address instead when
  Caddy is bound to a loopback address: a sandbox "VM" lives on its own 127.0.0.N);
- {port}.{host} -> that port, for every discovered port and every public port; the
  VM's own ports (`reserved_ports`) never get a route, whatever the inputs say;
- every route except public ports asks the agent first (forward-auth to its local
  listener, `/web/auth`, decided by webauth.py: Origin policy, browser session or basic
  auth); any non-2xx answer goes back to the client and the request never reaches the
  program. `/.agentspaces/login` on those hosts is the agent's login form. Caddy adds
  the agent's front key to these calls, so the agent answers them only for Caddy (the
  container can reach the local listener too). Before the password hash has been
  delivered those routes answer 503 "workspace is starting" (never unauthenticated);
- any other host gets 404.

The user's credentials (Authorization, the session cookie and a share link's cookie) are
stripped before a request reaches a workspace program, so dev servers never see (or log)
them; a request carrying a share link's token in its query is answered by the agent
(a redirect without it, or 403) and never reaches the program either.

`CaddySync` writes the rendered config under the state directory (so Caddy can be
(re)started from it) and POSTs it to `/load` whenever it changes, retrying until the
admin API accepts it.
"""

from __future__ import annotations

import copy
import http.client
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVER_NAME = "workspace"
LOGIN_PATH = "/.agentspaces/login"  # webauth.LOGIN_PATH
AUTH_URI = "/web/auth"
LOGIN_URI = "/web/login"
FRONT_KEY_HEADER = "X-Agentspaces-Front-Key"
IDE_FRAMING = "frame-ancestors 'self'"
# Drops every copy of our session and share-link cookies (either name) from the Cookie
# header and keeps the others (an empty `;;` may remain; cookie parsers skip it).
SESSION_COOKIE_RE = r"(^|;)\s*(__Host-)?agentspaces-(session|share)=[^;]*"
_OMIT = object()


@dataclass(frozen=True)
class BasicAuth:
    """The delivered account; the agent checks passwords against it (webauth.py)."""

    username: str
    scrypt_hash: str  # password_hash.py format; the password itself never reaches the VM


@dataclass(frozen=True)
class AgentAuth:
    """Where Caddy asks the agent (its local listener) and the key that proves it is
    Caddy asking."""

    dial: str
    front_key: str

    def __repr__(self) -> str:
        return f"AgentAuth(dial={self.dial!r}, front_key=<redacted>)"


@dataclass(frozen=True)
class CaddyInputs:
    host: str
    admin_listen: str
    bind: str
    tls_mode: str  # acme | internal | none
    http_port: int
    https_port: int
    ui_port: int
    ask_endpoint: str
    ports: Mapping[int, str] = field(default_factory=dict)  # discovered port -> dial host
    public_ports: frozenset[int] = frozenset()
    # Set once a password hash is delivered; until then private routes answer 503.
    agent_auth: AgentAuth | None = None
    reserved_ports: frozenset[int] = frozenset()
    # Where the VM's own programs (CloudCLI, a public port not yet discovered) listen.
    upstream_host: str = "127.0.0.1"


class TemplateError(ValueError):
    pass


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _proxy(dial: str, strip_credentials: bool) -> dict[str, Any]:
    handler: dict[str, Any] = {"handler": "reverse_proxy", "upstreams": [{"dial": dial}]}
    if strip_credentials:
        handler["headers"] = {"request": {
            "delete": ["Authorization"],
            "replace": {"Cookie": [{"search_regexp": SESSION_COOKIE_RE, "replace": "${1}"}]},
        }}
    return handler


def _to_agent(agent: AgentAuth) -> dict[str, Any]:
    """A proxy to the agent's local listener carrying what Caddy alone knows (`set`
    overwrites anything the client sent under these names)."""
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": agent.dial}],
        "headers": {"request": {"set": {
            FRONT_KEY_HEADER: [agent.front_key],
            "X-Agentspaces-Client": ["{http.request.remote.host}"],
            "X-Agentspaces-Scheme": ["{http.request.scheme}"],
        }}},
    }


def _forward_auth(agent: AgentAuth) -> dict[str, Any]:
    """Caddy's own `forward_auth` shape (as `caddy adapt` emits it): ask the agent with
    a GET; a 2xx answer lets the route go on, any other is sent to the client."""
    handler = _to_agent(agent)
    handler["rewrite"] = {"method": "GET", "uri": AUTH_URI}
    handler["headers"]["request"]["set"].update({
        "X-Forwarded-Method": ["{http.request.method}"],
        "X-Forwarded-Uri": ["{http.request.uri}"],
        "X-Agentspaces-Upgrade": ["{http.request.header.Upgrade}"],
    })
    handler["handle_response"] = [{"match": {"status_code": [2]},
                                   "routes": [{"handle": [{"handler": "vars"}]}]}]
    return handler


def _login(agent: AgentAuth) -> dict[str, Any]:
    handler = _to_agent(agent)
    handler["rewrite"] = {"uri": f"{LOGIN_URI}?{{http.request.uri.query}}"}
    return handler


def _private(agent: AgentAuth | None, dial: str, *, ide: bool = False) -> list[dict[str, Any]]:
    if agent is None:
        return [{
            "handler": "static_response",
            "status_code": 503,
            "headers": {"Retry-After": ["10"], "Content-Type": ["text/plain; charset=utf-8"]},
            "body": "workspace is starting\n",
        }]
    upstream = _proxy(dial, strip_credentials=True)
    if ide:
        # A same-site page must not frame the IDE under the user's session to trick
        # clicks into it ("add": CloudCLI's own policy, if any, still applies).
        upstream["headers"]["response"] = {"add": {"Content-Security-Policy": [IDE_FRAMING]}}
    return [{"handler": "subroute", "routes": [
        {"match": [{"path": [LOGIN_PATH]}], "handle": [_login(agent)], "terminal": True},
        {"handle": [_forward_auth(agent), upstream]},
    ]}]


def build_routes(inputs: CaddyInputs) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = [{
        "@id": "ws-ui",
        "match": [{"host": [inputs.host]}],
        "handle": _private(inputs.agent_auth, _join(inputs.upstream_host, inputs.ui_port),
                           ide=True),
        "terminal": True,
    }]
    for port in sorted((set(inputs.ports) | set(inputs.public_ports)) - inputs.reserved_ports):
        dial = _join(inputs.ports.get(port, inputs.upstream_host), port)
        handle = ([_proxy(dial, strip_credentials=False)] if port in inputs.public_ports
                  else _private(inputs.agent_auth, dial))
        routes.append({
            "@id": f"ws-port-{port}",
            "match": [{"host": [f"{port}.{inputs.host}"]}],
            "handle": handle,
            "terminal": True,
        })
    routes.append({
        "@id": "ws-unknown-host",
        "handle": [{"handler": "static_response", "status_code": 404,
                    "body": "unknown host\n"}],
    })
    return routes


def _fill(node: Any, values: Mapping[str, Any], used: set[str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            filled = _fill(value, values, used)
            if filled is not _OMIT:
                out[key] = filled
        return out
    if isinstance(node, list):
        return [v for v in (_fill(item, values, used) for item in node) if v is not _OMIT]
    if isinstance(node, str) and node.startswith("{{") and node.endswith("}}"):
        name = node[2:-2].strip()
        if name not in values:
            raise TemplateError(f"Caddy template has an unknown placeholder {node!r}")
        used.add(name)
        value = values[name]
        return value if value is _OMIT else copy.deepcopy(value)
    return node


def render_config(template_text: str, inputs: CaddyInputs) -> dict[str, Any]:
    """The complete Caddy config for `inputs`, built on the template."""
    try:
        template = json.loads(template_text)
    except json.JSONDecodeError as exc:
        raise TemplateError(f"Caddy template is not JSON: {exc.msg} at line {exc.lineno}") from None
    if inputs.tls_mode not in ("acme", "internal", "none"):
        raise ValueError(f"unknown tls mode {inputs.tls_mode!r}")
    tls = inputs.tls_mode != "none"
    listen_port = inputs.https_port if tls else inputs.http_port
    values: dict[str, Any] = {
        "admin_listen": inputs.admin_listen,
        "admin_origins": admin_origins(inputs.admin_listen),
        "http_port": inputs.http_port,
        "https_port": inputs.https_port,
        "listen": [_join(inputs.bind, listen_port) if inputs.bind else f":{listen_port}"],
        "automatic_https": _OMIT if tls else {"disable": True},
        "routes": build_routes(inputs),
        "ask_endpoint": inputs.ask_endpoint,
        "issuers": [{"module": "internal"}] if inputs.tls_mode == "internal" else _OMIT,
    }
    used: set[str] = set()
    config = _fill(template, values, used)
    missing = {"admin_listen", "listen", "routes"} - used
    if missing:
        raise TemplateError(f"Caddy template lacks placeholders: {', '.join(sorted(missing))}")
    apps = config.get("apps", {})
    if not tls:
        apps.pop("tls", None)
        apps.pop("pki", None)
    elif inputs.tls_mode == "acme":
        apps.pop("pki", None)
    return config


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def admin_origins(admin_listen: str) -> list[str]:
    """Host values the admin API accepts: its own address plus the loopback names, so
    local readers (the agent, the activity tracker's /metrics scrape) all get in."""
    port = admin_listen.rpartition(":")[2]
    return list(dict.fromkeys([admin_listen, f"localhost:{port}", f"127.0.0.1:{port}"]))


class CaddyAdminError(RuntimeError):
    pass


class CaddyAdmin:
    """The few admin API calls the agent makes (stdlib http.client)."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._timeout = timeout
        # Caddy's admin API checks the Host header; for a loopback listener it always
        # accepts localhost:<port>, whatever 127.0.0.N it listens on.
        self._host_header = (f"localhost:{self._port}" if _is_loopback(self._host)
                             else address)

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            headers = {"Host": self._host_header}
            if body is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError as exc:
            raise CaddyAdminError(f"Caddy admin API unreachable: {exc}") from None
        finally:
            conn.close()

    def load(self, config: Mapping[str, Any]) -> None:
        status, body = self._request("POST", "/load", json.dumps(config).encode())
        if status != 200:
            raise CaddyAdminError(f"Caddy rejected the config ({status}): "
                                  f"{body.decode(errors='replace')[:500]}")

    def config(self) -> Any:
        status, body = self._request("GET", "/config/")
        if status != 200:
            raise CaddyAdminError(f"Caddy config read failed ({status})")
        return json.loads(body or b"null")


def write_private_json(path: Path, doc: Any) -> None:
    """Write JSON atomically with mode 0600 (the Caddy config carries the front key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class CaddySync:
    """Keeps Caddy running the desired config; safe to call from several threads."""

    def __init__(self, admin: CaddyAdmin, state_file: Path, resync_seconds: float = 60.0) -> None:
        self._admin = admin
        self._state_file = state_file
        self._resync = resync_seconds
        self._lock = threading.Lock()
        self._desired: dict[str, Any] | None = None
        self._loaded: dict[str, Any] | None = None
        self._last_check = float("-inf")
        self.last_error: str | None = None

    def apply(self, config: dict[str, Any], now: float) -> bool:
        """Push `config` if it differs from what Caddy runs; True when Caddy has it.

        Every `resync_seconds` the running config is read back, so a Caddy restart
        with an older file is noticed and corrected.
        """
        with self._lock:
            if config != self._desired:
                self._desired = config
                write_private_json(self._state_file, config)
            try:
                if self._loaded == config and now - self._last_check >= self._resync:
                    self._last_check = now
                    if self._admin.config() != config:
                        self._loaded = None
                if self._loaded != config:
                    self._admin.load(config)
                    self._loaded = config
                    self._last_check = now
                    log.info("caddy config loaded (%d routes)",
                             len(config["apps"]["http"]["servers"][SERVER_NAME]["routes"]))
                if self.last_error:
                    log.info("caddy admin API reachable again")
                self.last_error = None
                return True
            except (CaddyAdminError, ValueError) as exc:
                if str(exc) != self.last_error:
                    log.warning("caddy config not loaded yet: %s", exc)
                self.last_error = str(exc)
                return False
