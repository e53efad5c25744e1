"""Envelope encryption of workspace data keys: wrap, unwrap, the key Secret, rotation."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from agentspaces.persistence import keys, manifest_auth
from agentspaces_vm import backup_format, contracts


@pytest.fixture
def class_key() -> bytes:
    return os.urandom(32)


def test_wrap_round_trip_with_fresh_nonce(class_key: bytes) -> None:
    data_key = keys.generate_data_key()
    first = keys.wrap(class_key, data_key, "dk-1")
    second = keys.wrap(class_key, data_key, "dk-1")
    assert len(first) == keys.WRAPPED_SIZE
    assert first != second  # random nonce per wrap
    assert data_key not in first
    assert keys.unwrap(class_key, first, "dk-1") == data_key
    assert keys.unwrap(class_key, second, b"dk-1") == data_key


def test_unwrap_refuses_wrong_class_key_context_or_damage(class_key: bytes) -> None:
    wrapped = keys.wrap(class_key, keys.generate_data_key(), "dk-1")
    with pytest.raises(keys.ClassKeyMismatch):
        keys.unwrap(os.urandom(32), wrapped, "dk-1")
    with pytest.raises(keys.ClassKeyMismatch):  # copied under another data-key id
        keys.unwrap(class_key, wrapped, "dk-2")
    damaged = bytearray(wrapped)
    damaged[20] ^= 0x01
    with pytest.raises(keys.ClassKeyMismatch):
        keys.unwrap(class_key, bytes(damaged), "dk-1")
    with pytest.raises(keys.InvalidKey):
        keys.unwrap(class_key, wrapped[:-1], "dk-1")
    with pytest.raises(keys.InvalidKey):
        keys.wrap(class_key[:16], keys.generate_data_key(), "dk-1")


def test_rewrap_moves_the_key_to_the_new_class_key(class_key: bytes) -> None:
    new_class_key = os.urandom(32)
    data_key = keys.generate_data_key()
    old = keys.wrap(class_key, data_key, "dk-1")
    new = keys.rewrap(class_key, new_class_key, old, "dk-1")
    assert keys.unwrap(new_class_key, new, "dk-1") == data_key
    with pytest.raises(keys.ClassKeyMismatch):
        keys.unwrap(class_key, new, "dk-1")


def test_fingerprint_identifies_without_revealing(class_key: bytes) -> None:
    fp = keys.key_fingerprint(class_key)
    assert fp == keys.key_fingerprint(bytes(class_key))
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fp != keys.key_fingerprint(os.urandom(32))
    assert fp not in class_key.hex()
    assert fp != hashlib.sha256(class_key).hexdigest()[:16]  # keyed, not a bare hash


def test_key_secret_holds_no_raw_key(class_key: bytes) -> None:
    data_key, stored = keys.create_data_key(class_key)
    data = keys.encode_key_secret(stored)
    assert set(data) == {"wrappedKey", "classKeyFingerprint", "dataKeyId"}
    decoded = {k: base64.b64decode(v) for k, v in data.items()}
    assert all(data_key.material not in v for v in decoded.values())
    assert base64.b64encode(data_key.material).decode() not in str(data)
    assert decoded["dataKeyId"].decode() == data_key.key_id
    assert decoded["classKeyFingerprint"].decode() == keys.key_fingerprint(class_key)
    parsed = keys.decode_key_secret(data)
    assert parsed == stored
    assert keys.open_data_key(class_key, parsed) == data_key
    assert data_key.material.hex() not in repr(data_key)


@pytest.mark.parametrize("broken", [
    {"classKeyFingerprint": "YQ==", "dataKeyId": "YQ=="},
    {"wrappedKey": "not base64!", "classKeyFingerprint": "YQ==", "dataKeyId": "YQ=="},
    {"wrappedKey": "YWJj", "classKeyFingerprint": "YQ==", "dataKeyId": "YQ=="},
])
def test_malformed_key_secret_is_rejected(broken: dict[str, str]) -> None:
    with pytest.raises(keys.InvalidKey):
        keys.decode_key_secret(broken)


def test_parse_class_key_accepts_raw_base64_and_hex(class_key: bytes) -> None:
    assert keys.parse_class_key(class_key) == class_key
    assert keys.parse_class_key(base64.b64encode(class_key) + b"\n") == class_key
    assert keys.parse_class_key(class_key.hex()) == class_key
    with pytest.raises(keys.InvalidKey):
        keys.parse_class_key(base64.b64encode(os.urandom(16)))
    with pytest.raises(keys.InvalidKey):
        keys.parse_class_key("short")


def test_rotation_rewraps_every_key_and_can_resume(class_key: bytes) -> None:
    new_class_key = os.urandom(32)
    pairs = [keys.create_data_key(class_key) for _ in range(4)]
    stored = [wrapped for _, wrapped in pairs]
    # Half of them were already rotated by an earlier, interrupted run.
    stored[:2] = keys.rotate_class_key(class_key, new_class_key, stored[:2])
    rotated = keys.rotate_class_key(class_key, new_class_key, stored)
    assert rotated[:2] == stored[:2]
    new_fp = keys.key_fingerprint(new_class_key)
    for (data_key, _), item in zip(pairs, rotated, strict=True):
        assert item.class_key_fingerprint == new_fp
        assert item.key_id == data_key.key_id
        assert keys.open_data_key(new_class_key, item) == data_key
        with pytest.raises(keys.ClassKeyMismatch):
            keys.open_data_key(class_key, item)


def test_rotation_is_all_or_nothing(class_key: bytes) -> None:
    good = keys.create_data_key(class_key)[1]
    foreign = keys.create_data_key(os.urandom(32))[1]  # wrapped by some other class key
    with pytest.raises(keys.ClassKeyMismatch):
        keys.rotate_class_key(class_key, os.urandom(32), [good, foreign])


def test_rotate_key_secret_reports_already_current(class_key: bytes) -> None:
    new_class_key = os.urandom(32)
    data_key, stored = keys.create_data_key(class_key)
    updated = keys.rotate_key_secret(class_key, new_class_key, keys.encode_key_secret(stored))
    assert updated is not None
    assert keys.open_data_key(new_class_key, keys.decode_key_secret(updated)) == data_key
    assert keys.rotate_key_secret(class_key, new_class_key, updated) is None


def test_backups_still_decrypt_after_rotation(class_key: bytes) -> None:
    data_key, stored = keys.create_data_key(class_key)
    binding = contracts.backup_binding("ws-uid", "20261127T041900Z")
    blob = backup_format.encrypt_bytes(b"workspace tar" * 1000, data_key.material,
                                       data_key.key_id, chunk_size=4096, binding=binding)
    new_class_key = os.urandom(32)
    (rotated,) = keys.rotate_class_key(class_key, new_class_key, [stored])
    reopened = keys.open_data_key(new_class_key, rotated)
    assert backup_format.decrypt_bytes(blob, reopened.material, reopened.key_id,
                                       binding=binding) == \
        b"workspace tar" * 1000


def test_manifest_mac_key_is_a_purpose_bound_subkey() -> None:
    data_key = keys.DataKey(keys.new_key_id(), keys.generate_data_key())
    mac_key = keys.manifest_mac_key(data_key)
    assert len(mac_key) == 32 and mac_key != data_key.material
    assert keys.manifest_mac_key(data_key) == mac_key
    # The same material under another id (a Secret pasted elsewhere) derives another key.
    assert keys.manifest_mac_key(keys.DataKey("dk-other", data_key.material)) != mac_key


def test_manifest_mac_survives_class_key_rotation(class_key: bytes) -> None:
    """Manifests are signed with a subkey of the data key, which rotation keeps: one
    signed before a rotation verifies after it, with the new class key only."""
    data_key, stored = keys.create_data_key(class_key)
    signed = manifest_auth.sign({"id": "20261127T041900Z", "size": 10}, data_key)
    new_class_key = os.urandom(32)
    (rotated,) = keys.rotate_class_key(class_key, new_class_key, [stored])
    manifest_auth.verify(signed, keys.open_data_key(new_class_key, rotated))
