"""The URLs a workspace is reached at, as its VM serves them."""

from __future__ import annotations

from agentspaces.api.hostnames import port_host
from agentspaces.api.types import TlsSettings


def _origin(host: str, tls: TlsSettings) -> str:
    if tls.mode == "none":
        scheme, port, default = "http", tls.http_port, 80
    else:
        scheme, port, default = "https", tls.https_port, 443
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def workspace_url(host: str, tls: TlsSettings) -> str:
    """The workspace UI (CloudCLI behind basic auth)."""
    return _origin(host, tls) + "/"


def port_url(port: int, host: str, tls: TlsSettings) -> str:
    return _origin(port_host(port, host), tls) + "/"


def port_url_pattern(host: str, tls: TlsSettings) -> str:
    return _origin(port_host(0, host), tls).replace("://0.", "://{port}.", 1) + "/"
