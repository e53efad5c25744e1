"""What a repository's devcontainer.json may ask for when the class does not trust it.

The agent runs `devcontainer up` as root on the VM, so the repository's config decides
things outside the container: `initializeCommand` runs on the host, `runArgs`,
`privileged`, `capAdd`, `securityOpt` and host `mounts` widen the container until it
is the host (and leaves the cgroup the firewall matches), a build context outside the
repository sends host files into the image. Unless the WorkspaceClass sets
`devcontainer.trustRepository`, only the keys below pass; everything else is removed
and listed, so the operator can say so in a condition. Commands that run inside the
container stay: the container is the workspace's to use.

Compose-based configs are refused outright: their services are defined in compose
files this module does not vet (any of them may be privileged). What the image's and
the features' own metadata ask for is refused at `docker run` by docker_guard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys whose effect stays inside the container (or is metadata for tools).
ALLOWED_KEYS = frozenset({
    "$schema", "name", "image", "build", "features", "overrideFeatureInstallOrder",
    "customizations", "containerEnv", "remoteEnv", "remoteUser", "containerUser",
    "updateRemoteUserUID", "userEnvProbe", "overrideCommand", "shutdownAction", "init",
    "workspaceFolder", "workspaceMount", "mounts", "runArgs", "hostRequirements",
    "forwardPorts", "portsAttributes", "otherPortsAttributes", "secrets", "waitFor",
    "onCreateCommand", "updateContentCommand", "postCreateCommand", "postStartCommand",
    "postAttachCommand",
})
COMPOSE_KEYS = ("dockerComposeFile", "service", "runServices")
BUILD_KEYS = frozenset({"dockerfile", "context", "args", "target", "cacheFrom"})
# `docker run` flags a repository may pass: resource sizes and in-container settings.
# Not labels: the VM's tools find the container and its config by its labels.
RUN_FLAGS_WITH_VALUE = frozenset({
    "--env", "-e", "--add-host", "--shm-size", "--memory", "-m", "--memory-swap",
    "--cpus", "--cpu-shares", "--workdir", "-w", "--user", "-u", "--tmpfs", "--ulimit",
    "--stop-signal", "--stop-timeout",
})
RUN_FLAGS_ALONE = frozenset({"--init", "--tty", "-t", "--interactive", "-i", "-it", "--rm"})
# Mounts that never reach a host path: named volumes (no driver options) and tmpfs.
MOUNT_TYPES = frozenset({"volume", "tmpfs"})
MOUNT_OPTIONS = frozenset({"type", "source", "src", "target", "dst", "destination",
                           "readonly", "ro", "consistency", "tmpfs-size", "tmpfs-mode"})
WORKSPACE_SOURCE = "${localWorkspaceFolder}"
# Removed keys are named in a condition; the repository chooses them, so keep them short.
LABEL_LIMIT = 60


class DevcontainerRefused(ValueError):
    """The repository's config cannot run without the class trusting the repository."""


@dataclass(frozen=True)
class Vetted:
    """The config to run and what was removed from it (key paths, never values)."""

    config: dict[str, Any]
    removed: tuple[str, ...]


def vet(config: Mapping[str, Any], *, repo: Path, config_dir: Path) -> Vetted:
    """The repository's `config` reduced to what may run unprivileged.

    `config_dir` is the directory of the devcontainer.json (relative paths start
    there); `repo` is the checkout, which build paths must not leave.
    """
    compose = [key for key in COMPOSE_KEYS if key in config]
    if compose:
        raise DevcontainerRefused(
            "the repository's devcontainer.json uses docker compose "
            f"({', '.join(compose)}); compose services can run privileged, so the "
            "WorkspaceClass must set devcontainer.trustRepository to use it")
    out: dict[str, Any] = {}
    removed: list[str] = []
    vetters: dict[str, Callable[[Any, list[str]], Any]] = {
        "build": lambda v, r: _build(v, r, repo=repo, config_dir=config_dir),
        "runArgs": _run_args,
        "mounts": _mounts,
        "workspaceMount": lambda v, r: _workspace_mount(v, r, repo=repo),
        "hostRequirements": _host_requirements,
    }
    for key, value in config.items():
        if key not in ALLOWED_KEYS:
            removed.append(key[:LABEL_LIMIT])
            continue
        vetter = vetters.get(key)
        out[key] = value if vetter is None else vetter(value, removed)
        if out[key] is None:
            del out[key]
    return Vetted(out, tuple(removed))


