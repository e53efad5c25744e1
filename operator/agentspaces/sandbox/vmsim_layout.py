"""A simulated VM's files: the real user-data laid out under a per-server root, and the
few rewrites a local process needs that a VM does not.

Every write_files path lands at `<root>/<path>` (so /etc/agentspaces, /opt/agentspaces,
/var/lib/agentspaces and /workspaces all live inside the root). agent.json keeps the
token hash, TLS material, tlsMode, ports and everything else as rendered; only
addresses, paths and `simulate` change (`simulated_agent_config`). Commands come from
the rendered systemd units, so the sandbox starts exactly what the VM would.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import WrittenFile

UNIT_DIR = "/etc/systemd/system"
AGENT_UNIT = f"{UNIT_DIR}/agentspaces-agent.service"
CADDY_UNIT = f"{UNIT_DIR}/agentspaces-caddy.service"
# VM directories the simulated processes read and write (all inside the root).
MAPPED_PREFIXES = (VM_LAYOUT.config_dir, VM_LAYOUT.install_dir, VM_LAYOUT.state_dir,
                   VM_LAYOUT.workspaces_dir)
# Where a warm-pool server's claim appends SSH keys unless agent.json says otherwise
# (the loader's default).
SSH_AUTHORIZED_KEYS = "/root/.ssh/authorized_keys"
_ADDRESS = re.compile(r"\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})")


class SimulationError(ValueError):
    """The user-data cannot be simulated (missing file or field); says which."""


def vm_path(root: Path, path: str) -> Path:
    """Where the VM path `path` lives under `root`."""
    pure = PurePosixPath(path)
    if not pure.is_absolute() or ".." in pure.parts:
        raise SimulationError(f"{path!r}: expected an absolute path without '..'")
    return root.joinpath(*pure.parts[1:])


def is_mapped(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in MAPPED_PREFIXES)


def lay_out(files: Mapping[str, WrittenFile], root: Path) -> list[Path]:
    """Write every file with its mode; directories are created 0755 like cloud-init."""
    written = []
    for path, entry in sorted(files.items()):
        target = vm_path(root, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(entry.content)
        try:
            mode = int(entry.permissions, 8)
        except ValueError:
            raise SimulationError(f"{path}: bad permissions {entry.permissions!r}") from None
        os.chmod(target, mode)
        written.append(target)
    return written


def port_of(address: object, where: str) -> int:
    """The port of a `host:port` or `[v6]:port` string."""
    match = _ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None:
        raise SimulationError(f"{where}: expected host:port, got {address!r}")
    return int(match.group(2) or match.group(4))


def _section(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise SimulationError(f"agent.json: {key} is missing or not an object")
    return value


def _mapped(root: Path, value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SimulationError(f"agent.json: {where} is missing")
    return str(vm_path(root, value))


def simulated_agent_config(rendered: Mapping[str, Any], ip: str, root: Path,
                           agent_json: str = VM_LAYOUT.agent_json) -> dict[str, Any]:
    """agent.json for a local agent on `ip` with its files under `root`.

    Changed, and why:
    - `simulate: true`: no clone, Docker or devcontainer on the host;
    - `listen.api`, `listen.local`, `caddy.admin`: same ports, on the VM's own `ip`
      (0.0.0.0 or 127.0.0.1 would collide with the other simulated VMs);
    - `caddy.bind` = `ip`: Caddy serves only this VM's address and dials its programs
      there;
    - `tls.*`, `paths.*`, `claudeSeedDir`: the VM paths inside `root`;
    - `sshAuthorizedKeysFile` (a warm-pool server's, or when set): inside `root`, so a
      claim's SSH keys land there and not in the host's /root;
    - `portDiscovery.addresses` = [`ip`]: other VMs' and the host's ports stay out.

    A warm-pool server's agent.json (`pool`, no workspace keys) maps the same way: the
    claim adds only workspace keys, which hold no paths or addresses.
    """
    doc = copy.deepcopy(dict(rendered))
    listen, tls, caddy, paths = (_section(doc, k) for k in ("listen", "tls", "caddy", "paths"))
    doc["simulate"] = True
    listen["api"] = f"{ip}:{port_of(listen.get('api'), 'listen.api')}"
    listen["local"] = f"{ip}:{port_of(listen.get('local'), 'listen.local')}"
    caddy["admin"] = f"{ip}:{port_of(caddy.get('admin'), 'caddy.admin')}"
    caddy["bind"] = ip
    tls["cert"] = _mapped(root, tls.get("cert"), "tls.cert")
    tls["key"] = _mapped(root, tls.get("key"), "tls.key")
    paths["workspaces"] = _mapped(root, paths.get("workspaces"), "paths.workspaces")
    paths["state"] = _mapped(root, paths.get("state"), "paths.state")
    seeds = doc.get("claudeSeedDir") or str(PurePosixPath(agent_json).parent / "claude")
    doc["claudeSeedDir"] = _mapped(root, seeds, "claudeSeedDir")
    if "pool" in doc or "sshAuthorizedKeysFile" in doc:
        keys = doc.get("sshAuthorizedKeysFile") or SSH_AUTHORIZED_KEYS
        doc["sshAuthorizedKeysFile"] = _mapped(root, keys, "sshAuthorizedKeysFile")
    discovery = doc.get("portDiscovery")
    doc["portDiscovery"] = {**(discovery if isinstance(discovery, dict) else {}),
                            "addresses": [ip]}
    return doc


def simulated_caddy_bootstrap(rendered: Mapping[str, Any], ip: str) -> dict[str, Any]:
    """caddy-bootstrap.json with the admin API on `ip` (same port), nothing else changed."""
    doc = copy.deepcopy(dict(rendered))
    admin = doc.get("admin")
    if not isinstance(admin, dict):
        raise SimulationError("caddy-bootstrap.json: admin is missing")
    admin["listen"] = f"{ip}:{port_of(admin.get('listen'), 'caddy-bootstrap admin.listen')}"
    return doc


@dataclass(frozen=True)
class UnitCommand:
    """ExecStart and Environment of a systemd service unit."""

    argv: tuple[str, ...]
    env: dict[str, str]


def parse_unit(text: str, name: str) -> UnitCommand:
    argv: list[str] | None = None
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if not sep or line.startswith(("#", ";")):
            continue
        if key == "ExecStart":
            argv = shlex.split(value.lstrip("-@+!:"))
        elif key == "Environment":
            for item in shlex.split(value):
                var, eq, val = item.partition("=")
                if eq:
                    env[var] = val
    if not argv:
        raise SimulationError(f"{name}: no ExecStart")
    return UnitCommand(tuple(argv), env)


def local_command(unit: UnitCommand, root: Path, executable: str) -> list[str]:
    """The unit's command for this host: `executable` instead of the VM's binary and
    VM paths mapped into `root`."""
    return [executable, *(str(vm_path(root, arg)) if is_mapped(arg) else arg
                          for arg in unit.argv[1:])]
