"""The encrypted backup object format: a header, then AES-256-GCM authenticated chunks.

Runs on the VM (Python 3.12 stdlib + cryptography) and in the operator's tests. The
layout is specified in docs/backup-format.md; in short:

    header  = magic "AGSPBACK" | version u8 | algorithm u8 | reserved u16 | chunk size u32
              | salt (32) | key check (16) | key-id length u8 | key id
              | binding length u8 | binding | digest (8)
    record  = index u32 | flags u8 | length u32 | AES-GCM ciphertext+tag (length bytes)

A per-backup subkey, nonce prefix and key-check value come from HKDF-SHA256 over the
workspace data key with the header's random salt, so nonces never repeat across backups
made with the same data key. Each record's nonce is prefix | index | final flag, and its
AAD is the whole header plus the record header: reordering, dropping, duplicating or
appending records, flipping the final flag, editing the header and changing a byte are
all rejected, and the reader reports which of them it saw (`BackupCorrupt.problem`).

The binding names the backup the object was written as ("<workspace uid>/<backup id>").
It sits in the header, so every chunk's AAD covers it: an object copied or renamed to
another backup's key (even of the same workspace, with the same data key) is refused by
a reader that expects the other binding, and editing the binding breaks every chunk.

Integers are big-endian. Every non-final record holds exactly `chunk size` plaintext
bytes; the final record holds 0..chunk size bytes and ends the stream.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Key ids and chunk limits are part of the plans too: declared once, in contracts.
from agentspaces_vm.contracts import (
    DATA_KEY_SIZE,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    check_key_id,
)

MAGIC = b"AGSPBACK"
# Version 2 added the binding. Version 1 objects (no binding) are refused: they could be
# moved to another backup's key unnoticed, and none were ever deployed.
VERSION = 2
ALGORITHM_HKDF_SHA256_AES256_GCM = 1
KEY_SIZE = DATA_KEY_SIZE
SALT_SIZE = 32
KEY_CHECK_SIZE = 16
NONCE_PREFIX_SIZE = 7
DIGEST_SIZE = 8
TAG_SIZE = 16
MAX_BINDING_LENGTH = 255
MAX_CHUNKS = 2**32 - 1
FLAG_FINAL = 0x01

_FIXED = struct.Struct(">8sBBHI32s16sB")  # magic .. key-id length
_RECORD = struct.Struct(">IBI")  # index, flags, ciphertext length
RECORD_HEADER_SIZE = _RECORD.size
_HKDF_INFO = b"agentspaces backup v2"


class BackupError(Exception):
    """A backup or restore failed. `reason` is one CamelCase word for status conditions."""

    reason = "BackupFailed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class BackupCorrupt(BackupError):
    """The object is not an intact backup. `problem` says how it is damaged:

    truncated  it ends before the final chunk (or inside the header or a chunk)
    extended   bytes follow the final chunk
    reordered  a chunk sits at the wrong position (swapped, dropped or duplicated)
    tampered   a chunk or its framing fails authentication in place
    header     the header is damaged
    swapped    the object was written as another backup (its binding differs)
    checksum   the object authenticates but is not the one the manifest names
    format     not a backup object at all (bad magic)
    """

    reason = "BackupCorrupt"

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(f"backup {problem}: {message}")
        self.problem = problem


class DataKeyMismatch(BackupError):
    """The data key (or its id) is not the one this backup was written with."""

    reason = "WrongKey"  # the condition reason


class UnsupportedFormat(BackupError):
    """A backup written by a newer format version or with an unknown algorithm."""

    reason = "UnsupportedFormat"


@dataclass(frozen=True)
class Header:
    version: int
    algorithm: int
    chunk_size: int
    salt: bytes
    key_check: bytes
    key_id: str
    binding: str
    raw: bytes  # the exact header bytes, bound into every chunk's AAD


@dataclass(frozen=True)
class _Derived:
    aead: AESGCM
    nonce_prefix: bytes
    key_check: bytes


def _derive(data_key: bytes, salt: bytes) -> _Derived:
    if len(data_key) != KEY_SIZE:
        raise DataKeyMismatch(f"a data key must be {KEY_SIZE} bytes")
    out = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE + NONCE_PREFIX_SIZE + KEY_CHECK_SIZE,
               salt=salt, info=_HKDF_INFO).derive(data_key)
    return _Derived(aead=AESGCM(out[:KEY_SIZE]),
                    nonce_prefix=out[KEY_SIZE:KEY_SIZE + NONCE_PREFIX_SIZE],
                    key_check=out[KEY_SIZE + NONCE_PREFIX_SIZE:])


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", index, FLAG_FINAL if final else 0)


def _build_header(key_check: bytes, key_id: str, binding: str, chunk_size: int,
                  salt: bytes) -> bytes:
    kid = check_key_id(key_id).encode("ascii")
    bound = binding.encode("ascii")
    if not 0 < len(bound) <= MAX_BINDING_LENGTH:
        raise ValueError(f"a binding is 1..{MAX_BINDING_LENGTH} ASCII characters")
    body = _FIXED.pack(MAGIC, VERSION, ALGORITHM_HKDF_SHA256_AES256_GCM, 0, chunk_size, salt,
                       key_check, len(kid)) + kid + bytes([len(bound)]) + bound
    return body + hashlib.sha256(body).digest()[:DIGEST_SIZE]


def _digest_matches(body: bytes, digest: bytes | bytearray | memoryview) -> bool:
    return hmac.compare_digest(hashlib.sha256(body).digest()[:DIGEST_SIZE], bytes(digest))


def _refuse_version_1(buf: bytes | bytearray | memoryview, digest_at: int) -> None:
    """Refuse a version-1 header (no binding), as UnsupportedFormat when it is intact;
    return only when more bytes are needed to tell."""
    if len(buf) < digest_at + DIGEST_SIZE:
        return
    if not _digest_matches(bytes(buf[:digest_at]), buf[digest_at:digest_at + DIGEST_SIZE]):
        raise BackupCorrupt("header", "header digest mismatch")
    raise UnsupportedFormat("backup format version 1 does not bind the backup id and is "
                            f"no longer read (this reader knows {VERSION})")


def parse_header(buf: bytes | bytearray | memoryview) -> Header | None:
    """Parse a header from the start of `buf`; None when more bytes are needed."""
    if len(buf) < len(MAGIC):
        return None
    if bytes(buf[:len(MAGIC)]) != MAGIC:
        raise BackupCorrupt("format", "not an agentspaces backup (bad magic)")
    if len(buf) < _FIXED.size:
        return None
    _magic, version, algorithm, _reserved, chunk_size, salt, key_check, kid_len = \
        _FIXED.unpack_from(buf)
    binding_at = _FIXED.size + kid_len
    if version == 1:
        _refuse_version_1(buf, binding_at)
        return None  # not refused yet: more bytes are needed
    if len(buf) < binding_at + 1:
        return None
    total = binding_at + 1 + buf[binding_at] + DIGEST_SIZE
    if len(buf) < total:
        return None
    body = bytes(buf[:total - DIGEST_SIZE])
    if not _digest_matches(body, buf[total - DIGEST_SIZE:total]):
        raise BackupCorrupt("header", "header digest mismatch")
    if version != VERSION:
        raise UnsupportedFormat(f"backup format version {version} is not supported "
                                f"(this reader knows {VERSION})")
    if algorithm != ALGORITHM_HKDF_SHA256_AES256_GCM:
        raise UnsupportedFormat(f"unknown backup algorithm {algorithm}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE or kid_len == 0 or body[binding_at] == 0:
        raise BackupCorrupt("header", f"invalid chunk size {chunk_size}, key id or binding")
    try:
        key_id = body[_FIXED.size:binding_at].decode("ascii")
        binding = body[binding_at + 1:].decode("ascii")
    except UnicodeDecodeError:
        raise BackupCorrupt("header", "key id or binding is not ASCII") from None
    return Header(version=version, algorithm=algorithm, chunk_size=chunk_size, salt=salt,
                  key_check=key_check, key_id=key_id, binding=binding, raw=bytes(buf[:total]))


def encrypted_size(plaintext_size: int, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   key_id_length: int = 35, binding_length: int = 53) -> int:
    """The exact object size for a plaintext of `plaintext_size` bytes (the defaults:
    a `dk-<32 hex>` key id, a UUID workspace uid and a `YYYYMMDDTHHMMSSZ` backup id)."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    header = _FIXED.size + key_id_length + 1 + binding_length + DIGEST_SIZE
    return header + plaintext_size + chunks * (RECORD_HEADER_SIZE + TAG_SIZE)


