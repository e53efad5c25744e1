"""agent.json validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agentspaces_vm.config import (
    DEFAULT_DISCOVERY_ADDRESSES,
    Address,
    ConfigError,
    load_config,
    parse_address,
    parse_config,
)

VALID: dict[str, Any] = {
    "version": 1,
    "workspace": {"name": "demo", "namespace": "default", "uid": "abc"},
    "host": "Demo-default-1a2b3c.Example.com.",
    "listen": {"api": "0.0.0.0:9443", "local": "127.0.0.1:9180"},
    "tls": {"cert": "/etc/agentspaces/tls.crt", "key": "/etc/agentspaces/tls.key"},
    "tokenSha256": "AB" * 32,
    "caddy": {"admin": "127.0.0.1:2019", "bind": "", "tlsMode": "acme", "httpPort": 80,
              "httpsPort": 443, "uiPort": 3001},
    "publicPorts": [8080, 3000, 8080],
    "paths": {"workspaces": "/workspaces", "state": "/var/lib/agentspaces"},
    "repository": {"url": "https://github.com/org/repo", "ref": "main",
                   "devcontainerPath": None, "devcontainerImage": None},
    "simulate": False,
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


def test_the_documented_example_parses_with_defaults() -> None:
    cfg = parse_config(VALID)
    assert cfg.host == "demo-default-1a2b3c.example.com"
    assert cfg.token_sha256 == "ab" * 32
    assert cfg.api_listen == Address("0.0.0.0", 9443)
    assert cfg.public_ports == (3000, 8080)
    assert cfg.caddy.tls_mode == "acme" and cfg.caddy.bind == ""
    assert cfg.paths.secrets == Path("/var/lib/agentspaces/secrets")
    assert cfg.repository is not None and cfg.repository.ref == "main"
    assert cfg.port_discovery.addresses == DEFAULT_DISCOVERY_ADDRESSES
    assert cfg.port_discovery.interval_seconds == 2.0
    assert cfg.tools.git == "git" and cfg.tools.devcontainer == "devcontainer"
    assert (cfg.container_user.uid, cfg.container_user.gid) == (1000, 1000)
    assert cfg.claude_seed_dir is None
    assert cfg.internal_ports == {9443, 9180, 2019, 80, 443, 3001, 22}
    assert cfg.local_url == "http://127.0.0.1:9180"


def test_optional_sections_can_be_left_out() -> None:
    doc = with_change("repository", KeyError)
    del doc["publicPorts"]
    del doc["simulate"]
    cfg = parse_config(doc)
    assert cfg.repository is None and cfg.public_ports == () and cfg.simulate is False


@pytest.mark.parametrize(("path", "value", "message"), [
    ("version", 2, "version: this agent understands version 1"),
    ("host", "not a host!", "host:"),
    ("host", KeyError, "host: required"),
    ("tokenSha256", "abc", "tokenSha256: expected 64 hex digits"),
    ("caddy.tlsMode", "letsencrypt", "caddy.tlsMode: expected one of acme, internal, none"),
    ("caddy.httpPort", 0, "caddy.httpPort: expected an integer in 1..65535"),
    ("caddy.uiPort", True, "caddy.uiPort"),
    ("caddy.admin", "localhost", "caddy.admin: expected host:port"),
    ("listen.api", "9443", "listen.api: expected host:port"),
    ("listen.local", "0.0.0.0:9180", "listen.local: must be a loopback address"),
    ("tls.key", "tls.key", "tls.key: expected an absolute path"),
    ("paths.state", "", "paths.state: expected a non-empty string"),
    ("publicPorts", [80, 65536], "publicPorts: 65536 is not a port"),
    ("publicPorts", "8080", "publicPorts: expected a list of ports"),
    ("simulate", "yes", "simulate: expected true or false"),
    ("repository.url", "ftp://x/y", "repository.url:"),
    ("repository.ref", "--upload-pack=evil", "repository.ref:"),
    ("repository.devcontainerPath", "../../etc", "repository.devcontainerPath:"),
    ("workspace", "demo", "workspace: expected an object"),
])
def test_invalid_fields_are_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(with_change(path, value))
    assert str(err.value).startswith(message)


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match=r"agent\.json: expected an object"):
        parse_config([1])


def test_extensions_are_validated() -> None:
    doc = copy.deepcopy(VALID)
    doc["portDiscovery"] = {"addresses": ["127.0.0.5"], "intervalSeconds": 0.5}
    doc["tools"] = {"git": "/usr/bin/git"}
    doc["containerUser"] = {"uid": 1001, "gid": 1002}
    doc["claudeSeedDir"] = "/srv/seeds"
    cfg = parse_config(doc)
    assert cfg.port_discovery.addresses == ("127.0.0.5",)
    assert cfg.tools.git == "/usr/bin/git" and cfg.tools.devcontainer == "devcontainer"
    assert (cfg.container_user.uid, cfg.container_user.gid) == (1001, 1002)
    assert cfg.claude_seed_dir == Path("/srv/seeds")
    doc["portDiscovery"]["intervalSeconds"] = 0
    with pytest.raises(ConfigError, match=r"portDiscovery\.intervalSeconds"):
        parse_config(doc)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:80", Address("127.0.0.1", 80)),
    ("[::1]:9443", Address("::1", 9443)),
    ("localhost:2019", Address("localhost", 2019)),
])
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["", ":80", "host:", "host:99999", "::1:80", "h:p"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_load_config_reports_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "agent.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_config(bad)
    bad.write_text(json.dumps(VALID))
    loaded = load_config(bad)
    assert loaded.workspace.name == "demo"
    assert loaded.claude_seed_dir == tmp_path / "claude"  # next to agent.json
