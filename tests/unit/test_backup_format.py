"""The chunked, authenticated backup format: round trips and every kind of damage."""

from __future__ import annotations

import hashlib
import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentspaces_vm import backup_format as bf
from agentspaces_vm.contracts import backup_binding

KEY = bytes(range(32))
KEY_ID = "dk-test"
CHUNK = 64
UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
BINDING = backup_binding(UID, "20261127T041900Z")


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """The header and the records of an encrypted object."""
    header = bf.parse_header(blob)
    assert header is not None
    pos, records = len(header.raw), []
    while pos < len(blob):
        _, _, length = struct.unpack_from(">IBI", blob, pos)
        end = pos + bf.RECORD_HEADER_SIZE + length
        records.append(blob[pos:end])
        pos = end
    return header.raw, records


def problem(blob: bytes, key: bytes = KEY, key_id: str | None = KEY_ID) -> str:
    with pytest.raises(bf.BackupCorrupt) as info:
        bf.decrypt_bytes(blob, key, key_id, binding=BINDING)
    assert info.value.reason == "BackupCorrupt"
    return info.value.problem


@pytest.fixture
def data() -> bytes:
    return os.urandom(CHUNK * 5 + 17)


@pytest.fixture
def blob(data: bytes) -> bytes:
    return bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
def test_round_trip_and_exact_size(size: int) -> None:
    data = os.urandom(size)
    blob = bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING)
    assert bf.decrypt_bytes(blob, KEY, KEY_ID) == data
    assert len(blob) == bf.encrypted_size(size, CHUNK, len(KEY_ID), len(BINDING))
    header, records = split(blob)
    assert header.startswith(bf.MAGIC)
    assert len(records) == max(1, -(-size // CHUNK))
    # Every chunk but the last carries exactly one chunk of plaintext.
    assert all(len(r) == bf.RECORD_HEADER_SIZE + CHUNK + bf.TAG_SIZE for r in records[:-1])


def test_same_input_gives_different_ciphertext(data: bytes) -> None:
    one = bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING)
    two = bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING)
    assert one != two
    assert split(one)[1][0][bf.RECORD_HEADER_SIZE:] != split(two)[1][0][bf.RECORD_HEADER_SIZE:]


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=5000), chunk=st.integers(1, 700),
       cuts=st.lists(st.integers(0, 6000), max_size=8),
       feeds=st.lists(st.integers(1, 900), min_size=1, max_size=8))
def test_streaming_round_trip_any_split(data: bytes, chunk: int, cuts: list[int],
                                        feeds: list[int]) -> None:
    enc = bf.Encryptor(KEY, KEY_ID, chunk, binding=BINDING)
    out, start = [], 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        out.append(enc.update(data[start:cut]))
        start = cut
    out.append(enc.update(data[start:]))
    out.append(enc.finalize())
    blob = b"".join(out)
    assert len(blob) == bf.encrypted_size(len(data), chunk, len(KEY_ID), len(BINDING))
    dec = bf.Decryptor(KEY, KEY_ID)
    plain, pos, i = [], 0, 0
    while pos < len(blob):
        step = feeds[i % len(feeds)]
        plain.append(dec.update(blob[pos:pos + step]))
        pos, i = pos + step, i + 1
    dec.finalize()
    assert b"".join(plain) == data


@settings(max_examples=80, deadline=None)
@given(data=st.binary(min_size=1, max_size=2000), chunk=st.integers(16, 300),
       where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(data: bytes, chunk: int, where: float, bit: int) -> None:
    blob = bytearray(bf.encrypt_bytes(data, KEY, KEY_ID, chunk, binding=BINDING))
    blob[int(where * len(blob))] ^= 1 << bit
    with pytest.raises(bf.BackupCorrupt):
        bf.decrypt_bytes(bytes(blob), KEY, KEY_ID)


@settings(max_examples=40, deadline=None)
@given(index=st.integers(0, 5), offset=st.integers(0, CHUNK + bf.TAG_SIZE - 1))
def test_tampered_chunk_body(index: int, offset: int) -> None:
    data = bytes(CHUNK * 5 + 17)
    header, records = split(bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING))
    body = bytearray(records[index])
    pos = bf.RECORD_HEADER_SIZE + offset % (len(body) - bf.RECORD_HEADER_SIZE)
    body[pos] ^= 0x80
    records[index] = bytes(body)
    assert problem(header + b"".join(records)) == "tampered"


