"""The Claude Code files the agent installs into the workspace at each start.

Cloud-init writes seeds to the `claude/` directory next to agent.json (docs/vm.md):

- `settings.json` is merged into CLAUDE_CONFIG_DIR/settings.json: the user's file,
  then the seed's keys over it (`env` merged key by key, `hooks` event by event), then
  the agent's own `http` hooks to its local listener carrying the hook token. Hooks
  with the marker header (the seed's, or an earlier agent's from a restored backup) are
  replaced, never doubled. Claude Code's credential follows the delivered secrets: the
  `apiKeyHelper` reads the API key or the gateway token while one is delivered, and
  while any credential is delivered the agent owns the gateway's variables in `env`
  (base URL, headers, models): set from the gateway, or removed.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentspaces_vm import safefs
from agentspaces_vm.secrets import (
    API_KEY_NAME,
    CONTAINER_SECRETS_DIR,
    GATEWAY_TOKEN_NAME,
    GatewaySettings,
    SecretsState,
)

log = logging.getLogger(__name__)

MARKER_HEADER = "X-Agentspaces-Hook"
HOOK_TIMEOUT_SECONDS = 5
TOOL_EVENTS = ("PreToolUse", "PostToolUse")
# PermissionRequest: a permission dialog waits for the human. A terminal session also
# sends Notification, a session driven through the SDK (CloudCLI) only this one.
OTHER_EVENTS = ("SessionStart", "UserPromptSubmit", "Notification", "PermissionRequest",
                "Stop", "SubagentStop", "SessionEnd")
API_KEY_HELPER = f"cat {CONTAINER_SECRETS_DIR}/{API_KEY_NAME}"
GATEWAY_HELPER = f"cat {CONTAINER_SECRETS_DIR}/{GATEWAY_TOKEN_NAME}"
# Claude Code's variables for a gateway (code.claude.com/docs env-vars, model-config).
MODEL_ENV = {"default": "ANTHROPIC_MODEL", "opus": "ANTHROPIC_DEFAULT_OPUS_MODEL",
             "sonnet": "ANTHROPIC_DEFAULT_SONNET_MODEL",
             "haiku": "ANTHROPIC_DEFAULT_HAIKU_MODEL"}
GATEWAY_ENV = ("ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS", *MODEL_ENV.values())

Owner = tuple[int, int] | None


@dataclass(frozen=True)
class ClaudeAuth:
    """Claude Code's credential as settings.json carries it (never the secret itself)."""

    helper: str | None = None
    """The apiKeyHelper command: prints the delivered API key or gateway token."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The gateway's variables."""
    managed: bool = False
    """A credential is delivered: the agent owns GATEWAY_ENV (set or removed)."""

    @classmethod
    def of(cls, state: SecretsState) -> ClaudeAuth:
        if state.claude_credential == "api-key":
            return cls(helper=API_KEY_HELPER, managed=True)
        if state.claude_credential == "gateway" and state.gateway is not None:
            return cls(helper=GATEWAY_HELPER, env=gateway_env(state.gateway), managed=True)
        # A subscription token is exported by agentspaces-claude (an environment
        # variable only), so settings.json has no helper that would outrank it.
        return cls(managed=state.claude_credential is not None)


NO_AUTH = ClaudeAuth()
API_KEY_AUTH = ClaudeAuth(helper=API_KEY_HELPER, managed=True)


def gateway_env(gateway: GatewaySettings) -> dict[str, str]:
    env = {"ANTHROPIC_BASE_URL": gateway.base_url}
    if gateway.headers:
        env["ANTHROPIC_CUSTOM_HEADERS"] = "\n".join(f"{name}: {value}" for name, value
                                                    in sorted(gateway.headers.items()))
    for slot, name in gateway.models.items():
        env[MODEL_ENV[slot]] = name
    return env


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
                   auth: ClaudeAuth = NO_AUTH, seed: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
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
    if auth.helper:
        settings["apiKeyHelper"] = auth.helper
    elif settings.get("apiKeyHelper") in (API_KEY_HELPER, GATEWAY_HELPER):
        del settings["apiKeyHelper"]
    if auth.managed:
        env = {k: v for k, v in _dict(settings.get("env")).items() if k not in GATEWAY_ENV}
        env.update(auth.env)
        settings["env"] = env
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


def write_settings(config_dir: Path, *, hook_url: str, hook_token: str, auth: ClaudeAuth,
                   owner: Owner, seed: dict[str, Any] | None = None) -> Path:
    """Merge into `config_dir`/settings.json (created if needed); returns its path.

    `config_dir`'s parent is trusted (root-owned); nothing below it is followed.
    """
    root, name = config_dir.parent, config_dir.name
    root.mkdir(parents=True, exist_ok=True)
    safefs.make_dir(root, name, mode=0o755, owner=owner)
    rel = f"{name}/settings.json"
    doc = merge_settings(_read_container_json(root, rel), hook_url=hook_url,
                         hook_token=hook_token, auth=auth, seed=seed)
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
            hook_token: str, auth: ClaudeAuth, owner: Owner,
            is_tracked: Callable[[Path, str], bool] | None = None) -> None:
    """Install settings, CLAUDE.md and .mcp.json from the seeds (see module doc).

    `is_tracked(repo, name)` says whether git tracks a file; untracked .mcp.json files
    are excluded locally so they never show up as a change to commit. The parents of
    `config_dir` and `repo` are trusted; nothing below them is followed.
    """
    seed = _read_json(seed_dir / "settings.json") if seed_dir else None
    _skip_unsafe("settings.json", lambda: write_settings(
        config_dir, hook_url=hook_url, hook_token=hook_token, auth=auth, owner=owner,
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
