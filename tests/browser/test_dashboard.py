"""The dashboard in a real browser (Debian's chromium through Playwright) against the
real apiserver, operator and simulated VMs: create from the form, the row appears and
turns Running live, the workspace URL opens with the revealed password, a port goes
public, stop and start, delete with confirmation; wake after an idle stop; a user
bound to one namespace (a ServiceAccount token through the token login) sees and acts
only there; XSS and CSRF; labels and keyboard reach. Writes docs/img/dashboard-*.png."""

from __future__ import annotations

import base64
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import pytest
import yaml
from playwright.sync_api import expect

from agentspaces.controlplane import free_port
from tests.browser.conftest import CLASS, launch, new_namespace, screenshot
from tests.conftest import REPO, Kubectl
from tests.support.dashboard import DashboardProcess
from tests.support.stack import workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.browser
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
RUNNING_TIMEOUT = 90_000


def _ns(kubectl: Kubectl) -> str:
    return new_namespace(kubectl)


def _get(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any] | None:
    return kubectl.get_json("workspace", name, "-n", ns)


def _csrf(page: Any) -> str:
    headers = page.locator("body").get_attribute("hx-headers")
    return str(yaml.safe_load(headers)["X-CSRF-Token"])


@pytest.fixture(scope="module")
def sleepy(stack: Any, kubectl: Kubectl) -> tuple[str, str]:
    """Created first, so its idle stop (1m, no grace) is near when the wake test runs."""
    ns = _ns(kubectl)
    kubectl.apply(workspace("sleepy", ns, CLASS))
    return ns, "sleepy"


def test_create_live_running_open_stop_start_delete(
        dashboard: DashboardProcess, page: Any, playwright: Any, kubectl: Kubectl,
        sleepy: tuple[str, str]) -> None:
    ns = _ns(kubectl)
    errors: list[str] = []  # console errors, e.g. what the CSP refused
    page.context.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{dashboard.url}/workspaces?namespace={ns}")
    expect(page.locator("caption")).to_contain_text("0 workspaces")

    form = page.context.new_page()
    form.goto(f"{dashboard.url}/new?namespace={ns}")
    expect(form.locator("#f-class")).to_have_value(CLASS)
    form.fill("#f-name", "web")
    form.fill("#f-repo", "https://github.com/example/app")
    form.fill("#f-ports", "3000")
    form.get_by_role("button", name="Create").click()
    form.wait_for_url(re.compile(rf"/workspaces/{ns}/web$"))

    # The list page was never reloaded: the row arrives and changes over SSE.
    row = page.locator(f'tr[data-workspace="{ns}/web"]')
    expect(row).to_be_visible(timeout=20_000)
    expect(row.locator(".phase")).to_have_text("Running", timeout=RUNNING_TIMEOUT)
    url = form.locator("#workspace-url")
    expect(url).to_be_visible(timeout=20_000)
    expect(row).to_contain_text(url.inner_text())
    screenshot(page, "list")

    detail = form
    expect(detail.locator("#phase")).to_have_text("Running", timeout=20_000)
    assert not detail.locator("#password-value").count(), "password shown before asked"
    detail.get_by_role("button", name="Reveal password").click()
    revealed = detail.locator("#password-value")
    expect(revealed).to_be_visible()
    password = revealed.input_value()
    secret = kubectl("get", "secret", "web-access", "-n", ns, "-o",
                     "jsonpath={.data.password}")
    assert password and password == base64.b64decode(secret).decode()
    screenshot(detail, "detail")

    # The workspace URL opens (its hostname resolved to the simulated VM's address).
    href = url.get_attribute("href")
    ws = _get(kubectl, ns, "web")
    assert ws is not None
    ip = ws["status"]["server"]["ipv4"]
    other = launch(playwright, f"--host-resolver-rules=MAP {urlparse(href).hostname} {ip}")
    try:
        anonymous = other.new_page()
        assert anonymous.goto(href).status == 401
        auth = base64.b64encode(f"agent:{password}".encode()).decode()
        signed = other.new_context(extra_http_headers={"Authorization": f"Basic {auth}"})
        assert signed.new_page().goto(href).status == 200
    finally:
        other.close()

    # The per-port toggle, then stop and start; the page follows the watch.
    visibility = detail.locator('tr[data-port="3000"] td').nth(2)
    expect(visibility).to_have_text("private")
    detail.locator('tr[data-port="3000"]').get_by_role("button", name="Make public").click()
    expect(visibility).to_have_text("public", timeout=20_000)
    assert _get(kubectl, ns, "web")["spec"]["access"]["ports"] == [  # type: ignore[index]
        {"port": 3000, "visibility": "public"}]
    detail.get_by_role("button", name="Stop").click()
    expect(detail.locator("#phase")).to_have_text("Stopped", timeout=RUNNING_TIMEOUT)
    assert _get(kubectl, ns, "web")["spec"]["running"] is False  # type: ignore[index]
    detail.get_by_role("button", name="Start").click()
    expect(detail.locator("#phase")).to_have_text("Running", timeout=RUNNING_TIMEOUT)

    assert not errors, errors
    detail.once("dialog", lambda dialog: dialog.accept())  # hx-confirm
    detail.get_by_role("button", name="Delete").click()
    detail.wait_for_url(re.compile(r"/workspaces\?namespace="))
    expect(page.locator(f'tr[data-workspace="{ns}/web"]')).to_have_count(0, timeout=60_000)
    wait_for(lambda: _get(kubectl, ns, "web") is None, 60, "web deleted")


