"""The access Secrets of served workspaces (`<name>-access`), read only for those and
only when a request needs one.

A read is reused for `max_age` seconds and dropped as soon as the workspace changes
(the operator rotating a key or the password touches its status), so a rotated
password or link key takes effect within seconds without the gateway watching every
Secret in the cluster. Concurrent requests share one read. Nothing here is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.share_links import decode_key
from agentspaces_vm.webauth import Account

log = logging.getLogger(__name__)

ACCESS_SUFFIX = "access"  # reconcile.owned_secrets.ACCESS_SUFFIX
MAX_AGE_SECONDS = 3.0

ReadSecret = Callable[[str, str], Awaitable[Mapping[str, str] | None]]
"""(namespace, name) -> the Secret's decoded data, or None when it does not exist."""


@dataclass(frozen=True)
class Access:
    username: str | None = None
    scrypt_hash: str | None = None
    share_link_key: bytes | None = None
    session_key: bytes | None = None

    def account(self) -> Account | None:
        if not self.username or not self.scrypt_hash:
            return None
        return Account(self.username, self.scrypt_hash)

    def __repr__(self) -> str:
        return f"Access(username={self.username!r}, <keys redacted>)"


NO_ACCESS = Access()


@dataclass
class _Entry:
    access: Access
    read_at: float


@dataclass
class AccessCache:
    read_secret: ReadSecret
    monotonic: Callable[[], float]
    max_age: float = MAX_AGE_SECONDS
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _inflight: dict[str, asyncio.Future[Access]] = field(default_factory=dict)
    # A password edited in the Secret before the operator rehashed it: our own hash of
    # it, so the new password works here at once (keyed by a digest, never the text).
    _rehashed: dict[str, str] = field(default_factory=dict)

    async def get(self, namespace: str, name: str) -> Access:
        key = f"{namespace}/{name}"
        entry = self._entries.get(key)
        if entry is not None and self.monotonic() - entry.read_at < self.max_age:
            return entry.access
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Access] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            access = await self._read(namespace, name)
            self._entries[key] = _Entry(access, self.monotonic())
            future.set_result(access)
            return access
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as err:
            future.set_exception(err)
            future.exception()  # marked retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(key, None)

    def invalidate(self, namespace: str, name: str) -> None:
        self._entries.pop(f"{namespace}/{name}", None)

    def retain(self, keys: set[str]) -> None:
        """Forget the Secrets of workspaces no longer served."""
        for key in set(self._entries) - keys:
            del self._entries[key]

    async def _read(self, namespace: str, name: str) -> Access:
        data = await self.read_secret(namespace, f"{name}-{ACCESS_SUFFIX}")
        if data is None:
            return NO_ACCESS
        scrypt_hash = data.get("scryptHash") or None
        password = data.get("password")
        if password and data.get("passwordSha256") != _sha256(password):
            scrypt_hash = await self._rehash(password)
        return Access(username=data.get("username") or None, scrypt_hash=scrypt_hash,
                      share_link_key=decode_key(data.get("shareLinkKey") or ""),
                      session_key=decode_key(data.get("sessionKey") or ""))

    async def _rehash(self, password: str) -> str:
        digest = _sha256(password)
        known = self._rehashed.get(digest)
        if known is None:
            known = await asyncio.to_thread(hash_password, password)
            self._rehashed = {digest: known}  # only the newest
        return known


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fallback_session_key() -> bytes:
    """For a Secret without `sessionKey` (an operator that predates it): sessions made
    here then hold only at the gateway, not on the woken VM."""
    return os.urandom(32)
