"""The workspace password's verifier: a stdlib scrypt hash in one printable string.

Format: `$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<key>` (salt and key in unpadded
base64url). The operator computes it (operator/agentspaces/reconcile/owned_secrets.py)
and delivers it in PUT /v1/secrets; the VM never sees the password itself. Parameters
are bounded on parsing so a delivered hash cannot make one check cost unbounded
memory or time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

DEFAULT_LOG_N = 14  # N = 16384, r = 8: 16 MiB and a few tens of ms per check
DEFAULT_R = 8
DEFAULT_P = 1
KEY_BYTES = 32
MAX_MEMORY = 128 << 20
_FORMAT = re.compile(r"^\$scrypt\$ln=([0-9]{1,2}),r=([0-9]{1,2}),p=([0-9])"
                     r"\$([A-Za-z0-9_-]{22,88})\$([A-Za-z0-9_-]{43})$")


class PasswordHashError(ValueError):
    """Not a usable scrypt hash (the message never contains the value)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _memory(log_n: int, r: int, p: int) -> int:
    return 128 * r * (1 << log_n) * p


@dataclass(frozen=True)
class ScryptHash:
    log_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def __repr__(self) -> str:
        return f"ScryptHash(ln={self.log_n}, r={self.r}, p={self.p})"

    def derive(self, password: bytes) -> bytes:
        return hashlib.scrypt(password, salt=self.salt, n=1 << self.log_n, r=self.r,
                              p=self.p, dklen=len(self.key),
                              maxmem=_memory(self.log_n, self.r, self.p) + (1 << 20))

    def verify(self, password: bytes) -> bool:
        return hmac.compare_digest(self.derive(password), self.key)

    def encode(self) -> str:
        return f"$scrypt$ln={self.log_n},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.key)}"


def parse_scrypt_hash(text: str) -> ScryptHash:
    match = _FORMAT.match(text)
    if not match:
        raise PasswordHashError("expected $scrypt$ln=<n>,r=<r>,p=<p>$<salt>$<key>")
    log_n, r, p = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if not 10 <= log_n <= 20 or not 1 <= r <= 32 or not 1 <= p <= 4:
        raise PasswordHashError("scrypt parameters out of range (ln 10-20, r 1-32, p 1-4)")
    if _memory(log_n, r, p) > MAX_MEMORY:
        raise PasswordHashError(f"scrypt parameters need more than {MAX_MEMORY >> 20} MiB")
    return ScryptHash(log_n, r, p, _unb64(match.group(4)), _unb64(match.group(5)))


def hash_password(password: str, *, log_n: int = DEFAULT_LOG_N, r: int = DEFAULT_R,
                  p: int = DEFAULT_P, salt: bytes | None = None) -> str:
    """The verifier string for `password` (a fresh random salt unless one is given)."""
    draft = ScryptHash(log_n, r, p, salt if salt is not None else os.urandom(16),
                       b"\0" * KEY_BYTES)
    text = ScryptHash(log_n, r, p, draft.salt, draft.derive(password.encode("utf-8"))).encode()
    parse_scrypt_hash(text)  # refuse parameters the VM would not accept
    return text
