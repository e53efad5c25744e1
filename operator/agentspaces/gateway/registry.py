"""The served workspaces by host, as the app looks them up on every request, and the
route each host has in the config Caddy last accepted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agentspaces.gateway.policy import port_label
from agentspaces.gateway.served import Route, Served


class Registry:
    def __init__(self) -> None:
        self._by_host: dict[str, Served] = {}
        self._routes: dict[str, Route] = {}  # the routes Caddy should run now
        self._loaded: dict[str, Route] = {}  # the routes Caddy accepted last

    def update(self, routed: Iterable[tuple[Served, Route]]) -> None:
        entries = list(routed)
        self._by_host = {ws.host: ws for ws, _ in entries}
        self._routes = {ws.host: route for ws, route in entries}

    def loaded(self, routes: Mapping[str, Route]) -> None:
        self._loaded = dict(routes)

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def find(self, hostname: str) -> tuple[Served, int | None] | None:
        """The workspace a request's host names, and the port for a `<port>.<host>`."""
        name = hostname.strip().lower().rstrip(".")
        ws = self._by_host.get(name)
        if ws is not None:
            return ws, None
        label, _, host = name.partition(".")
        ws = self._by_host.get(host)
        port = port_label(label)
        if ws is None or port is None:
            return None
        return ws, port

    def loaded_route(self, host: str) -> Route | None:
        return self._loaded.get(host)

    def certificate_hosts(self) -> dict[str, frozenset[int]]:
        """Hosts Caddy routes now, with the ports each declares (for the ask policy)."""
        return {host: frozenset(self._by_host[host].visibility) for host in self._routes}
