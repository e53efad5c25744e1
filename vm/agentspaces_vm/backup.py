"""Back up and restore the workspace tree (agent side; stdlib + cryptography only).

backup:  tar (GNU, pax) of the root | zstd -T0 | chunked AES-256-GCM | presigned multipart
         PUTs, several parts at once
restore: presigned GET (resumable) | verify + decrypt | zstd -d | tar into a staging dir,
         then swap the staged tree in; on any failure the root is left untouched.

The operator builds both plans (docs/backup-format.md); the VM never holds storage
credentials, only URLs that expire. Memory is bounded by the part buffers (at most
PART_MEMORY, or two parts when one is bigger) plus one read, whatever the size of the
tree. Every failure raises BackupError (or a subclass) whose `reason` is one CamelCase
word for the Workspace conditions; messages never contain the key or a URL (presigned
URLs are bearer credentials).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar, cast

from agentspaces_vm.backup_format import (
    VERSION,
    BackupCorrupt,
    BackupError,
    DataKeyMismatch,
    Decryptor,
    Encryptor,
    UnsupportedFormat,
)
from agentspaces_vm.contracts import (
    BackupPlan,
    BackupResult,
    ContractError,
    RestorePlan,
    UploadedPart,
)
from agentspaces_vm.safefs import neutralise_tree

__all__ = ["BackupCorrupt", "BackupError", "BackupPlan", "BackupResult", "DataKeyMismatch",
           "RestorePlan", "UnsupportedFormat", "backup", "restore"]

P = TypeVar("P", BackupPlan, RestorePlan)
# Several chunks per read: most chunks are then encrypted/decrypted straight from the
# read buffer instead of being copied into the format's carry-over buffer first.
READ_SIZE = 4 * 1024 * 1024
ZSTD_LEVEL = 3
# zstd's own worker threads (0: one per core). Compression, not the agent, was what a
# backup waited for; zstd writes the same bytes whatever the thread count.
ZSTD_THREADS = 0
# Parts PUT at once, and the memory all part buffers (those uploading plus the one
# filling) may take: 16 MiB parts give 3 PUTs in flight and 64 MiB of buffers.
PARALLEL_UPLOADS = 3
PART_MEMORY = 64 * 1024 * 1024
PUT_ATTEMPTS = 5
GET_FAILURES = 6
HTTP_TIMEOUT = 120.0
BACKOFF_CAP = 8.0
PROCESS_EXIT_TIMEOUT = 120.0
PIPE_SIZE = 1024 * 1024
FEED_QUEUE = 4  # plaintext pieces (about a chunk each) waiting for zstd
PREFETCH = 2  # downloaded pieces (READ_SIZE each) waiting for decryption
# Restore scratch space lives inside the root (same filesystem, even when the root is a
# mount point); backups never include it.
STAGING_PREFIX = ".agentspaces-restore-"
TRASH_PREFIX = ".agentspaces-trash-"

Progress = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)


def _fail(reason: str, message: str) -> BackupError:
    return BackupError(message, reason=reason)


def _invalid(message: str) -> BackupError:
    return _fail("InvalidPlan", message)


# --- plans ------------------------------------------------------------------------------

def _parse(plan: Mapping[str, Any] | P, kind: type[P]) -> P:
    """The plan (contracts.BackupPlan / RestorePlan), parsed from JSON if need be; a
    malformed one is a BackupError with reason InvalidPlan (field named, value never)."""
    if isinstance(plan, kind):
        return plan
    try:
        return kind.from_json(plan)
    except ContractError as exc:
        raise _invalid(f"the plan is malformed: {exc}") from None


# --- processes ----------------------------------------------------------------------------

def tar_create_args(root: Path, exclude: tuple[str, ...]) -> list[str]:
    # pax keeps nanosecond mtimes and long names; atime/ctime would only add noise.
    # Patterns follow GNU tar --exclude: "node_modules" anywhere, "./build" at the root.
    return ["tar", "--create", "--file=-", f"--directory={root}", "--format=posix",
            "--pax-option=delete=atime,delete=ctime", "--numeric-owner", "--sort=name",
            "--ignore-failed-read", f"--exclude={STAGING_PREFIX}*", f"--exclude={TRASH_PREFIX}*",
            *(f"--exclude={pattern}" for pattern in exclude), "."]


def tar_extract_args(target: Path) -> list[str]:
    owner = "--same-owner" if os.geteuid() == 0 else "--no-same-owner"
    return ["tar", "--extract", "--file=-", f"--directory={target}", "--numeric-owner",
            "--preserve-permissions", owner, "--delay-directory-restore"]


def _pipe_size() -> int:
    """Pipes of PIPE_SIZE (not 64 KiB) let tar, zstd and this process overlap their work
    instead of taking turns; an unprivileged process is capped by pipe-max-size."""
    if os.geteuid() == 0:
        return PIPE_SIZE
    try:
        return min(PIPE_SIZE, int(Path("/proc/sys/fs/pipe-max-size").read_text()))
    except (OSError, ValueError):
        return -1  # the system default


def _tail(stream: IO[bytes], limit: int = 600) -> str:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    return stream.read().decode(errors="replace").strip()


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=PROCESS_EXIT_TIMEOUT)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _wait(proc: subprocess.Popen[bytes], what: str) -> int:
    try:
        return proc.wait(timeout=PROCESS_EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise _fail("Timeout", f"{what} did not exit") from None


# --- upload -------------------------------------------------------------------------------

_opener = urllib.request.build_opener()


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def upload_slots(part_size: int) -> int:
    """How many parts are PUT at once: as many as PART_MEMORY holds next to the buffer
    being filled, at most PARALLEL_UPLOADS, at least one."""
    return max(1, min(PARALLEL_UPLOADS, PART_MEMORY // part_size - 1))


class _Uploader:
    """PUTs parts on `workers` threads so archiving continues while parts upload and
    one slow PUT does not hold up the others. Parts may finish in any order; the result
    lists them by number, which is the order CompleteMultipartUpload assembles them in.
    Part buffers come from a pool of workers + 1, reused (allocating a fresh part-sized
    buffer each time fragments the heap and lets RSS creep up). The first failure stops
    the other workers' retries and is raised in the archiving thread."""

    def __init__(self, urls: tuple[str, ...], part_size: int, workers: int | None = None
                 ) -> None:
        self._urls = urls
        self._part_size = part_size
        self.workers = workers or upload_slots(part_size)
        self._buffers = self.workers + 1
        self._queue: queue.Queue[tuple[int, bytearray, int] | None] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._allocated = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"backup-upload-{i}",
                                          daemon=True) for i in range(self.workers)]
        self.events: queue.Queue[tuple[int, int]] = queue.Queue()
        self.etags: dict[int, str] = {}
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def is_alive(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def take_buffer(self) -> bytearray:
        """A free part buffer; waits while all of them are in flight."""
        if self._free.empty() and self._allocated < self._buffers:
            self._allocated += 1
            return bytearray(self._part_size)
        while True:
            self.check()
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                continue

    def submit(self, number: int, buffer: bytearray, length: int) -> None:
        self.check()
        if number > len(self._urls):
            raise _fail("BackupTooLarge", f"the archive needs more than the {len(self._urls)} "
                                          "parts the plan allows")
        self._queue.put((number, buffer, length))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def cancel(self) -> None:
        self.cancelled.set()
        self.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            number, buffer, length = item
            try:
                if self.error is None and not self.cancelled.is_set():
                    with memoryview(buffer) as view:
                        self.etags[number] = self._put(number, view[:length])
                    self.events.put((number, length))
            except BaseException as exc:
                with self._lock:
                    if self.error is None:
                        self.error = exc
                self.cancelled.set()  # the backup has failed: other parts stop retrying
            finally:
                self._free.put(buffer)
                del buffer, item

    def _put(self, number: int, data: memoryview) -> str:
        problem = ""
        for attempt in range(1, PUT_ATTEMPTS + 1):
            request = urllib.request.Request(
                self._urls[number - 1], data=data, method="PUT",
                headers={"Content-Type": "application/octet-stream",
                         "Content-Length": str(len(data))})
            try:
                with _opener.open(request, timeout=HTTP_TIMEOUT) as response:
                    response.read()
                    etag = response.headers.get("ETag")
                if not etag:
                    raise _fail("UploadFailed", f"part {number}: no ETag in the answer")
                return str(etag)
            except urllib.error.HTTPError as exc:
                exc.close()
                problem = f"HTTP {exc.code}"
                retry = _retryable_status(exc.code)
            except (OSError, http.client.HTTPException) as exc:
                problem, retry = type(exc).__name__, True
            if not retry or attempt == PUT_ATTEMPTS:
                break
            if self.cancelled.wait(min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1))):
                break
        raise _fail("UploadFailed", f"part {number}: {problem} after {attempt} attempt(s)")


