"""safefs against real links, FIFOs and device nodes (run as root: owners are real)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agentspaces_vm import safefs

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and mknod need root")


def fingerprint(path: Path) -> tuple[bytes, int, int, int]:
    st = os.lstat(path)
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A root-only file outside the tree, the kind a planted link aims at."""
    outside = tmp_path / "etc"
    outside.mkdir()
    target = outside / "sudoers"
    target.write_text("root ALL=(ALL) ALL\n")
    os.chmod(target, 0o440)
    return target


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "workspaces"
    (root / "box").mkdir(parents=True)
    return root


@needs_root
def test_write_replaces_a_link_at_the_name_and_sets_mode_and_owner(tree: Path,
                                                                   victim: Path) -> None:
    before = fingerprint(victim)
    os.symlink(victim, tree / "box" / "settings.json")
    safefs.write_file(tree, "box/settings.json", b"{}\n", mode=0o600, owner=(1234, 5678))
    assert fingerprint(victim) == before
    written = tree / "box" / "settings.json"
    assert not written.is_symlink()
    assert fingerprint(written) == (b"{}\n", 0o600, 1234, 5678)
    assert sorted(os.listdir(tree / "box")) == ["settings.json"]  # no temp file left


def test_write_refuses_a_linked_directory_on_the_way(tree: Path, victim: Path) -> None:
    before = sorted(os.listdir(victim.parent))
    os.symlink(victim.parent, tree / "box" / "info")
    with pytest.raises(safefs.UnsafePath, match="symbolic link or not a directory"):
        safefs.write_file(tree, "box/info/exclude", b"x\n", mode=0o644, dir_mode=0o755)
    os.unlink(tree / "box" / "info")
    (tree / "box" / "info").write_text("a file, not a directory")
    with pytest.raises(safefs.UnsafePath):
        safefs.write_file(tree, "box/info/exclude", b"x\n", mode=0o644)
    assert sorted(os.listdir(victim.parent)) == before


def test_write_creates_missing_directories_with_their_mode(tree: Path) -> None:
    safefs.write_file(tree, "box/.git/info/exclude", b"/.mcp.json\n", mode=0o644,
                      dir_mode=0o750)
    assert stat.S_IMODE(os.stat(tree / "box" / ".git" / "info").st_mode) == 0o750
    assert (tree / "box" / ".git" / "info" / "exclude").read_bytes() == b"/.mcp.json\n"


def test_write_does_not_use_a_planted_temp_name(tree: Path, victim: Path) -> None:
    before = fingerprint(victim)
    for name in (".settings.json.agentspaces-tmp", ".settings.json.tmp"):
        os.symlink(victim, tree / "box" / name)
    safefs.write_file(tree, "box/settings.json", b"new\n", mode=0o600)
    assert fingerprint(victim) == before
    assert (tree / "box" / "settings.json").read_bytes() == b"new\n"


