"""The Docker CLI `devcontainer up` uses when the class does not trust the repository.

Vetting devcontainer.json is not enough: the CLI merges in what the image's
`devcontainer.metadata` label and every feature's metadata ask for (`privileged`,
`capAdd`, `securityOpt`, `mounts`), and an image or a feature is chosen by the
repository too. Every one of those ends up as a flag of the one `docker run` that
creates the container, so this wrapper (passed with `--docker-path`) reads that command
and refuses what would give the container the host; everything else goes to the real
docker unchanged. A refusal is written to `refusal_file` for the agent to report.

Refused in `docker run`/`create`: privilege and namespace flags, host devices, files
read or written on the host, networks other than the host's, `-v`/`--volume`, and
`--mount` binds of anything but the checkout and the agent's own two directories;
`docker exec --privileged`; `docker compose`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REFUSED_FLAGS = frozenset({
    "--privileged", "--cap-add", "--security-opt", "--device", "--device-cgroup-rule",
    "--pid", "--ipc", "--uts", "--userns", "--cgroupns", "--cgroup-parent", "--runtime",
    "--volumes-from", "--volume", "--gpus", "--sysctl", "--oom-kill-disable",
    "--env-file", "--label-file", "--cidfile",
})
CREATE_COMMANDS = ("run", "create")


@dataclass(frozen=True)
class Policy:
    docker: str
    bind_sources: tuple[str, ...]  # host paths a bind may mount (subpaths of the first too)
    refusal_file: str

    def to_json(self) -> str:
        return json.dumps({"docker": self.docker, "bindSources": list(self.bind_sources),
                           "refusalFile": self.refusal_file})

    @classmethod
    def from_json(cls, text: str) -> Policy:
        doc = json.loads(text)
        return cls(str(doc["docker"]), tuple(str(p) for p in doc["bindSources"]),
                   str(doc["refusalFile"]))


def _subcommand(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(`run`, its arguments) for `docker run ...` and `docker container run ...`."""
    words = list(argv)
    if words[:1] == ["container"] and len(words) > 1:
        words = words[1:]
    return (words[0], words[1:]) if words else ("", [])


def _flags(args: Sequence[str]) -> list[tuple[str, str | None]]:
    """Each flag-looking token with the value next to it (`--x=v`, or the next token)."""
    found = []
    for i, arg in enumerate(args):
        if not arg.startswith("-") or arg == "-":
            continue
        name, equals, value = arg.partition("=")
        following = args[i + 1] if i + 1 < len(args) else None
        found.append((name, value if equals else following))
    return found


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _mount_problem(spec: str, policy: Policy) -> str | None:
    options: dict[str, str] = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        options[key.strip().lower()] = value.strip()
    kind = options.get("type", "volume")
    if kind == "tmpfs":
        return None
    if kind == "volume":
        driven = [k for k in options if k.startswith("volume-")]
        return f"a volume with {driven[0]}" if driven else None
    if kind != "bind":
        return f"a {kind} mount"
    source = options.get("source") or options.get("src") or ""
    real = os.path.realpath(source) if source else ""
    allowed = [os.path.realpath(p) for p in policy.bind_sources]
    if real and (_inside(real, allowed[0]) or real in allowed[1:]):
        return None
    return f"a bind mount of {source or 'nothing'}"


def problem(argv: Sequence[str], policy: Policy) -> str | None:
    """Why this docker command may not run, or None."""
    command, args = _subcommand(argv)
    if command == "compose":
        return "docker compose"
    if command == "exec":
        return "docker exec --privileged" if "--privileged" in args else None
    if command not in CREATE_COMMANDS:
        return None
    for name, value in _flags(args):
        # `-v`, also inside a cluster of short flags such as `-itv`.
        volume = not name.startswith("--") and "v" in name[1:]
        if name in REFUSED_FLAGS or volume:
            return name
        if name in ("--network", "--net") and value != "host":
            return f"{name}={value}"
        if name == "--mount" and value is not None:
            found = _mount_problem(value, policy)
            if found:
                return found
    return None


def launcher(policy: Policy) -> str:
    """An executable script for `--docker-path` that runs this module with `policy`."""
    import agentspaces_vm

    package_root = str(Path(agentspaces_vm.__file__).parent.parent)
    return (f"#!{sys.executable} -I\n"
            "import sys\n"
            f"sys.path.insert(0, {package_root!r})\n"
            "from agentspaces_vm.docker_guard import main\n"
            f"sys.exit(main({policy.to_json()!r}, sys.argv[1:]))\n")


def main(policy_json: str, argv: list[str]) -> int:
    policy = Policy.from_json(policy_json)
    found = problem(argv, policy)
    if found is None:
        os.execv(policy.docker, [policy.docker, *argv])
    reason = (f"the container would get {found} (asked for by the devcontainer config, "
              "its image or a feature); the WorkspaceClass must set "
              "devcontainer.trustRepository to allow it")
    Path(policy.refusal_file).write_text(reason + "\n", encoding="utf-8")
    print(f"agentspaces: refused: {reason}", file=sys.stderr)
    return 126
