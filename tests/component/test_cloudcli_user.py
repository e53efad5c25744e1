"""CloudCLI, and the shell it hands out, run as an unprivileged user whose one way to
root is the Claude wrapper (it needs Docker).

Checked with the real tools on the rendered user-data: `visudo` and `cvtsudoers` (apt
package `sudo`) read the sudoers rule, `systemd-analyze` (package `systemd`) reads the
unit, and the wrapper script runs as an unprivileged uid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentspaces.vmconfig.layout import SUDOERS_FILE, UI_USER
from agentspaces.vmconfig.userdata import read_write_files
from tests.unit.vmconfig_inputs import render_variant

UNIT = "/etc/systemd/system/agentspaces-cloudcli.service"
WRAPPER = "/usr/local/bin/agentspaces-claude"
# With User=, these imply NoNewPrivileges=, which would switch the sudo rule off.
IMPLY_NO_NEW_PRIVILEGES = (
    "NoNewPrivileges=yes", "PrivateDevices=", "ProtectKernelTunables=", "ProtectKernelModules=",
    "ProtectKernelLogs=", "ProtectClock=", "ProtectHostname=", "RestrictSUIDSGID=",
    "LockPersonality=", "MemoryDenyWriteExecute=", "RestrictRealtime=", "RestrictNamespaces=",
    "RestrictAddressFamilies=", "SystemCallFilter=", "SystemCallArchitectures=")


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert found, f"{name} is not installed (apt-get install {package})"
    return found


def _files() -> dict[str, bytes]:
    return {p: f.content for p, f in read_write_files(render_variant("minimal")).items()}


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                          **kwargs)  # type: ignore[call-overload, no-any-return]


def test_the_sudoers_rule_validates_and_allows_only_the_wrapper(tmp_path: Path) -> None:
    written = read_write_files(render_variant("minimal"))[SUDOERS_FILE]
    assert written.permissions == "0440"
    rule = tmp_path / "agentspaces-claude"
    rule.write_bytes(written.content)
    checked = _run([_tool("visudo", "sudo"), "-cf", str(rule)])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    parsed = _run([_tool("cvtsudoers", "sudo"), "-f", "json", str(rule)])
    assert parsed.returncode == 0, parsed.stderr
    doc = json.loads(parsed.stdout)
    [spec] = doc["User_Specs"]
    assert spec["User_List"] == [{"username": UI_USER}]
    [cmnd] = spec["Cmnd_Specs"]
    assert cmnd["runasusers"] == [{"username": "root"}]
    assert cmnd["Commands"] == [{"command": WRAPPER}]
    # No password (CloudCLI has no terminal for one) and no environment passed through.
    assert cmnd["Options"] == [{"authenticate": False}]
    [defaults] = doc["Defaults"]
    assert defaults["Binding"] == [{"username": UI_USER}]
    assert {"env_reset": True} in defaults["Options"]
    # The check can fail: a rule that does not parse is refused.
    rule.write_bytes(written.content + b"cloudcli ALL=(root NOPASSWD\n")
    assert _run([_tool("visudo", "sudo"), "-cf", str(rule)]).returncode != 0


def test_the_cloudcli_unit_runs_unprivileged_and_sandboxed(tmp_path: Path) -> None:
    files = _files()
    unit = files[UNIT].decode()
    assert f"User={UI_USER}\n" in unit and f"Group={UI_USER}\n" in unit
    settings = [line for line in unit.splitlines() if not line.startswith("#")]
    assert not [s for s in settings if s.startswith(IMPLY_NO_NEW_PRIVILEGES)]
    # A root for systemd-analyze: our units, the distribution's, stand-in executables.
    for path, content in files.items():
        if path.startswith("/etc/systemd/system/"):
            target = tmp_path / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    system_units = Path("/lib/systemd/system")
    assert system_units.is_dir(), "systemd is not installed (apt-get install systemd)"
    shutil.copytree(system_units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    for exe in ("usr/bin/cloudcli", "bin/ln", "usr/bin/install",
                "opt/agentspaces/cloudcli-register.sh"):
        (tmp_path / exe).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / exe).write_text("#!/bin/sh\n")
        (tmp_path / exe).chmod(0o755)
    analyze = _tool("systemd-analyze", "systemd")
    verified = _run([analyze, "verify", "--man=no", f"--root={tmp_path}",
                     str(tmp_path / UNIT.lstrip("/"))])
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = _run([analyze, "security", "--offline=true", f"--root={tmp_path}",
                     "--no-pager", "agentspaces-cloudcli.service"])
    passed = {line.split()[1] for line in security.stdout.splitlines()
              if line.startswith("✓")}
    assert {"User=/DynamicUser=", "ProtectSystem=", "PrivateTmp=", "ProtectProc=",
            "ProtectControlGroups="} <= passed, security.stdout


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another uid can read (tmp_path is private to the test's user)."""
    path = Path(tempfile.mkdtemp(prefix="agentspaces-cloudcli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_wrapper_reaches_docker_only_through_its_sudo_rule(shared_dir: Path) -> None:
    """Run as an unprivileged uid (CloudCLI's), the wrapper re-runs itself through sudo,
    by its fixed path, passing the arguments and nothing else."""
    (shared_dir / "bin").mkdir(mode=0o755)
    wrapper = shared_dir / "agentspaces-claude"
    wrapper.write_bytes(_files()[WRAPPER])
    wrapper.chmod(0o755)
    for name in ("sudo", "docker", "devcontainer"):
        stand_in = shared_dir / "bin" / name
        stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name}" "$@"\n')
        stand_in.chmod(0o755)
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = [_tool("setpriv", "util-linux"), "--reuid=65534", "--regid=65534",
                  "--clear-groups"]
    env = {"PATH": f"{shared_dir / 'bin'}:/usr/bin:/bin"}
    result = _run([*prefix, str(wrapper), "-p", "hello", "--docker-path", "/tmp/x"], env=env,
                  cwd=shared_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["sudo", "--non-interactive", "--", WRAPPER, "-p",
                                          "hello", "--docker-path", "/tmp/x"]
