"""Delivered secrets: validate the PUT /v1/secrets body and write it under state/secrets.

Layout (directories 0700, files 0600, written atomically):

    secrets/version              the delivery's version string
    secrets/basic-auth.json      {"username", "scryptHash"} -> checked by the agent for
                                 Caddy's forward-auth (webauth.py)
    secrets/repository-token     read by git through secrets/git-askpass (0700)
    secrets/claude/anthropic-api-key, secrets/claude/gateway-token
                                 Claude Code's API key or LLM gateway token: the
                                 directory is mounted read-only into the devcontainer at
                                 /run/agentspaces; Claude Code reads it via apiKeyHelper
    secrets/claude/claude-oauth-token
                                 a Claude subscription token: agentspaces-claude exports
                                 it as CLAUDE_CODE_OAUTH_TOKEN in the container
    secrets/gateway.json         the gateway's settings (base URL, headers, models; not
                                 secret): the agent writes them into settings.json `env`
    secrets/docker/config.json   registry logins (the workspace's dockerconfigjson
                                 Secret): DOCKER_CONFIG for `devcontainer up` and the
                                 docker it runs, so images come from private registries
    secrets/share-link-key       the workspace's share-link key (verifies share links
                                 for ports with visibility link; a new one revokes them)
    secrets/session-key          signs browser session cookies, so the wake gateway
                                 (which has the same key) can sign users in for the VM

A delivery replaces the previous one: an optional secret that is absent is removed.
Claude Code's credential is at most one of the API key, the subscription token and the
gateway.
The claude/ directory belongs to the devcontainer's user (the helper runs as that
user); everything else stays root's. No value is ever logged or echoed in an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentspaces_vm import safefs
from agentspaces_vm.caddy import BasicAuth
from agentspaces_vm.password_hash import PasswordHashError, parse_scrypt_hash
from agentspaces_vm.share_links import decode_key

CONTAINER_SECRETS_DIR = "/run/agentspaces"
API_KEY_NAME = "anthropic-api-key"
OAUTH_TOKEN_NAME = "claude-oauth-token"
GATEWAY_TOKEN_NAME = "gateway-token"
_USERNAME = re.compile(r"^[A-Za-z0-9._@+-]{1,64}$")
_TOKENISH = re.compile(r"^[\x21-\x7e]{1,8192}$")  # printable, no spaces or newlines
REGISTRY_CONFIG_LIMIT = 64 * 1024
CREDENTIAL_FIELDS = ("anthropicApiKey", "claudeOauthToken", "gateway")
KEY_FIELDS = ("shareLinkKey", "sessionKey")  # base64url, 32 bytes (share_links.new_key)
# The operator's admission rules again (api/model.py): the agent trusts no caller blindly.
_GATEWAY_URL = re.compile(r"^https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?"
                          r"(/[A-Za-z0-9._~%/-]*)?$")
_LOOPBACK_URL = re.compile(r"^http://(localhost|127\.0\.0\.1|\[::1\])([:/].*)?$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&*+.^_|~-]{1,128}$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e]{0,1024}$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9._:@/()\[\]+-]{1,256}$")
MODEL_SLOTS = ("default", "opus", "sonnet", "haiku")


class SecretsError(ValueError):
    """The body is not a valid secrets delivery; the message names the field only."""


@dataclass(frozen=True)
class GatewaySettings:
    """An LLM gateway's settings, none of them secret."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    """Claude Code's model slots that are set: default, opus, sonnet, haiku."""

    def to_json(self) -> dict[str, Any]:
        return {"baseUrl": self.base_url, "headers": self.headers, "models": self.models}

    @classmethod
    def from_json(cls, doc: object) -> GatewaySettings:
        """Checked as the delivery is; SecretsError names the field, never a value."""
        if not isinstance(doc, dict) or not set(doc) <= {"baseUrl", "headers", "models"}:
            raise SecretsError("gateway: expected baseUrl, authToken and optionally headers "
                               "and models")
        url = doc.get("baseUrl")
        if not isinstance(url, str) or len(url) > 2048 or not _GATEWAY_URL.match(url) or (
                not url.startswith("https://") and not _LOOPBACK_URL.match(url)):
            raise SecretsError("gateway.baseUrl: expected an https URL (http only to "
                               "localhost, 127.0.0.1 or [::1])")
        headers = doc.get("headers") or {}
        if not isinstance(headers, dict) or len(headers) > 16 or not all(
                isinstance(k, str) and _HEADER_NAME.match(k)
                and k.lower() not in ("authorization", "x-api-key")
                and isinstance(v, str) and _HEADER_VALUE.match(v)
                for k, v in headers.items()):
            raise SecretsError("gateway.headers: expected at most 16 header names with "
                               "printable values (not Authorization or X-Api-Key)")
        models = doc.get("models") or {}
        if not isinstance(models, dict) or not set(models) <= set(MODEL_SLOTS) or not all(
                isinstance(v, str) and _MODEL_NAME.match(v) for v in models.values()):
            raise SecretsError(f"gateway.models: expected model names for "
                               f"{', '.join(MODEL_SLOTS)}")
        return cls(base_url=url, headers=dict(headers), models=dict(models))


@dataclass(frozen=True)
class Delivery:
    version: str
    basic_auth: BasicAuth
    anthropic_api_key: str | None
    repository_token: str | None
    registry_config: str | None = None
    """A Docker config.json: {"auths": {registry: {...}}}."""
    claude_oauth_token: str | None = None
    gateway: GatewaySettings | None = None
    gateway_token: str | None = None
    share_link_key: str | None = None
    session_key: str | None = None

    def __repr__(self) -> str:  # keep values out of any accidental log line
        return f"Delivery(version={self.version!r}, secrets=<redacted>)"


@dataclass(frozen=True)
class SecretsState:
    version: str | None
    basic_auth: BasicAuth | None
    has_api_key: bool
    has_repository_token: bool
    has_registry_config: bool = False
    claude_credential: str | None = None
    """Claude Code's: "api-key", "oauth-token", "gateway" or None."""
    gateway: GatewaySettings | None = None
    share_link_key: bytes | None = field(default=None, repr=False)
    session_key: bytes | None = field(default=None, repr=False)


