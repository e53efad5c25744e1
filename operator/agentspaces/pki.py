"""Per-server credentials for the VM agent's HTTPS API.

The operator generates new ones for every server it creates and keeps them in a
Kubernetes Secret: a self-signed EC P-256 certificate + key (the VM serves it; the
operator pins its fingerprint, so no CA is involved) and a random bearer token (the VM
gets only its sha256). The certificate is valid for 30 days; the operator checks the
pin, not the dates, so a workspace running longer keeps working, and a key copied off
one server is worthless once that server is gone: the next one has its own.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALIDITY = timedelta(days=30)
_KEYS = ("tls.crt", "tls.key", "token", "tokenSha256", "fingerprintSha256")


class CredentialsError(ValueError):
    """Stored credentials are incomplete or inconsistent (values are never quoted)."""


def certificate_fingerprint(cert_pem: str) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex()


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class AgentCredentials:
    cert_pem: str
    key_pem: str
    token: str
    token_sha256: str
    fingerprint_sha256: str

    def __repr__(self) -> str:
        return f"AgentCredentials(fingerprint_sha256={self.fingerprint_sha256!r}, <redacted>)"

    def to_secret_data(self) -> dict[str, str]:
        """Kubernetes Secret `stringData`."""
        return {"tls.crt": self.cert_pem, "tls.key": self.key_pem, "token": self.token,
                "tokenSha256": self.token_sha256, "fingerprintSha256": self.fingerprint_sha256}

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> AgentCredentials:
        """Rebuild from decoded Secret data, re-deriving the digests to catch tampering
        or a half-written Secret."""
        missing = [k for k in _KEYS if not data.get(k)]
        if missing:
            raise CredentialsError(f"agent credentials lack {', '.join(missing)}")
        try:
            fingerprint = _parsed_fingerprint(data["tls.crt"], data["tls.key"])
        except ValueError:
            raise CredentialsError("agent certificate or key is not valid PEM") from None
        if fingerprint != data["fingerprintSha256"].lower():
            raise CredentialsError("agent certificate does not match its stored fingerprint")
        if token_sha256(data["token"]) != data["tokenSha256"].lower():
            raise CredentialsError("agent token does not match its stored hash")
        return cls(cert_pem=data["tls.crt"], key_pem=data["tls.key"], token=data["token"],
                   token_sha256=data["tokenSha256"].lower(), fingerprint_sha256=fingerprint)


_PARSED: dict[bytes, str] = {}
"""Digest of a certificate and key that parsed -> the certificate's fingerprint: every
poll rebuilds the credentials from their Secret, and parsing the PEMs was most of
that. Keyed by a digest so no private key is kept."""
_PARSED_MAX = 4096


def _parsed_fingerprint(cert_pem: str, key_pem: str) -> str:
    digest = hashlib.sha256(f"{cert_pem}\0{key_pem}".encode()).digest()
    found = _PARSED.get(digest)
    if found is None:
        found = certificate_fingerprint(cert_pem)
        serialization.load_pem_private_key(key_pem.encode(), password=None)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[digest] = found
    return found


def generate(host: str, now: datetime, validity: timedelta = DEFAULT_VALIDITY) -> AgentCredentials:
    """New credentials for one server of the workspace at `host` (SANs: host and
    agent.<host>)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"agent.{host}"[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate a VM clock running behind
        .not_valid_after(now + validity)
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(host), x509.DNSName(f"agent.{host}")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    token = secrets.token_urlsafe(32)
    return AgentCredentials(cert_pem=cert_pem, key_pem=key_pem, token=token,
                            token_sha256=token_sha256(token),
                            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex())
