"""Where the pinned front-end files are (scripts/fetch-dashboard-assets.sh puts them)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

LOCK = Path(__file__).with_name("assets.lock")
ENV = "AGENTSPACES_DASHBOARD_ASSETS"


@dataclass(frozen=True)
class Asset:
    package: str
    version: str
    integrity: str
    member: str
    file: str


def pinned(lock: Path = LOCK) -> list[Asset]:
    return [Asset(*line.split("\t")) for line in lock.read_text().splitlines()
            if line and not line.startswith("#")]


def cache_key(lock: Path = LOCK) -> str:
    """The same key the fetch script computes: a change of pin is a new directory."""
    body = "".join(line for line in lock.read_text().splitlines(keepends=True)
                   if not line.startswith("#"))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def assets_dir(environ: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if environ is None else environ
    if env.get(ENV):
        return Path(env[ENV])
    cache = env.get("AGENTSPACES_CACHE") or str(
        Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentspaces")
    return Path(cache) / "dashboard-assets" / cache_key()


class AssetsMissing(RuntimeError):
    pass


def check(directory: Path) -> Path:
    missing = [a.file for a in pinned() if not (directory / a.file).is_file()]
    if missing:
        raise AssetsMissing(f"{', '.join(missing)} not in {directory}: run "
                            "scripts/fetch-dashboard-assets.sh (or set " + ENV + ")")
    return directory