def parse_delivery(body: object) -> Delivery:
    if not isinstance(body, dict):
        raise SecretsError("expected a JSON object")
    unknown = set(body) - {"version", "repositoryToken", "basicAuth", "registryConfig",
                           *CREDENTIAL_FIELDS, *KEY_FIELDS}
    if unknown:
        raise SecretsError(f"unknown fields: {', '.join(sorted(unknown))}")
    version = body.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 200 or not version.isprintable():
        raise SecretsError("version: expected a non-empty printable string")
    auth = body.get("basicAuth")
    if not isinstance(auth, dict):
        raise SecretsError("basicAuth: expected an object with username and scryptHash")
    if set(auth) != {"username", "scryptHash"}:
        raise SecretsError("basicAuth: expected exactly the fields username and scryptHash")
    username, hash_ = auth.get("username"), auth.get("scryptHash")
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise SecretsError("basicAuth.username: expected 1-64 of A-Z a-z 0-9 . _ @ + -")
    try:
        if not isinstance(hash_, str):
            raise PasswordHashError("expected a string")
        parse_scrypt_hash(hash_)
    except PasswordHashError as exc:
        raise SecretsError(f"basicAuth.scryptHash: {exc}") from None

    def optional(key: str) -> str | None:
        value = body.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not _TOKENISH.match(value):
            raise SecretsError(f"{key}: expected a printable string without whitespace")
        return value

    if sum(body.get(name) is not None for name in CREDENTIAL_FIELDS) > 1:
        raise SecretsError(f"{', '.join(CREDENTIAL_FIELDS)}: at most one")
    gateway, gateway_token = _gateway(body.get("gateway"))
    return Delivery(version=version, basic_auth=BasicAuth(username, hash_),
                    anthropic_api_key=optional("anthropicApiKey"),
                    repository_token=optional("repositoryToken"),
                    registry_config=_registry_config(body.get("registryConfig")),
                    claude_oauth_token=optional("claudeOauthToken"),
                    gateway=gateway, gateway_token=gateway_token,
                    share_link_key=_key(body, "shareLinkKey"),
                    session_key=_key(body, "sessionKey"))


