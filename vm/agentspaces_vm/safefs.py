"""Root's file operations below a directory whose content another user controls.

Everything under /workspaces belongs to the container (usually root inside it) and
survives backup and restore, so any name there may be a symbolic link planted to make
the agent, which runs as root, write, chmod or chown a file elsewhere on the VM. These
helpers start from a trusted directory (root-owned, e.g. /workspaces itself) and walk
down one descriptor at a time:

- a symbolic link (or a non-directory) among the directories above the name is refused
  with UnsafePath;
- a file is written to a fresh random name (O_CREAT|O_EXCL|O_NOFOLLOW), given its mode
  and owner through the descriptor, and renamed over the name, so a link at the name is
  replaced, never followed;
- a read opens only a regular file (O_PATH|O_NOFOLLOW, checked, then reopened), so
  neither a link nor a device or FIFO is ever opened.

Linux only (O_PATH and /proc/self/fd).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

Owner = tuple[int, int] | None

MAX_READ = 16 * 1024 * 1024
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(OSError):
    """A name on the way is a link, or not the kind of file expected there."""


def _parts(rel: str | PurePosixPath) -> list[str]:
    parts = list(PurePosixPath(rel).parts)
    if not parts or any(p in ("/", ".", "..") for p in parts):
        raise ValueError(f"{rel!s}: expected a relative path without . or ..")
    return parts


def _own(fd: int, owner: Owner) -> None:
    # Only root can give a file away; tests and simulate mode keep their own uid.
    if owner is not None and os.geteuid() == 0:
        os.fchown(fd, *owner)


def _open_child_dir(parent: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(exc.errno, f"{shown} is a symbolic link or not a directory; "
                                        "refusing to go through it") from None
        raise


@contextlib.contextmanager
def open_dir(root: Path, rel: str | PurePosixPath | None = None, *,
             create_mode: int | None = None, owner: Owner = None) -> Iterator[int]:
    """A descriptor of root/rel reached without following links below `root`.

    With `create_mode`, missing directories are made with that mode and `owner`.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        shown = Path(root)
        for part in _parts(rel) if rel else []:
            shown = shown / part
            created = False
            if create_mode is not None:
                try:
                    os.mkdir(part, create_mode, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
            child = _open_child_dir(fd, part, str(shown))
            os.close(fd)
            fd = child
            if create_mode is not None and created:
                os.fchmod(fd, create_mode)  # the umask does not decide
                _own(fd, owner)
        yield fd
    finally:
        os.close(fd)


def kind(root: Path, rel: str | PurePosixPath) -> str | None:
    """'dir', 'file', 'link' or 'other' for root/rel (not followed); None when missing.

    A link or non-directory above the name raises UnsafePath.
    """
    parts = _parts(rel)
    try:
        with open_dir(root, PurePosixPath(*parts[:-1]) if parts[:-1] else None) as fd:
            mode = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def read_file(root: Path, rel: str | PurePosixPath, limit: int = MAX_READ) -> bytes | None:
    """The content of the regular file root/rel, or None when it does not exist."""
    parts = _parts(rel)
    shown = Path(root, *parts)
    try:
        with open_dir(root, PurePosixPath(*parts[:-1]) if parts[:-1] else None) as dfd:
            # O_PATH opens nothing yet: a device is never opened, a link is seen as one.
            pfd = os.open(parts[-1], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            raise UnsafePath(errno.EINVAL, f"{shown} is not a regular file")
        # Reopening through /proc opens the very inode checked above, not the name.
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(pfd)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafePath(errno.EFBIG, f"{shown} is larger than {limit} bytes")
    return data


def write_file(root: Path, rel: str | PurePosixPath, data: bytes, *, mode: int,
               owner: Owner = None, dir_mode: int | None = None) -> None:
    """Replace root/rel with a regular file holding `data` (mode and owner set first).

    A link at the name is replaced, not followed. With `dir_mode`, missing parent
    directories are created (mode `dir_mode`, same owner).
    """
    parts = _parts(rel)
    parent = PurePosixPath(*parts[:-1]) if parts[:-1] else None
    name = parts[-1]
    with open_dir(root, parent, create_mode=dir_mode, owner=owner) as dfd:
        tmp = f".{name}.{os.urandom(8).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                os.fchmod(fh.fileno(), mode)
                _own(fh.fileno(), owner)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def make_dir(root: Path, rel: str | PurePosixPath, *, mode: int, owner: Owner = None) -> None:
    """Make root/rel a real directory owned by `owner` (missing parents are created).

    A link at the last name is removed and replaced by a directory; links above it are
    refused. An existing directory keeps its mode and gets `owner`.
    """
    parts = _parts(rel)
    parent = PurePosixPath(*parts[:-1]) if parts[:-1] else None
    name = parts[-1]
    with open_dir(root, parent, create_mode=mode, owner=owner) as dfd:
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=dfd)
        created = False
        try:
            os.mkdir(name, mode, dir_fd=dfd)
            created = True
        except FileExistsError:
            pass
        fd = _open_child_dir(dfd, name, str(Path(root, *parts)))
        try:
            if created:
                os.fchmod(fd, mode)
            _own(fd, owner)
        finally:
            os.close(fd)


def remove(root: Path, rel: str | PurePosixPath) -> None:
    """Delete root/rel whatever it is (a directory with its content); never follows a
    link. Nothing happens when it does not exist."""
    parts = _parts(rel)
    with open_dir(root, PurePosixPath(*parts[:-1]) if parts[:-1] else None) as dfd:
        try:
            mode = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(parts[-1], dir_fd=dfd)  # descriptor-based, does not follow links
        else:
            os.unlink(parts[-1], dir_fd=dfd)


def _stays_inside(tree: str, link: str, final: str) -> bool:
    """Whether `link` (in `tree`, which will be renamed to `final`) resolves inside it.

    Resolution follows the tree's own links; an absolute target counts only below
    `final`, and `..` is applied after the links before it, as the kernel does.
    """
    target = os.readlink(link)
    if os.path.isabs(target):
        if target != final and not target.startswith(final.rstrip("/") + "/"):
            return False
        resolved = os.path.realpath(tree + target[len(final.rstrip("/")):])
    else:
        resolved = os.path.realpath(link)
    return resolved == tree or resolved.startswith(tree + "/")


def neutralise_tree(tree: Path, final: Path) -> list[str]:
    """Delete what a restored tree must not hold, before it is moved to `final`:

    - links that resolve outside the tree (absolute ones outside `final` included): the
      agent and other root processes would be sent out of /workspaces through them;
    - device nodes;
    - names of a file that also has names outside the tree (a hard link out).

    Returns their paths relative to `tree`. Directory times are kept. `tree` must not be
    reachable by anyone else meanwhile (a fresh staging directory).
    """
    real = os.path.realpath(tree)
    doomed: list[str] = []
    names: dict[tuple[int, int], list[str]] = {}
    links: dict[tuple[int, int], int] = {}
    for dirpath, dirnames, filenames in os.walk(real):  # does not enter linked dirs
        for name in (*dirnames, *filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if not _stays_inside(real, path, str(final)):
                    doomed.append(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                doomed.append(path)
            elif not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                names.setdefault(key, []).append(path)
                links[key] = st.st_nlink
    doomed += [p for key, paths in names.items() if links[key] > len(paths) for p in paths]
    for path in doomed:
        parent = os.path.dirname(path)
        times = os.lstat(parent)
        os.unlink(path)
        os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns), follow_symlinks=False)
    return sorted(os.path.relpath(p, real) for p in doomed)
