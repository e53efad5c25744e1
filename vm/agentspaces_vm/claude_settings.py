"""The Claude Code files the agent installs into the workspace at each start.

Cloud-init writes seeds to the `claude/` directory next to agent.json (docs/vm.md):

- `settings.json` is merged into CLAUDE_CONFIG_DIR/settings.json: the user's file,
  then the seed's keys over it (`env` merged key by key, `hooks` event by event), then
  the agent's own `http` hooks to its local listener carrying the hook token. Hooks
  with the marker header (the seed's, or an earlier agent's from a restored backup) are
  replaced, never doubled. The `apiKeyHelper` stays only while an API key is delivered.
- `CLAUDE.md` is copied to CLAUDE_CONFIG_DIR/CLAUDE.md (Claude's user memory), so the
  repository stays clean.
- `mcp.json` is merged into the repository's `.mcp.json` by server name (ours win); an
  untracked `.mcp.json` is added to `.git/info/exclude`.

Without seeds (tests, old VMs) the agent's hooks and helper are still installed.

The agent runs as root and everything under /workspaces is the container's: the files
are read and written through safefs, from the directory holding CLAUDE_CONFIG_DIR and
the repository (root-owned /workspaces), so a planted link is replaced or refused,
never followed. A file that cannot be written safely is skipped with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentspaces_vm import safefs
from agentspaces_vm.secrets import API_KEY_NAME, CONTAINER_SECRETS_DIR

log = logging.getLogger(__name__)

MARKER_HEADER = "X-Agentspaces-Hook"
HOOK_TIMEOUT_SECONDS = 5
TOOL_EVENTS = ("PreToolUse", "PostToolUse")
OTHER_EVENTS = ("SessionStart", "UserPromptSubmit", "Notification", "Stop", "SubagentStop",
                "SessionEnd")
API_KEY_HELPER = f"cat {CONTAINER_SECRETS_DIR}/{API_KEY_NAME}"

Owner = tuple[int, int] | None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_ours(hook: object) -> bool:
    return (isinstance(hook, dict) and isinstance(hook.get("headers"), dict)
            and MARKER_HEADER in hook["headers"])


def _foreign_groups(groups: object) -> list[Any]:
    """Hook groups with the agent's (marked) hooks taken out."""
    kept = []
    for group in groups if isinstance(groups, list) else []:
        if isinstance(group, dict) and isinstance(group.get("hooks"), list):
            inner = [h for h in group["hooks"] if not _is_ours(h)]
            if inner:
                kept.append({**group, "hooks": inner})
        else:
            kept.append(group)
    return kept


