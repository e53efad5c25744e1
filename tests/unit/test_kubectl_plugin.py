"""`kubectl ws` over a fake cluster: how it reads the command line kubectl passes on, what
each command writes, and what it says when a name is wrong or a right is missing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentspaces.api.share_links import KEY_FIELD, REVOKE_ANNOTATION
from agentspaces.kubectl_plugin import commands
from agentspaces.kubectl_plugin.main import main, parse, run
from agentspaces.share_link_cli import CliError, KubeError
from agentspaces_vm import share_links

REPO = Path(__file__).resolve().parents[2]

NS = "team-a"
HOST = "demo-team-a-abcdefghijklm.example.com"
FORBIDDEN = KubeError(403, 'workspaces.agentspaces.dev "demo" is forbidden: User "bob" '
                      'cannot patch resource "workspaces" in API group "agentspaces.dev" '
                      'in the namespace "team-a"')


def _ws(name: str = "demo", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS,
                         "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": {"access": {"ports": [{"port": 3000, "visibility": "link"}]}},
            "status": {"phase": "Running",
                       "urls": {"workspace": f"https://{HOST}",
                                "ports": f"https://{{port}}.{HOST}", "state": "live"},
                       **status}}


class FakeCluster:
    def __init__(self, *names: str) -> None:
        self.items = {n: _ws(n) for n in (names or ("demo",))}
        self.secret: dict[str, str] | KubeError = {"password": "pw-1",
                                                   KEY_FIELD: share_links.new_key()}
        self.patches: list[dict[str, Any]] = []
        self.list_error: KubeError | None = None
        self.patch_error: KubeError | None = None
        self.events: list[Mapping[str, Any]] | KubeError = []

    def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any]:
        if name not in self.items:
            raise KubeError(404, "NotFound")
        return self.items[name]

    def read_secret(self, namespace: str, name: str) -> Mapping[str, str]:
        if isinstance(self.secret, KubeError):
            raise self.secret
        if name.removesuffix("-access") not in self.items:
            raise KubeError(404, "NotFound")
        return self.secret

    def annotate_workspace(self, namespace: str, name: str,
                           annotations: Mapping[str, str]) -> None:
        self.patch_workspace(namespace, name, {"metadata": {"annotations": annotations}})

    def list_workspaces(self, namespace: str | None) -> list[Mapping[str, Any]]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.items.values())

    def patch_workspace(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        if self.patch_error is not None:
            raise self.patch_error
        self.patches.append(dict(patch))

    def list_events(self, namespace: str, name: str) -> list[Mapping[str, Any]]:
        if isinstance(self.events, KubeError):
            raise self.events
        return self.events


def _error(fn: Any, *args: Any) -> str:
    with pytest.raises(CliError) as err:
        fn(*args)
    return str(err.value)


# -- the command line --------------------------------------------------------------------

def test_kubectl_options_before_or_after_the_command() -> None:
    before = parse(["-n", "x", "--context", "c", "url", "demo"])
    after = parse(["url", "demo", "-n", "x", "--kubeconfig", "/k"])
    assert (before.namespace, before.context, before.name) == ("x", "c", "demo")
    assert (after.namespace, after.kubeconfig, after.context) == ("x", "/k", None)
    assert not hasattr(parse(["url", "demo"]), "namespace")
    ssh = parse(["ssh", "demo", "-l", "debian", "--", "-L", "3000:localhost:3000", "--", "x"])
    assert (ssh.user, ssh.ssh_args) == ("debian", ["-L", "3000:localhost:3000", "--", "x"])


@pytest.mark.parametrize("argv", [[], ["url"], ["frobnicate", "demo"],
                                  ["share-link", "create", "demo"], ["url", "demo", "--port",
                                                                     "x"],
                                  ["url", "demo", "--", "-v"]])
def test_a_bad_command_line_exits_2(argv: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as code:
        main(argv)
    assert code.value.code == 2 and "usage: kubectl ws" in capsys.readouterr().err


def test_an_unusable_kubeconfig_exits_1(tmp_path: Any,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope")
    assert main(["url", "demo", "--kubeconfig", missing]) == 1
    assert "kubectl ws: no usable kubeconfig" in capsys.readouterr().err


# -- errors ----------------------------------------------------------------------------------

def test_not_found_names_the_close_ones() -> None:
    cluster = FakeCluster("demo", "demo-2", "backend")
    assert _error(commands.get, cluster, NS, "dmeo") == \
        "workspace dmeo not found in namespace team-a; did you mean demo, demo-2?"
    assert "it has backend, demo, demo-2" in _error(commands.get, cluster, NS, "zzz")
    cluster.items.clear()
    assert "it has no workspaces; another namespace: -n" in \
        _error(commands.get, cluster, NS, "demo")
    cluster.list_error = KubeError(403, "forbidden")
    assert _error(commands.get, cluster, NS, "demo") == \
        "workspace demo not found in namespace team-a"


def test_forbidden_names_the_verb_and_resource() -> None:
    cluster = FakeCluster()
    cluster.patch_error = FORBIDDEN
    text = _error(commands.stop, cluster, NS, "demo")
    assert text.startswith("permission denied: you may not patch workspaces.agentspaces.dev "
                           "in namespace team-a")
    assert 'User "bob" cannot patch' in text
    assert "kubectl auth can-i patch workspaces.agentspaces.dev -n team-a" in text
    cluster.list_error = KubeError(403, "nope")
    assert "you may not list workspaces.agentspaces.dev in any namespace" in \
        _error(commands.list_text, cluster, None, datetime.now(UTC))


# -- url, password ---------------------------------------------------------------------------

def test_url_of_the_ide_and_of_a_port() -> None:
    ws = _ws()
    assert commands.url(ws, None) == commands.Url(f"https://{HOST}", None)
    assert commands.url(ws, 3000).url == f"https://3000.{HOST}"
    ws["status"]["urls"]["state"] = "gateway"
    assert "opening the URL wakes it" in (commands.url(ws, None).note or "")
    ws["status"]["urls"]["state"] = "stopped"
    assert "kubectl ws wake demo" in (commands.url(ws, None).note or "")
    ws["status"] = {"phase": "Pending"}
    assert "demo has no URL yet (status.urls is empty, phase Pending)" in \
        _error(commands.url, ws, None)


def test_password_and_what_is_missing() -> None:
    cluster = FakeCluster()
    assert commands.password(cluster, NS, "demo") == "pw-1"
    assert "did you mean demo" in _error(commands.password, cluster, NS, "demp")
    cluster.secret = KubeError(404, "NotFound")
    assert "demo has no password Secret demo-access in namespace team-a yet" in \
        _error(commands.password, cluster, NS, "demo")
    cluster.secret = KubeError(403, 'secrets "demo-access" is forbidden')
    assert "you may not get secrets in namespace team-a" in \
        _error(commands.password, cluster, NS, "demo")
    cluster.secret = {}
    assert _error(commands.password, cluster, NS, "demo") == \
        "Secret demo-access has no password field"


# -- stop, start, wake -----------------------------------------------------------------------

def test_stop_and_start_write_spec_running() -> None:
    cluster = FakeCluster()
    assert "stop requested" in commands.stop(cluster, NS, "demo")
    cluster.items["demo"]["spec"]["running"] = False
    assert "already stopped" in commands.stop(cluster, NS, "demo")
    assert "start requested" in commands.start(cluster, NS, "demo")
    assert cluster.patches == [{"spec": {"running": False}}, {"spec": {"running": True}}]


def test_start_after_an_idle_stop_says_wake() -> None:
    cluster = FakeCluster()
    cluster.items["demo"]["status"]["stoppedBy"] = "inactivity"
    assert "stopped for inactivity and spec.running is already true, so start changes " \
        "nothing: kubectl ws wake demo" in _error(commands.start, cluster, NS, "demo")
    assert cluster.patches == []


def test_wake_sets_the_annotation_only_when_it_can_help() -> None:
    cluster = FakeCluster()
    cluster.items["demo"]["status"]["stoppedBy"] = "lifetime"
    assert "wake requested (agentspaces.dev/wake=1800000000)" in \
        commands.wake(cluster, NS, "demo", 1_800_000_000.5)
    assert cluster.patches == [{"metadata": {"annotations": {
        "agentspaces.dev/wake": "1800000000", "agentspaces.dev/woken-by": "kubectl ws"}}}]
    cluster.items["demo"]["spec"]["running"] = False
    assert "stopped by you (spec.running is false)" in \
        _error(commands.wake, cluster, NS, "demo", 1.0)
    assert len(cluster.patches) == 1


# -- list, logs ------------------------------------------------------------------------------

def test_list_is_a_table_like_kubectl_get() -> None:
    cluster = FakeCluster("demo", "api")
    cluster.items["api"]["status"]["activity"] = {"idle": True, "agentState": "waiting"}
    now = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
    lines = commands.list_text(cluster, NS, now).splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "URL", "IDLE", "AGENT", "AGE"]
    assert lines[1].split() == ["api", "Running", f"https://{HOST}", "true", "waiting", "2d"]
    assert lines[2].split() == ["demo", "Running", f"https://{HOST}", "2d"]
    assert commands.list_text(cluster, None, now).splitlines()[1].split()[:2] == [NS, "api"]
    cluster.items.clear()
    assert _error(commands.list_text, cluster, NS, now) == "no workspaces in namespace team-a"


@pytest.mark.parametrize(("created", "shown"), [
    ("2026-12-03T09:59:30Z", "30s"), ("2026-12-03T09:50:00Z", "10m"),
    ("2026-12-03T05:00:00Z", "5h"), ("2026-11-20T10:00:00Z", "13d"), (None, "<unknown>")])
def test_age(created: str | None, shown: str) -> None:
    assert commands.age(created, datetime(2026, 12, 3, 10, 0, tzinfo=UTC)) == shown


def test_logs_show_conditions_events_and_where_the_vm_logs_are() -> None:
    cluster = FakeCluster()
    cluster.items["demo"]["status"]["server"] = {"id": 42, "ipv4": "203.0.113.7",
                                                 "type": "cx23", "location": "fsn1"}
    cluster.items["demo"]["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "BootFailed",
         "lastTransitionTime": "2026-12-03T10:00:00Z", "message": "bootstrap failed at npm"}]
    cluster.events = [
        {"time": "2026-12-03T10:01:00", "type": "Warning", "reason": "BootFailed",
         "message": "bootstrap failed at npm", "count": 3},
        {"time": "2026-12-03T09:58:00", "type": "Normal", "reason": "ServerCreated",
         "message": "server 42", "count": 1}]
    text = commands.logs_text(cluster, NS, "demo")
    assert "\n  server 42 203.0.113.7 (cx23, fsn1)\n" in text
    assert "Ready=False BootFailed 2026-12-03T10:00:00Z: bootstrap failed at npm" in text
    assert text.index("ServerCreated: server 42") < text.index("BootFailed: bootstrap failed "
                                                                "at npm (x3)")
    assert "kubectl ws logs demo --vm" in text
    cluster.events = KubeError(403, "events is forbidden")
    assert "Events: not shown (permission denied: you may not list events" in \
        commands.logs_text(cluster, NS, "demo")


# -- ssh ---------------------------------------------------------------------------------------

def test_ssh_needs_keys_and_a_server() -> None:
    ws = _ws()
    assert "demo has no spec.sshKeys" in _error(commands.ssh_argv, ws, None, [])
    ws["spec"]["sshKeys"] = ["ssh-ed25519 AAAA me"]
    assert "demo has no server now (phase Running)" in _error(commands.ssh_argv, ws, None, [])
    ws["status"]["server"] = {"id": 42, "ipv4": "203.0.113.7"}
    assert commands.ssh_argv(ws, None, ["-v"]) == ["ssh", "root@203.0.113.7", "-v"]
    argv = commands.vm_log_argv(ws, "debian", 50)
    assert argv[:3] == ["ssh", "debian@203.0.113.7", "--"]
    assert argv[3] == ("sudo -n tail -n 50 /var/log/cloud-init-output.log; sudo -n journalctl "
                       "-u agentspaces-agent.service -n 50 --no-pager")


# -- run: what reaches the browser, ssh and the share-link CLI ---------------------------------

def _run(argv: list[str], cluster: FakeCluster, **kw: Any) -> None:
    run(parse(argv), cluster, NS, **kw)


def test_open_prints_and_opens_unless_print(capsys: pytest.CaptureFixture[str]) -> None:
    opened: list[str] = []

    def browser(url: str) -> bool:
        opened.append(url)
        return True

    _run(["open", "demo", "--port", "3000"], FakeCluster(), open_url=browser)
    _run(["open", "demo", "--print"], FakeCluster(), open_url=browser)
    assert opened == [f"https://3000.{HOST}"]
    assert capsys.readouterr().out.splitlines() == [f"https://3000.{HOST}", f"https://{HOST}"]


def test_ssh_execs_ssh_with_the_extra_arguments() -> None:
    cluster = FakeCluster()
    cluster.items["demo"]["spec"]["sshKeys"] = ["ssh-ed25519 AAAA me"]
    cluster.items["demo"]["status"]["server"] = {"ipv6": "2001:db8::7"}
    calls: list[tuple[str, list[str]]] = []
    _run(["ssh", "demo", "--", "-A", "uptime"], cluster,
         exec_=lambda f, a: calls.append((f, a)))
    assert calls == [("ssh", ["ssh", "root@2001:db8::7", "-A", "uptime"])]

    def missing(file: str, argv: list[str]) -> None:
        raise FileNotFoundError(file)

    with pytest.raises(CliError, match="ssh not found on PATH"):
        _run(["ssh", "demo"], cluster, exec_=missing)


def test_share_links_go_through_the_share_link_cli(capsys: pytest.CaptureFixture[str]) -> None:
    cluster = FakeCluster()
    _run(["share-link", "create", "demo", "--port", "3000", "--for", "2h"], cluster)
    link = capsys.readouterr().out.strip()
    assert link.startswith(f"https://3000.{HOST}/") and "kubectl" not in link
    _run(["share-link", "revoke", "demo"], cluster)
    assert list(cluster.patches[0]["metadata"]["annotations"]) == [REVOKE_ANNOTATION]
    assert "did you mean demo" in _error(_run, ["share-link", "revoke", "deno"], cluster)
    assert "port 3001 of demo is private" in \
        _error(_run, ["share-link", "create", "demo", "--port", "3001"], cluster)


def test_namespace_comes_from_the_context(tmp_path: Any) -> None:
    from agentspaces.kubectl_plugin.main import _namespace

    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n"
                      "- {name: x, cluster: {server: 'https://127.0.0.1:1'}}\n"
                      "users:\n- {name: y, user: {token: t}}\ncontexts:\n"
                      "- name: a\n  context: {cluster: x, user: y, "
                      "namespace: ns-a}\n- name: b\n  context: {cluster: x, user: y}\n")
    args = argparse.Namespace(kubeconfig=str(config), context=None)
    assert _namespace(args) == "ns-a"
    assert _namespace(argparse.Namespace(kubeconfig=str(config), context="b")) == "default"
    assert _namespace(argparse.Namespace(namespace="n", kubeconfig=str(config),
                                         context=None)) == "n"


def test_the_krew_manifest_installs_a_launcher_that_runs_the_plugin(tmp_path: Path) -> None:
    manifest = yaml.safe_load((REPO / "plugins" / "krew" / "ws.yaml").read_text())
    assert (manifest["kind"], manifest["metadata"]["name"]) == ("Plugin", "ws")
    platform = manifest["spec"]["platforms"][0]
    launcher = REPO / "plugins" / "krew" / platform["bin"]
    assert platform["files"][0]["from"] == launcher.name and os.access(launcher, os.X_OK)
    env = {"PATH": str(tmp_path), "AGENTSPACES_PYTHON": sys.executable}
    ran = subprocess.run(["/bin/sh", str(launcher), "--help"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert ran.returncode == 0 and ran.stdout.startswith("usage: kubectl ws")
    env["AGENTSPACES_PYTHON"] = "/bin/false"
    ran = subprocess.run(["/bin/sh", str(launcher), "list"], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert ran.returncode == 1 and "no python3 with the agentspaces package" in ran.stderr
