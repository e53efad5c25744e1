"""A WorkspaceClass's extra CA certificates (spec.trust.caBundle), checked and
normalized before anything is created.

Admission only checks that the text looks like PEM; here every certificate must
parse. What the VM gets is the certificates alone, re-encoded (comments and any
other PEM blocks dropped), over the agent's pinned channel (PUT /v1/config), not in
the user-data.
"""

from __future__ import annotations

import hashlib
import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.*?(-----END CERTIFICATE-----|\Z)", re.S)


class CaBundleError(ValueError):
    """The bundle holds no certificate, or one that does not parse."""


def ca_bundle_certificates(pem: str) -> tuple[str, ...]:
    """Each certificate of a PEM bundle, re-encoded as PEM. CaBundleError names the
    first one that does not parse (by position; no certificate text is echoed)."""
    blocks = [m.group(0) for m in _BLOCK.finditer(pem)]
    if not blocks:
        raise CaBundleError("no PEM certificate (-----BEGIN CERTIFICATE-----) found")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block.encode("utf-8")))
        except ValueError:
            raise CaBundleError(f"certificate {number} of {len(blocks)} is not a valid "
                                "PEM X.509 certificate") from None
    return tuple(c.public_bytes(Encoding.PEM).decode("ascii") for c in certificates)


def ca_bundle_problem(pem: str | None) -> str | None:
    """Why the class's bundle cannot be used, or None (no bundle is fine)."""
    if pem is None:
        return None
    try:
        ca_bundle_certificates(pem)
    except CaBundleError as err:
        return str(err)
    return None


def vm_ca_bundle(pem: str | None) -> str | None:
    """The bundle as the VM gets it: the certificates only, concatenated."""
    return None if pem is None else "".join(ca_bundle_certificates(pem))


def ca_bundle_digest(pem: str | None) -> str:
    """Changes with the bundle the VM gets; "" without one."""
    bundle = vm_ca_bundle(pem)
    return "" if bundle is None else hashlib.sha256(bundle.encode()).hexdigest()
