"""What ships outside the repository: `pip install .` (the operator image installs the
package this way) carries every subpackage and data file, and the Helm chart's CRDs
are the generated ones."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    tool: dict[str, object] = config["tool"]["setuptools"]
    return tool


def _package_dirs() -> dict[str, Path]:
    """Every importable package under the mapped roots, named as it installs."""
    roots: dict[str, str] = _setuptools()["package-dir"]  # type: ignore[assignment]
    found: dict[str, Path] = {}
    for name, root in roots.items():
        for init in sorted((REPO / root).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / root).parts
            found[".".join((name, *rel))] = init.parent
    return found


def test_every_package_is_listed_for_the_wheel() -> None:
    # A package missing here installs nowhere but an editable checkout: the wheel and
    # the operator image then fail at import.
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    missing = sorted(set(_package_dirs()) - listed)
    assert missing == [], f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def test_every_data_file_is_matched_by_package_data() -> None:
    """Templates, cloud-init files, the dashboard's templates and static files: a file
    that is not Python must match its package's package-data globs (setuptools globs
    them relative to the package directory)."""
    packages = _package_dirs()
    data: dict[str, list[str]] = _setuptools()["package-data"]  # type: ignore[assignment]
    owner = {path: name for name, path in packages.items()}
    unmatched = []
    for name, pkg_dir in packages.items():
        shipped = {pkg_dir / hit for pattern in data.get(name, [])
                   for hit in glob.glob(pattern, root_dir=pkg_dir, recursive=True)}
        for path in pkg_dir.rglob("*"):
            if (not path.is_file() or path.suffix in (".py", ".pyc")
                    or "__pycache__" in path.parts):
                continue
            nearest = next(p for p in path.parents if p in owner)
            if owner[nearest] == name and path not in shipped:
                unmatched.append(str(path.relative_to(REPO)))
    assert unmatched == [], f"not in the wheel (pyproject.toml package-data): {unmatched}"


def test_the_charts_crds_are_the_generated_crds() -> None:
    # Helm installs CRDs only from the chart's own crds/ directory; `make crds` writes
    # both files, so they never differ by a byte.
    generated = (REPO / "crds" / "agentspaces.dev.yaml").read_bytes()
    chart = (REPO / "charts" / "agentspaces" / "crds" / "agentspaces.dev.yaml").read_bytes()
    assert chart == generated, ("charts/agentspaces/crds/ differs from crds/; "
                                "regenerate both with `make crds`")
