"""Claude Code's credentials: an Anthropic API key, a Claude subscription token or an
LLM gateway (Workspace spec.agent, or the class's spec.agentCredentials). At most one
is admitted; the operator reads it, refuses what cannot work with a condition, delivers
it with the other secrets and re-delivers a rotation; the agent keeps each where
Claude Code reads it and writes the gateway's settings into settings.json."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from agentspaces.api import model as m
from agentspaces.api.enums import ConditionStatus, Phase, Reason
from agentspaces.api.enums import ConditionType as T
from agentspaces.api.types import AgentCredential, Gateway, SecretKeyRef, WorkspaceSpec
from agentspaces_vm.claude_settings import (
    API_KEY_HELPER,
    GATEWAY_HELPER,
    ClaudeAuth,
    merge_settings,
)
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.secrets import SecretsError, SecretStore, parse_delivery
from tests.support.scope_builder import OPERATOR_NAMESPACE, SETTINGS, ScopeBuilder
from tests.unit.vmconfig_inputs import make_klass

API_KEY = "sk-ant-api03-unit-" + "K" * 20
OAUTH_TOKEN = "sk-ant-oat01-unit-" + "O" * 20
GATEWAY_TOKEN = "gw-unit-token-" + "G" * 20
GATEWAY = {"baseUrl": "https://llm.example.com/anthropic",
           "authTokenSecretRef": {"name": "llm"},
           "headers": {"X-Team": "platform"},
           "models": {"default": "team-large", "haiku": "team-small"}}
HASH = hash_password("unit-password", log_n=10)
URL = "http://127.0.0.1:9180/hooks"


def _condition(b: ScopeBuilder, type_: str) -> dict[str, str]:
    return next(c for c in b.status["conditions"] if c["type"] == type_)


# -- the API ----------------------------------------------------------------------------

@pytest.mark.parametrize("agent", [
    {"apiKeySecretRef": {"name": "a"}, "oauthTokenSecretRef": {"name": "b"}},
    {"apiKeySecretRef": {"name": "a"}, "gateway": GATEWAY},
    {"oauthTokenSecretRef": {"name": "b"}, "gateway": GATEWAY},
])
def test_at_most_one_credential_per_workspace(agent: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="set at most one of apiKeySecretRef, "
                                         "oauthTokenSecretRef and gateway"):
        m.AgentSpec.parse(agent)
    rule = m.AgentSpec.cel_rules[0]
    assert rule.rule == ("[has(self.apiKeySecretRef), has(self.oauthTokenSecretRef), "
                         "has(self.gateway)].filter(x, x).size() <= 1")


def test_a_class_names_exactly_one() -> None:
    with pytest.raises(ValueError, match="set exactly one of"):
        m.ClassAgentCredentialsSpec.parse({})
    with pytest.raises(ValueError, match="set exactly one of"):
        m.ClassAgentCredentialsSpec.parse({"apiKeySecretRef": {"name": "a"},
                                           "oauthTokenSecretRef": {"name": "b"}})


@pytest.mark.parametrize(("url", "ok"), [
    ("https://llm.example.com", True), ("https://llm.example.com:8443/v2/anthropic", True),
    ("http://localhost:4000", True), ("http://127.0.0.1", True), ("http://[::1]:4000/x", True),
    ("http://llm.example.com", False), ("http://127.0.0.1.example.com", False),
    ("http://localhost.example.com:4000", False), ("https://user:pw@llm.example.com", False),
    ("https://llm.example.com/?key=x", False), ("ftp://llm.example.com", False),
])
def test_the_gateway_url_is_https_or_the_vm_itself(url: str, ok: bool) -> None:
    agent = {"gateway": {**GATEWAY, "baseUrl": url}}
    if ok:
        assert m.AgentSpec.parse(agent).gateway is not None
    else:
        with pytest.raises(ValueError, match="baseUrl"):
            m.AgentSpec.parse(agent)


@pytest.mark.parametrize("headers", [{"Authorization": "Bearer x"}, {"x-api-key": "k"},
                                     {"bad name": "v"}, {"X-Ok": "line\nbreak"}])
def test_gateway_headers_cannot_carry_the_credential_or_break_lines(
        headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="headers"):
        m.AgentSpec.parse({"gateway": {**GATEWAY, "headers": headers}})


def test_the_workspace_credential_wins_over_the_class_and_the_old_field_still_works() -> None:
    klass = make_klass(agentCredentials={"gateway": GATEWAY})
    assert klass.agent_credential == AgentCredential(
        "gateway", SecretKeyRef("llm", "authToken", None),
        Gateway("https://llm.example.com/anthropic", (("X-Team", "platform"),),
                {"default": "team-large", "haiku": "team-small"}), from_class=True)
    base = {"className": "standard", "repository": {"url": "https://github.com/a/b"}}
    inherited = WorkspaceSpec.from_spec(base, klass)
    assert inherited.agent_credential == klass.agent_credential
    own = WorkspaceSpec.from_spec({**base, "agent": {"apiKeySecretRef": {"name": "mine"}}},
                                  klass)
    assert own.agent_credential == AgentCredential("api-key",
                                                   SecretKeyRef("mine", "apiKey", None))
    oauth = WorkspaceSpec.from_spec(
        {**base, "agent": {"oauthTokenSecretRef": {"name": "sub"}}}, make_klass())
    assert oauth.agent_credential == AgentCredential(
        "oauth-token", SecretKeyRef("sub", "oauthToken", None))


# -- the operator ------------------------------------------------------------------------

@pytest.mark.parametrize(("agent", "secret", "value", "field"), [
    ({"apiKeySecretRef": {"name": "anthropic"}}, "anthropic", {"apiKey": API_KEY},
     "anthropicApiKey"),
    ({"oauthTokenSecretRef": {"name": "claude"}}, "claude", {"oauthToken": OAUTH_TOKEN},
     "claudeOauthToken"),
    ({"gateway": GATEWAY}, "llm", {"authToken": GATEWAY_TOKEN}, "gateway"),
])
async def test_each_credential_is_delivered_and_a_rotation_redelivers(
        scope_builder: ScopeBuilder, agent: dict[str, Any], secret: str,
        value: dict[str, str], field: str) -> None:
    b = scope_builder.with_spec(agent=agent)
    b.kube.add_secret(b.namespace, secret, value)
    await b.reconcile()
    b.servers.boot()
    b.clock.advance(SETTINGS.boot_poll)
    await b.reconcile()
    assert "start" in b.agent.calls.methods()
    delivered = {k: v for k, v in b.agent.claude_credential.items() if v is not None}
    (original,) = value.values()
    if field == "gateway":
        assert delivered == {"gateway": {
            "baseUrl": "https://llm.example.com/anthropic", "headers": {"X-Team": "platform"},
            "models": {"default": "team-large", "haiku": "team-small"},
            "authToken": GATEWAY_TOKEN}}
    else:
        assert delivered == {field: original}
    first = b.status["secretsVersion"]

    b.agent.report_ready(b.clock())
    (key,) = value
    b.kube.add_secret(b.namespace, secret, {key: original + "-rotated"})
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert b.agent.calls.methods().count("put_secrets") == 1
    # Without a rebuild: the same server.
    assert not {"create", "delete"} & set(b.servers.calls.methods())
    assert original + "-rotated" in json.dumps(b.agent.claude_credential)
    assert b.status["secretsVersion"] != first
    for text in (json.dumps(b.status), " ".join(e.message for e in b.events)):
        assert original not in text


async def test_a_gateway_setting_change_redelivers_too(scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_spec(agent={"gateway": GATEWAY})
    b.kube.add_secret(b.namespace, "llm", {"authToken": GATEWAY_TOKEN})
    await b.reconcile()
    b.servers.boot()
    b.clock.advance(SETTINGS.boot_poll)
    await b.reconcile()
    b.agent.report_ready(b.clock())
    first = b.status["secretsVersion"]
    b.with_spec(agent={"gateway": {**GATEWAY, "models": {"default": "team-larger"}}})
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert b.agent.claude_credential["gateway"]["models"] == {"default": "team-larger"}
    assert b.status["secretsVersion"] != first


async def test_a_class_credential_is_read_from_the_operators_namespace(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(agentCredentials={"oauthTokenSecretRef": {"name": "shared"}})
    b.kube.add_secret(OPERATOR_NAMESPACE, "shared", {"oauthToken": OAUTH_TOKEN})
    await b.reconcile()
    b.servers.boot()
    b.clock.advance(SETTINGS.boot_poll)
    await b.reconcile()
    assert b.agent.claude_credential["claudeOauthToken"] == OAUTH_TOKEN


@pytest.mark.parametrize(("agent", "secret", "reason", "message"), [
    ({"oauthTokenSecretRef": {"name": "claude"}}, None, Reason.SECRET_NOT_FOUND,
     "Secret team-a/claude not found"),
    ({"gateway": GATEWAY}, {"token": GATEWAY_TOKEN}, Reason.SECRET_KEY_MISSING,
     "Secret team-a/llm has no key 'authToken'"),
    ({"apiKeySecretRef": {"name": "anthropic"}}, {"apiKey": OAUTH_TOKEN},
     Reason.CREDENTIALS_INVALID, "Secret team-a/anthropic key 'apiKey' (agent.apiKeySecretRef) "
                                 "holds a Claude subscription token"),
    ({"oauthTokenSecretRef": {"name": "anthropic"}}, {"oauthToken": API_KEY},
     Reason.CREDENTIALS_INVALID, "Secret team-a/anthropic key 'oauthToken' "
                                 "(agent.oauthTokenSecretRef) holds an Anthropic API key"),
    ({"gateway": GATEWAY}, {"authToken": "two words " + GATEWAY_TOKEN},
     Reason.CREDENTIALS_INVALID, "Secret team-a/llm key 'authToken' "
                                 "(agent.gateway.authTokenSecretRef) is not a token"),
])
async def test_what_cannot_work_is_a_condition_and_nothing_is_created(
        scope_builder: ScopeBuilder, agent: dict[str, Any], secret: dict[str, str] | None,
        reason: Reason, message: str) -> None:
    b = scope_builder.with_spec(agent=agent)
    name = (agent.get("apiKeySecretRef") or agent.get("oauthTokenSecretRef")
            or agent["gateway"]["authTokenSecretRef"])["name"]
    if secret is not None:
        b.kube.add_secret(b.namespace, name, secret)
    await b.reconcile()
    assert (b.servers.calls.methods(), b.agent.calls.methods()) == ([], [])
    assert b.status["phase"] == Phase.PENDING
    available = _condition(b, T.CREDENTIALS_AVAILABLE)
    assert (available["status"], available["reason"]) == (ConditionStatus.FALSE, reason)
    assert available["message"].startswith(message), available["message"]
    for value in (secret or {}).values():
        assert value not in json.dumps(b.status) and value not in str(b.events)


# -- the VM --------------------------------------------------------------------------------

def _body(**extra: object) -> dict[str, object]:
    return {"version": "v1", "basicAuth": {"username": "dev", "scryptHash": HASH}, **extra}


DELIVERED_GATEWAY = {"baseUrl": "https://llm.example.com/anthropic", "authToken": GATEWAY_TOKEN,
                     "headers": {"X-Team": "platform"},
                     "models": {"default": "team-large", "haiku": "team-small"}}


def test_the_agent_takes_at_most_one_and_never_echoes_a_value() -> None:
    with pytest.raises(SecretsError, match="at most one"):
        parse_delivery(_body(anthropicApiKey=API_KEY, claudeOauthToken=OAUTH_TOKEN))
    for bad, field in (({**DELIVERED_GATEWAY, "baseUrl": "http://llm.example.com"},
                        "gateway.baseUrl"),
                       ({**DELIVERED_GATEWAY, "authToken": "a b"}, "gateway.authToken"),
                       ({**DELIVERED_GATEWAY, "headers": {"Authorization": GATEWAY_TOKEN}},
                        "gateway.headers"),
                       ({**DELIVERED_GATEWAY, "models": {"fast": "x"}}, "gateway.models"),
                       ({**DELIVERED_GATEWAY, "extra": 1}, "gateway")):
        with pytest.raises(SecretsError) as err:
            parse_delivery(_body(gateway=bad))
        assert str(err.value).startswith(field) and GATEWAY_TOKEN not in str(err.value)
    delivery = parse_delivery(_body(gateway=DELIVERED_GATEWAY))
    assert delivery.gateway_token == GATEWAY_TOKEN and GATEWAY_TOKEN not in repr(delivery)


def test_the_store_keeps_one_credential_and_switching_removes_the_other(
        tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    claude = tmp_path / "secrets" / "claude"
    state = store.apply(parse_delivery(_body(claudeOauthToken=OAUTH_TOKEN)))
    assert state.claude_credential == "oauth-token" and state.gateway is None
    assert (claude / "claude-oauth-token").read_text() == OAUTH_TOKEN + "\n"
    assert stat.S_IMODE((claude / "claude-oauth-token").stat().st_mode) == 0o600

    state = store.apply(parse_delivery(_body(version="v2", gateway=DELIVERED_GATEWAY)))
    assert state.claude_credential == "gateway"
    assert sorted(p.name for p in claude.iterdir()) == ["gateway-token"]
    assert (claude / "gateway-token").read_text() == GATEWAY_TOKEN + "\n"
    settings = tmp_path / "secrets" / "gateway.json"
    assert GATEWAY_TOKEN not in settings.read_text()  # settings only; root's, outside claude/
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert state.gateway is not None and state.gateway.models["haiku"] == "team-small"

    state = store.apply(parse_delivery(_body(version="v3", anthropicApiKey=API_KEY)))
    assert state.claude_credential == "api-key" and not settings.exists()
    assert sorted(p.name for p in claude.iterdir()) == ["anthropic-api-key"]
    assert store.apply(parse_delivery(_body(version="v4"))).claude_credential is None
    assert list(claude.iterdir()) == []


def test_settings_follow_the_credential(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    user = {"env": {"FOO": "1", "ANTHROPIC_MODEL": "from-an-old-gateway"},
            "apiKeyHelper": API_KEY_HELPER}
    gateway = merge_settings(user, hook_url=URL, hook_token="t", auth=ClaudeAuth.of(
        store.apply(parse_delivery(_body(gateway=DELIVERED_GATEWAY)))))
    assert gateway["apiKeyHelper"] == GATEWAY_HELPER == \
        "cat /run/agentspaces/gateway-token"
    assert gateway["env"] == {
        "FOO": "1", "ANTHROPIC_BASE_URL": "https://llm.example.com/anthropic",
        "ANTHROPIC_CUSTOM_HEADERS": "X-Team: platform", "ANTHROPIC_MODEL": "team-large",
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": "team-small"}
    assert GATEWAY_TOKEN not in json.dumps(gateway)

    # A subscription token: no helper (it would outrank the token), no gateway left over.
    oauth = merge_settings(gateway, hook_url=URL, hook_token="t", auth=ClaudeAuth.of(
        store.apply(parse_delivery(_body(version="v2", claudeOauthToken=OAUTH_TOKEN)))))
    assert "apiKeyHelper" not in oauth and oauth["env"] == {"FOO": "1"}
    api_key = merge_settings(oauth, hook_url=URL, hook_token="t", auth=ClaudeAuth.of(
        store.apply(parse_delivery(_body(version="v3", anthropicApiKey=API_KEY)))))
    assert api_key["apiKeyHelper"] == API_KEY_HELPER and api_key["env"] == {"FOO": "1"}
    # Nothing delivered: the user's own settings stay as they are.
    none = merge_settings(user, hook_url=URL, hook_token="t", auth=ClaudeAuth.of(
        store.apply(parse_delivery(_body(version="v4")))))
    assert none["env"] == user["env"] and "apiKeyHelper" not in none
