"""Bearer-token authentication shared by the emulators; each maps the outcome to its
provider's errors."""

from __future__ import annotations

import secrets
from collections.abc import Iterable


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None when the header is
    missing, of another scheme or empty."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def known_token(token: str | None, valid: Iterable[str]) -> str | None:
    """`token` if it is one of `valid`, compared in constant time."""
    if token is None:
        return None
    found = None
    for candidate in valid:
        if secrets.compare_digest(token.encode(), candidate.encode()):
            found = candidate
    return found