def _build(value: Any, removed: list[str], *, repo: Path, config_dir: Path) -> Any:
    if not isinstance(value, Mapping):
        removed.append("build")
        return None
    out = {}
    for key, item in value.items():
        if key not in BUILD_KEYS:
            removed.append(f"build.{key[:LABEL_LIMIT]}")
        elif key in ("context", "dockerfile") and not _inside(repo, config_dir, item):
            removed.append(f"build.{key}")
        else:
            out[key] = item
    return out


def _inside(repo: Path, config_dir: Path, relative: Any) -> bool:
    """True when the path (after symlinks) stays inside the repository."""
    if not isinstance(relative, str) or "${" in relative:
        return False
    root = os.path.realpath(repo)
    target = os.path.realpath(config_dir / relative)
    return target == root or target.startswith(root + os.sep)


def _run_args(value: Any, removed: list[str]) -> list[str] | None:
    if not isinstance(value, list):
        removed.append("runArgs")
        return None
    out: list[str] = []
    items = [str(a) for a in value]
    i = 0
    while i < len(items):
        arg = items[i]
        flag, equals, _ = arg.partition("=")
        alone = flag in RUN_FLAGS_ALONE and not equals
        # `--flag=value` (long flags only: `-e=X` would keep the `=` in the value).
        joined = flag in RUN_FLAGS_WITH_VALUE and bool(equals) and flag.startswith("--")
        if alone or joined:
            out.append(arg)
            i += 1
        elif flag in RUN_FLAGS_WITH_VALUE and not equals and i + 1 < len(items):
            out += [arg, items[i + 1]]
            i += 2
        else:
            # Its value goes with it, or `docker run` would read it as the image name.
            takes_value = not equals and i + 1 < len(items) \
                and not items[i + 1].startswith("-")
            removed.append(f"runArgs[{flag[:LABEL_LIMIT] if flag.startswith('-') else i}]")
            i += 2 if takes_value else 1
    return out


def _mount_options(mount: Any) -> dict[str, str] | None:
    """A mount (string or object) as option -> value; None when unreadable."""
    if isinstance(mount, Mapping):
        return {str(k): str(v) for k, v in mount.items()}
    if not isinstance(mount, str):
        return None
    options: dict[str, str] = {}
    for part in mount.split(","):
        key, _, val = part.partition("=")
        options[key.strip().lower()] = val.strip()
    return options


def _mounts(value: Any, removed: list[str]) -> list[Any] | None:
    if not isinstance(value, list):
        removed.append("mounts")
        return None
    out = []
    for index, mount in enumerate(value):
        options = _mount_options(mount)
        if (options is not None and options.get("type") in MOUNT_TYPES
                and set(options) <= MOUNT_OPTIONS):
            out.append(mount)
        else:
            removed.append(f"mounts[{index}]")
    return out


def _workspace_mount(value: Any, removed: list[str], *, repo: Path) -> str | None:
    """Only the checkout itself (or a folder in it), bound wherever the repo likes."""
    options = _mount_options(value)
    source = (options or {}).get("source") or (options or {}).get("src") or ""
    sub = source[len(WORKSPACE_SOURCE):]
    if (options is not None and isinstance(value, str) and options.get("type") == "bind"
            and set(options) <= MOUNT_OPTIONS and source.startswith(WORKSPACE_SOURCE)
            and (sub == "" or sub.startswith("/")) and _inside(repo, repo, "." + sub)):
        return value
    removed.append("workspaceMount")
    return None


def _host_requirements(value: Any, removed: list[str]) -> Any:
    if not isinstance(value, Mapping):
        removed.append("hostRequirements")
        return None
    if "gpu" in value:
        removed.append("hostRequirements.gpu")  # becomes `--gpus all`: host devices
    return {k: v for k, v in value.items() if k != "gpu"}
