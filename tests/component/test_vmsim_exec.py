"""A command in a simulated VM's devcontainer view: the VM's /workspaces at /workspaces,
whichever server's root it lives under, and nothing mounted on the host afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agentspaces.lifeline import die_with_parent
from agentspaces.sandbox.vmsim_exec import container_command
from agentspaces.sandbox.vmsim_layout import SimulationError

pytestmark = pytest.mark.timeout(60)
PROBE = ('pwd; echo "$CLAUDE_CONFIG_DIR"; ls -A /workspaces | sort | tr "\\n" " "; echo; '
         'echo written > /workspaces/app/out.txt')


def _run(vm: Path, new_root: Path, tmp_path: Path) -> list[str]:
    cmd = container_command(vm, new_root, ["sh", "-c", PROBE], workdir="app",
                            home=tmp_path / "home", env={"EXTRA": "1"})
    assert cmd.env["EXTRA"] == "1" and cmd.env["CLAUDE_CONFIG_DIR"] == "/workspaces/.claude"
    result = subprocess.run(cmd.argv, env=cmd.env, capture_output=True, text=True,
                            timeout=30, preexec_fn=die_with_parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_every_server_s_workspaces_appear_at_the_vm_path(tmp_path: Path) -> None:
    new_root = tmp_path / "state" / "devcontainer" / "root"
    host_had_workspaces = Path("/workspaces").exists()
    for server in ("3", "4"):  # a stop and a wake: a new server, a new root
        vm = tmp_path / "state" / "vms" / server / "workspaces"
        (vm / "app").mkdir(parents=True)
        (vm / ".claude").mkdir()
        assert _run(vm, new_root, tmp_path) == [
            "/workspaces/app", "/workspaces/.claude", ".claude app "]
        assert (vm / "app" / "out.txt").read_text() == "written\n"
    # Nothing stays mounted on the host, and the host's / is untouched.
    assert str(new_root) not in _mounts()
    assert list(new_root.iterdir()) == []
    assert Path("/workspaces").exists() == host_had_workspaces


def test_the_working_directory_stays_inside_workspaces(tmp_path: Path) -> None:
    vm = tmp_path / "vm"
    vm.mkdir()
    for bad in ("/etc", "../x", "app/../../x"):
        with pytest.raises(SimulationError):
            container_command(vm, tmp_path / "root", ["true"], workdir=bad,
                              home=tmp_path / "home")
    with pytest.raises(SimulationError):
        container_command(tmp_path / "missing", tmp_path / "root", ["true"],
                          home=tmp_path / "home")
