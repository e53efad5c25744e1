"""The built agent zipapp runs under a plain Python (no venv, no site-packages): the
agent's entry point starts and its templates load from inside the archive."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from agentspaces.vmconfig.agent_bundle import build_agent_bundle


def _bundle(tmp_path: Path) -> Path:
    path = tmp_path / "agent.pyz"
    path.write_bytes(build_agent_bundle())
    return path


def test_entry_point_starts(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-I", str(_bundle(tmp_path)), "--help"],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_templates_load_from_the_archive(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "from agentspaces_vm.templates import load_template; "
            "import agentspaces_vm; assert agentspaces_vm.__file__.startswith(sys.argv[1]); "
            "print(len(load_template('caddy.json')), len(load_template('devcontainer.json')))")
    result = subprocess.run([sys.executable, "-I", "-c", code, str(bundle)],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sizes = [int(n) for n in result.stdout.split()]
    assert len(sizes) == 2 and all(size > 0 for size in sizes)


def test_exit_code_passes_through(tmp_path: Path) -> None:
    # agent-protocol.md: exit code 2 for an invalid agent.json.
    (tmp_path / "agent.json").write_text("{}")
    result = subprocess.run([sys.executable, "-I", str(_bundle(tmp_path)), "--config",
                             str(tmp_path / "agent.json")],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 2, result.stderr