class _PartWriter:
    """Cuts the ciphertext stream into parts of exactly part_size (the last may be
    shorter, as R2 requires) and hashes it."""

    def __init__(self, part_size: int, uploader: _Uploader) -> None:
        self._size = part_size
        self._up = uploader
        self._buf: bytearray | None = None
        self._filled = 0
        self.parts = 0
        self.total = 0
        self.sha256 = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.sha256.update(data)
        self.total += len(data)
        with memoryview(data) as view:
            pos = 0
            while pos < len(view):
                if self._buf is None:
                    self._buf, self._filled = self._up.take_buffer(), 0
                count = min(self._size - self._filled, len(view) - pos)
                self._buf[self._filled:self._filled + count] = view[pos:pos + count]
                self._filled += count
                pos += count
                if self._filled == self._size:
                    self._flush()

    def _flush(self) -> None:
        assert self._buf is not None
        self.parts += 1
        buf, self._buf = self._buf, None
        self._up.submit(self.parts, buf, self._filled)

    def close(self) -> None:
        if self._buf is not None:
            self._flush()


def backup(plan: Mapping[str, Any] | BackupPlan, root: Path, progress: Progress
           ) -> BackupResult:
    """Archive, compress, encrypt and upload `root`; return the result for the commit.

    `progress` is called on this thread with {"phase", "partsUploaded", "bytesUploaded",
    "bytesEncrypted"}; an exception from it aborts the backup.
    """
    p = _parse(plan, BackupPlan)
    root = Path(root).absolute()
    if not root.is_dir():
        raise _fail("SourceMissing", f"{root} is not a directory")
    uploaded = [0, 0]

    def report(writer: _PartWriter, phase: str, block: float = 0.0) -> None:
        changed = False
        while True:
            try:
                _number, size = uploader.events.get(timeout=block) if block else \
                    uploader.events.get_nowait()
            except queue.Empty:
                break
            uploaded[0] += 1
            uploaded[1] += size
            changed, block = True, 0.0
        if changed or phase != "uploading":
            progress({"phase": phase, "partsUploaded": uploaded[0],
                      "bytesUploaded": uploaded[1], "bytesEncrypted": writer.total})

    uploader = _Uploader(p.part_urls, p.part_size)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryFile() as tar_err, tempfile.TemporaryFile() as zstd_err:
        try:
            tar = subprocess.Popen(tar_create_args(root, p.exclude), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=tar_err,
                                   pipesize=_pipe_size())
            procs.append(tar)
            zstd = subprocess.Popen(["zstd", f"-{ZSTD_LEVEL}", f"-T{ZSTD_THREADS}", "-q", "-c",
                                     "-"], stdin=tar.stdout, stdout=subprocess.PIPE,
                                    stderr=zstd_err, pipesize=_pipe_size())
            procs.append(zstd)
            assert tar.stdout is not None and zstd.stdout is not None
            tar.stdout.close()  # zstd owns it now; tar sees EPIPE if zstd dies
            uploader.start()
            writer = _PartWriter(p.part_size, uploader)
            encryptor = Encryptor(p.key, p.key_id, p.chunk_size, binding=p.binding)
            report(writer, "archiving")
            buffer = bytearray(READ_SIZE)
            with memoryview(buffer) as view:
                while count := cast(io.BufferedReader, zstd.stdout).readinto(buffer):
                    for out in encryptor.update_pieces(view[:count]):
                        writer.write(out)
                    report(writer, "uploading")
            zstd_rc, tar_rc = _wait(zstd, "zstd"), _wait(tar, "tar")
            if zstd_rc != 0:
                raise _fail("CompressFailed", f"zstd exited {zstd_rc}: {_tail(zstd_err)}")
            if tar_rc not in (0, 1):  # 1: a file changed while it was read (live tree)
                raise _fail("ArchiveFailed", f"tar exited {tar_rc}: {_tail(tar_err)}")
            warnings = _tail(tar_err) if tar_rc == 1 else ""
            for out in encryptor.finalize_pieces():
                writer.write(out)
            writer.close()
            uploader.close()
            while uploader.is_alive():
                report(writer, "uploading", block=0.5)
                uploader.check()
            uploader.check()
            report(writer, "uploaded")
        except BaseException:
            uploader.cancel()
            raise
        finally:
            _stop(procs)
            if uploader.is_alive():
                uploader.join(timeout=HTTP_TIMEOUT + 5)
    return BackupResult(
        backup_id=p.backup_id,
        parts=tuple(UploadedPart(n, uploader.etags[n]) for n in range(1, writer.parts + 1)),
        size=writer.total, sha256=writer.sha256.hexdigest(), key_id=p.key_id,
        chunk_size=p.chunk_size, format_version=VERSION,
        plaintext_size=encryptor.plaintext_size, warnings=warnings)