def merge_settings(existing: dict[str, Any] | None, *, hook_url: str, hook_token: str,
                   api_key: bool, seed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings.json to write (pure; the inputs are not modified)."""
    settings: dict[str, Any] = json.loads(json.dumps(existing)) if existing else {}
    seed = json.loads(json.dumps(seed)) if seed else {}
    user_hooks = _dict(settings.get("hooks"))
    seed_hooks = _dict(seed.pop("hooks", None))
    seed_env = seed.pop("env", None)
    settings.update(seed)
    if isinstance(seed_env, dict):
        settings["env"] = {**_dict(settings.get("env")), **seed_env}
    hooks: dict[str, Any] = {}
    for source in (user_hooks, seed_hooks):
        for event, groups in source.items():
            hooks[event] = [*hooks.get(event, []), *_foreign_groups(groups)]
    ours = {"type": "http", "url": hook_url,
            "headers": {"Authorization": f"Bearer {hook_token}", MARKER_HEADER: "1"},
            "timeout": HOOK_TIMEOUT_SECONDS}
    for event in (*TOOL_EVENTS, *OTHER_EVENTS):
        entry: dict[str, Any] = {"hooks": [ours]}
        if event in TOOL_EVENTS:
            entry = {"matcher": "*", **entry}
        hooks[event] = [*hooks.get(event, []), entry]
    settings["hooks"] = {event: groups for event, groups in hooks.items() if groups}
    if api_key:
        settings["apiKeyHelper"] = API_KEY_HELPER
    elif settings.get("apiKeyHelper") == API_KEY_HELPER:
        del settings["apiKeyHelper"]
    return settings


def merge_mcp(existing: dict[str, Any] | None, seed: dict[str, Any]) -> dict[str, Any]:
    """The repository's .mcp.json with the configured servers added (ours win)."""
    doc: dict[str, Any] = json.loads(json.dumps(existing)) if existing else {}
    doc["mcpServers"] = {**_dict(doc.get("mcpServers")), **_dict(seed.get("mcpServers"))}
    return doc


def _read_json(path: Path) -> dict[str, Any] | None:
    """A seed (root's own file under state/)."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def _read_container_text(root: Path, rel: str) -> str:
    """A file of the container's, "" when missing; a link (or a device, a FIFO) is
    not read but replaced by the write that follows."""
    try:
        data = safefs.read_file(root, rel)
    except safefs.UnsafePath as exc:
        log.warning("not reading %s; the agent's file replaces it", exc.strerror)
        return ""
    return data.decode("utf-8", "replace") if data is not None else ""


def _read_container_json(root: Path, rel: str) -> dict[str, Any] | None:
    try:
        loaded = json.loads(_read_container_text(root, rel) or "null")
    except (OSError, ValueError):
        return None  # missing or broken: replaced rather than blocking the hooks
    return loaded if isinstance(loaded, dict) else None


def write_settings(config_dir: Path, *, hook_url: str, hook_token: str, api_key: bool,
                   owner: Owner, seed: dict[str, Any] | None = None) -> Path:
    """Merge into `config_dir`/settings.json (created if needed); returns its path.

    `config_dir`'s parent is trusted (root-owned); nothing below it is followed.
    """
    root, name = config_dir.parent, config_dir.name
    root.mkdir(parents=True, exist_ok=True)
    safefs.make_dir(root, name, mode=0o755, owner=owner)
    rel = f"{name}/settings.json"
    doc = merge_settings(_read_container_json(root, rel), hook_url=hook_url,
                         hook_token=hook_token, api_key=api_key, seed=seed)
    # 0600: the file carries the hook token.
    safefs.write_file(root, rel, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o600,
                      owner=owner)
    return config_dir / "settings.json"


def _skip_unsafe(what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except safefs.UnsafePath as exc:
        log.warning("not installing %s: %s", what, exc.strerror)


def _not_a_dir(root: Path, rel: str) -> bool:
    found = safefs.kind(root, rel)
    if found == "link":
        log.warning("not installing .mcp.json: %s is a symbolic link", root / rel)
    return found != "dir"


def _install_mcp(repo: Path, mcp: dict[str, Any], owner: Owner,
                 is_tracked: Callable[[Path, str], bool] | None) -> None:
    root, name = repo.parent, repo.name
    if _not_a_dir(root, name):
        return
    target = f"{name}/.mcp.json"
    doc = merge_mcp(_read_container_json(root, target), mcp)
    safefs.write_file(root, target, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o644,
                      owner=owner)
    if _not_a_dir(root, f"{name}/.git"):
        return
    if is_tracked and is_tracked(repo, ".mcp.json"):
        return
    exclude = f"{name}/.git/info/exclude"
    lines = _read_container_text(root, exclude).splitlines()
    if "/.mcp.json" not in lines:
        safefs.write_file(root, exclude, ("\n".join([*lines, "/.mcp.json"]) + "\n").encode(),
                          mode=0o644, owner=owner, dir_mode=0o755)


def install(*, seed_dir: Path | None, config_dir: Path, repo: Path | None, hook_url: str,
            hook_token: str, api_key: bool, owner: Owner,
            is_tracked: Callable[[Path, str], bool] | None = None) -> None:
    """Install settings, CLAUDE.md and .mcp.json from the seeds (see module doc).

    `is_tracked(repo, name)` says whether git tracks a file; untracked .mcp.json files
    are excluded locally so they never show up as a change to commit. The parents of
    `config_dir` and `repo` are trusted; nothing below them is followed.
    """
    seed = _read_json(seed_dir / "settings.json") if seed_dir else None
    _skip_unsafe("settings.json", lambda: write_settings(
        config_dir, hook_url=hook_url, hook_token=hook_token, api_key=api_key, owner=owner,
        seed=seed))
    if seed_dir is None:
        return
    memory = seed_dir / "CLAUDE.md"
    if memory.is_file():
        text = memory.read_bytes()
        _skip_unsafe("CLAUDE.md", lambda: safefs.write_file(
            config_dir.parent, f"{config_dir.name}/CLAUDE.md", text, mode=0o644, owner=owner))
    mcp = _read_json(seed_dir / "mcp.json")
    if mcp is None or repo is None:
        return
    _skip_unsafe(".mcp.json", lambda: _install_mcp(repo, mcp, owner, is_tracked))
