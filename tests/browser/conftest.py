"""The browser tier: the real dashboard process against the real apiserver, the real
operator and simulated VMs (tests/support/stack.py), driven in Debian's chromium by
Playwright. Playwright's own browser download never runs: the system chromium is
launched by path."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Kubectl
from tests.support.dashboard import DashboardProcess, chromium_path
from tests.support.stack import VmStack, vm_stack
from tests.support.waiting import wait_for

CLASS = "dash"
SCREENSHOTS = REPO / "docs" / "img"
NAMESPACES: list[str] = []
"""The tests' namespaces: their workspaces are deleted before the operator stops, so no
later module's operator on the shared apiserver inherits them."""


def new_namespace(kubectl: Kubectl) -> str:
    name = f"b-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    NAMESPACES.append(name)
    return name


@pytest.fixture(scope="module")
def stack(control_plane: Any, kubectl: Kubectl,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 41, 18101,
                  storage=True) as s:
        # An idle stop 1m after the last activity, with no grace: the wake test's wait.
        kubectl("patch", "workspaceclass", CLASS, "--type", "merge", "-p",
                '{"spec":{"idle":{"timeout":"1m","grace":"0s"}}}')
        try:
            yield s
        finally:
            for ns in NAMESPACES:
                kubectl("delete", "workspaces", "--all", "-n", ns, "--wait=false",
                        check=False)
            wait_for(lambda: all(not (kubectl.get_json("workspaces", "-n", ns) or {}).get(
                "items") for ns in NAMESPACES), 90, "the browser tests' workspaces deleted")
            NAMESPACES.clear()


@pytest.fixture(scope="module")
def dashboard(control_plane: Any, stack: VmStack,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[DashboardProcess]:
    proc = DashboardProcess(control_plane.admin_kubeconfig,
                            tmp_path_factory.mktemp("dash") / "dashboard.log").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


def launch(playwright: Any, *args: str) -> Any:
    path = chromium_path()
    assert path, "Debian's chromium is not installed (scripts/test.sh installs it)"
    return playwright.chromium.launch(executable_path=path, headless=True,
                                      args=["--no-sandbox", *args])


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    b = launch(playwright)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(20_000)
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    """A full-page screenshot for the docs; a revealed password is masked."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"dashboard-{name}.png"
    page.locator("body").screenshot(path=str(path), mask=[page.locator("#password-value")])
    return path
