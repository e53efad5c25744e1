"""The gateway's whole Caddy config (JSON, for POST /load), built from the routes (pure).

One Caddy server per listening port: every served workspace's URLs name its class's
port (https_port with TLS, http_port for tls mode none), so the gateway listens where
the URLs point, on the default 80 and 443 and on any other port a class uses. Per
workspace, the host and `*.host`:

- gateway route: reverse proxy to the gateway app on loopback, the Host kept, with
  the client address, the scheme and a per-process key the app checks (Caddy `set`s
  them, overwriting whatever a client sent);
- server route: `/.agentspaces/gateway/*` still to the app (an open waking page polls
  it), everything else to the new server at its IPv4 on the class's port, the Host
  kept. For tls mode acme the server's certificate is verified normally against the
  host name; for tls mode internal (the sandbox's own CA on the VM) verification is
  skipped, which that mode accepts anyway.

A TLS-mode host also gets a redirect to HTTPS on the plain port. Anything else: 404.
Certificates are on demand: Caddy asks the gateway app (`ask`) before getting one;
hosts of tls mode internal come from Caddy's own CA, the others from ACME.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agentspaces.gateway.served import Route, RouteKind, Served
from agentspaces_vm.caddy import admin_origins

GATEWAY_PREFIX = "/.agentspaces/gateway/"
FRONT_KEY_HEADER = "X-Agentspaces-Gateway-Key"
CLIENT_HEADER = "X-Agentspaces-Client"
SCHEME_HEADER = "X-Agentspaces-Scheme"


@dataclass(frozen=True)
class CaddySettings:
    admin_listen: str  # loopback host:port of Caddy's admin API
    app_dial: str  # loopback host:port of the gateway app
    front_key: str
    ask_endpoint: str
    bind: str = ""  # address of the public listeners; "" = every interface
    http_port: int = 80
    https_port: int = 443
    # CA files to trust besides the system's when proxying to acme-mode servers.
    upstream_ca_files: tuple[str, ...] = ()
    # Proxies whose X-Forwarded-For names the client (e.g. Cloudflare's ranges).
    trusted_proxies: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"CaddySettings(admin={self.admin_listen!r}, app={self.app_dial!r}, ...)"


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _names(ws: Served) -> list[str]:
    return [ws.host, f"*.{ws.host}"]


def _to_app(s: CaddySettings) -> dict[str, Any]:
    return {"handler": "reverse_proxy", "upstreams": [{"dial": s.app_dial}],
            "headers": {"request": {"set": {
                FRONT_KEY_HEADER: [s.front_key],
                CLIENT_HEADER: ["{http.vars.client_ip}"],
                SCHEME_HEADER: ["{http.request.scheme}"],
            }}}}


def _to_server(ws: Served, s: CaddySettings) -> dict[str, Any]:
    assert ws.server_ipv4 is not None
    klass = ws.klass
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": _join(ws.server_ipv4, klass.listen_port)}],
        # Spelled out: to a TLS upstream Caddy would send the upstream's address instead.
        "headers": {"request": {"set": {"Host": ["{http.request.hostport}"]}}},
    }
    if klass.tls:
        # The server's Caddy picks its certificate by SNI: send the workspace's name.
        tls: dict[str, Any] = {"server_name": "{http.request.host}"}
        if klass.tls_mode == "internal":
            # Only for tls mode internal (the sandbox): the VM's certificate comes from
            # its own Caddy CA, which nothing outside that VM trusts.
            tls["insecure_skip_verify"] = True
        elif s.upstream_ca_files:
            tls["ca"] = {"provider": "file", "pem_files": list(s.upstream_ca_files)}
        proxy["transport"] = {"protocol": "http", "tls": tls}
    return {"handler": "subroute", "routes": [
        {"match": [{"path": [GATEWAY_PREFIX + "*"]}], "handle": [_to_app(s)],
         "terminal": True},
        {"handle": [proxy]},
    ]}


def _redirect(ws: Served) -> dict[str, Any]:
    port = "" if ws.klass.https_port == 443 else f":{ws.klass.https_port}"
    return {"match": [{"host": _names(ws)}], "terminal": True, "handle": [{
        "handler": "static_response", "status_code": 308,
        "headers": {"Location": [f"https://{{http.request.host}}{port}{{http.request.uri}}"]},
    }]}


def _not_found() -> dict[str, Any]:
    return {"handle": [{"handler": "static_response", "status_code": 404,
                        "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                        "body": "unknown host\n"}]}


def _server(s: CaddySettings, port: int, tls: bool, routes: list[dict[str, Any]]
            ) -> dict[str, Any]:
    server: dict[str, Any] = {
        "listen": [_join(s.bind, port) if s.bind else f":{port}"],
        "read_header_timeout": "10s",
        "idle_timeout": "5m",
        "routes": [*routes, _not_found()],
        # Names, redirects and certificates are all spelled out here and in the tls app.
        "automatic_https": {"disable": True},
    }
    if tls:
        server["tls_connection_policies"] = [{}]
    if s.trusted_proxies:
        server["trusted_proxies"] = {"source": "static", "ranges": list(s.trusted_proxies)}
    return server


def build_config(s: CaddySettings, routed: Iterable[tuple[Served, Route]]) -> dict[str, Any]:
    """The complete config; deterministic for the same input (so equal means unchanged)."""
    entries = sorted(routed, key=lambda item: item[0].host)
    tls_ports = {s.https_port} | {ws.klass.https_port for ws, _ in entries if ws.klass.tls}
    plain_ports = ({s.http_port} | {ws.klass.http_port for ws, _ in entries}) - tls_ports
    routes: dict[int, list[dict[str, Any]]] = {p: [] for p in tls_ports | plain_ports}
    internal_names: list[str] = []
    for ws, route in entries:
        handle = _to_app(s) if route.kind is RouteKind.GATEWAY else _to_server(ws, s)
        entry = {"match": [{"host": _names(ws)}], "handle": [handle], "terminal": True}
        if ws.klass.tls:
            routes[ws.klass.https_port].append(entry)
            if ws.klass.http_port in plain_ports:
                routes[ws.klass.http_port].append(_redirect(ws))
            if ws.klass.tls_mode == "internal":
                internal_names += _names(ws)
        elif ws.klass.http_port in plain_ports:
            routes[ws.klass.http_port].append(entry)
        # else: a plain class on a port another class serves with TLS; not reachable.
    servers = {f"gateway-{port}": _server(s, port, port in tls_ports, routes[port])
               for port in sorted(routes)}
    return {
        "admin": {"listen": s.admin_listen, "origins": admin_origins(s.admin_listen),
                  "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "INFO", "writer": {"output": "stderr"},
                                         "encoder": {"format": "json"}}}},
        "apps": {
            "http": {"http_port": s.http_port, "https_port": s.https_port,
                     "servers": servers},
            "tls": {"automation": {
                "on_demand": {"permission": {"module": "http", "endpoint": s.ask_endpoint}},
                "policies": _tls_policies(internal_names),
            }},
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }


def _tls_policies(internal_names: Sequence[str]) -> list[dict[str, Any]]:
    policies: list[dict[str, Any]] = []
    if internal_names:
        policies.append({"subjects": list(internal_names), "on_demand": True,
                         "issuers": [{"module": "internal"}]})
    policies.append({"on_demand": True})  # everything else: ACME
    return policies