def test_admission_errors_next_to_the_field(dashboard: DashboardProcess, page: Any,
                                            kubectl: Kubectl) -> None:
    ns = _ns(kubectl)
    page.goto(f"{dashboard.url}/new?namespace={ns}")
    page.fill("#f-name", "bad")
    page.fill("#f-repo", "ftp://example.com/app")
    page.fill("#f-idle", "soon")
    page.get_by_role("button", name="Create").click()
    repo_error = page.locator("#repository_url-error")
    expect(repo_error).to_contain_text("should match")
    expect(page.locator("#idle_timeout-error")).to_be_visible()
    expect(page.locator("#f-repo")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#f-repo")).to_have_value("ftp://example.com/app")
    screenshot(page, "create-error")
    assert _get(kubectl, ns, "bad") is None


def test_xss_renders_as_text(dashboard: DashboardProcess, page: Any,
                             kubectl: Kubectl) -> None:
    ns = _ns(kubectl)
    kubectl.apply(workspace("xss", ns, CLASS, running=False, agent={"instructions": XSS}))
    page.goto(f"{dashboard.url}/workspaces/{ns}/xss")
    expect(page.locator("pre.instructions")).to_have_text(XSS)
    page.goto(f"{dashboard.url}/workspaces?namespace=" + quote(XSS))
    expect(page.locator("#namespace-filter")).to_have_value(XSS)
    page.goto(f"{dashboard.url}/workspaces/{ns}/xss")
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    assert page.locator("pre.instructions script").count() == 0


class _Evil(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # a page on another site that posts to the dashboard
        body = (f'<form id="f" method="post" action="{self.target}">'
                '<input name="csrf_token" value="guess"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def evil_site() -> Iterator[type[_Evil]]:
    handler = type("Evil", (_Evil,), {})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://localhost:{server.server_port}/"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_csrf_posts_without_the_token_are_refused(dashboard: DashboardProcess, page: Any,
                                                  kubectl: Kubectl,
                                                  evil_site: type[_Evil]) -> None:
    ns = _ns(kubectl)
    kubectl.apply(workspace("target", ns, CLASS, running=False))
    start = f"{dashboard.url}/workspaces/{ns}/target/start"
    page.goto(f"{dashboard.url}/workspaces/{ns}/target")
    token = _csrf(page)
    assert page.request.post(start, headers={"Origin": dashboard.url}).status == 403
    assert page.request.post(start, headers={"X-CSRF-Token": token}).status == 403
    assert page.request.post(start, headers={"X-CSRF-Token": token,
                                             "Origin": "http://evil.test"}).status == 403
    # Another site's page that submits a form here: the session cookie (SameSite=Strict)
    # does not come along, nor a token, and the answer is 403.
    evil_site.target = start
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if r.url == start else None)
    page.goto(evil_site.url)  # type: ignore[attr-defined]
    wait_for(lambda: answers, 10, "the cross-site POST's answer")
    assert answers == [403]
    assert _get(kubectl, ns, "target")["spec"]["running"] is False  # type: ignore[index]
    assert page.request.post(start, headers={"X-CSRF-Token": token, "Origin": dashboard.url},
                             max_redirects=0).status == 303
    assert _get(kubectl, ns, "target")["spec"]["running"] is True  # type: ignore[index]
    kubectl("delete", "workspace", "target", "-n", ns, "--wait=false")


def _rbac(kubectl: Kubectl, ns: str, user: str) -> None:
    docs = [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": user, "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "workspace-user", "namespace": ns},
         "rules": [{"apiGroups": ["agentspaces.dev"], "resources": ["workspaces"],
                    "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
                   {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{user}-workspaces", "namespace": ns},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "workspace-user"},
         "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": ns}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "workspaceclass-reader"},
         "rules": [{"apiGroups": ["agentspaces.dev"], "resources": ["workspaceclasses"],
                    "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{ns}-{user}-classes"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "workspaceclass-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": user, "namespace": ns}]},
    ]
    kubectl.apply(yaml.safe_dump_all(docs))


