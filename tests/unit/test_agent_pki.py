"""Per-server agent credentials: fresh, short-lived, and trusted by their pin alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from agentspaces.agent_client import AgentCertificateMismatch, AgentClient, pinned_context
from agentspaces.pki import AgentCredentials, CredentialsError, generate
from tests.component.agent_harness import AgentProcess, make_agent

HOST = "demo-default-1a2b3c.example.com"
NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def test_generated_credentials() -> None:
    creds = generate(HOST, NOW)
    cert = x509.load_pem_x509_certificate(creds.cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST, f"agent.{HOST}"]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.not_valid_before_utc <= NOW
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)  # short-lived
    assert cert.issuer == cert.subject
    key = load_pem_private_key(creds.key_pem.encode(), password=None)
    assert key.public_key() == cert.public_key()
    assert len(creds.token) >= 43  # 32 random bytes, url-safe base64
    assert creds.token_sha256 == hashlib.sha256(creds.token.encode()).hexdigest()
    der_hash = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert creds.fingerprint_sha256 == der_hash
    assert creds.token not in repr(creds) and "PRIVATE" not in repr(creds)
    pinned_context(creds.cert_pem)  # usable as the client's only trust anchor


def test_each_generation_is_fresh_and_validity_is_a_parameter() -> None:
    one, two = generate(HOST, NOW), generate(HOST, NOW, validity=timedelta(days=30))
    assert one.token != two.token and one.fingerprint_sha256 != two.fingerprint_sha256
    cert = x509.load_pem_x509_certificate(two.cert_pem.encode())
    assert cert.not_valid_after_utc == NOW + timedelta(days=30)


def test_secret_data_round_trip_and_tamper_checks() -> None:
    creds = generate(HOST, NOW)
    data = creds.to_secret_data()
    assert set(data) == {"tls.crt", "tls.key", "token", "tokenSha256", "fingerprintSha256"}
    assert AgentCredentials.from_secret_data(data) == creds
    other = generate(HOST, NOW)
    for key, value, message in (
        ("token", other.token, "token does not match"),
        ("tls.crt", other.cert_pem, "does not match its stored fingerprint"),
        ("tls.key", "not pem", "not valid PEM"),
        ("tokenSha256", "", "lack tokenSha256"),
    ):
        with pytest.raises(CredentialsError) as err:
            AgentCredentials.from_secret_data({**data, key: value})
        assert message in str(err.value)
        assert creds.token not in str(err.value) and other.token not in str(err.value)
    # Parsed PEMs are remembered by digest: the same pair again, and a changed key is
    # parsed anew (above: the same certificate with a bad key was refused after).
    assert AgentCredentials.from_secret_data(dict(data)) == creds


@pytest.fixture
def agent_with_expired_certificate(tmp_path: Path) -> Iterator[AgentProcess]:
    """The real agent process serving a certificate that expired ten days ago, as a
    server would after running past its certificate's 30 days."""
    expired = generate(HOST, datetime.now(UTC) - timedelta(days=40))
    agent = make_agent(tmp_path)
    (tmp_path / "tls.crt").write_text(expired.cert_pem)
    (tmp_path / "tls.key").write_text(expired.key_pem)
    agent.config["tokenSha256"] = expired.token_sha256
    agent.creds = expired
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


async def test_pinned_client_trusts_the_pin_not_the_dates(
        agent_with_expired_certificate: AgentProcess) -> None:
    agent = agent_with_expired_certificate
    cert = x509.load_pem_x509_certificate(agent.creds.cert_pem.encode())
    assert cert.not_valid_after_utc < datetime.now(UTC)
    async with AgentClient(agent.base_url, agent.creds.token, agent.creds.cert_pem) as client:
        assert "bootStage" in await client.status()  # a long-running workspace keeps working
    # A valid certificate of another server (same host names) is still refused: the
    # pin, which changes with every server, is what is trusted.
    other = generate(HOST, datetime.now(UTC))
    async with AgentClient(agent.base_url, agent.creds.token, other.cert_pem) as client:
        with pytest.raises(AgentCertificateMismatch):
            await client.status()


async def test_new_credentials_or_url_give_a_new_pinned_client() -> None:
    from agentspaces.runtime import Runtime
    from agentspaces.settings import OperatorSettings

    runtime = Runtime(OperatorSettings.from_env(), kube=None)  # type: ignore[arg-type]
    one, two = generate(HOST, NOW), generate(HOST, NOW)
    first = runtime.agent_client("uid", "https://192.0.2.1:9443", one.token, one.cert_pem)
    assert runtime.agent_client("uid", "https://192.0.2.1:9443", one.token,
                                one.cert_pem) is first
    second = runtime.agent_client("uid", "https://192.0.2.1:9443", two.token, two.cert_pem)
    third = runtime.agent_client("uid", "https://192.0.2.2:9443", two.token, two.cert_pem)
    assert len({id(first), id(second), id(third)}) == 3
    await runtime.close_stale_clients()  # the replaced ones are closed, not leaked
    assert first._client.is_closed and second._client.is_closed
    assert not third._client.is_closed
    await third.aclose()
