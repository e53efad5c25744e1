"""Pure helpers for `devcontainer up`: pick the config, add what the agent needs, build
the argv and read the CLI's one-line JSON outcome.

What the agent adds to every devcontainer:
- Claude Code: the devcontainer feature (`--additional-features`), or, when the class
  sets `devcontainer.claudeCode: npm`, the binary the agent installed on the VM
  (agentspaces_vm.claude_install) as a read-only bind at /usr/local/bin/claude;
- host networking, so programs in the container listen where the agent discovers
  ports and Caddy proxies (127.0.0.1), and Claude Code hooks reach the local listener;
- a read-only bind of state/secrets/claude at /run/agentspaces (the API key) and a bind
  of /workspaces/.claude at the same path, with CLAUDE_CONFIG_DIR pointing there (in
  `containerEnv` and as `--remote-env`).

The CLI's `--mount` flag cannot say `readonly`, so mounts and runArgs go into the
config: a generated config is written whole; a repository's own config is merged into
an override file passed with `--override-config`, while `--config` keeps naming the
original so its relative paths (Dockerfile, compose files) resolve as before. The CLI
reads only the override's content, so a key removed from it is gone: unless the class
trusts the repository, the override holds only what devcontainer_policy allows.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentspaces_vm.devcontainer_policy import vet

CLAUDE_FEATURE = "ghcr.io/anthropics/devcontainer-features/claude-code:1"
CLAUDE_CONFIG_DIR = "/workspaces/.claude"
SECRETS_TARGET = "/run/agentspaces"
# Where the VM's own Claude Code binary (claudeCode: npm) appears: on every image's PATH.
CLAUDE_BINARY_TARGET = "/usr/local/bin/claude"
# Where the config came from and how far it was trusted (reported in the status).
GENERATED, RESTRICTED, TRUSTED = "generated", "restricted", "trusted"
# Used only when the default template is missing from the bundle.
FALLBACK_CONFIG: dict[str, Any] = {
    "name": "agentspaces workspace",
    "image": "mcr.microsoft.com/devcontainers/base:ubuntu-24.04",
    "features": {"ghcr.io/devcontainers/features/node:1": {"version": "22"}},
}


def jsonc_loads(text: str) -> Any:
    """Parse JSON with comments and trailing commas, as devcontainer.json allows."""
    out: list[str] = []
    i, n, in_str = 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            if c == "\\":
                out.append(text[i:i + 2])
                i += 2
                continue
            in_str = c != '"'
            out.append(c)
            i += 1
        elif c == '"':
            in_str = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise ValueError("unterminated /* comment")
            out.append(" ")
            i = end + 2
        elif c == ",":
            rest = text[i + 1:]
            j = 0
            # Look past whitespace and comments for a closing bracket.
            while j < len(rest):
                if rest[j].isspace():
                    j += 1
                elif rest.startswith("//", j):
                    nl = rest.find("\n", j)
                    j = len(rest) if nl < 0 else nl
                elif rest.startswith("/*", j):
                    close = rest.find("*/", j + 2)
                    j = len(rest) if close < 0 else close + 2
                else:
                    break
            if j >= len(rest) or rest[j] not in "}]":
                out.append(c)
            i += 1
        else:
            out.append(c)
            i += 1
    return json.loads("".join(out))


def find_repo_config(repo: Path, devcontainer_path: str | None) -> Path | None:
    """The repository's devcontainer.json, or None when it has none.

    An explicit `devcontainerPath` that does not exist is an error, not a fallback.
    """
    if devcontainer_path:
        path = repo / devcontainer_path
        if path.is_dir():
            path = path / "devcontainer.json"
        if not path.is_file():
            raise FileNotFoundError(f"devcontainerPath {devcontainer_path!r} not found in "
                                    "the repository")
        return _inside_repo(repo, path)
    for candidate in (".devcontainer/devcontainer.json", ".devcontainer.json"):
        if (repo / candidate).is_file():
            return _inside_repo(repo, repo / candidate)
    return None


def _inside_repo(repo: Path, path: Path) -> Path:
    """`path`, unless it or a link on the way leads out of the repository: the tree is
    the container's, and root reads the config (the CLI too)."""
    real, top = os.path.realpath(path), os.path.realpath(repo)
    if not real.startswith(top + os.sep):
        raise ValueError(f"{os.path.relpath(path, repo)} leads outside the repository "
                         "(a symbolic link or '..'); refusing it")
    return path


