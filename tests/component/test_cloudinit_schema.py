"""Every rendered user-data variant passes cloud-init's own schema validation.

Uses the real `cloud-init` (Debian/Ubuntu package `cloud-init`; CI installs it with
apt). One variant is rendered as the operator does it: real agent credentials and the
digest of the real agent bundle (push delivery). The workspace-image builders'
user-data (vmconfig.bake) is checked the same way.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentspaces import pki
from agentspaces.vmconfig.bake import BAKE_PROFILES, render_bake_user_data
from agentspaces.vmconfig.userdata import render_user_data
from tests.unit.vmconfig_inputs import (
    FULL_SPEC,
    HOST,
    VARIANTS,
    WS,
    make_klass,
    make_spec,
    render_variant,
)


def _cloud_init() -> str:
    found = shutil.which("cloud-init") or "/usr/bin/cloud-init"
    assert Path(found).exists(), "cloud-init is not installed (apt-get install cloud-init)"
    return found


def _operator_rendering() -> str:
    klass = make_klass()
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    return render_user_data(WS, make_spec(klass, **FULL_SPEC), klass, host=HOST,
                            agent_credentials=creds)


RENDERINGS = {**{name: (lambda n=name: render_variant(n)) for name in VARIANTS},
              **{f"bake-{p}": (lambda p=p: render_bake_user_data(p)) for p in BAKE_PROFILES},
              "operator-default": _operator_rendering}


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_cloud_init_schema_accepts(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(RENDERINGS[name](), encoding="utf-8")
    result = subprocess.run([_cloud_init(), "schema", "-c", str(path)],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid" in result.stdout


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_cloud_init_annotate_reports_nothing(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(RENDERINGS[name](), encoding="utf-8")
    result = subprocess.run([_cloud_init(), "schema", "-c", str(path), "--annotate"],
                            capture_output=True, text=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for marker in ("# E1", "# Errors:", "# D1", "# Deprecations:"):
        assert marker not in output, output


def test_a_broken_document_is_caught(tmp_path: Path) -> None:
    # Guards the two tests above against a validator that accepts anything (annotate
    # exits 0 even with errors on some releases, hence the markers).
    path = tmp_path / "broken.yaml"
    path.write_text("#cloud-config\nssh_pwauth: maybe-later\npackages: 7\n", encoding="utf-8")
    plain = subprocess.run([_cloud_init(), "schema", "-c", str(path)],
                           capture_output=True, text=True, timeout=120, check=False)
    assert plain.returncode != 0
    assert "packages" in plain.stdout + plain.stderr
    annotated = subprocess.run([_cloud_init(), "schema", "-c", str(path), "--annotate"],
                               capture_output=True, text=True, timeout=120, check=False)
    assert "# E1" in annotated.stdout and "# D1" in annotated.stdout
