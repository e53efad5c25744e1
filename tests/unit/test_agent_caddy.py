"""The Caddy config renderer and the sync that pushes it."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from agentspaces_vm.caddy import (
    FRONT_KEY_HEADER,
    SESSION_COOKIE_RE,
    AgentAuth,
    CaddyAdminError,
    CaddyInputs,
    CaddySync,
    TemplateError,
    admin_origins,
    render_config,
)
from agentspaces_vm.templates import load_template

HOST = "demo-default-1a2b3c.example.com"
AGENT = "127.0.0.1:9180"
TEMPLATE = load_template("caddy.json")


def inputs(**changes: Any) -> CaddyInputs:
    base: dict[str, Any] = dict(
        host=HOST, admin_listen="127.0.0.1:2019", bind="", tls_mode="acme", http_port=80,
        https_port=443, ui_port=3001, ask_endpoint="http://127.0.0.1:9180/ask",
        ports={3000: "127.0.0.1", 5173: "::1"}, public_ports=frozenset({8080}),
        agent_auth=AgentAuth(AGENT, "front-key"),
        reserved_ports=frozenset({22, 80, 443, 2019, 3001, 9180, 9443}))
    base.update(changes)
    return CaddyInputs(**base)


def routes_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    routes = config["apps"]["http"]["servers"]["workspace"]["routes"]
    return {r["@id"]: r for r in routes}


def handlers(route: dict[str, Any]) -> list[str]:
    return [h["handler"] for h in route["handle"]]


def private_routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    """The login form route and the forward-auth route of a private host."""
    [sub] = route["handle"]
    assert sub["handler"] == "subroute"
    routes: list[dict[str, Any]] = sub["routes"]
    return routes


def test_routes_cover_ui_discovered_and_public_ports_then_refuse_the_rest() -> None:
    config = render_config(TEMPLATE, inputs())
    routes = routes_of(config)
    assert list(routes) == ["ws-ui", "ws-port-3000", "ws-port-5173", "ws-port-8080",
                            "ws-unknown-host"]
    ui = routes["ws-ui"]
    assert ui["match"] == [{"host": [HOST]}]
    login, guarded = private_routes(ui)
    assert login["match"] == [{"path": ["/.agentspaces/login"]}] and login["terminal"]
    [to_agent] = login["handle"]
    assert to_agent["upstreams"] == [{"dial": AGENT}]
    assert to_agent["rewrite"] == {"uri": "/web/login?{http.request.uri.query}"}
    assert to_agent["headers"]["request"]["set"][FRONT_KEY_HEADER] == ["front-key"]
    ask, upstream = guarded["handle"]
    assert ask["upstreams"] == [{"dial": AGENT}]
    assert ask["rewrite"] == {"method": "GET", "uri": "/web/auth"}
    assert ask["handle_response"][0]["match"] == {"status_code": [2]}
    sent = ask["headers"]["request"]["set"]
    assert sent["X-Forwarded-Uri"] == ["{http.request.uri}"]
    assert sent["X-Agentspaces-Client"] == ["{http.request.remote.host}"]
    assert sent[FRONT_KEY_HEADER] == ["front-key"]
    assert "front-key" not in repr(inputs())
    assert upstream["upstreams"] == [{"dial": "127.0.0.1:3001"}]
    # The user's credentials are not forwarded to programs behind private routes.
    assert upstream["headers"]["request"]["delete"] == ["Authorization"]
    # Only the IDE refuses to be framed by other origins (dev servers decide themselves).
    assert upstream["headers"]["response"] == {
        "add": {"Content-Security-Policy": ["frame-ancestors 'self'"]}}
    port_upstream = private_routes(routes["ws-port-3000"])[1]["handle"][1]
    assert "response" not in port_upstream["headers"]
    assert upstream["headers"]["request"]["replace"]["Cookie"][0]["search_regexp"] == \
        SESSION_COOKIE_RE
    assert routes["ws-port-5173"]["match"] == [{"host": [f"5173.{HOST}"]}]
    assert private_routes(routes["ws-port-5173"])[1]["handle"][1]["upstreams"] == [
        {"dial": "[::1]:5173"}]
    public = routes["ws-port-8080"]
    assert handlers(public) == ["reverse_proxy"]
    assert public["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:8080"}]
    assert "headers" not in public["handle"][0]
    unknown = routes["ws-unknown-host"]
    assert "match" not in unknown and unknown["handle"][0]["status_code"] == 404


def test_without_the_hash_private_routes_answer_503_but_public_ones_work() -> None:
    routes = routes_of(render_config(TEMPLATE, inputs(agent_auth=None)))
    for route_id in ("ws-ui", "ws-port-3000", "ws-port-5173"):
        [only] = routes[route_id]["handle"]
        assert only["handler"] == "static_response" and only["status_code"] == 503
        assert only["body"] == "workspace is starting\n"
    assert handlers(routes["ws-port-8080"]) == ["reverse_proxy"]


def test_acme_mode_uses_on_demand_tls_with_the_agent_as_permission() -> None:
    config = render_config(TEMPLATE, inputs())
    server = config["apps"]["http"]["servers"]["workspace"]
    assert server["listen"] == [":443"]
    assert "automatic_https" not in server
    automation = config["apps"]["tls"]["automation"]
    assert automation["on_demand"] == {"permission": {
        "module": "http", "endpoint": "http://127.0.0.1:9180/ask"}}
    assert "ask" not in automation["on_demand"]
    assert automation["policies"] == [{"on_demand": True}]  # default ACME issuers
    assert "pki" not in config["apps"]
    assert config["apps"]["http"]["http_port"] == 80
    assert config["apps"]["http"]["https_port"] == 443
    assert config["apps"]["http"]["metrics"] == {"per_host": True}


def test_internal_mode_issues_locally_without_touching_the_trust_store() -> None:
    config = render_config(TEMPLATE, inputs(tls_mode="internal", bind="127.0.0.9",
                                            https_port=8443))
    assert config["apps"]["http"]["servers"]["workspace"]["listen"] == ["127.0.0.9:8443"]
    assert config["apps"]["tls"]["automation"]["policies"] == [
        {"on_demand": True, "issuers": [{"module": "internal"}]}]
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False


def test_none_mode_is_plain_http_on_the_http_port() -> None:
    config = render_config(TEMPLATE, inputs(tls_mode="none", bind="127.0.0.9",
                                            http_port=8080))
    server = config["apps"]["http"]["servers"]["workspace"]
    assert server["listen"] == ["127.0.0.9:8080"]
    assert server["automatic_https"] == {"disable": True}
    assert "tls" not in config["apps"] and "pki" not in config["apps"]


def test_admin_listener_and_origins() -> None:
    config = render_config(TEMPLATE, inputs(admin_listen="127.0.0.9:2999"))
    assert config["admin"]["listen"] == "127.0.0.9:2999"
    assert config["admin"]["origins"] == ["127.0.0.9:2999", "localhost:2999",
                                          "127.0.0.1:2999"]
    assert admin_origins("127.0.0.1:2019") == ["127.0.0.1:2019", "localhost:2019"]


def test_upstream_host_follows_a_sandbox_bind() -> None:
    routes = routes_of(render_config(TEMPLATE, inputs(upstream_host="127.0.0.9",
                                                      ports={})))
    upstream = private_routes(routes["ws-ui"])[1]["handle"][1]
    assert upstream["upstreams"] == [{"dial": "127.0.0.9:3001"}]
    assert routes["ws-port-8080"]["handle"][0]["upstreams"] == [{"dial": "127.0.0.9:8080"}]


def test_reserved_ports_get_no_route_even_when_public_or_discovered() -> None:
    routes = routes_of(render_config(TEMPLATE, inputs(
        ports={3000: "127.0.0.1", 9180: "127.0.0.1"},
        public_ports=frozenset({22, 80, 443, 2019, 3001, 9180, 9443, 8080}))))
    assert list(routes) == ["ws-ui", "ws-port-3000", "ws-port-8080", "ws-unknown-host"]


@pytest.mark.parametrize(("cookie", "left"), [
    ("agentspaces-session=abc", ""),
    ("a=1; agentspaces-session=abc; b=2", "a=1;; b=2"),
    ("__Host-agentspaces-session=abc; b=2", "; b=2"),
    ("a=1;agentspaces-session=x", "a=1;"),
    ("agentspaces-session=x; __Host-agentspaces-session=y", ";"),
    ("my-agentspaces-session=keep; xagentspaces-session=keep", None),
    # A share link's cookie, too (the token is a credential for the port).
    ("a=1; agentspaces-share=v1.3000.9.-.sig; b=2", "a=1;; b=2"),
    ("__Host-agentspaces-share=v1.3000.9.-.sig", ""),
    ("agentspaces-sharedthing=keep", None),
])
def test_the_session_cookie_is_cut_from_what_programs_see(cookie: str, left: str | None) -> None:
    # Caddy uses Go's RE2 with ${1}; this pattern means the same in Python's re.
    assert re.sub(SESSION_COOKIE_RE, r"\1", cookie) == (cookie if left is None else left)


def test_rendering_is_pure_and_leaves_no_placeholders() -> None:
    first = render_config(TEMPLATE, inputs())
    assert first == render_config(TEMPLATE, inputs())
    assert "{{" not in json.dumps(first)


def test_template_errors_are_clear() -> None:
    with pytest.raises(TemplateError, match="not JSON"):
        render_config("{", inputs())
    with pytest.raises(TemplateError, match="unknown placeholder"):
        render_config(json.dumps({"admin": "{{nope}}"}), inputs())
    with pytest.raises(TemplateError, match="lacks placeholders: listen, routes"):
        render_config(json.dumps({"admin": {"listen": "{{admin_listen}}"}}), inputs())
    with pytest.raises(ValueError, match="unknown tls mode"):
        render_config(TEMPLATE, inputs(tls_mode="magic"))


class FakeAdmin:
    def __init__(self) -> None:
        self.running: dict[str, Any] | None = None
        self.loads = 0
        self.down = False

    def load(self, config: dict[str, Any]) -> None:
        if self.down:
            raise CaddyAdminError("Caddy admin API unreachable: refused")
        self.loads += 1
        self.running = json.loads(json.dumps(config))

    def config(self) -> Any:
        if self.down:
            raise CaddyAdminError("Caddy admin API unreachable: refused")
        return self.running


def test_sync_posts_only_changes_retries_failures_and_repairs_drift(tmp_path: Path) -> None:
    admin = FakeAdmin()
    state = tmp_path / "caddy.json"
    sync = CaddySync(admin, state, resync_seconds=60)  # type: ignore[arg-type]
    one = render_config(TEMPLATE, inputs())
    two = render_config(TEMPLATE, inputs(public_ports=frozenset({9000})))

    admin.down = True
    assert sync.apply(one, now=0) is False
    assert sync.last_error and "unreachable" in sync.last_error
    assert json.loads(state.read_text()) == one  # written even before Caddy is up
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    admin.down = False
    assert sync.apply(one, now=1) is True and admin.loads == 1
    assert sync.apply(one, now=2) is True and admin.loads == 1   # unchanged: no POST
    assert sync.apply(two, now=3) is True and admin.loads == 2
    admin.running = {"apps": {}}                                  # e.g. Caddy restarted
    assert sync.apply(two, now=10) is True and admin.loads == 2   # not checked yet
    assert sync.apply(two, now=64) is True and admin.loads == 3   # resync noticed it
    assert admin.running == two