# --- restore ------------------------------------------------------------------------------

def _download(p: RestorePlan) -> Iterator[bytes]:
    """The object's bytes, resuming with Range after a dropped connection. Sizes are
    checked against the plan before anything is passed on."""
    offset, failures, problem = 0, 0, ""
    while offset < p.size:
        if failures:
            if failures >= GET_FAILURES:
                raise _fail("DownloadFailed", f"{problem} after {failures} attempt(s)")
            time.sleep(min(BACKOFF_CAP, 0.5 * 2 ** (failures - 1)))
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            response = _opener.open(urllib.request.Request(p.url, headers=headers),
                                    timeout=HTTP_TIMEOUT)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416:
                raise BackupCorrupt("truncated", f"the object is shorter than {p.size} "
                                                 "bytes") from None
            if not _retryable_status(exc.code):
                raise _fail("DownloadFailed", f"HTTP {exc.code}") from None
            failures, problem = failures + 1, f"HTTP {exc.code}"
            continue
        except (OSError, http.client.HTTPException) as exc:
            failures, problem = failures + 1, type(exc).__name__
            continue
        with response:
            if offset and response.status != 206:
                raise _fail("DownloadFailed", "the server ignored a Range request")
            length = response.headers.get("Content-Length")
            if length is not None and int(length) != p.size - offset:
                actual = offset + int(length)
                raise BackupCorrupt("truncated" if actual < p.size else "extended",
                                    f"the object is {actual} bytes, the manifest says {p.size}")
            try:
                while piece := response.read(READ_SIZE):
                    if offset + len(piece) > p.size:
                        raise BackupCorrupt("extended", f"the object exceeds {p.size} bytes")
                    offset += len(piece)
                    yield piece
            except (OSError, http.client.HTTPException) as exc:
                failures, problem = failures + 1, type(exc).__name__
                continue
            if offset < p.size:
                failures, problem = failures + 1, "short read"


