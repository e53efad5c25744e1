"""The Debian profile's bootstrap checks what it downloads before it uses it.

Runs `fetch_verified` exactly as rendered into the debian-13 user-data (with `retry`,
which it uses) in bash against a file:// URL: the pinned integrity, in the npm
registry's `sha512-<base64>` form, lets the file through; any other digest fails the
step with both digests named.
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from pathlib import Path

from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import read_write_files
from tests.unit.vmconfig_inputs import render_variant


def _function(script: str, name: str) -> str:
    found = re.search(rf"^{name}\(\) {{\n.*?^}}\n", script, re.MULTILINE | re.DOTALL)
    assert found, name
    return found.group(0)


def _fetch_verified(url: str, integrity: str, dest: Path) -> subprocess.CompletedProcess[str]:
    written = read_write_files(render_variant("debian-13"))
    script = written[f"{VM_LAYOUT.install_dir}/bootstrap.sh"].content.decode()
    program = ("set -euo pipefail\n" + _function(script, "retry")
               + _function(script, "fetch_verified")
               + 'fetch_verified "$1" "$2" "$3"\necho verified\n')
    return subprocess.run(["bash", "-c", program, "fetch", url, integrity, str(dest)],
                          capture_output=True, text=True, timeout=60, check=False)


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_the_pinned_integrity_lets_the_tarball_through(tmp_path: Path) -> None:
    tarball = tmp_path / "node.tgz"
    tarball.write_bytes(b"pretend tarball\n" * 1000)
    dest = tmp_path / "out.tgz"
    result = _fetch_verified(tarball.as_uri(), _integrity(tarball.read_bytes()), dest)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "verified\n"
    assert dest.read_bytes() == tarball.read_bytes()


def test_another_digest_fails_the_step_and_names_both(tmp_path: Path) -> None:
    tarball = tmp_path / "node.tgz"
    tarball.write_bytes(b"a tampered tarball\n")
    pinned = _integrity(b"the real tarball\n")
    result = _fetch_verified(tarball.as_uri(), pinned, tmp_path / "out.tgz")
    assert result.returncode != 0
    assert "verified" not in result.stdout
    assert f"has integrity {_integrity(tarball.read_bytes())}, pinned {pinned}" in result.stderr
