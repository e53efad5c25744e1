"""Registry logins for the devcontainer (Workspace spec.devcontainer.
registryCredentialsSecretRef): resolved like the other workspace Secrets, delivered
with them, kept root-only on the VM and given to `devcontainer up` as DOCKER_CONFIG."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from agentspaces.api.enums import ConditionStatus, Phase, Reason
from agentspaces.api.enums import ConditionType as T
from agentspaces.reconcile.credentials import docker_config
from agentspaces_vm.bootstrap import READY
from agentspaces_vm.caddy import BasicAuth
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.secrets import Delivery, SecretsError, SecretStore, parse_delivery
from tests.support.scope_builder import SETTINGS, ScopeBuilder
from tests.unit.test_agent_bootstrap import Runner, make_bootstrap

AUTH_1 = base64.b64encode(b"puller:registry-password-one").decode()
AUTH_2 = base64.b64encode(b"puller:registry-password-two").decode()
HASH = hash_password("unit-password", log_n=10)


def dockerconfig(auth: str, registry: str = "registry.example.com:5000") -> str:
    """What `kubectl create secret docker-registry` puts in .dockerconfigjson."""
    return json.dumps({"auths": {registry: {"username": "puller", "auth": auth}}}, indent=2)


def _condition(b: ScopeBuilder, type_: str) -> dict[str, str]:
    return next(c for c in b.status["conditions"] if c["type"] == type_)


# -- the operator ------------------------------------------------------------------------

def test_a_docker_config_is_compacted_and_anything_else_refused() -> None:
    assert docker_config(dockerconfig(AUTH_1)) == (
        '{"auths":{"registry.example.com:5000":{"username":"puller","auth":"' + AUTH_1 + '"}}}')
    for bad in ("", "not json", "[]", '{"registry.example.com": {}}', '{"auths": []}',
                '{"auths": {"r": "token"}}', json.dumps({"auths": {"r": {"a": "x" * 70000}}})):
        assert docker_config(bad) is None, bad


@pytest.mark.parametrize(("secret", "reason", "message"), [
    (None, Reason.SECRET_NOT_FOUND, "Secret team-a/pull not found"),
    ({"other": "x"}, Reason.SECRET_KEY_MISSING,
     "Secret team-a/pull has no key '.dockerconfigjson'"),
    ({".dockerconfigjson": '{"auths": "' + AUTH_1 + '"}'}, Reason.CREDENTIALS_INVALID,
     "Secret team-a/pull key '.dockerconfigjson' is not a Docker config"),
])
async def test_a_missing_or_broken_secret_is_a_condition_and_nothing_is_created(
        scope_builder: ScopeBuilder, secret: dict[str, str] | None, reason: Reason,
        message: str) -> None:
    b = scope_builder.with_spec(devcontainer={"image": "registry.example.com:5000/dev:1",
                                              "registryCredentialsSecretRef": {"name": "pull"}})
    if secret is not None:
        b.kube.add_secret(b.namespace, "pull", secret)
    await b.reconcile()
    assert (b.servers.calls.methods(), b.agent.calls.methods()) == ([], [])
    assert b.status["phase"] == Phase.PENDING
    available = _condition(b, T.CREDENTIALS_AVAILABLE)
    assert (available["status"], available["reason"]) == (ConditionStatus.FALSE, reason)
    assert available["message"].startswith(message)
    assert AUTH_1 not in json.dumps(b.status) and AUTH_1 not in str(b.events)


async def test_the_logins_are_delivered_with_the_secrets_and_a_rotation_redelivers(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_spec(devcontainer={"image": "registry.example.com:5000/dev:1",
                                              "registryCredentialsSecretRef": {"name": "pull"}})
    b.kube.add_secret(b.namespace, "pull", {".dockerconfigjson": dockerconfig(AUTH_1)})
    await b.reconcile()
    b.servers.boot()
    b.clock.advance(SETTINGS.boot_poll)
    await b.reconcile()
    assert "start" in b.agent.calls.methods()
    assert b.agent.registry_config is not None and json.loads(b.agent.registry_config) == \
        json.loads(dockerconfig(AUTH_1))
    first = b.status["secretsVersion"]

    b.agent.report_ready(b.clock())
    b.kube.add_secret(b.namespace, "pull", {".dockerconfigjson": dockerconfig(AUTH_2)})
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert "put_secrets" in b.agent.calls.methods()
    assert AUTH_2 in (b.agent.registry_config or "")
    assert b.status["secretsVersion"] != first
    assert AUTH_1 not in json.dumps(b.status) and AUTH_2 not in json.dumps(b.status)
    assert not any(AUTH_2 in e.message for e in b.events)


# -- the VM --------------------------------------------------------------------------------

def _body(**extra: object) -> dict[str, object]:
    return {"version": "v1", "basicAuth": {"username": "dev", "scryptHash": HASH}, **extra}


def test_the_agent_accepts_a_docker_config_and_never_echoes_a_bad_one() -> None:
    delivery = parse_delivery(_body(registryConfig=dockerconfig(AUTH_1)))
    assert delivery.registry_config is not None and AUTH_1 in delivery.registry_config
    assert AUTH_1 not in repr(delivery)
    assert parse_delivery(_body()).registry_config is None
    for bad in (42, "not json " + AUTH_1, json.dumps({"auths": AUTH_1}), "x" * 70000):
        with pytest.raises(SecretsError) as err:
            parse_delivery(_body(registryConfig=bad))
        assert str(err.value).startswith("registryConfig:") and AUTH_1 not in str(err.value)


def _delivery(config: str | None) -> Delivery:
    return Delivery(version="v1", basic_auth=BasicAuth("dev", "$scrypt$x"),
                    anthropic_api_key=None, repository_token=None, registry_config=config)


def test_the_store_keeps_it_where_only_root_reads_it(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    assert store.docker_env() == {}
    state = store.apply(_delivery(parse_delivery(
        _body(registryConfig=dockerconfig(AUTH_1))).registry_config))
    assert state.has_registry_config
    config = tmp_path / "secrets" / "docker" / "config.json"
    assert json.loads(config.read_text()) == json.loads(dockerconfig(AUTH_1))
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert store.docker_env() == {"DOCKER_CONFIG": str(config.parent)}
    # A delivery without it (the Workspace dropped the reference) removes it.
    assert not store.apply(_delivery(None)).has_registry_config
    assert not config.exists() and store.docker_env() == {}


def test_devcontainer_up_gets_docker_config_and_git_does_not(tmp_path: Path) -> None:
    runner = Runner()
    boot, store, _ = make_bootstrap(tmp_path, runner)
    store.apply(_delivery(json.dumps({"auths": {"r.example": {"auth": AUTH_1}}})))
    boot.request_start(None)
    assert boot.wait(10)
    assert boot.snapshot().stage == READY
    (clone, clone_env), (up, up_env) = runner.calls[0], runner.calls[-1]
    assert "clone" in clone and up[1] == "up"
    assert up_env["DOCKER_CONFIG"] == str(store.docker_config_dir)
    assert "DOCKER_CONFIG" not in clone_env
    for argv, env in runner.calls:  # the logins themselves never travel in argv or env
        assert not any(AUTH_1 in part for part in (*argv, *env.values()))