def test_tampered_chunk_is_not_released(blob: bytes, data: bytes) -> None:
    header, records = split(blob)
    bad = bytearray(records[2])
    bad[-1] ^= 1
    dec = bf.Decryptor(KEY, KEY_ID)
    released = dec.update(header + records[0] + records[1])
    assert released == data[:2 * CHUNK]
    with pytest.raises(bf.BackupCorrupt):
        dec.update(bytes(bad))


def test_dropping_the_last_chunk_is_truncation(blob: bytes) -> None:
    header, records = split(blob)
    assert problem(header + b"".join(records[:-1])) == "truncated"
    assert problem(header) == "truncated"


@pytest.mark.parametrize("cut", [1, 7, bf.TAG_SIZE + 3])
def test_cutting_inside_a_chunk_is_truncation(blob: bytes, cut: int) -> None:
    assert problem(blob[:-cut]) == "truncated"


def test_cutting_inside_the_header_is_truncation(blob: bytes) -> None:
    assert problem(blob[:20]) == "truncated"
    assert problem(b"") == "truncated"


def test_swapped_chunks_are_reordered(blob: bytes) -> None:
    header, r = split(blob)
    assert problem(header + r[1] + r[0] + b"".join(r[2:])) == "reordered"
    # The short final chunk moved up one place.
    assert problem(header + b"".join(r[:-2]) + r[-1] + r[-2]) == "reordered"


def test_dropped_or_duplicated_middle_chunk_is_reordered(blob: bytes) -> None:
    header, r = split(blob)
    assert problem(header + r[0] + b"".join(r[2:])) == "reordered"
    assert problem(header + r[0] + r[0] + b"".join(r[1:])) == "reordered"


def test_anything_after_the_final_chunk_is_extension(blob: bytes) -> None:
    _, r = split(blob)
    assert problem(blob + r[1]) == "extended"
    assert problem(blob + b"\0") == "extended"
    dec = bf.Decryptor(KEY, KEY_ID)
    dec.update(blob)
    with pytest.raises(bf.BackupCorrupt) as info:
        dec.update(b"x")
    assert info.value.problem == "extended"


def test_flipping_the_final_flag_is_refused(blob: bytes) -> None:
    header, r = split(blob)
    first = bytearray(r[0])
    first[4] |= bf.FLAG_FINAL
    assert problem(header + bytes(first) + b"".join(r[1:])) == "tampered"
    last = bytearray(r[-1])
    last[4] &= ~bf.FLAG_FINAL & 0xFF
    assert problem(header + b"".join(r[:-1]) + bytes(last)) == "tampered"


def test_wrong_key_and_wrong_key_id(blob: bytes) -> None:
    with pytest.raises(bf.DataKeyMismatch) as info:
        bf.decrypt_bytes(blob, os.urandom(32), KEY_ID)
    assert info.value.reason == "WrongKey"
    with pytest.raises(bf.DataKeyMismatch):
        bf.decrypt_bytes(blob, KEY, "dk-other")
    with pytest.raises(bf.DataKeyMismatch):
        bf.Decryptor(b"short", KEY_ID)


def test_chunks_from_another_backup_with_the_same_key_are_refused(data: bytes) -> None:
    one = split(bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING))
    two = split(bf.encrypt_bytes(data, KEY, KEY_ID, CHUNK, binding=BINDING))
    mixed = one[0] + one[1][0] + two[1][1] + b"".join(one[1][2:])
    assert problem(mixed) == "tampered"


def test_header_damage(blob: bytes) -> None:
    assert problem(b"NOTABACKUP" + blob[10:]) == "format"
    damaged = bytearray(blob)
    damaged[20] ^= 1  # inside the salt
    assert problem(bytes(damaged)) == "header"


def test_newer_version_is_unsupported(blob: bytes) -> None:
    header = bf.parse_header(blob)
    assert header is not None
    body = bytearray(header.raw[:-bf.DIGEST_SIZE])
    body[len(bf.MAGIC)] = bf.VERSION + 1
    new_header = bytes(body) + hashlib.sha256(bytes(body)).digest()[:bf.DIGEST_SIZE]
    with pytest.raises(bf.UnsupportedFormat) as info:
        bf.decrypt_bytes(new_header + blob[len(header.raw):], KEY, KEY_ID)
    assert info.value.reason == "UnsupportedFormat"


def test_hostile_chunk_size_is_refused_before_buffering(blob: bytes) -> None:
    header = bf.parse_header(blob)
    assert header is not None
    dec = bf.Decryptor(KEY, KEY_ID, max_chunk_size=CHUNK - 1)
    with pytest.raises(bf.BackupCorrupt) as info:
        dec.update(header.raw)
    assert info.value.problem == "header"
    big = bytearray(split(blob)[1][0])
    struct.pack_into(">I", big, 5, 1 << 30)  # a frame longer than any chunk
    with pytest.raises(bf.BackupCorrupt) as info:
        bf.Decryptor(KEY, KEY_ID).update(header.raw + bytes(big))
    assert info.value.problem == "tampered"


