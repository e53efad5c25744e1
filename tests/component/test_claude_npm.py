"""Claude Code from npm (class devcontainer.claudeCode: npm), for real: the agent's
installer runs the real npm against the real registry into a temporary root (the same
code the agent runs as root into state/claude-code), and the binary it installed runs.

npm's own cache (`npm config get cache`, which scripts/install-claude.sh fills too)
keeps the ~190 MB tarball from being downloaded on every run; npm checks the cached
tarball against the lockfile's sha512 all the same. A pin that is not the registry's
digest is refused, shown with the small wrapper package so that refusal costs a 30 kB
download, not the platform binary.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from agentspaces_vm import claude_install as ci
from agentspaces_vm.bootstrap import CommandResult, run_command


def _npm() -> str:
    found = shutil.which("npm")
    assert found, "npm is not installed (the tests need Node 22 and npm, see README)"
    return found


@pytest.fixture(scope="module")
def npm_cache() -> Path:
    out = subprocess.run([_npm(), "config", "get", "cache"], capture_output=True, text=True,
                         timeout=60, check=True)
    return Path(out.stdout.strip())


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "claude-code"
    yield where
    shutil.rmtree(where, ignore_errors=True)  # 400 MB: not left for pytest's tmp retention


class Recording:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 timeout: float) -> CommandResult:
        self.argvs.append(list(argv))
        return run_command(argv, env, cwd, timeout)


def test_the_pins_are_what_the_registry_serves() -> None:
    with httpx.Client(timeout=60) as client:
        for package in ci.PACKAGES.values():
            doc = client.get(f"{ci.REGISTRY}/{package.name}/{package.version}").json()
            assert doc["dist"]["integrity"] == package.integrity, package.name
            assert doc["dist"]["tarball"] == package.tarball_url
            assert (doc["os"], doc["cpu"], doc.get("libc")) == (["linux"], [package.cpu],
                                                                ["glibc"])


def test_the_installer_installs_the_pinned_build_and_it_runs(root: Path,
                                                             npm_cache: Path) -> None:
    package = ci.platform_package()
    runner = Recording()
    env = ci.npm_env(os.environ)
    done = ci.install(root, npm=_npm(), runner=runner, env=env, npm_cache=npm_cache)
    assert done == ci.Installed(ci.binary_path(root, package), installed_now=True)
    assert [a[1] for a in runner.argvs] == ["ci", "--version"]
    assert sorted(p.name for p in root.iterdir()) == [package.version]
    # Exactly the one package: no wrapper, no install script ran.
    modules = root / package.version / "node_modules"
    assert sorted(p.name for p in (modules / "@anthropic-ai").iterdir()) == [
        package.name.rpartition("/")[2]]
    version = subprocess.run([str(done.binary), "--version"], capture_output=True, text=True,
                             timeout=60, check=False,
                             env={**env, "DISABLE_AUTOUPDATER": "1", "HOME": str(root)})
    assert version.returncode == 0, version.stderr
    assert version.stdout.split()[0] == ci.CLAUDE_CODE_VERSION
    # Installed is installed: nothing runs the second time.
    again = Recording()
    assert ci.install(root, npm=_npm(), runner=again, env=env, npm_cache=npm_cache) == \
        ci.Installed(done.binary, installed_now=False)
    assert again.argvs == []


def test_npm_refuses_a_tarball_that_is_not_the_pinned_one(root: Path, tmp_path: Path) -> None:
    wrong = "sha512-" + base64.b64encode(hashlib.sha512(b"not the tarball").digest()).decode()
    package = ci.PlatformPackage("@anthropic-ai/claude-code", ci.CLAUDE_CODE_VERSION, wrong,
                                 ci.platform_package().cpu)
    with pytest.raises(ci.InstallError) as info:
        ci.install(root, npm=_npm(), runner=run_command, env=ci.npm_env(os.environ),
                   package=package, npm_cache=tmp_path / "fresh-cache")
    assert "EINTEGRITY" in str(info.value) and wrong in str(info.value)
    assert list(root.iterdir()) == []