class _Prefetch(threading.Thread):
    """Runs the download (and the object's sha256) on its own thread, a few pieces
    ahead of decryption; errors are re-raised in the consumer."""

    _END = object()

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__(name="restore-download", daemon=True)
        self._pieces = pieces
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH)
        self._halt = threading.Event()
        self.sha256 = hashlib.sha256()

    def _offer(self, item: Any) -> bool:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for piece in self._pieces:
                self.sha256.update(piece)
                if not self._offer(piece):
                    return
            self._offer(self._END)
        except BaseException as exc:
            self._offer(exc)
        finally:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[bytes]:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=HTTP_TIMEOUT + 5)


class _PipeFeeder(threading.Thread):
    """Writes plaintext into zstd on its own thread, so downloading, hashing and
    decrypting the next pieces overlap with decompression (a few MiB queued at most)."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(name="restore-feed", daemon=True)
        self._pipe = pipe
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=FEED_QUEUE)
        self.broken = False

    def put(self, piece: bytes) -> None:
        if self.broken:
            raise BrokenPipeError("the decompressor stopped reading")
        self._queue.put(piece)

    def run(self) -> None:
        while (piece := self._queue.get()) is not None:
            if not self.broken:
                try:
                    self._pipe.write(piece)
                except (OSError, ValueError):  # EPIPE, or closed by _stop()
                    self.broken = True  # keep draining so put() never blocks for good
        if not self.broken:
            try:
                self._pipe.close()
            except (OSError, ValueError):
                self.broken = True

    def finish(self) -> None:
        """Flush and close the pipe; wait for it (the caller stops zstd if it hangs)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=PROCESS_EXIT_TIMEOUT)
        self.join(timeout=PROCESS_EXIT_TIMEOUT)