def _key(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or decode_key(value) is None:
        raise SecretsError(f"{name}: expected a base64url key of 32 bytes")
    return value


def _gateway(value: object) -> tuple[GatewaySettings | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise SecretsError("gateway: expected an object")
    token = value.get("authToken")
    if not isinstance(token, str) or not _TOKENISH.match(token):
        raise SecretsError("gateway.authToken: expected a printable string without "
                           "whitespace")
    settings = {k: v for k, v in value.items() if k != "authToken"}
    return GatewaySettings.from_json(settings), token


def _registry_config(value: object) -> str | None:
    """A Docker config.json with registry logins; re-serialized, never echoed."""
    if value is None:
        return None
    problem = "registryConfig: expected a Docker config (a JSON object with \"auths\")"
    if not isinstance(value, str) or len(value) > REGISTRY_CONFIG_LIMIT:
        raise SecretsError(problem)
    try:
        doc = json.loads(value)
    except ValueError:
        raise SecretsError(problem) from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
        raise SecretsError(problem)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _write_private(path: Path, data: str, mode: int = 0o600,
                   owner: tuple[int, int] | None = None) -> None:
    # claude/ belongs to the container's user: never through a name it could plant.
    safefs.write_file(path.parent, path.name, data.encode("utf-8"), mode=mode, owner=owner)


def _private_dir(path: Path, owner: tuple[int, int] | None = None) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if owner is not None:
        os.chown(path, *owner)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class SecretStore:
    """Secrets on disk under `root` (state/secrets)."""

    def __init__(self, root: Path, container_owner: tuple[int, int] | None = None) -> None:
        self.root = root
        # Only root can hand files to another user; otherwise keep our own uid.
        self._owner = container_owner if os.geteuid() == 0 else None

    @property
    def claude_dir(self) -> Path:
        return self.root / "claude"

    @property
    def api_key_file(self) -> Path:
        return self.claude_dir / API_KEY_NAME

    @property
    def oauth_token_file(self) -> Path:
        return self.claude_dir / OAUTH_TOKEN_NAME

    @property
    def gateway_token_file(self) -> Path:
        return self.claude_dir / GATEWAY_TOKEN_NAME

    @property
    def gateway_file(self) -> Path:
        return self.root / "gateway.json"

    @property
    def repository_token_file(self) -> Path:
        return self.root / "repository-token"

    @property
    def share_link_key_file(self) -> Path:
        return self.root / "share-link-key"

    @property
    def session_key_file(self) -> Path:
        return self.root / "session-key"

    @property
    def askpass(self) -> Path:
        return self.root / "git-askpass"

    @property
    def docker_config_dir(self) -> Path:
        return self.root / "docker"

    @property
    def registry_config_file(self) -> Path:
        return self.docker_config_dir / "config.json"

    def docker_env(self) -> dict[str, str]:
        """DOCKER_CONFIG for docker and the devcontainer CLI when registry logins were
        delivered; empty otherwise (docker's own default then)."""
        if not self.registry_config_file.is_file():
            return {}
        return {"DOCKER_CONFIG": str(self.docker_config_dir)}

    def prepare(self) -> None:
        """Create the directories (and the askpass helper) with their modes."""
        _private_dir(self.root)
        _private_dir(self.claude_dir, self._owner)
        _private_dir(self.docker_config_dir)
        script = ("#!/bin/sh\n# git asks for a username, then a password: answer with the\n"
                  "# delivered repository token, which never appears in argv or the URL.\n"
                  'case "$1" in\n  [Uu]sername*) echo x-access-token ;;\n'
                  f"  *) cat {shlex.quote(str(self.repository_token_file))} ;;\nesac\n")
        _write_private(self.askpass, script, mode=0o700)

    def apply(self, delivery: Delivery) -> SecretsState:
        self.prepare()
        auth = {"username": delivery.basic_auth.username,
                "scryptHash": delivery.basic_auth.scrypt_hash}
        _write_private(self.root / "basic-auth.json", json.dumps(auth))
        # Claude Code's credential: at most one of these files exists afterwards.
        for path, value in ((self.api_key_file, delivery.anthropic_api_key),
                            (self.oauth_token_file, delivery.claude_oauth_token),
                            (self.gateway_token_file, delivery.gateway_token)):
            if value is None:
                _remove(path)
            else:
                _write_private(path, value + "\n", owner=self._owner)
        if delivery.gateway is None:
            _remove(self.gateway_file)
        else:
            _write_private(self.gateway_file, json.dumps(delivery.gateway.to_json()))
        if delivery.repository_token is None:
            _remove(self.repository_token_file)
        else:
            _write_private(self.repository_token_file, delivery.repository_token + "\n")
        if delivery.registry_config is None:
            _remove(self.registry_config_file)
        else:
            _write_private(self.registry_config_file, delivery.registry_config + "\n")
        for path, value in ((self.share_link_key_file, delivery.share_link_key),
                            (self.session_key_file, delivery.session_key)):
            if value is None:
                _remove(path)
            else:
                _write_private(path, value + "\n")
        # The version goes last: it is what the operator reads back as "applied".
        _write_private(self.root / "version", delivery.version)
        return self.load()

    def load(self) -> SecretsState:
        version: str | None
        try:
            version = (self.root / "version").read_text(encoding="utf-8")
        except OSError:
            version = None
        basic_auth = None
        try:
            raw = json.loads((self.root / "basic-auth.json").read_text(encoding="utf-8"))
            basic_auth = BasicAuth(raw["username"], raw["scryptHash"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        gateway = None
        credential = None
        if self.gateway_token_file.is_file():
            try:
                gateway = GatewaySettings.from_json(
                    json.loads(self.gateway_file.read_text(encoding="utf-8")))
                credential = "gateway"
            except (OSError, ValueError):
                gateway = None  # the settings went missing: no gateway rather than a half one
        elif self.oauth_token_file.is_file():
            credential = "oauth-token"
        elif self.api_key_file.is_file():
            credential = "api-key"
        return SecretsState(version=version, basic_auth=basic_auth,
                            has_api_key=self.api_key_file.is_file(),
                            has_repository_token=self.repository_token_file.is_file(),
                            has_registry_config=self.registry_config_file.is_file(),
                            claude_credential=credential, gateway=gateway,
                            share_link_key=_read_key(self.share_link_key_file),
                            session_key=_read_key(self.session_key_file))


def _read_key(path: Path) -> bytes | None:
    try:
        return decode_key(path.read_text(encoding="utf-8").strip())
    except OSError:
        return None