def test_user_bound_to_one_namespace_sees_and_acts_only_there(
        control_plane: Any, stack: Any, page: Any, kubectl: Kubectl, tmp_path: Path) -> None:
    mine, theirs = _ns(kubectl), _ns(kubectl)
    _rbac(kubectl, mine, "alice")
    kubectl.apply(workspace("mine", mine, CLASS, running=False))
    kubectl.apply(workspace("other", theirs, CLASS, running=False))
    token = kubectl("create", "token", "alice", "-n", mine, "--duration=1h").strip()
    dash = DashboardProcess(control_plane.admin_kubeconfig, tmp_path / "token.log",
                            mode="token").start()
    try:
        page.goto(f"{dash.url}/workspaces")
        page.wait_for_url(re.compile(r"/login$"))
        page.fill("#token", "not-a-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("did not accept")
        screenshot(page, "login")
        page.fill("#token", token)
        page.fill("#login-namespace", mine)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("header")).to_contain_text(f"system:serviceaccount:{mine}:alice")
        expect(page.locator(f'tr[data-workspace="{mine}/mine"]')).to_be_visible()

        for elsewhere in (theirs, ""):
            page.goto(f"{dash.url}/workspaces?namespace={elsewhere}")
            expect(page.get_by_role("alert").first).to_contain_text("forbidden")
            assert page.locator(f'tr[data-workspace="{theirs}/other"]').count() == 0
        assert page.goto(f"{dash.url}/workspaces/{theirs}/other").status == 403
        expect(page.get_by_role("alert")).to_contain_text("forbidden")
        assert page.locator("#phase").count() == 0

        page.goto(f"{dash.url}/workspaces/{mine}/mine")
        token_field = _csrf(page)
        refused = page.request.post(f"{dash.url}/workspaces/{theirs}/other/start", headers={
            "X-CSRF-Token": token_field, "Origin": dash.url, "HX-Request": "true"})
        assert refused.status == 403 and "forbidden" in refused.text()
        assert _get(kubectl, theirs, "other")["spec"]["running"] is False  # type: ignore[index]
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#flash")).to_contain_text("Start: requested")
        wait_for(lambda: _get(kubectl, mine, "mine")["spec"]["running"] is True,  # type: ignore[index]
                 20, "mine started by alice")
        assert token not in dash.log()
    finally:
        dash.stop()

    # Behind an authenticating proxy: the same user named in X-Forwarded-User, whom the
    # dashboard impersonates with its own credentials, is held to the same namespace.
    proxied = DashboardProcess(control_plane.admin_kubeconfig, tmp_path / "proxy.log",
                               mode="proxy").start()
    try:
        user = {"X-Forwarded-User": f"system:serviceaccount:{mine}:alice"}
        assert _fetch(f"{proxied.url}/workspaces?namespace={mine}", {})[0] == 401
        code, body = _fetch(f"{proxied.url}/workspaces?namespace={mine}", user)
        assert code == 200 and f'data-workspace="{mine}/mine"' in body
        code, body = _fetch(f"{proxied.url}/workspaces?namespace={theirs}", user)
        assert "forbidden" in body and "data-workspace=" not in body
    finally:
        proxied.stop()
    kubectl("delete", "workspace", "mine", "-n", mine, "--wait=false")


