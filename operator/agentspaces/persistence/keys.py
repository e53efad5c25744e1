"""Envelope encryption: a random data key per workspace, wrapped by the class key.

The data key encrypts the workspace's backups (vm/agentspaces_vm/backup_format.py). It
lives only in the operator's memory and in the backup plans it sends to that
workspace's VM; at rest it exists only wrapped, in the workspace's key Secret.

Wrapping is AES-256-GCM with a random 96-bit nonce and the data-key id as associated
data, not RFC 3394/5649 key wrap: GCM takes a context, so a wrapped key copied into
another Secret under a different key id fails to unwrap instead of silently decrypting
someone else's backups, and a wrong class key is reported as such (the tag fails). A
class key wraps a few keys per workspace over its lifetime, far below the 2**32
random-nonce budget of GCM. Blob: version byte 0x01 | nonce (12) | ciphertext+tag (48).

Class-key rotation re-wraps the data keys only; backup objects never change.

Backup manifests are authenticated with a subkey of the data key (`manifest_mac_key`),
not of the class key: the data key does not change when the class key is rotated, so
manifests written before a rotation keep verifying after the old class key is gone, and
a bucket writer, who holds neither key, cannot forge one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
NONCE_SIZE = 12
WRAP_VERSION = 1
WRAPPED_SIZE = 1 + NONCE_SIZE + KEY_SIZE + 16
_AAD_PREFIX = b"agentspaces data-key wrap v1\x00"
_FINGERPRINT_LABEL = b"agentspaces key fingerprint v1"
_MANIFEST_MAC_INFO = b"agentspaces backup manifest mac v1"

# Keys of the per-workspace key Secret's `data` (values base64, as Kubernetes wants).
SECRET_WRAPPED_KEY = "wrappedKey"
SECRET_CLASS_KEY_FINGERPRINT = "classKeyFingerprint"
SECRET_DATA_KEY_ID = "dataKeyId"


class ClassKeyMismatch(Exception):
    """The class key cannot unwrap this data key (wrong key, wrong context or damage)."""

    reason = "WrongKey"  # the condition reason


class InvalidKey(ValueError):
    """Key material or a key Secret is malformed."""

    reason = "InvalidKey"


@dataclass(frozen=True)
class DataKey:
    """An unwrapped data key and its id. The material never appears in a repr."""

    key_id: str
    material: bytes = field(repr=False)


@dataclass(frozen=True)
class WrappedKey:
    """What the key Secret holds: never the raw key."""

    key_id: str
    wrapped: bytes = field(repr=False)
    class_key_fingerprint: str


def generate_data_key() -> bytes:
    return os.urandom(KEY_SIZE)


def new_key_id() -> str:
    """Random, so a data key id says nothing about the workspace (and never repeats)."""
    return "dk-" + secrets.token_hex(16)


def _check_key(key: bytes, what: str) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise InvalidKey(f"{what} must be {KEY_SIZE} bytes")


def _aad(context: bytes | str) -> bytes:
    return _AAD_PREFIX + (context.encode() if isinstance(context, str) else bytes(context))


def wrap(class_key: bytes, data_key: bytes, context: bytes | str) -> bytes:
    """Encrypt `data_key` under `class_key`, bound to `context` (the data-key id)."""
    _check_key(class_key, "the class key")
    _check_key(data_key, "a data key")
    nonce = os.urandom(NONCE_SIZE)
    return bytes([WRAP_VERSION]) + nonce + AESGCM(bytes(class_key)).encrypt(
        nonce, bytes(data_key), _aad(context))


def unwrap(class_key: bytes, wrapped: bytes, context: bytes | str) -> bytes:
    """Recover the data key; ClassKeyMismatch if the class key or context does not match."""
    _check_key(class_key, "the class key")
    if len(wrapped) != WRAPPED_SIZE or wrapped[0] != WRAP_VERSION:
        raise InvalidKey(f"a wrapped key is {WRAPPED_SIZE} bytes starting with version "
                         f"{WRAP_VERSION}")
    nonce, ct = wrapped[1:1 + NONCE_SIZE], wrapped[1 + NONCE_SIZE:]
    try:
        return AESGCM(bytes(class_key)).decrypt(nonce, ct, _aad(context))
    except InvalidTag:
        raise ClassKeyMismatch("the class key does not unwrap this data key") from None


def rewrap(old_class_key: bytes, new_class_key: bytes, wrapped: bytes,
           context: bytes | str) -> bytes:
    return wrap(new_class_key, unwrap(old_class_key, wrapped, context), context)


def key_fingerprint(key: bytes) -> str:
    """16 hex digits of HMAC-SHA256(key, label): identifies a key, reveals nothing of it."""
    _check_key(key, "a key")
    return hmac.new(bytes(key), _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


def manifest_mac_key(data_key: DataKey) -> bytes:
    """The HMAC key for a workspace's backup manifests: HKDF-SHA256 of the data key with
    a purpose label, so the MAC never uses the encryption key itself. The data-key id
    is in the info too: a key Secret copied under another id derives another MAC key."""
    _check_key(data_key.material, "a data key")
    info = _MANIFEST_MAC_INFO + b"\x00" + data_key.key_id.encode()
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None,
                info=info).derive(bytes(data_key.material))


def parse_class_key(value: bytes | str) -> bytes:
    """The class key Secret value: 32 raw bytes, or their base64 or hex text."""
    raw = value.encode() if isinstance(value, str) else bytes(value)
    if len(raw) == KEY_SIZE:
        return raw
    text = raw.strip()
    try:
        if len(text) == 2 * KEY_SIZE:
            return bytes.fromhex(text.decode("ascii"))
        decoded = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        decoded = b""
    if len(decoded) != KEY_SIZE:
        raise InvalidKey(f"the class key must be {KEY_SIZE} bytes (raw, base64 or hex)")
    return decoded


# --- a workspace's data key ------------------------------------------------------------

def create_data_key(class_key: bytes) -> tuple[DataKey, WrappedKey]:
    """A fresh data key for a new workspace, and what to store in its key Secret."""
    key = DataKey(new_key_id(), generate_data_key())
    return key, WrappedKey(key.key_id, wrap(class_key, key.material, key.key_id),
                           key_fingerprint(class_key))


def open_data_key(class_key: bytes, stored: WrappedKey) -> DataKey:
    """Unwrap a stored data key (ClassKeyMismatch unless the class key is the one it names)."""
    return DataKey(stored.key_id, unwrap(class_key, stored.wrapped, stored.key_id))


def encode_key_secret(stored: WrappedKey) -> dict[str, str]:
    """The key Secret's `data`: wrapped key, class-key fingerprint, data-key id."""
    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode("ascii")
    return {
        SECRET_WRAPPED_KEY: b64(stored.wrapped),
        SECRET_CLASS_KEY_FINGERPRINT: b64(stored.class_key_fingerprint.encode()),
        SECRET_DATA_KEY_ID: b64(stored.key_id.encode()),
    }