def test_stream_helpers_keep_buffers_to_one_chunk() -> None:
    data = os.urandom(3 * bf.DEFAULT_CHUNK_SIZE + 123)
    seen: list[int] = []
    cipher = io.BytesIO()
    size = bf.encrypt_stream(io.BytesIO(data), cipher, KEY, KEY_ID,
                             on_output=lambda out: seen.append(len(out)), binding=BINDING)
    assert size == len(cipher.getvalue()) == sum(seen)
    assert max(seen) <= bf.DEFAULT_CHUNK_SIZE + 200
    plain = io.BytesIO()
    assert bf.decrypt_stream(io.BytesIO(cipher.getvalue()), plain, KEY, KEY_ID) == len(data)
    assert plain.getvalue() == data


def test_key_id_rules() -> None:
    with pytest.raises(ValueError):
        bf.Encryptor(KEY, "", CHUNK, binding=BINDING)
    with pytest.raises(ValueError):
        bf.Encryptor(KEY, "x" * 65, CHUNK, binding=BINDING)
    with pytest.raises(ValueError):
        bf.Encryptor(KEY, "dk-\u00e9", CHUNK, binding=BINDING)


# --- the binding (workspace uid + backup id) --------------------------------------------

def test_object_written_as_another_backup_is_refused(blob: bytes) -> None:
    """A bucket writer copies backup A's object to backup B's key (same workspace, same
    data key): a reader expecting B refuses it before releasing any plaintext."""
    other = backup_binding(UID, "20261128T000000Z")
    dec = bf.Decryptor(KEY, KEY_ID, binding=other)
    with pytest.raises(bf.BackupCorrupt) as info:
        dec.update(blob)
    assert info.value.problem == "swapped"
    assert dec.plaintext_size == 0
    # Another workspace that shares the data key (a retained one and its heir) too.
    with pytest.raises(bf.BackupCorrupt) as info:
        bf.decrypt_bytes(blob, KEY, KEY_ID, binding=backup_binding("heir", "20261127T041900Z"))
    assert info.value.problem == "swapped"


def test_rewriting_the_binding_breaks_every_chunk(blob: bytes, data: bytes) -> None:
    """The binding is in every chunk's AAD: a header rewritten to name backup B (with a
    valid digest, as anyone can compute it) makes chunk 0 fail authentication."""
    header, records = split(blob)
    parsed = bf.parse_header(blob)
    assert parsed is not None and parsed.binding == BINDING
    other = backup_binding(UID, "20261128T000000Z")
    assert len(other) == len(BINDING)
    body = header[:-bf.DIGEST_SIZE].replace(BINDING.encode(), other.encode())
    forged = body + hashlib.sha256(body).digest()[:bf.DIGEST_SIZE]
    with pytest.raises(bf.BackupCorrupt) as info:
        bf.decrypt_bytes(forged + b"".join(records), KEY, KEY_ID, binding=other)
    assert info.value.problem == "tampered"
    assert bf.decrypt_bytes(blob, KEY, KEY_ID, binding=BINDING) == data


def _version_1_header(key_id: str = KEY_ID) -> bytes:
    kid = key_id.encode()
    body = struct.pack(">8sBBHI32s16sB", bf.MAGIC, 1, 1, 0, CHUNK, bytes(32), bytes(16),
                       len(kid)) + kid
    return body + hashlib.sha256(body).digest()[:bf.DIGEST_SIZE]


def test_version_1_objects_are_refused() -> None:
    """Version 1 had no binding, so a v1 object could be moved to any backup's key."""
    with pytest.raises(bf.UnsupportedFormat) as info:
        bf.decrypt_bytes(_version_1_header() + bytes(100), KEY, KEY_ID, binding=BINDING)
    assert "version 1" in str(info.value)
    damaged = bytearray(_version_1_header())
    damaged[20] ^= 1
    assert problem(bytes(damaged)) == "header"
    assert problem(_version_1_header()[:-1]) == "truncated"


@pytest.mark.parametrize("uid, backup_id", [("", "20261127T041900Z"), ("a/b", "x"),
                                            ("uid", "../x"), ("uid", "x" * 101)])
def test_binding_rules(uid: str, backup_id: str) -> None:
    with pytest.raises(ValueError):
        backup_binding(uid, backup_id)
