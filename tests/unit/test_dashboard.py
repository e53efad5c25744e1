"""The dashboard's pure parts: the view of a Workspace (through the typed models), the
create form's manifest (both kinds of class) and its admission-error mapping, sessions,
CSRF and origins, and escaping in the templates."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentspaces.api.model import WorkspaceSpecModel
from agentspaces.dashboard import assets, forms, security
from agentspaces.dashboard.app import ClassGroup, templates
from agentspaces.dashboard.views import ago, human_size, workspace_view

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def _ws(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo", "namespace": "team-a",
                     "creationTimestamp": "2026-12-01T10:00:00Z"},
        "spec": {"className": "sandbox", "repository": {"url": "https://github.com/o/app"},
                 "agent": {"instructions": "<script>alert(1)</script>"},
                 "access": {"ports": [{"port": 3000}, {"port": 8080,
                                                       "visibility": "public"}]}},
        "status": {"phase": "Running",
                   "urls": {"workspace": "https://demo.example.test",
                            "ports": "https://{port}.demo.example.test", "state": "live"},
                   "activity": {"idle": True, "idleSince": "2026-12-01T11:55:00Z",
                                "agentState": "absent"},
                   "usage": {"estimatedCost": "1.25", "currency": "USD"},
                   "vmCost": {"summary": "0.02 EUR"},
                   "backup": {"time": "2026-12-01T11:00:00Z", "size": 3 * 1024 * 1024},
                   **status},
    }


def test_view_reads_status_and_spec_through_the_models() -> None:
    view = workspace_view(_ws(), NOW)
    assert (view.name, view.namespace, view.phase) == ("demo", "team-a", "Running")
    assert view.url == "https://demo.example.test"
    assert view.idle == "idle 5m" and view.agent == "gone" and view.age == "2h"
    assert view.cost == "tokens 1.25 USD · VM 0.02 EUR"
    assert [(p.port, p.visibility, p.url) for p in view.ports] == [
        (3000, "private", "https://3000.demo.example.test"),
        (8080, "public", "https://8080.demo.example.test")]
    assert view.running and not view.stopped
    assert isinstance(view.spec, WorkspaceSpecModel)


def test_view_of_a_new_or_odd_workspace() -> None:
    raw = _ws()
    raw["status"] = {}
    raw["spec"]["repository"]["url"] = "not a url"
    view = workspace_view(raw, NOW)
    assert view.phase == "Pending" and view.url == "" and view.agent == ""
    assert view.spec is None and "repository.url" in view.spec_error


def test_small_formatters() -> None:
    assert ago(NOW - timedelta(seconds=59), NOW) == "59s"
    assert ago(NOW - timedelta(days=3, hours=5), NOW) == "3d"
    assert ago(None, NOW) == ""
    assert human_size(512) == "512 B" and human_size(3 * 1024 * 1024) == "3.0 MiB"


def test_form_becomes_a_workspace_the_model_accepts() -> None:
    body, form = forms.manifest({
        "namespace": "team-a", "name": "demo", "class_name": "sandbox",
        "repository_url": "https://github.com/o/app", "ref": "main",
        "ports": "3000, 8080:public", "idle_timeout": "45m",
        "instructions": "Run npm test\n", "api_key_secret": "anthropic",
        "mcp_servers": '{"docs": {"type": "http", "url": "https://mcp.example.com"}}'})
    assert body is not None and not form.errors
    assert body["metadata"] == {"name": "demo", "namespace": "team-a"}
    spec = WorkspaceSpecModel.parse(body["spec"])
    assert spec.repository.ref == "main" and spec.idle.timeout == "45m"
    assert [(p.port, p.visibility) for p in spec.access.ports] == [(3000, "private"),
                                                                   (8080, "public")]
    assert spec.agent.instructions == "Run npm test\n"
    assert spec.agent.api_key_secret_ref is not None
    assert spec.agent.mcp_servers["docs"].url == "https://mcp.example.com"


def test_form_errors_stay_with_their_fields() -> None:
    body, form = forms.manifest({"namespace": "a", "name": "", "class_name": "c",
                                 "repository_url": "https://x/y", "ports": "3000:open",
                                 "mcp_servers": "[1]"})
    assert body is None
    assert set(form.errors) == {"name", "ports", "mcp_servers"}
    body, _ = forms.manifest({"namespace": "a", "name": "n", "class_name": "c",
                              "repository_url": "https://x/y"})
    assert body is not None and "access" not in body["spec"] and "agent" not in body["spec"]


@pytest.mark.parametrize(("choice", "class_name", "class_kind"), [
    ("sandbox", "sandbox", None),
    ("NamespacedWorkspaceClass/gpu", "gpu", "NamespacedWorkspaceClass"),
])
def test_class_choice_becomes_class_name_and_kind(choice: str, class_name: str,
                                                  class_kind: str | None) -> None:
    body, form = forms.manifest({"namespace": "team-a", "name": "n", "class_name": choice,
                                 "repository_url": "https://github.com/o/app"})
    assert body is not None and not form.errors
    assert body["spec"]["className"] == class_name
    assert body["spec"].get("classKind") == class_kind
    spec = WorkspaceSpecModel.parse(body["spec"])
    assert (spec.class_name, spec.class_kind) == (class_name, class_kind)
    namespaced = class_kind is not None
    assert forms.parse_class_choice(forms.class_choice(class_name, namespaced)) == (
        class_name, class_kind)


@pytest.mark.parametrize("choice", ["WorkspaceClass/sandbox", "NamespacedWorkspaceClass/",
                                    "NamespacedWorkspaceClass/a/b", "/gpu",
                                    "namespacedworkspaceclass/gpu"])
def test_a_class_choice_the_form_cannot_encode_is_a_field_error(choice: str) -> None:
    body, form = forms.manifest({"namespace": "team-a", "name": "n", "class_name": choice,
                                 "repository_url": "https://github.com/o/app"})
    assert body is None
    assert list(form.errors) == ["class_name"]
    assert "NamespacedWorkspaceClass/NAME" in form.errors["class_name"][0]


@pytest.mark.parametrize(("path", "field"), [
    ("spec.className", "class_name"),
    ("spec.classKind", "class_name"),
    ("spec.repository.url", "repository_url"),
    ("spec.repository.ref", "ref"),
    ("spec.access.ports[0].port", "ports"),
    ("spec.idle.timeout", "idle_timeout"),
    ("metadata.name", "name"),
    ("spec.agent.mcpServers[docs]", "mcp_servers"),
    ("spec.server.type", None),
])
def test_admission_causes_map_to_form_fields(path: str, field: str | None) -> None:
    assert forms.field_for(path) == field


def test_admission_errors_are_placed() -> None:
    form = forms.CreateForm({})
    forms.add_api_errors(form, [{"field": "spec.repository.url", "message": "bad url"},
                                {"field": "spec.server", "message": "other"}], "invalid")
    assert form.errors == {"repository_url": ["bad url"]} and form.general == ["other"]
    form = forms.CreateForm({})
    forms.add_api_errors(form, [], "workspaces.agentspaces.dev \"x\" already exists")
    assert form.general == ["workspaces.agentspaces.dev \"x\" already exists"]


def test_sessions_expire_rotate_and_stay_bounded() -> None:
    sessions = security.Sessions(idle_seconds=60, limit=3)
    first = sessions.new()
    assert sessions.get(first.id) is first and sessions.get("nope") is None
    rotated = sessions.rotate(first)
    assert sessions.get(first.id) is None and rotated.csrf != first.csrf
    for _ in range(5):
        sessions.new()
    assert len(sessions) == 3
    stale = sessions.new()
    stale.last_seen -= 61
    assert sessions.get(stale.id) is None


def test_csrf_and_origin_checks() -> None:
    session = security.Sessions().new()
    assert security.csrf_ok(session, session.csrf)
    assert not security.csrf_ok(session, None) and not security.csrf_ok(session, "x")
    assert not security.csrf_ok(None, session.csrf)
    own = "http://127.0.0.1:8090"
    assert security.origin_ok(own, None, own)
    assert not security.origin_ok("http://evil.test", own + "/", own)
    assert security.origin_ok(None, own + "/workspaces", own)
    assert not security.origin_ok(None, "http://127.0.0.1:80900/x", own)
    assert not security.origin_ok(None, None, own)
    assert security.is_loopback("127.0.0.1") and security.is_loopback("::1")
    assert not security.is_loopback("0.0.0.0")
    assert security.cookie_options(True) == {"httponly": True, "samesite": "Strict",
                                             "secure": True, "path": "/"}


def test_templates_escape_what_the_cluster_holds() -> None:
    env = templates()
    view = workspace_view(_ws(conditions=[{"type": "Ready", "status": "False",
                                           "reason": "X", "message": "<img src=x onerror=1>"}]),
                          NOW)
    html = env.get_template("_live.html").render(ws=view)
    assert "<img src=x" not in html and "&lt;img src=x onerror=1&gt;" in html
    page = env.get_template("detail.html").render(ws=view, events=[{"message": "<b>e</b>"}],
                                                  namespace="<ns>", csrf="t", user="",
                                                  static={"css": "/c", "script": "/s"},
                                                  mode="kubeconfig")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>e</b>" not in page and "<ns>" not in page
    form = forms.CreateForm({name: "" for name in forms.FIELDS})
    new = env.get_template("new.html").render(
        form=form, class_groups=[ClassGroup('<ns>" x="', [("<v>", "<b>c</b>")])],
        classes_errors=["<i>no</i>"], namespace="", csrf="t", user="",
        static={"css": "/c", "script": "/s"}, mode="kubeconfig")
    assert '<optgroup label="&lt;ns&gt;&#34; x=&#34;">' in new
    assert '<option value="&lt;v&gt;">&lt;b&gt;c&lt;/b&gt;</option>' in new
    assert "<i>no</i>" not in new


def test_asset_pins_match_the_fetch_script() -> None:
    pins = assets.pinned()
    assert {a.package for a in pins} == {"htmx.org", "htmx-ext-sse"}
    assert all(a.integrity.startswith("sha512-") and a.version[0].isdigit() for a in pins)
    assert assets.assets_dir({"AGENTSPACES_CACHE": "/c"}).as_posix() == (
        f"/c/dashboard-assets/{assets.cache_key()}")
    assert assets.assets_dir({assets.ENV: "/x"}).as_posix() == "/x"


class _ScriptedApi:
    """Lists and watches as the apiserver answers them, one script per watch."""

    def __init__(self, watches: list[list[dict[str, Any]]]) -> None:
        self.watches = watches
        self.lists = 0

    async def list_workspaces(self, namespace: str | None, name: str | None = None
                              ) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return [_obj("a")], str(self.lists)

    async def watch_workspaces(self, namespace: str | None, rv: str,
                               name: str | None = None) -> Any:
        for event in self.watches.pop(0) if self.watches else []:
            yield event


def _obj(name: str, phase: str = "Running") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "n"}, "status": {"phase": phase}}


async def test_watched_state_follows_events_and_lists_again_after_expiry() -> None:
    from agentspaces.dashboard.app import _watched

    api = _ScriptedApi([
        [{"type": "ADDED", "object": _obj("b")}, {"type": "BOOKMARK", "object": {}},
         {"type": "MODIFIED", "object": _obj("a", "Stopped")},
         {"type": "DELETED", "object": _obj("b")},
         {"type": "ERROR", "object": {"code": 410}}],
    ])
    states = []
    async for state in _watched(api, "n", None):  # type: ignore[arg-type]
        states.append({k: v["status"]["phase"] for k, v in state.items()})  # type: ignore[union-attr]
        if len(states) == 5:
            break
    # The bookmark yields nothing; the expired watch (410) makes a fresh list.
    assert states == [{"n/a": "Running"}, {"n/a": "Running", "n/b": "Running"},
                      {"n/a": "Stopped", "n/b": "Running"}, {"n/a": "Stopped"},
                      {"n/a": "Running"}]
    assert api.lists == 2


def test_server_sent_event_framing() -> None:
    from agentspaces.dashboard.app import _sse

    assert _sse("table", "<p>a</p>\n<p>b</p>") == (
        b"event: table\ndata: <p>a</p>\ndata: <p>b</p>\n\n")
    assert _sse("live", "") == b"event: live\ndata: \n\n"


def test_cluster_from_a_token_kubeconfig_and_token_mode_drops_it(tmp_path: Any) -> None:
    import base64 as b64

    import yaml

    from agentspaces.controlplane import CertificateAuthority
    from agentspaces.dashboard.kubeapi import Cluster, Credentials

    ca = CertificateAuthority.create("test-ca")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {
            "server": "https://127.0.0.1:6443",
            "certificate-authority-data": b64.b64encode(ca.cert_pem).decode()}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                               "namespace": "team-a"}}]}))
    cluster = Cluster.from_kubeconfig(str(path))
    assert cluster.url == "https://127.0.0.1:6443"
    assert cluster.own().headers == {"Authorization": "Bearer t0ken"}
    bare = cluster.without_own_credentials()
    assert bare.own().headers == {} and bare.url == cluster.url
    assert len(bare.ssl_context.get_ca_certs()) == 1
    assert Credentials.bearer("x").impersonating("jane", ["dev", "ops"]).headers == {
        "Authorization": "Bearer x", "Impersonate-User": "jane",
        "Impersonate-Group": "dev,ops"}


def test_one_script_of_the_pinned_files_under_a_content_hashed_url(tmp_path: Any) -> None:
    from agentspaces.dashboard.app import static_files

    for n, asset in enumerate(assets.pinned()):
        (tmp_path / asset.file).write_text(f"/* vendor {n} */")
    files = static_files(tmp_path)
    url, body, kind = files["script"]
    assert kind == "text/javascript" and re.fullmatch(r"/static/script-[0-9a-f]{16}\.js", url)
    assert body.index(b"vendor 0") < body.index(b"vendor 1") < body.index(b"data-copy")
    (tmp_path / assets.pinned()[0].file).write_text("/* vendor 0, a new version */")
    assert static_files(tmp_path)["script"][0] != url
    assert files["css"][0].endswith(".css") and b"focus-visible" in files["css"][1]
