"""Secrets delivery, the managed Claude settings, and redaction."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentspaces_vm.claude_settings import (
    API_KEY_AUTH,
    MARKER_HEADER,
    NO_AUTH,
    install,
    merge_mcp,
    merge_settings,
    write_settings,
)
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.redact import redact
from agentspaces_vm.secrets import SecretsError, SecretStore, parse_delivery
from agentspaces_vm.share_links import decode_key, new_key

HASH = hash_password("unit-password", log_n=10)
BCRYPT = "$2b$04$" + "N" * 53
KEY = "sk-ant-unit-0123456789"
TOKEN = "ghp_unit_abcdef"


def body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": "v1", "anthropicApiKey": KEY, "repositoryToken": TOKEN,
                           "basicAuth": {"username": "dev", "scryptHash": HASH}}
    doc.update(changes)
    return doc


def test_a_valid_delivery() -> None:
    delivery = parse_delivery(body())
    assert delivery.version == "v1" and delivery.basic_auth.scrypt_hash == HASH
    assert delivery.anthropic_api_key == KEY and delivery.repository_token == TOKEN
    assert KEY not in repr(delivery) and TOKEN not in repr(delivery)
    bare = parse_delivery(body(anthropicApiKey=None, repositoryToken=None))
    assert bare.anthropic_api_key is None and bare.repository_token is None


@pytest.mark.parametrize(("doc", "field"), [
    ([], "expected a JSON object"),
    (body(version=""), "version"),
    (body(version=7), "version"),
    (body(basicAuth=None), "basicAuth"),
    (body(basicAuth={"username": "a:b", "scryptHash": HASH}), "basicAuth.username"),
    (body(basicAuth={"username": "dev", "scryptHash": "hunter2-plaintext"}),
     "basicAuth.scryptHash"),
    # A bcrypt hash is no longer usable: the VM checks passwords itself, with scrypt.
    (body(basicAuth={"username": "dev", "bcryptHash": BCRYPT}), "basicAuth: expected exactly"),
    (body(basicAuth={"username": "dev", "scryptHash": HASH, "extra": 1}), "basicAuth"),
    # Costs a delivered hash could impose on every check are bounded.
    (body(basicAuth={"username": "dev", "scryptHash": HASH.replace("ln=10", "ln=24")}),
     "basicAuth.scryptHash"),
    (body(basicAuth={"username": "dev", "scryptHash": HASH.replace("r=8", "r=99")}),
     "basicAuth.scryptHash"),
    (body(anthropicApiKey="sk-ant with space"), "anthropicApiKey"),
    (body(repositoryToken="line\nbreak"), "repositoryToken"),
    (body(extra="x"), "unknown fields: extra"),
])
def test_invalid_deliveries_name_the_field_but_never_the_value(doc: Any, field: str) -> None:
    with pytest.raises(SecretsError) as err:
        parse_delivery(doc)
    message = str(err.value)
    assert field in message
    for secret in ("hunter2-plaintext", "sk-ant with space", "line\nbreak", KEY, TOKEN):
        assert secret not in message


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_writes_private_files_and_replaces_deliveries(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    state = store.apply(parse_delivery(body()))
    assert state.version == "v1" and state.has_api_key and state.has_repository_token
    assert state.basic_auth is not None and state.basic_auth.scrypt_hash == HASH
    assert _mode(store.root) == 0o700 and _mode(store.claude_dir) == 0o700
    for path in (store.api_key_file, store.repository_token_file, store.root / "version",
                 store.root / "basic-auth.json"):
        assert _mode(path) == 0o600, path
    assert store.api_key_file.read_text() == KEY + "\n"
    state = store.apply(parse_delivery(body(version="v2", anthropicApiKey=None,
                                            repositoryToken=None)))
    assert state.version == "v2" and not state.has_api_key and not state.has_repository_token
    assert not store.api_key_file.exists() and not store.repository_token_file.exists()
    assert not list(store.root.glob(".*.tmp"))


def test_askpass_answers_git_without_putting_the_token_in_the_script(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    store.apply(parse_delivery(body()))
    script = store.askpass
    assert _mode(script) == 0o700 and TOKEN not in script.read_text()

    def ask(prompt: str) -> str:
        return subprocess.run([str(script), prompt], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    assert ask("Username for 'https://github.com': ") == "x-access-token"
    assert ask("Password for 'https://x-access-token@github.com': ") == TOKEN


def test_empty_store_loads_as_nothing(tmp_path: Path) -> None:
    state = SecretStore(tmp_path / "nothing").load()
    assert state.version is None and state.basic_auth is None
    assert not state.has_api_key and not state.has_repository_token


def test_share_link_and_session_keys_are_stored_privately_and_replaced(
        tmp_path: Path) -> None:
    link_key, session_key = new_key(), new_key()
    store = SecretStore(tmp_path / "secrets")
    state = store.apply(parse_delivery(body(shareLinkKey=link_key, sessionKey=session_key)))
    assert state.share_link_key == decode_key(link_key)
    assert state.session_key == decode_key(session_key)
    assert link_key not in repr(state) and str(state.share_link_key) not in repr(state)
    for path in (store.share_link_key_file, store.session_key_file):
        assert _mode(path) == 0o600, path
    rotated = new_key()
    state = store.apply(parse_delivery(body(version="v2", shareLinkKey=rotated,
                                            sessionKey=session_key)))
    assert state.share_link_key == decode_key(rotated)
    # A delivery without them (an operator from before) leaves no key behind.
    state = store.apply(parse_delivery(body(version="v3")))
    assert state.share_link_key is None and state.session_key is None
    assert not store.share_link_key_file.exists() and not store.session_key_file.exists()


@pytest.mark.parametrize("value", ["short", new_key() + "AA", 7, "hunter2 plaintext key"])
def test_malformed_keys_are_refused_by_name(value: object) -> None:
    for name in ("shareLinkKey", "sessionKey"):
        with pytest.raises(SecretsError) as err:
            parse_delivery(body(**{name: value}))
        assert name in str(err.value) and str(value) not in str(err.value)


# -- Claude settings ----------------------------------------------------------------------

URL = "http://127.0.0.1:9180/hooks"


def test_merge_adds_hooks_and_key_helper_and_keeps_the_users_settings() -> None:
    user: dict[str, Any] = {"model": "opus", "hooks": {"PreToolUse": [
        {"matcher": "Bash", "hooks": [{"type": "command", "command": "lint.sh"}]}]}}
    merged = merge_settings(user, hook_url=URL, hook_token="t1", auth=API_KEY_AUTH)
    assert merged["model"] == "opus" and merged["apiKeyHelper"].endswith("anthropic-api-key")
    pre = merged["hooks"]["PreToolUse"]
    assert pre[0] == user["hooks"]["PreToolUse"][0]
    assert pre[1]["matcher"] == "*"
    ours = pre[1]["hooks"][0]
    assert ours["type"] == "http" and ours["url"] == URL
    assert ours["headers"]["Authorization"] == "Bearer t1" and MARKER_HEADER in ours["headers"]
    for event in ("UserPromptSubmit", "PostToolUse", "Stop", "Notification", "SessionStart",
                  "SessionEnd"):
        assert merged["hooks"][event][-1]["hooks"][0]["url"] == URL
    assert user["hooks"]["PreToolUse"] == [pre[0]]  # the input is not modified


def test_merge_replaces_its_own_earlier_hooks_and_drops_the_helper() -> None:
    first = merge_settings(None, hook_url="http://127.0.0.1:1/hooks", hook_token="old",
                           auth=API_KEY_AUTH)
    second = merge_settings(first, hook_url=URL, hook_token="new", auth=NO_AUTH)
    for groups in second["hooks"].values():
        urls = [h["url"] for g in groups for h in g["hooks"]]
        assert urls == [URL]
    assert "apiKeyHelper" not in second
    custom = merge_settings({"apiKeyHelper": "my-helper"}, hook_url=URL, hook_token="t",
                            auth=NO_AUTH)
    assert custom["apiKeyHelper"] == "my-helper"


def test_write_settings_survives_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "settings.json").write_text("{broken")
    path = write_settings(tmp_path, hook_url=URL, hook_token="tok", auth=NO_AUTH, owner=None)
    doc = json.loads(path.read_text())
    assert doc["hooks"]["Stop"][0]["hooks"][0]["headers"]["Authorization"] == "Bearer tok"
    assert _mode(path) == 0o600


SEED = {
    "apiKeyHelper": "cat /run/agentspaces/anthropic-api-key",
    "env": {"CLAUDE_CONFIG_DIR": "/workspaces/.claude", "DISABLE_AUTOUPDATER": "1"},
    "enabledMcpjsonServers": ["docs"],
    "hooks": {"Stop": [{"hooks": [{
        "type": "http", "url": "http://127.0.0.1:9180/hooks",
        "headers": {"Authorization": "Bearer ${AGENTSPACES_HOOK_TOKEN}", MARKER_HEADER: "1"},
        "allowedEnvVars": ["AGENTSPACES_HOOK_TOKEN"]}]}]},
}


def test_seed_keys_win_env_merges_and_seeded_hooks_are_replaced() -> None:
    user = {"model": "opus", "enabledMcpjsonServers": ["mine"],
            "env": {"FOO": "1", "DISABLE_AUTOUPDATER": "0"},
            "hooks": {"Stop": [{"hooks": [{"type": "command", "command": "say done"}]}]}}
    merged = merge_settings(user, hook_url=URL, hook_token="tok", auth=API_KEY_AUTH, seed=SEED)
    assert merged["model"] == "opus" and merged["enabledMcpjsonServers"] == ["docs"]
    assert merged["env"] == {"FOO": "1", "DISABLE_AUTOUPDATER": "1",
                             "CLAUDE_CONFIG_DIR": "/workspaces/.claude"}
    stop = [h for group in merged["hooks"]["Stop"] for h in group["hooks"]]
    assert stop[0] == {"type": "command", "command": "say done"}
    assert [h["headers"]["Authorization"] for h in stop[1:]] == ["Bearer tok"]
    without_key = merge_settings(user, hook_url=URL, hook_token="t", auth=NO_AUTH, seed=SEED)
    assert "apiKeyHelper" not in without_key  # a helper without a key would break logins


def test_install_copies_memory_and_merges_mcp_servers(tmp_path: Path) -> None:
    seeds, config_dir, repo = tmp_path / "seed", tmp_path / ".claude", tmp_path / "repo"
    seeds.mkdir()
    (seeds / "settings.json").write_text(json.dumps(SEED))
    (seeds / "CLAUDE.md").write_text("# Workspace demo\n")
    (seeds / "mcp.json").write_text(json.dumps({"mcpServers": {
        "docs": {"type": "http", "url": "https://docs.example.com/mcp"}}}))
    (repo / ".git" / "info").mkdir(parents=True)
    (repo / ".mcp.json").write_text(json.dumps({"mcpServers": {
        "docs": {"type": "stdio", "command": "old"}, "local": {"type": "stdio",
                                                             "command": "x"}}}))
    install(seed_dir=seeds, config_dir=config_dir, repo=repo, hook_url=URL, hook_token="tok",
            auth=NO_AUTH, owner=None, is_tracked=lambda _repo, _name: False)
    settings = json.loads((config_dir / "settings.json").read_text())
    assert settings["enabledMcpjsonServers"] == ["docs"]
    assert (config_dir / "CLAUDE.md").read_text() == "# Workspace demo\n"
    mcp = json.loads((repo / ".mcp.json").read_text())["mcpServers"]
    assert mcp == {"docs": {"type": "http", "url": "https://docs.example.com/mcp"},
                   "local": {"type": "stdio", "command": "x"}}
    exclude = repo / ".git" / "info" / "exclude"
    assert exclude.read_text().splitlines() == ["/.mcp.json"]
    install(seed_dir=seeds, config_dir=config_dir, repo=repo, hook_url=URL, hook_token="tok",
            auth=NO_AUTH, owner=None, is_tracked=lambda _repo, _name: False)
    assert exclude.read_text().splitlines() == ["/.mcp.json"]  # not repeated
    tracked = tmp_path / "tracked"
    (tracked / ".git").mkdir(parents=True)
    install(seed_dir=seeds, config_dir=config_dir, repo=tracked, hook_url=URL,
            hook_token="tok", auth=NO_AUTH, owner=None, is_tracked=lambda _r, _n: True)
    assert not (tracked / ".git" / "info" / "exclude").exists()
    assert merge_mcp(None, {})["mcpServers"] == {}


def test_install_without_seeds_still_installs_the_hooks(tmp_path: Path) -> None:
    install(seed_dir=tmp_path / "absent", config_dir=tmp_path / "c", repo=None, hook_url=URL,
            hook_token="tok", auth=API_KEY_AUTH, owner=None)
    settings = json.loads((tmp_path / "c" / "settings.json").read_text())
    assert settings["apiKeyHelper"].endswith("anthropic-api-key")
    assert settings["hooks"]["SessionEnd"][0]["hooks"][0]["url"] == URL
    assert not (tmp_path / "c" / "CLAUDE.md").exists()


# -- redaction ----------------------------------------------------------------------------

def test_redact_scrubs_credentials_from_messages() -> None:
    text = ("GET https://bucket.r2.example.com/obj?X-Amz-Signature=abc&X-Amz-Credential=k "
            "failed; clone https://user:pass@github.com/org/repo; Authorization: Bearer xyz")
    out = redact(text)
    for secret in ("X-Amz-Signature", "abc", "pass@", "xyz"):
        assert secret not in out
    assert "https://bucket.r2.example.com/obj?<redacted>" in out
    assert "https://github.com/org/repo" in out
    assert redact("x" * 50, limit=10) == "…" + "x" * 10