def augment(config: dict[str, Any], *, secrets_dir: Path, claude_dir: Path,
            claude_binary: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """`config` plus host networking and the agent's mounts; also returns notes.

    `claude_binary`: the VM's Claude Code executable, bound read-only on the PATH.
    """
    out = copy.deepcopy(config)
    notes: list[str] = []
    if "dockerComposeFile" in out:
        notes.append("compose-based devcontainer: its ports are routed only if the service "
                     "uses host networking")
    else:
        run_args = [str(a) for a in out.get("runArgs") or []]
        if not any(a.startswith(("--network", "--net")) for a in run_args):
            run_args.append("--network=host")
        out["runArgs"] = run_args
    # In the container's own environment too, so every `devcontainer exec` / `docker
    # exec` (CloudCLI's claude wrapper) finds the settings, not only `up`'s commands.
    env = out.get("containerEnv")
    out["containerEnv"] = {**(env if isinstance(env, dict) else {}),
                           "CLAUDE_CONFIG_DIR": CLAUDE_CONFIG_DIR}
    mounts = list(out.get("mounts") or [])
    mounts.append(f"source={secrets_dir},target={SECRETS_TARGET},type=bind,readonly")
    mounts.append(f"source={claude_dir},target={CLAUDE_CONFIG_DIR},type=bind")
    if claude_binary is not None:
        mounts.append(f"source={claude_binary},target={CLAUDE_BINARY_TARGET},type=bind,"
                      "readonly")
    out["mounts"] = mounts
    return out, notes


@dataclass(frozen=True)
class ConfigChoice:
    """How to point the CLI at the config: the argv part and the file to write.

    `policy` is GENERATED, RESTRICTED or TRUSTED; `removed` lists what the policy took
    out of the repository's config (key paths only).
    """
    args: tuple[str, ...]
    write_path: Path
    document: dict[str, Any]
    notes: tuple[str, ...]
    policy: str = GENERATED
    removed: tuple[str, ...] = ()


def choose_config(*, repo: Path, devcontainer_path: str | None, image: str | None,
                  default_text: str | None, work_dir: Path, secrets_dir: Path,
                  claude_dir: Path, trust_repository: bool = False,
                  claude_binary: Path | None = None) -> ConfigChoice:
    """Decide between the repository's config (as an override) and a generated one.

    Order: the configured image, an explicit devcontainerPath, the repository's own
    config, the default template. The repository's config is vetted unless
    `trust_repository`; one it cannot run raises DevcontainerRefused. `claude_binary`:
    see `augment`.
    """
    default = jsonc_loads(default_text) if default_text is not None else dict(FALLBACK_CONFIG)
    if not isinstance(default, dict):
        raise ValueError("the default devcontainer.json must contain a JSON object")
    repo_config = None if image else find_repo_config(repo, devcontainer_path)
    if repo_config is not None:
        base = jsonc_loads(repo_config.read_text(encoding="utf-8"))
        if not isinstance(base, dict):
            raise ValueError(f"{repo_config.name} must contain a JSON object")
        removed: tuple[str, ...] = ()
        if not trust_repository:
            vetted = vet(base, repo=repo, config_dir=repo_config.parent)
            base, removed = vetted.config, vetted.removed
        doc, notes = augment(base, secrets_dir=secrets_dir, claude_dir=claude_dir,
                             claude_binary=claude_binary)
        override = work_dir / "override.json"
        return ConfigChoice(("--config", str(repo_config), "--override-config", str(override)),
                            override, doc, tuple(notes),
                            TRUSTED if trust_repository else RESTRICTED, removed)
    base = {"name": default.get("name", FALLBACK_CONFIG["name"]), "image": image} if image \
        else default
    doc, notes = augment(base, secrets_dir=secrets_dir, claude_dir=claude_dir,
                         claude_binary=claude_binary)
    generated = work_dir / "devcontainer.json"
    return ConfigChoice(("--config", str(generated)), generated, doc, tuple(notes))


def up_argv(tool: str, repo: Path, config_args: Sequence[str],
            docker_path: str | None = None, claude_feature: bool = True) -> list[str]:
    """`docker_path`: the Docker CLI to use instead of `docker` (the agent's guard).
    `claude_feature`: add the Claude Code feature (off when the config mounts the VM's
    own binary)."""
    guard = ["--docker-path", docker_path] if docker_path else []
    feature = ["--additional-features", json.dumps({CLAUDE_FEATURE: {}})] \
        if claude_feature else []
    return [tool, "up", "--workspace-folder", str(repo), *config_args, *guard, *feature,
            "--remote-env", f"CLAUDE_CONFIG_DIR={CLAUDE_CONFIG_DIR}"]


def exec_argv(tool: str, repo: Path, config_args: Sequence[str], *command: str) -> list[str]:
    """`devcontainer exec` as agentspaces-claude runs it: as the container's user, with
    the PATH the CLI probes from its login shell."""
    return [tool, "exec", "--workspace-folder", str(repo), *config_args,
            "--remote-env", "DISABLE_AUTOUPDATER=1", *command]


@dataclass(frozen=True)
class UpOutcome:
    success: bool
    container_id: str | None
    remote_user: str | None
    message: str


def parse_up_outcome(stdout: str) -> UpOutcome:
    """Read the JSON outcome line `devcontainer up` prints (the last one wins)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or "outcome" not in doc:
            continue
        if doc["outcome"] == "success":
            return UpOutcome(True, doc.get("containerId"), doc.get("remoteUser"), "")
        message = " ".join(str(doc[k]) for k in ("message", "description") if doc.get(k))
        return UpOutcome(False, doc.get("containerId"), None, message or "devcontainer up failed")
    return UpOutcome(False, None, None, "devcontainer up printed no outcome")