class Encryptor:
    """Streaming encryption: feed plaintext to `update`, then call `finalize` once.

    Both return ciphertext to append to the object (the first output carries the
    header). Memory stays below one chunk plus the caller's input. `binding` is
    `backup_binding(workspace uid, backup id)` of the backup being written.
    """

    def __init__(self, data_key: bytes, key_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 *, binding: str, salt: bytes | None = None) -> None:
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size must be 1..{MAX_CHUNK_SIZE}")
        salt = os.urandom(SALT_SIZE) if salt is None else salt
        if len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes")
        self._derived = _derive(data_key, salt)
        self.chunk_size = chunk_size
        self.header = _build_header(self._derived.key_check, key_id, binding, chunk_size, salt)
        self._pending = bytearray()
        self._index = 0
        self._header_sent = False
        self._finished = False
        self.plaintext_size = 0

    def _record(self, plaintext: bytes | bytearray | memoryview, final: bool,
                out: list[bytes]) -> None:
        if self._index > MAX_CHUNKS:
            raise ValueError("backup too large for the chunk index")
        rec = _RECORD.pack(self._index, FLAG_FINAL if final else 0, len(plaintext) + TAG_SIZE)
        out.append(rec)
        out.append(self._derived.aead.encrypt(
            _nonce(self._derived.nonce_prefix, self._index, final), plaintext, self.header + rec))
        self._index += 1

    def _prefix(self) -> list[bytes]:
        if self._header_sent:
            return []
        self._header_sent = True
        return [self.header]

    def update_pieces(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Like `update`, but the output as a list of pieces (saves a copy). `data` may
        be a reused buffer: nothing keeps a reference to it after the call."""
        if self._finished:
            raise ValueError("encryptor already finalized")
        out = self._prefix()
        size = self.chunk_size
        with memoryview(data) as view:
            total = view.nbytes
            self.plaintext_size += total
            pos = 0
            # The last full chunk is held back until more data (or finalize) shows
            # whether it is the final one.
            if self._pending:
                pos = min(size - len(self._pending), total)
                self._pending += view[:pos]
                if len(self._pending) == size and pos < total:
                    self._record(self._pending, False, out)
                    self._pending = bytearray()
            if not self._pending:
                while total - pos > size:
                    self._record(view[pos:pos + size], False, out)
                    pos += size
                self._pending += view[pos:]
        return out

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        return b"".join(self.update_pieces(data))

    def finalize_pieces(self) -> list[bytes]:
        if self._finished:
            raise ValueError("encryptor already finalized")
        out = self._prefix()
        self._record(self._pending, True, out)
        self._pending = bytearray()
        self._finished = True
        return out

    def finalize(self) -> bytes:
        return b"".join(self.finalize_pieces())


class Decryptor:
    """Streaming decryption: feed ciphertext to `update`, then call `finalize`.

    `update` returns only plaintext that has been authenticated, in order. Raises
    DataKeyMismatch, BackupCorrupt (with `.problem`) or UnsupportedFormat. If `key_id` is
    given the header must name it; if `binding` is given the object must have been
    written as that backup (else BackupCorrupt "swapped"). A restore always passes both.
    """

    def __init__(self, data_key: bytes, key_id: str | None = None,
                 max_chunk_size: int = MAX_CHUNK_SIZE, *, binding: str | None = None) -> None:
        if len(data_key) != KEY_SIZE:
            raise DataKeyMismatch(f"a data key must be {KEY_SIZE} bytes")
        self._key = data_key
        self._expected_key_id = key_id
        self._expected_binding = binding
        self._max_chunk = max_chunk_size
        self._buf = bytearray()  # an incomplete record (or header) carried over
        self._derived: _Derived | None = None
        self.header: Header | None = None
        self._index = 0
        self.finished = False
        self.plaintext_size = 0

    def _start(self, header: Header) -> None:
        if header.chunk_size > self._max_chunk:
            raise BackupCorrupt("header", f"chunk size {header.chunk_size} above the limit")
        if self._expected_key_id is not None and header.key_id != self._expected_key_id:
            raise DataKeyMismatch("the backup was written with a different data key id")
        derived = _derive(self._key, header.salt)
        if not hmac.compare_digest(derived.key_check, header.key_check):
            raise DataKeyMismatch("the data key does not match this backup")
        # After the key check, so a wrong key is still reported as such. The binding is
        # also in every chunk's AAD: editing it here makes chunk 0 fail ("tampered").
        if self._expected_binding is not None and header.binding != self._expected_binding:
            raise BackupCorrupt("swapped", f"the object was written as backup "
                                           f"{header.binding}, not {self._expected_binding}")
        self.header, self._derived = header, derived

    def _diagnose(self, index: int, final: bool, ct: bytes, aad: bytes) -> BackupCorrupt:
        """A chunk failed at its position: say whether it belongs elsewhere or was altered."""
        assert self._derived is not None
        if index != self._index:
            try:
                self._derived.aead.decrypt(_nonce(self._derived.nonce_prefix, index, final),
                                           ct, aad)
            except InvalidTag:
                pass
            else:
                return BackupCorrupt("reordered", f"chunk {index} found at position "
                                                  f"{self._index}")
        return BackupCorrupt("tampered", f"chunk {self._index} failed authentication")

    def update_pieces(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Like `update`, but authenticated plaintext as a list of pieces. Records that
        lie wholly inside `data` are decrypted in place; only a partial record at the
        end is copied (so memory stays at about one record)."""
        out: list[bytes] = []
        with memoryview(data) as incoming:
            if not incoming.nbytes:
                return out
            if self.finished:
                raise BackupCorrupt("extended", "data after the final chunk")
            if self._buf:
                self._buf += incoming
                with memoryview(self._buf) as view:
                    used = self._consume(view, out)
                del self._buf[:used]
            else:
                used = self._consume(incoming, out)
                self._buf += incoming[used:]
        return out

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        return b"".join(self.update_pieces(data))

    def _consume(self, view: memoryview, out: list[bytes]) -> int:
        """Decrypt every complete record in `view`; return how many bytes were used."""
        pos = 0
        if self.header is None:
            header = parse_header(view)
            if header is None:
                return 0
            self._start(header)
            pos = len(header.raw)
        assert self.header is not None and self._derived is not None
        chunk = self.header.chunk_size
        size = view.nbytes
        while size - pos >= RECORD_HEADER_SIZE:
            if self.finished:
                raise BackupCorrupt("extended", "data after the final chunk")
            index, flags, length = _RECORD.unpack_from(view, pos)
            final = bool(flags & FLAG_FINAL)
            if flags & ~FLAG_FINAL or not TAG_SIZE <= length <= chunk + TAG_SIZE:
                raise BackupCorrupt("tampered", f"chunk {self._index} has an invalid frame")
            end = pos + RECORD_HEADER_SIZE + length
            if size < end:
                break
            aad = self.header.raw + view[pos:pos + RECORD_HEADER_SIZE].tobytes()
            ct = view[pos + RECORD_HEADER_SIZE:end]
            try:
                if index != self._index or (not final and length != chunk + TAG_SIZE):
                    raise InvalidTag()
                plain = self._derived.aead.decrypt(
                    _nonce(self._derived.nonce_prefix, index, final), ct, aad)
            except InvalidTag:
                raise self._diagnose(index, final, ct.tobytes(), aad) from None
            pos = end
            self._index += 1
            self.plaintext_size += len(plain)
            out.append(plain)
            if final:
                self.finished = True
        if self.finished and size > pos:
            raise BackupCorrupt("extended", "data after the final chunk")
        return pos

    def finalize(self) -> None:
        """Raise unless the final chunk was seen and nothing is left over."""
        if self.header is None:
            raise BackupCorrupt("truncated", "the object ends inside the header")
        if self._buf:
            if self.finished:
                raise BackupCorrupt("extended", "data after the final chunk")
            raise BackupCorrupt("truncated", f"the object ends inside chunk {self._index}")
        if not self.finished:
            raise BackupCorrupt("truncated", f"the object ends before chunk {self._index} "
                                             "(no final chunk)")


READ_SIZE = 1024 * 1024


def encrypt_stream(src: BinaryIO, dst: BinaryIO, data_key: bytes, key_id: str,
                   chunk_size: int = DEFAULT_CHUNK_SIZE,
                   on_output: Callable[[bytes], None] | None = None, *, binding: str) -> int:
    """Encrypt `src` into `dst`; returns the ciphertext size."""
    enc = Encryptor(data_key, key_id, chunk_size, binding=binding)
    written = 0
    while True:
        piece = src.read(READ_SIZE)
        out = enc.update(piece) if piece else enc.finalize()
        if out:
            dst.write(out)
            written += len(out)
            if on_output is not None:
                on_output(out)
        if not piece:
            return written


def decrypt_stream(src: BinaryIO, dst: BinaryIO, data_key: bytes,
                   key_id: str | None = None, *, binding: str | None = None) -> int:
    """Decrypt `src` into `dst` (authenticated plaintext only); returns plaintext size."""
    dec = Decryptor(data_key, key_id, binding=binding)
    while piece := src.read(READ_SIZE):
        out = dec.update(piece)
        if out:
            dst.write(out)
    dec.finalize()
    return dec.plaintext_size


def encrypt_bytes(data: bytes, data_key: bytes, key_id: str,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, *, binding: str,
                  salt: bytes | None = None) -> bytes:
    enc = Encryptor(data_key, key_id, chunk_size, binding=binding, salt=salt)
    return enc.update(data) + enc.finalize()


def decrypt_bytes(blob: bytes, data_key: bytes, key_id: str | None = None, *,
                  binding: str | None = None) -> bytes:
    dec = Decryptor(data_key, key_id, binding=binding)
    out = dec.update(blob)
    dec.finalize()
    return out