def _fetch(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_in_cluster_manifest_applies(kubectl: Kubectl, stack: Any) -> None:
    code, out, err = kubectl.run("apply", "--dry-run=server", "-f",
                                 str(REPO / "manifests" / "dashboard.yaml"))
    assert code == 0, err
    assert "deployment.apps/agentspaces-dashboard" in out


LABEL_CHECK = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, button, a[href]')).filter(el => {
  if (el.tagName === 'BUTTON' || el.tagName === 'A')
    return !(el.textContent.trim() || el.getAttribute('aria-label'));
  if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return false;
  if (el.id && document.querySelector('label[for="' + CSS.escape(el.id) + '"]')) return false;
  return !el.closest('label');
}).map(el => el.outerHTML)"""


def _tab_stops(page: Any, limit: int = 80) -> list[str]:
    page.locator("body").click(position={"x": 1, "y": 1})
    seen: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        seen.append(page.evaluate(
            "() => { const e = document.activeElement; return e.tagName + ':' + "
            "(e.id || e.getAttribute('name') || e.textContent.trim()).slice(0, 40) }"))
        outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none" or seen[-1].startswith("BODY"), f"no focus ring on {seen[-1]}"
    return seen


def test_labels_and_keyboard(dashboard: DashboardProcess, page: Any, kubectl: Kubectl,
                             sleepy: tuple[str, str]) -> None:
    ns, name = sleepy
    for path in (f"/workspaces?namespace={ns}", f"/new?namespace={ns}",
                 f"/workspaces/{ns}/{name}"):
        page.goto(dashboard.url + path)
        assert page.evaluate(LABEL_CHECK) == [], path
        assert page.locator("h1").count() == 1 and page.locator("html").get_attribute("lang")
    page.goto(f"{dashboard.url}/new?namespace={ns}")
    stops = _tab_stops(page, 20)
    for wanted in ("A:Skip to content", "INPUT:f-namespace", "INPUT:f-name", "SELECT:f-class",
                   "INPUT:f-repo", "TEXTAREA:f-instructions", "BUTTON:Create"):
        assert wanted in stops, (wanted, stops)
    page.goto(f"{dashboard.url}/workspaces/{ns}/{name}")
    expect(page.locator("#phase")).not_to_have_text("", timeout=20_000)
    stops = _tab_stops(page, 30)
    assert "BUTTON:Reveal password" in stops and "BUTTON:Delete" in stops, stops
    assert any(s in stops for s in ("BUTTON:Stop", "BUTTON:Wake", "BUTTON:Start")), stops
    # Keyboard only: Enter on the focused button reveals the password.
    page.locator("button", has_text="Reveal password").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#password-value")).to_be_visible()


def test_wake_after_an_idle_stop(dashboard: DashboardProcess, page: Any, kubectl: Kubectl,
                                 sleepy: tuple[str, str]) -> None:
    ns, name = sleepy
    page.goto(f"{dashboard.url}/workspaces/{ns}/{name}")
    phase = page.locator("#phase")
    expect(phase).to_have_text("Stopped", timeout=180_000)
    expect(page.locator("dl.summary")).to_contain_text("inactivity")
    screenshot(page, "stopped")
    page.get_by_role("button", name="Wake").click()
    expect(phase).to_have_text("Running", timeout=RUNNING_TIMEOUT)
    ws = _get(kubectl, ns, name)
    assert ws is not None and ws["metadata"]["annotations"]["agentspaces.dev/wake"]
    assert ws["spec"]["running"] is True
    page.goto(f"{dashboard.url}/workspaces?namespace=")  # every namespace: the README's
    expect(page.locator(f'tr[data-workspace="{ns}/{name}"] .phase')).to_have_text("Running")
    screenshot(page, "list-all")
