"""The dashboard's web app in process, against a small stand-in apiserver that records
what it is asked: CSRF and origin checks, the session cookie, escaping on the list
page, the password only on a POST, admission errors next to their field, the
user's own credentials on every call, and the create form's two kinds of class. The
real apiserver is in tests/browser/."""

from __future__ import annotations

import html as htmllib
import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agentspaces.dashboard import assets
from agentspaces.dashboard.app import Settings, create_app
from agentspaces.dashboard.kubeapi import Cluster, Credentials

WS = {"metadata": {"name": "x", "namespace": "default", "resourceVersion": "7",
                   "creationTimestamp": "2026-12-01T10:00:00Z"},
      "spec": {"className": "c", "repository": {"url": "https://github.com/o/app"},
               "agent": {"instructions": "<script>window.owned=1</script>"}},
      "status": {"phase": "Running", "conditions": [
          {"type": "Ready", "status": "False", "reason": "Waiting",
           "message": "<img src=x onerror=alert(1)>"}]}}


class FakeApiserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        # NamespacedWorkspaceClass names per namespace; None: listing them is forbidden.
        self.namespaced_classes: dict[str, list[str]] | None = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.calls.append((request.method, request.path, dict(request.headers), body))
        path = request.path
        token = request.headers.get("Authorization", "")
        if path.endswith("/selfsubjectreviews"):
            if token not in ("Bearer good", "Bearer expired"):
                return web.json_response({"message": "Unauthorized"}, status=401)
            return web.json_response({"status": {"userInfo": {"username": "jane"}}})
        if token == "Bearer expired":
            return web.json_response({"message": "Unauthorized"}, status=401)
        if path.endswith("/secrets/x-access"):
            return web.json_response({"data": {"password": "c2VjcmV0LXB3"}})
        if path.endswith("/namespacedworkspaceclasses"):
            return self._namespaced_classes(path.split("/")[-2])
        if path.endswith("/workspaceclasses"):
            return web.json_response({"items": [{"metadata": {"name": "c"}}]})
        if path.endswith("/events"):
            return web.json_response({"items": []})
        if request.method == "POST" and path.endswith("/workspaces"):
            if body and body["spec"]["repository"]["url"].startswith("https://"):
                return web.json_response(body, status=201)
            return web.json_response({"kind": "Status", "code": 422, "message": "invalid",
                                      "details": {"causes": [{
                                          "field": "spec.repository.url",
                                          "message": "should match '^(https://...)'"}]}},
                                     status=422)
        if path.endswith("/workspaces"):
            return web.json_response({"metadata": {"resourceVersion": "7"}, "items": [WS]})
        if path.endswith("/workspaces/x"):
            return web.json_response(WS)
        return web.json_response({"message": "not found"}, status=404)

    def _namespaced_classes(self, namespace: str) -> web.Response:
        if self.namespaced_classes is None:
            return web.json_response({"kind": "Status", "code": 403, "reason": "Forbidden",
                                      "message": "namespacedworkspaceclasses is forbidden"},
                                     status=403)
        return web.json_response({"items": [{"metadata": {"name": n, "namespace": namespace}}
                                            for n in self.namespaced_classes.get(namespace, [])]})


@pytest.fixture(params=["kubeconfig"])
async def app_client(tmp_path: Path, request: pytest.FixtureRequest
                     ) -> AsyncIterator[tuple[TestClient[Any, Any], FakeApiserver]]:
    fake = FakeApiserver()
    api_app = web.Application()
    api_app.router.add_route("*", "/{tail:.*}", fake.handle)
    api = TestServer(api_app)
    await api.start_server()
    static = tmp_path / "vendor"
    static.mkdir()
    for asset in assets.pinned():
        (static / asset.file).write_text("/* stand-in */")
    cluster = Cluster(url=str(api.make_url("")).rstrip("/"),
                      ssl_context=ssl.create_default_context(),
                      own=lambda: Credentials({"Authorization": "Bearer kubeconfig-user"}))
    if request.param == "token":
        cluster = Cluster(url=cluster.url, ssl_context=cluster.ssl_context)
    app = create_app(Settings(mode=request.param, assets=static, secure_cookies=False), cluster)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, fake
    finally:
        await client.close()
        await api.close()


