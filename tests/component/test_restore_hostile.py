"""Restore of backups holding links out of the tree, through the real restore path
(moto on loopback, real tar and zstd): nothing outside the tree is written, and no link
out of it survives.

The container plants links in /workspaces and they are backed up; a crafted archive
(here: a tar produced by hand in place of `tar --create`) tries the classic tricks.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from agentspaces.clouds.r2 import S3ObjectStore
from agentspaces.persistence import keys
from agentspaces_vm import backup as agent
from tests.component import test_backup_s3 as s3
from tests.component.test_backup_s3 import T0, restore, run_backup, snapshot, workspace

# The S3 server, bucket and data key of the backup tests.
moto_endpoint, store, data_key = s3.moto_endpoint, s3.store, s3.data_key

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restores as root, like the agent")


def links_out(root: Path) -> list[str]:
    real = os.path.realpath(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            resolved = os.path.realpath(path)
            if path.is_symlink() and resolved != real and not resolved.startswith(real + "/"):
                out.append(str(path.relative_to(root)))
    return out


def test_links_planted_by_the_container_do_not_come_back_pointing_out(
        store: S3ObjectStore, data_key: keys.DataKey, tmp_path: Path, victim: Path) -> None:
    source = tmp_path / "source"
    target = tmp_path / "vm" / "workspaces"
    (source / ".claude").mkdir(parents=True)
    (source / "demo" / ".git").mkdir(parents=True)
    (source / "demo" / "file").write_text("kept\n")
    planted = {".claude/settings.json": str(victim),
               "demo/.mcp.json": "../../etc/sudoers.d/90-admins",
               "demo/.git/info": str(victim.parent),
               "demo/venv-python": "/usr/bin/python3",
               "demo/up": "../..",
               "demo/abs-escape": f"{target}/../../etc/sudoers.d"}
    inside = {"demo/rel": "file", "demo/abs-in": f"{target}/demo/file", "demo/top": ".."}
    for rel, link in {**planted, **inside}.items():
        os.symlink(link, source / rel)
    os.mknod(source / "demo" / "disk", stat.S_IFBLK | 0o666, os.makedev(7, 0))
    record, _, _ = run_backup(store, workspace(), data_key, source, T0)

    restore(store, record, data_key, target)
    assert links_out(target) == []
    for rel in (*planted, "demo/disk"):
        assert not os.path.lexists(target / rel), rel
    for rel, link in inside.items():
        assert os.readlink(target / rel) == link
    assert (target / "demo" / "abs-in").read_text() == "kept\n"


def add(tf: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
        link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def crafted(case: str, victim: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "./", tarfile.DIRTYPE)
        if case == "write-through-absolute-link":
            add(tf, "./etc", tarfile.SYMTYPE, link=str(victim.parent))
            add(tf, "./etc/90-admins", data=b"attacker ALL=(ALL) NOPASSWD: ALL\n")
        elif case == "write-through-relative-link":
            add(tf, "./etc", tarfile.SYMTYPE, link="../../../etc/sudoers.d")
            add(tf, "./etc/90-admins", data=b"attacker ALL=(ALL) NOPASSWD: ALL\n")
        elif case == "dot-dot-name":
            add(tf, "../../../etc/sudoers.d/evil", data=b"attacker ALL=(ALL) ALL\n")
        elif case == "hard-link-out":
            add(tf, "./admins", tarfile.LNKTYPE, link=str(victim))
        elif case == "hard-link-through-link":
            add(tf, "./etc", tarfile.SYMTYPE, link=str(victim.parent))
            add(tf, "./admins", tarfile.LNKTYPE, link="etc/90-admins")
        elif case == "absolute-name":  # tar strips the `/`: it lands inside the tree
            add(tf, str(victim.parent / "evil"), data=b"attacker ALL=(ALL) ALL\n")
    return out.getvalue()


@pytest.mark.parametrize("case", ["write-through-absolute-link", "write-through-relative-link",
                                  "dot-dot-name", "hard-link-out", "hard-link-through-link",
                                  "absolute-name"])
def test_a_crafted_archive_writes_nothing_outside(store: S3ObjectStore, data_key: keys.DataKey,
                                                  tmp_path: Path, victim: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  case: str) -> None:
    archive = tmp_path / "crafted.tar"
    archive.write_bytes(crafted(case, victim))
    monkeypatch.setattr(agent, "tar_create_args", lambda _root, _exclude: ["cat", str(archive)])
    source = tmp_path / "source"
    source.mkdir()
    record, _, _ = run_backup(store, workspace(), data_key, source, T0)
    archive.unlink()
    target = tmp_path / "vm" / "workspaces"
    (target / "demo").mkdir(parents=True)
    (target / "demo" / "work.txt").write_text("before the restore\n")
    before = snapshot(target)

    if case == "absolute-name":
        restore(store, record, data_key, target)
        landed = target / str(victim.parent / "evil").lstrip("/")
        assert landed.read_text() == "attacker ALL=(ALL) ALL\n"
        assert links_out(target) == []
        return
    with pytest.raises(agent.BackupError) as failed:
        restore(store, record, data_key, target)
    assert failed.value.reason == "ExtractFailed"
    assert snapshot(target) == before  # a refused restore changes nothing