@needs_root
def test_read_opens_only_regular_files(tree: Path, victim: Path) -> None:
    box = tree / "box"
    os.symlink(victim, box / "link")
    os.mkfifo(box / "fifo")  # opening it for reading would block forever
    os.mknod(box / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (box / "big").write_bytes(b"x" * 11)
    (box / "ok").write_bytes(b"fine")
    for name in ("link", "fifo", "null"):
        with pytest.raises(safefs.UnsafePath, match="not a regular file"):
            safefs.read_file(tree, f"box/{name}")
    with pytest.raises(safefs.UnsafePath, match="larger than"):
        safefs.read_file(tree, "box/big", limit=10)
    assert safefs.read_file(tree, "box/ok") == b"fine"
    assert safefs.read_file(tree, "box/missing") is None
    assert safefs.read_file(tree, "nothing/here") is None
    os.symlink(victim.parent, box / "dirlink")
    with pytest.raises(safefs.UnsafePath):
        safefs.read_file(tree, "box/dirlink/sudoers")


@needs_root
def test_make_dir_replaces_a_link_at_the_name_and_refuses_one_above(tree: Path,
                                                                     victim: Path) -> None:
    outside = victim.parent
    before = (sorted(os.listdir(outside)), os.stat(outside).st_uid)
    os.symlink(outside, tree / ".claude")
    safefs.make_dir(tree, ".claude", mode=0o755, owner=(1000, 1000))
    claude = tree / ".claude"
    assert claude.is_dir() and not claude.is_symlink()
    assert (os.stat(claude).st_uid, stat.S_IMODE(os.stat(claude).st_mode)) == (1000, 0o755)
    os.symlink(outside, tree / "box" / "up")
    with pytest.raises(safefs.UnsafePath):
        safefs.make_dir(tree, "box/up/new", mode=0o755, owner=(1000, 1000))
    assert (sorted(os.listdir(outside)), os.stat(outside).st_uid) == before


def test_kind_and_remove_never_follow(tree: Path, victim: Path) -> None:
    os.symlink(victim.parent, tree / "link")
    (tree / "box" / "inner").mkdir()
    os.symlink(victim, tree / "box" / "inner" / "out")
    assert safefs.kind(tree, "link") == "link"
    assert safefs.kind(tree, "box") == "dir"
    assert safefs.kind(tree, "box/inner/out") == "link"
    assert safefs.kind(tree, "absent") is None
    with pytest.raises(safefs.UnsafePath):
        safefs.kind(tree, "link/sudoers")
    safefs.remove(tree, "link")
    safefs.remove(tree, "box")
    safefs.remove(tree, "absent")
    assert os.listdir(tree) == [] and victim.exists()
    with pytest.raises(ValueError):
        safefs.write_file(tree, "../escape", b"", mode=0o644)


@needs_root
def test_neutralise_tree_drops_what_leads_out_and_keeps_the_rest(tmp_path: Path,
                                                                 victim: Path) -> None:
    final = tmp_path / "workspaces"  # where the tree will live
    tree = tmp_path / "staging"
    (tree / "repo" / "sub").mkdir(parents=True)
    (tree / "repo" / "file").write_text("data")
    os.link(tree / "repo" / "file", tree / "repo" / "same-file")  # both names inside
    os.link(victim, tree / "repo" / "hard-out")  # shares the victim's inode
    os.mknod(tree / "repo" / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    links = {
        "repo/abs-out": str(victim),
        "repo/rel-out": "../../etc/sudoers",
        "repo/up-top": "..",  # the tree's root itself: inside
        "repo/via-inner": "sub/../../repo/file",
        # Read as text it stays inside; but `..` applies after the link (hop is the
        # tree's root), so it leads out.
        "repo/chain-out": "sub/hop/../repo/file",
        "repo/sub/hop": "../..",
        "repo/abs-in": f"{final}/repo/file",
        "repo/abs-escape": f"{final}/../etc/sudoers",
        "repo/dangling": "not/there",
        "repo/venv-python": "/usr/bin/python3",
    }
    for rel, target in links.items():
        os.symlink(target, tree / rel)
    stamp = 1_600_000_000_000_000_000
    os.utime(tree / "repo", ns=(stamp, stamp))
    removed = safefs.neutralise_tree(tree, final)
    assert removed == sorted(["repo/abs-escape", "repo/abs-out", "repo/chain-out",
                              "repo/disk", "repo/hard-out", "repo/rel-out",
                              "repo/venv-python"])
    kept = {p.name for p in (tree / "repo").iterdir()}
    assert kept == {"sub", "file", "same-file", "up-top", "via-inner", "abs-in", "dangling"}
    assert (tree / "repo" / "sub" / "hop").is_symlink()
    assert os.stat(tree / "repo").st_mtime_ns == stamp
    assert victim.read_text() == "root ALL=(ALL) ALL\n" and os.stat(victim).st_nlink == 1
