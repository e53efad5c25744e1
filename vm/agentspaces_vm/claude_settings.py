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
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentspaces_vm.secrets import API_KEY_NAME, CONTAINER_SECRETS_DIR

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
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or broken: replaced rather than blocking the hooks
    return loaded if isinstance(loaded, dict) else None


def _write(path: Path, text: str, mode: int, owner: Owner) -> None:
    tmp = path.with_name(f".{path.name}.agentspaces-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    if owner is not None and os.geteuid() == 0:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


def write_settings(config_dir: Path, *, hook_url: str, hook_token: str, api_key: bool,
                   owner: Owner, seed: dict[str, Any] | None = None) -> Path:
    """Merge into `config_dir`/settings.json (created if needed); returns its path."""
    config_dir.mkdir(parents=True, exist_ok=True)
    if owner is not None and os.geteuid() == 0:
        os.chown(config_dir, *owner)
    path = config_dir / "settings.json"
    doc = merge_settings(_read_json(path), hook_url=hook_url, hook_token=hook_token,
                         api_key=api_key, seed=seed)
    # 0600: the file carries the hook token.
    _write(path, json.dumps(doc, indent=2) + "\n", 0o600, owner)
    return path


def install(*, seed_dir: Path | None, config_dir: Path, repo: Path | None, hook_url: str,
            hook_token: str, api_key: bool, owner: Owner,
            is_tracked: Callable[[Path, str], bool] | None = None) -> None:
    """Install settings, CLAUDE.md and .mcp.json from the seeds (see module doc).

    `is_tracked(repo, name)` says whether git tracks a file; untracked .mcp.json files
    are excluded locally so they never show up as a change to commit.
    """
    seed = _read_json(seed_dir / "settings.json") if seed_dir else None
    write_settings(config_dir, hook_url=hook_url, hook_token=hook_token, api_key=api_key,
                   owner=owner, seed=seed)
    if seed_dir is None:
        return
    memory = seed_dir / "CLAUDE.md"
    if memory.is_file():
        _write(config_dir / "CLAUDE.md", memory.read_text(encoding="utf-8"), 0o644, owner)
    mcp = _read_json(seed_dir / "mcp.json")
    if mcp is None or repo is None or not repo.is_dir():
        return
    target = repo / ".mcp.json"
    _write(target, json.dumps(merge_mcp(_read_json(target), mcp), indent=2) + "\n", 0o644,
           owner)
    git_dir = repo / ".git"
    if git_dir.is_dir() and not (is_tracked and is_tracked(repo, ".mcp.json")):
        exclude = git_dir / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text(encoding="utf-8").splitlines() if exclude.exists() else []
        if "/.mcp.json" not in lines:
            exclude.write_text("\n".join([*lines, "/.mcp.json"]) + "\n", encoding="utf-8")
