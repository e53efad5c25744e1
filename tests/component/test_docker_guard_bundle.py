"""The Docker guard as it runs on a VM: its launcher is written by the agent running from
the built zipapp, and runs under a plain Python in front of a stand-in docker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agentspaces.vmconfig.agent_bundle import build_agent_bundle

WRITE_LAUNCHER = """\
import sys
sys.path.insert(0, sys.argv[1])
from agentspaces_vm import docker_guard
policy = docker_guard.Policy(docker=sys.argv[2], bind_sources=(sys.argv[3],),
                             refusal_file=sys.argv[4])
print(docker_guard.launcher(policy))
"""


def test_the_launcher_from_the_bundle_passes_or_refuses(tmp_path: Path) -> None:
    bundle = tmp_path / "agent.pyz"
    bundle.write_bytes(build_agent_bundle())
    docker = tmp_path / "docker"
    docker.write_text(f"#!{sys.executable}\nimport json, sys\n"
                      "print(json.dumps(sys.argv[1:]))\n")
    docker.chmod(0o755)
    refusal = tmp_path / "refused"
    written = subprocess.run(
        [sys.executable, "-I", "-c", WRITE_LAUNCHER, str(bundle), str(docker),
         str(tmp_path / "app"), str(refusal)],
        capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert f"sys.path.insert(0, {str(bundle)!r})" in written.stdout
    guard = tmp_path / "docker-guard"
    guard.write_text(written.stdout)
    guard.chmod(0o700)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(guard), *argv], capture_output=True, text=True,
                              timeout=60, check=False, cwd=tmp_path, env={})

    plain = ["run", "--mount", f"type=bind,src={tmp_path / 'app'},dst=/w", "img"]
    passed = run(*plain)
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout) == plain
    assert not refusal.exists()
    refused = run("run", "--privileged", "img")
    assert refused.returncode == 126 and refused.stdout == ""
    assert "--privileged" in refusal.read_text()