def decode_key_secret(data: Mapping[str, str] | None) -> WrappedKey:
    """Parse a key Secret's `data`; InvalidKey names the missing or malformed field."""
    data = data or {}
    values: dict[str, bytes] = {}
    for name in (SECRET_WRAPPED_KEY, SECRET_CLASS_KEY_FINGERPRINT, SECRET_DATA_KEY_ID):
        if not data.get(name):
            raise InvalidKey(f"key Secret lacks {name}")
        try:
            values[name] = base64.b64decode(data[name], validate=True)
        except (ValueError, binascii.Error):
            raise InvalidKey(f"key Secret field {name} is not base64") from None
    try:
        key_id = values[SECRET_DATA_KEY_ID].decode("ascii")
        fingerprint = values[SECRET_CLASS_KEY_FINGERPRINT].decode("ascii")
    except UnicodeDecodeError:
        raise InvalidKey("key Secret id or fingerprint is not ASCII") from None
    if len(values[SECRET_WRAPPED_KEY]) != WRAPPED_SIZE:
        raise InvalidKey(f"key Secret {SECRET_WRAPPED_KEY} is not {WRAPPED_SIZE} bytes")
    return WrappedKey(key_id, values[SECRET_WRAPPED_KEY], fingerprint)


# --- class-key rotation -----------------------------------------------------------------

def rotate_wrapped_key(old_class_key: bytes, new_class_key: bytes,
                       stored: WrappedKey) -> WrappedKey:
    """Re-wrap one data key under the new class key; already-rotated keys pass through
    (after checking they unwrap), so an interrupted rotation can simply be run again."""
    new_fp = key_fingerprint(new_class_key)
    if stored.class_key_fingerprint == new_fp:
        unwrap(new_class_key, stored.wrapped, stored.key_id)
        return stored
    return WrappedKey(stored.key_id,
                      rewrap(old_class_key, new_class_key, stored.wrapped, stored.key_id),
                      new_fp)


def rotate_class_key(old_class_key: bytes, new_class_key: bytes,
                     stored: Iterable[WrappedKey]) -> list[WrappedKey]:
    """Re-wrap every data key under the new class key, in order, all or nothing: if any
    key unwraps with neither class key, ClassKeyMismatch is raised and nothing is returned.
    Backups are untouched: the data keys themselves do not change."""
    return [rotate_wrapped_key(old_class_key, new_class_key, item) for item in stored]


def rotate_key_secret(old_class_key: bytes, new_class_key: bytes,
                      data: Mapping[str, str]) -> dict[str, str] | None:
    """The new `data` for one key Secret, or None when it is already on the new key."""
    stored = decode_key_secret(data)
    rotated = rotate_wrapped_key(old_class_key, new_class_key, stored)
    return None if rotated is stored else encode_key_secret(rotated)
