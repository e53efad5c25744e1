"""A class's extra CA certificates (spec.trust.caBundle) on the operator's side:
checked before any cloud call, normalized, and delivered with the agent's config."""

from __future__ import annotations

import hashlib

import pytest

from agentspaces.api.enums import ConditionStatus, Phase, Reason
from agentspaces.api.enums import ConditionType as T
from agentspaces.pki import generate
from agentspaces.reconcile import agent_step
from agentspaces.reconcile.owned_secrets import Access
from agentspaces.vmconfig.trust import (
    CaBundleError,
    ca_bundle_certificates,
    ca_bundle_problem,
    vm_ca_bundle,
)
from tests.support.scope_builder import NOW, SETTINGS, ScopeBuilder

CA_1 = generate("ca-one.example", NOW).cert_pem
CA_2 = generate("ca-two.example", NOW).cert_pem


def test_a_bundle_is_its_certificates_re_encoded_without_anything_else() -> None:
    text = f"# our private CA\n{CA_1}\nsome notes\r\n{CA_2.replace(chr(10), chr(13) + chr(10))}"
    assert ca_bundle_certificates(text) == (CA_1, CA_2)
    assert vm_ca_bundle(text) == CA_1 + CA_2
    assert vm_ca_bundle(None) is None


@pytest.mark.parametrize(("text", "problem"), [
    ("", "no PEM certificate (-----BEGIN CERTIFICATE-----) found"),
    ("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n", "no PEM certificate"),
    ("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
     "certificate 1 of 1 is not a valid PEM X.509 certificate"),
    (CA_1 + CA_2[:200], "certificate 2 of 2 is not a valid PEM X.509 certificate"),
])
def test_garbage_is_named_without_echoing_it(text: str, problem: str) -> None:
    with pytest.raises(CaBundleError) as err:
        ca_bundle_certificates(text)
    assert problem in str(err.value)
    assert ca_bundle_problem(text) == str(err.value)
    assert "bm90IGEg" not in str(err.value)


async def test_a_bundle_that_does_not_parse_stops_the_workspace_before_any_cloud_call(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(trust={"caBundle": CA_1[:300]})  # cut: admission passes
    await b.reconcile()
    assert (b.servers.calls.methods(), b.dns.calls.methods(), b.agent.calls.methods()) == \
        ([], [], [])
    assert b.status["phase"] == Phase.PENDING
    available = next(c for c in b.status["conditions"]
                     if c["type"] == T.CREDENTIALS_AVAILABLE)
    assert (available["status"], available["reason"]) == \
        (ConditionStatus.FALSE, Reason.INVALID_CA_BUNDLE)
    assert available["message"] == ("WorkspaceClass standard trust.caBundle: certificate 1 "
                                    "of 1 is not a valid PEM X.509 certificate")

    b.with_class(trust={"caBundle": CA_1})  # fixed: the server is created
    await b.reconcile()
    assert b.servers.calls.methods().count("create") == 1


async def test_the_bundle_reaches_the_agent_before_the_start_and_again_when_it_changes(
        scope_builder: ScopeBuilder) -> None:
    b = scope_builder.with_class(trust={"caBundle": f"# comment\n{CA_1}"})
    await b.reconcile()
    b.servers.boot()
    b.clock.advance(SETTINGS.boot_poll)
    await b.reconcile()
    agent = b.agent.calls.methods()
    assert agent.index("put_config") < agent.index("put_secrets") < agent.index("start")
    assert b.agent.ca_bundle == CA_1
    first = b.status["secretsVersion"]

    # The class's bundle changes: the next poll re-delivers it (a new secrets version).
    b.agent.report_ready(b.clock())
    b.with_class(trust={"caBundle": CA_1 + CA_2})
    b.clear_calls()
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert b.agent.calls.methods()[:3] == ["agent_status", "put_config", "put_secrets"]
    assert b.agent.ca_bundle == CA_1 + CA_2
    assert b.status["secretsVersion"] != first

    # Removed from the class: the agent is told there is none.
    b.with_class(trust={})
    b.clock.advance(SETTINGS.poll_interval)
    await b.reconcile()
    assert b.agent.ca_bundle is None


def test_classes_without_a_bundle_keep_their_secrets_version() -> None:
    """Adding the bundle to the version's digest must not re-deliver every running
    workspace's secrets after an upgrade: without one, the digest is the one before."""
    b = ScopeBuilder()
    scope = b.scope()
    access = Access(username="agent", password="pw", scrypt_hash="$scrypt$x")
    before = hashlib.sha256(scope.ref.uid.encode())
    for part in (access.scrypt_hash, scope.creds.workspace_secrets_fingerprint(), ""):
        before.update(part.encode())
    assert agent_step.secrets_version(scope, access) == before.hexdigest()[:20]
    b.with_class(trust={"caBundle": CA_1})
    assert agent_step.secrets_version(b.scope(), access) != before.hexdigest()[:20]
