"""The pre-stop save through the real operator, apiserver and simulated VMs (the real
agent, real git on a repository in the VM's /workspaces): an idle stop commits the
uncommitted work to a WIP branch first, says so in status.preStop and an event, and the
backup holds that branch after a wake; a save that fails never holds the backup or
the stop."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Kubectl
from tests.support.stack import VmStack, condition, vm_stack, workspace
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "prestop"
IDLE = {"timeout": "1m", "grace": "0s"}


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 39, 18099,
                  storage=True) as stack:
        yield stack


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "core.hooksPath=/dev/null", *args], cwd=repo, check=True,
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1",
             "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.test",
             "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.test"}
    ).stdout.strip()


def _ws(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return kubectl.get_json("workspace", name, "-n", ns) or {}


def _until(kubectl: Kubectl, name: str, ns: str, what: str, test: Any,
           timeout: float = 60) -> dict[str, Any]:
    return wait_for(lambda: (w := _ws(kubectl, name, ns)) and test(w) and w, timeout, what)


def _repo(stack: VmStack, ws: dict[str, Any]) -> Path:
    """The clone in the simulated VM (the simulator does not clone: the test makes it)."""
    return Path(stack.vms.workspace_dir(int(ws["status"]["server"]["id"]))) / "app"


def _events(kubectl: Kubectl, name: str, ns: str) -> list[tuple[str, str, str, str]]:
    doc = kubectl.get_json("events", "-n", ns, "--field-selector",
                           f"involvedObject.name={name}") or {}
    items = sorted(doc.get("items", []), key=lambda e: (e.get("firstTimestamp") or "",
                                                        e["metadata"]["creationTimestamp"]))
    return [(e["type"], e["reason"], e.get("message", ""), e.get("firstTimestamp") or "")
            for e in items]


def _in_order(events: list[tuple[str, str, str, str]], *reasons: str) -> bool:
    """Each reason's first event no later than the next one's (events carry seconds)."""
    times = [next(t for _, r, _, t in events if r == reason) for reason in reasons]
    return times == sorted(times)


def test_an_idle_stop_saves_work_to_a_wip_branch_and_a_failed_save_keeps_the_backup(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    for name in ("saver", "broken"):
        kubectl.apply(workspace(name, namespace, CLASS, idle=IDLE,
                                lifecycle={"preStop": "commit", "preStopTimeout": "30s"}))
    ready = {name: _until(kubectl, name, namespace, f"{name} Ready",
                          lambda w: condition(w, "Ready").get("status") == "True")
             for name in ("saver", "broken")}
    for name in ("saver", "broken"):
        repo = _repo(stack, ready[name])
        git(repo, "init", "-q", "-b", "main")
        (repo / "app.py").write_text("print('v1')\n")
        git(repo, "add", "app.py")
        git(repo, "commit", "-q", "-m", "first")
        (repo / "app.py").write_text("print('v2, not committed')\n")
        (repo / "notes.txt").write_text("an untracked note\n")
    saver_repo = _repo(stack, ready["saver"])
    head = git(saver_repo, "rev-parse", "HEAD")
    # The other one's HEAD names an object that is not there: its save must fail.
    (_repo(stack, ready["broken"]) / ".git" / "refs" / "heads" / "main").write_text(
        "0123456789abcdef0123456789abcdef01234567\n")
    started = time.monotonic()

    saver = _until(kubectl, "saver", namespace, "saver Stopped",
                   lambda w: w.get("status", {}).get("phase") == "Stopped", 150)
    print(f"\nidle -> Stopped (with the save) after {time.monotonic() - started:.0f}s")
    status = saver["status"]
    assert status["stoppedBy"] == "inactivity"
    pre = status["preStop"]
    assert pre["outcome"] == "Saved" and pre["pushed"] is False, pre
    assert pre["branch"].startswith("agentspaces/wip/saver-") and len(pre["commit"]) == 40
    assert pre["startedAt"] <= pre["time"] <= status["backup"]["time"]
    assert condition(saver, "BackupSucceeded")["status"] == "True"
    events = _events(kubectl, "saver", namespace)
    saved = next(e for e in events if e[1] == "PreStopSaved")
    assert saved[0] == "Normal" and pre["branch"] in saved[2]
    assert _in_order(events, "PreStopSaved", "BackupCompleted", "Stopped")

    broken = _until(kubectl, "broken", namespace, "broken Stopped",
                    lambda w: w.get("status", {}).get("phase") == "Stopped", 60)
    pre = broken["status"]["preStop"]
    assert pre["outcome"] == "Failed" and "not a commit" in pre["message"], pre
    assert condition(broken, "BackupSucceeded")["status"] == "True"
    assert broken["status"]["backup"]["time"] >= pre["time"]
    events = _events(kubectl, "broken", namespace)
    failed = next(e for e in events if e[1] == "PreStopFailed")
    assert failed[0] == "Warning" and "the backup and the stop go on" in failed[2]
    assert _in_order(events, "PreStopFailed", "BackupCompleted", "Stopped")

    # Wake the saver: the backup restored on the new server holds the WIP branch, and
    # the user's branch and working files are as they were left.
    kubectl("annotate", "workspace", "saver", "-n", namespace,
            f"agentspaces.dev/wake={time.time():.0f}", "--overwrite")
    woken = _until(kubectl, "saver", namespace, "saver Ready again",
                   lambda w: condition(w, "Ready").get("status") == "True"
                   and w["status"]["server"]["id"] != ready["saver"]["status"]["server"]["id"])
    repo = _repo(stack, woken)
    branch, commit = saver["status"]["preStop"]["branch"], saver["status"]["preStop"]["commit"]
    assert git(repo, "rev-parse", branch) == commit
    assert git(repo, "rev-parse", f"{commit}^") == head == git(repo, "rev-parse", "HEAD")
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(repo, "cat-file", "-p", f"{commit}:app.py") == "print('v2, not committed')"
    assert git(repo, "cat-file", "-p", f"{commit}:notes.txt") == "an untracked note"
    assert (repo / "app.py").read_text() == "print('v2, not committed')\n"


@pytest.mark.parametrize(("lifecycle", "message"), [
    ({"preStopTimeout": "6m"}, "at most 5m"),
    ({"preStopTimeout": "1s"}, "at least 5s"),
    ({"preStop": "push"}, "Unsupported value"),
], ids=["too-long", "too-short", "unknown-mode"])
def test_admission_refuses_bad_pre_stop_settings(kubectl: Kubectl, namespace: str,
                                                 lifecycle: dict[str, str],
                                                 message: str) -> None:
    code, _, err = kubectl.run("apply", "--dry-run=server", "-f", "-",
                               input=workspace("bad", namespace, CLASS, lifecycle=lifecycle))
    assert code != 0 and message in err, err