def _extract(p: RestorePlan, target: Path) -> None:
    """Download, verify, decrypt, decompress and untar into `target`."""
    procs: list[subprocess.Popen[bytes]] = []
    feeder: _PipeFeeder | None = None
    download: _Prefetch | None = None
    with tempfile.TemporaryFile() as zstd_err, tempfile.TemporaryFile() as tar_err:
        try:
            zstd = subprocess.Popen(["zstd", "-d", "-q", "-c", "-"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=zstd_err,
                                    pipesize=_pipe_size())
            procs.append(zstd)
            tar = subprocess.Popen(tar_extract_args(target), stdin=zstd.stdout,
                                   stdout=subprocess.DEVNULL, stderr=tar_err)
            procs.append(tar)
            assert zstd.stdin is not None and zstd.stdout is not None
            zstd.stdout.close()
            feeder = _PipeFeeder(zstd.stdin)
            feeder.start()
            decryptor = Decryptor(p.key, p.key_id, binding=p.binding)
            download = _Prefetch(_download(p))
            download.start()
            verified = False
            try:
                for piece in download:
                    for plain in decryptor.update_pieces(piece):
                        feeder.put(plain)
                decryptor.finalize()
                if download.sha256.hexdigest() != p.sha256:
                    raise BackupCorrupt("checksum", "the object is not the one the manifest "
                                                    "names (sha256 differs)")
                verified = True
            except BrokenPipeError:
                pass  # zstd or tar stopped reading; their exit codes say why
            feeder.finish()
            zstd_rc, tar_rc = _wait(zstd, "zstd"), _wait(tar, "tar")
            if zstd_rc != 0:
                raise _fail("DecompressFailed", f"zstd exited {zstd_rc}: {_tail(zstd_err)}")
            if tar_rc != 0:
                raise _fail("ExtractFailed", f"tar exited {tar_rc}: {_tail(tar_err)}")
            if not verified or feeder.broken:
                raise _fail("ExtractFailed", "extraction stopped before the end of the backup")
        finally:
            if download is not None:
                download.stop()
            _stop(procs)  # kills zstd first, so a feeder blocked on the pipe gets EPIPE
            if feeder is not None and feeder.is_alive():
                feeder.finish()


def _make_staging(root: Path) -> tuple[Path, bool]:
    """A fresh staging directory on the root's filesystem, and whether it is inside
    the root (else next to it: the root does not exist yet)."""
    if root.is_dir():
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root)), True
    if root.exists() or root.is_symlink():
        raise _fail("InvalidTarget", f"{root} exists and is not a directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{root.name}{STAGING_PREFIX}", dir=root.parent)), False


def _swap_in(staging: Path, inside: bool, root: Path) -> None:
    """Replace the root's content with the staged tree. Each step is a rename on one
    filesystem; if one fails, the moves done so far are undone."""
    if not inside:
        staging.rename(root)
        for leftover in root.parent.glob(f".{root.name}{STAGING_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return
    attrs = os.lstat(staging)  # the archived root's own owner, mode and mtime
    trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=root))
    moved_out: list[str] = []
    moved_in: list[str] = []
    try:
        for name in os.listdir(root):
            if name not in (staging.name, trash.name):
                os.rename(root / name, trash / name)
                moved_out.append(name)
        for name in os.listdir(staging):
            os.rename(staging / name, root / name)
            moved_in.append(name)
    except OSError:
        for src, dst, names in ((root, staging, moved_in), (trash, root, moved_out)):
            for name in names:
                with contextlib.suppress(OSError):
                    os.rename(src / name, dst / name)
        with contextlib.suppress(OSError):
            os.rmdir(trash)  # never rmtree here: it may still hold old content
        raise
    os.rmdir(staging)
    # Old content, including scratch left by an interrupted earlier restore.
    shutil.rmtree(trash, ignore_errors=True)
    if os.geteuid() == 0:
        os.chown(root, attrs.st_uid, attrs.st_gid)
    os.chmod(root, attrs.st_mode & 0o7777)
    os.utime(root, ns=(attrs.st_atime_ns, attrs.st_mtime_ns))


def _neutralise(staging: Path, root: Path) -> None:
    """GNU tar already refuses absolute and `..` member names and never writes through
    a link it extracted; what remains is links that would lead out of the restored tree,
    device nodes and hard links out: removed before the tree is swapped in."""
    removed = neutralise_tree(staging, root)
    if removed:
        shown = ", ".join(removed[:10]) + (", ..." if len(removed) > 10 else "")
        log.warning("restore: removed %d entries pointing outside %s or device nodes: %s",
                    len(removed), root, shown)


def restore(plan: Mapping[str, Any] | RestorePlan, root: Path) -> None:
    """Replace the content of `root` with the backup the plan names.

    Nothing under `root` changes unless the whole object downloaded, authenticated,
    matched the manifest's size and sha256, and extracted cleanly.
    """
    p = _parse(plan, RestorePlan)
    root = Path(root).absolute()
    # The staging dir is created inside the root: put the root's times back on failure.
    times = os.stat(root) if root.is_dir() else None
    staging, inside = _make_staging(root)
    try:
        _extract(p, staging)
        _neutralise(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if times is not None:
            os.utime(root, ns=(times.st_atime_ns, times.st_mtime_ns))
        raise
    try:
        _swap_in(staging, inside, root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _fail("ExtractFailed", f"swapping the restored tree in failed: "
                                     f"{exc.strerror or type(exc).__name__}") from None
