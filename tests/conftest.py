"""Shared fixtures. The control plane is real (etcd + kube-apiserver processes) and is
started once per session, only when an integration or e2e test asks for it."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentspaces.controlplane import ControlPlane
from agentspaces.lifeline import OwnerWatch

# Operators the tests start (in-process or as children, which inherit this) serve
# /metrics on a free port, never on the default 9090 another process may hold.
os.environ.setdefault("AGENTSPACES_METRICS_PORT", "0")

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "crds" / "agentspaces.dev.yaml"


class Kubectl:
    """The real kubectl against the test control plane."""

    def __init__(self, plane: ControlPlane, kubeconfig: Path | None = None) -> None:
        self.plane = plane
        self.kubeconfig = kubeconfig or plane.admin_kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = self.plane.kubectl_run(*args, kubeconfig=self.kubeconfig, input=input,
                                        check=check)
        return result.stdout if check else result.stdout + result.stderr

    def run(self, *args: str, input: str | None = None) -> tuple[int, str, str]:
        result = self.plane.kubectl_run(*args, kubeconfig=self.kubeconfig, input=input,
                                        check=False)
        return result.returncode, result.stdout, result.stderr

    def apply(self, manifest: str) -> str:
        return self("apply", "-f", "-", input=manifest)

    def get_json(self, *args: str) -> dict[str, Any] | None:
        code, out, _ = self.run("get", *args, "-o", "json")
        return json.loads(out) if code == 0 else None


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker whose controller is killed outright would go on with its
    current test, and that test's servers, until it ends: the worker kills itself
    within a second instead, and its children die with it (lifeline.die_with_parent)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    controller = OwnerWatch(os.getppid())

    def watch() -> None:
        while not controller.gone():
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="xdist-controller-watch", daemon=True).start()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The real-VM tier (marker `realvm`) boots QEMU guests for many minutes: it runs
    after every other test, in whatever order the paths were given."""
    items.sort(key=lambda item: item.get_closest_marker("realvm") is not None)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = ControlPlane(workdir=tmp_path_factory.mktemp("controlplane"))
    plane.start()
    try:
        plane.kubectl_run("apply", "--server-side", "-f", str(CRDS))
        plane.kubectl_run("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/workspaces.agentspaces.dev",
                          "crd/workspaceclasses.agentspaces.dev")
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(control_plane)


@pytest.fixture
def namespace(kubectl: Kubectl) -> str:
    """A fresh namespace per test (namespaces never finish deleting without a
    controller-manager, so they are left behind with the throwaway control plane)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    return name


def fingerprint(path: Path) -> tuple[object, int, int, int]:
    """Content (or listing), mode and owner of a file or directory."""
    st = os.lstat(path)
    body = sorted(os.listdir(path)) if path.is_dir() else path.read_bytes()
    return body, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """An /etc/sudoers.d stand-in outside /workspaces, the kind of file a link planted by
    the container aims at; the test fails if root changed it, its directory or theirs."""
    outside = tmp_path / "etc" / "sudoers.d"
    outside.mkdir(parents=True)
    target = outside / "90-admins"
    target.write_text("root ALL=(ALL) ALL\n")
    os.chmod(target, 0o440)
    watched = (target, outside, outside.parent)
    before = [fingerprint(p) for p in watched]
    yield target
    assert [fingerprint(p) for p in watched] == before, "root wrote outside /workspaces"