def _class_select(page: str) -> dict[str, list[tuple[str, str, bool]]]:
    """The class select's optgroups: label -> [(value, shown name, selected)]."""
    select = page[page.index('<select id="f-class"'):page.index("</select>")]
    return {htmllib.unescape(label): [
        (htmllib.unescape(value), htmllib.unescape(name), bool(selected))
        for value, selected, name in re.findall(
            r'<option value="([^"]*)"( selected)?>([^<]*)</option>', body)]
        for label, body in re.findall(r'<optgroup label="([^"]*)">(.*?)</optgroup>',
                                      select, re.S)}


def _csrf(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


async def test_session_cookie_flags_and_security_headers(app_client: Any) -> None:
    client, _ = app_client
    resp = await client.get("/workspaces")
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Cache-Control"] == "no-store"


async def test_list_escapes_and_uses_the_callers_credentials(app_client: Any) -> None:
    client, fake = app_client
    html = await (await client.get("/workspaces")).text()
    assert ">x</a>" in html and "Running" in html
    assert all(h.get("Authorization") == "Bearer kubeconfig-user" for *_, h, _ in fake.calls)
    detail = await (await client.get("/workspaces/default/x")).text()
    assert "<script>window.owned" not in detail and "<img src=x" not in detail
    assert "&lt;script&gt;window.owned=1&lt;/script&gt;" in detail
    reflected = await (await client.get("/workspaces?namespace=%3Cscript%3Ex%3C/script%3E"
                                        )).text()
    assert "<script>x</script>" not in reflected


async def test_posts_need_the_session_csrf_token_and_our_origin(app_client: Any) -> None:
    client, fake = app_client
    html = await (await client.get("/workspaces/default/x")).text()
    token = html.split('"X-CSRF-Token": "')[1].split('"')[0]
    origin = str(client.make_url("")).rstrip("/")
    before = len(fake.calls)
    for headers in ({"Origin": origin},  # no token
                    {"Origin": origin, "X-CSRF-Token": "forged"},
                    {"Origin": "http://evil.test", "X-CSRF-Token": token},
                    {"X-CSRF-Token": token}):  # neither Origin nor Referer
        resp = await client.post("/workspaces/default/x/stop", headers=headers)
        assert resp.status == 403
    assert len(fake.calls) == before, "a refused POST reached the apiserver"
    resp = await client.post("/workspaces/default/x/stop",
                             headers={"Origin": origin, "X-CSRF-Token": token,
                                      "HX-Request": "true"})
    assert resp.status == 200
    method, path, _, body = fake.calls[-1]
    assert (method, path, body) == (
        "PATCH", "/apis/agentspaces.dev/v1alpha1/namespaces/default/workspaces/x",
        {"spec": {"running": False}})
    assert fake.calls[-1][2]["Content-Type"] == "application/merge-patch+json"
    assert (await client.get("/workspaces/default/x/stop")).status == 405


async def test_password_only_on_a_post(app_client: Any) -> None:
    client, fake = app_client
    html = await (await client.get("/workspaces/default/x")).text()
    assert "secret-pw" not in html
    assert not any(path.endswith("/secrets/x-access") for _, path, *_ in fake.calls)
    token = html.split('"X-CSRF-Token": "')[1].split('"')[0]
    resp = await client.post("/workspaces/default/x/password", headers={
        "Origin": str(client.make_url("")).rstrip("/"), "X-CSRF-Token": token,
        "HX-Request": "true"})
    assert resp.status == 200 and 'value="secret-pw"' in await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"


async def test_admission_error_shown_next_to_its_field(app_client: Any) -> None:
    client, fake = app_client
    html = await (await client.get("/new")).text()
    resp = await client.post("/workspaces", data={
        "csrf_token": _csrf(html), "namespace": "default", "name": "y", "class_name": "c",
        "repository_url": "ftp://nope"}, headers={"Origin": str(client.make_url("")).rstrip("/")})
    assert resp.status == 422
    page = await resp.text()
    assert 'id="repository_url-error"' in page and "should match" in page
    assert 'aria-describedby="repository_url-error"' in page
    sent = next(b for m, p, _, b in fake.calls if m == "POST" and p.endswith("/workspaces"))
    assert json.loads(json.dumps(sent))["spec"]["repository"]["url"] == "ftp://nope"


@pytest.mark.parametrize("app_client", ["token"], indirect=True)
async def test_token_login_rotates_the_session_and_keeps_the_token_server_side(
        app_client: Any) -> None:
    client, fake = app_client
    resp = await client.get("/workspaces", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"
    page = await (await client.get("/login")).text()
    before = client.session.cookie_jar.filter_cookies(client.make_url("/"))["agentspaces_session"]
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    refused = await client.post("/login", data={"csrf_token": _csrf(page), "token": "bad"},
                                headers=origin)
    assert refused.status == 401
    page = await refused.text()
    resp = await client.post("/login", data={"csrf_token": _csrf(page), "token": "good",
                                             "namespace": "default"}, headers=origin)
    assert resp.status == 200 and "jane" in await resp.text()
    after = client.session.cookie_jar.filter_cookies(client.make_url("/"))["agentspaces_session"]
    assert after.value != before.value and "good" not in after.value
    assert fake.calls[-1][2]["Authorization"] == "Bearer good"
    # An expired token sends the user back to the sign-in page.
    page = await (await client.get("/login")).text()
    await client.post("/login", data={"csrf_token": _csrf(page), "token": "expired"},
                      headers=origin)
    resp = await client.get("/workspaces", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/login"


OWN = "This namespace's classes (team-a)"


async def test_form_offers_the_namespaces_own_classes_apart_and_creates_with_class_kind(
        app_client: Any) -> None:
    client, fake = app_client
    fake.namespaced_classes = {"team-a": ["gpu", "c"]}
    page = await (await client.get("/new?namespace=team-a")).text()
    # One name in both kinds stays two choices; the cluster's is the default.
    assert _class_select(page) == {
        "Cluster classes": [("c", "c", True)],
        OWN: [("NamespacedWorkspaceClass/c", "c", False),
              ("NamespacedWorkspaceClass/gpu", "gpu", False)]}
    listed = [(p, h["Authorization"]) for _, p, h, _ in fake.calls
              if p.endswith("/namespacedworkspaceclasses")]
    assert listed == [("/apis/agentspaces.dev/v1alpha1/namespaces/team-a/"
                       "namespacedworkspaceclasses", "Bearer kubeconfig-user")]
    # Another namespace's page lists that namespace's own classes (none here).
    other = await (await client.get("/new?namespace=default")).text()
    assert list(_class_select(other)) == ["Cluster classes"]

    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    posted = {"csrf_token": _csrf(page), "namespace": "team-a", "name": "y",
              "repository_url": "https://github.com/o/app"}
    for choice, expected in (("NamespacedWorkspaceClass/gpu",
                              {"className": "gpu", "classKind": "NamespacedWorkspaceClass"}),
                             ("c", {"className": "c"})):
        resp = await client.post("/workspaces", data={**posted, "class_name": choice},
                                 headers=origin, allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/workspaces/team-a/y"
        method, path, _, sent = fake.calls[-1]
        assert (method, path) == ("POST", "/apis/agentspaces.dev/v1alpha1/namespaces/"
                                          "team-a/workspaces")
        assert {k: v for k, v in sent["spec"].items() if k.startswith("class")} == expected


def _creates(fake: FakeApiserver) -> int:
    return sum(1 for m, p, *_ in fake.calls if m == "POST" and p.endswith("/workspaces"))


async def test_refused_create_keeps_the_namespaced_choice_and_a_bad_one_is_not_sent(
        app_client: Any) -> None:
    client, fake = app_client
    fake.namespaced_classes = {"team-a": ["gpu"]}
    page = await (await client.get("/new?namespace=default")).text()
    origin = {"Origin": str(client.make_url("")).rstrip("/")}
    posted = {"csrf_token": _csrf(page), "namespace": "team-a", "name": "y",
              "class_name": "NamespacedWorkspaceClass/gpu", "repository_url": "ftp://nope"}
    resp = await client.post("/workspaces", data=posted, headers=origin)
    assert resp.status == 422
    # Re-rendered for the posted namespace, with the posted class still chosen.
    assert _class_select(await resp.text())[OWN] == [
        ("NamespacedWorkspaceClass/gpu", "gpu", True)]
    before = _creates(fake)
    resp = await client.post("/workspaces", data={**posted, "class_name": "WorkspaceClass/c",
                                                  "repository_url": "https://x/y"},
                             headers=origin)
    assert resp.status == 422
    assert 'id="class_name-error"' in await resp.text()
    assert _creates(fake) == before, "a class the form cannot encode reached the apiserver"


async def test_forbidden_namespaced_classes_still_leave_the_cluster_classes(
        app_client: Any) -> None:
    client, fake = app_client
    fake.namespaced_classes = None
    resp = await client.get("/new?namespace=team-a")
    page = await resp.text()
    assert resp.status == 200
    assert any(p.endswith("/namespacedworkspaceclasses") for _, p, *_ in fake.calls)
    assert _class_select(page) == {"Cluster classes": [("c", "c", True)]}
    assert "forbidden" not in page and 'class="error"' not in page
