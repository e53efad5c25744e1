"""The container plants links where the agent (root) writes: nothing outside moves.

Everything under /workspaces is the container's (it is usually root in there) and is
kept by backup/restore. Each test plants links aimed at a root-owned file outside the
tree, runs the agent's real code as root and checks the file's content, mode and owner.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentspaces_vm.agent import Agent
from agentspaces_vm.bootstrap import READY, Bootstrap, CommandResult, chown_tree, run_command
from agentspaces_vm.config import parse_config
from agentspaces_vm.devcontainer import choose_config
from agentspaces_vm.secrets import API_KEY_NAME, SecretStore, _write_private
from agentspaces_vm.templates import load_template

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root agent")
UID = GID = 1000  # the container's user (agent.json's default)


def make_agent(tmp_path: Path) -> Agent:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "settings.json").write_text(json.dumps({"env": {"DISABLE_AUTOUPDATER": "1"}}))
    (seeds / "CLAUDE.md").write_text("# Workspace demo\n")
    (seeds / "mcp.json").write_text(json.dumps({"mcpServers": {"docs": {"type": "http",
                                                                        "url": "https://d"}}}))
    config = parse_config({
        "version": 1, "workspace": {"name": "demo", "namespace": "default"},
        "host": "demo.example.com",
        "listen": {"api": "127.0.0.1:9443", "local": "127.0.0.1:9180"},
        "tls": {"cert": "/c", "key": "/k"}, "tokenSha256": "0" * 64,
        "caddy": {"admin": "127.0.0.1:2019", "tlsMode": "acme"},
        "paths": {"workspaces": str(tmp_path / "workspaces"), "state": str(tmp_path / "state")},
        "repository": {"url": "https://git.example.com/org/demo.git"},
        "claudeSeedDir": str(seeds),
        "simulate": False,
    })
    (tmp_path / "workspaces" / "demo" / ".git" / "info").mkdir(parents=True)
    chown_tree(tmp_path / "workspaces" / "demo", UID, GID)
    return Agent(config, caddy_template=load_template("caddy.json"),
                 activity_factory=lambda _agent: types.SimpleNamespace(),  # type: ignore
                 runner=lambda *_args: CommandResult(1, "", "not tracked"))


def assert_written_for_the_container(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert (st.st_uid, st.st_gid) == (UID, GID)


# Where the agent writes, and the predictable temp names it used to write through.
FILE_NAMES = [".claude/settings.json", ".claude/CLAUDE.md", "demo/.mcp.json",
              "demo/.git/info/exclude", ".claude/.settings.json.agentspaces-tmp",
              ".claude/.CLAUDE.md.agentspaces-tmp", "demo/..mcp.json.agentspaces-tmp"]


@pytest.mark.parametrize("planted", FILE_NAMES)
def test_a_link_at_a_written_name_is_replaced_not_followed(tmp_path: Path, victim: Path,
                                                           planted: str) -> None:
    agent = make_agent(tmp_path)
    ws = tmp_path / "workspaces"
    (ws / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(victim, ws / planted)
    try:
        agent.configure_claude(ws / "demo")
    finally:
        agent.stop()
    for name in FILE_NAMES[:4]:
        assert_written_for_the_container(ws / name)
    settings = json.loads((ws / ".claude" / "settings.json").read_text())
    assert settings["env"]["DISABLE_AUTOUPDATER"] == "1" and settings["hooks"]
    assert (ws / "demo" / ".git" / "info" / "exclude").read_text() == "/.mcp.json\n"


@pytest.mark.parametrize("planted", [".claude", "demo", "demo/.git", "demo/.git/info"])
def test_a_linked_directory_is_never_entered(tmp_path: Path, victim: Path, planted: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    agent = make_agent(tmp_path)
    ws = tmp_path / "workspaces"
    if (ws / planted).exists():
        shutil.rmtree(ws / planted)
    os.symlink(victim.parent, ws / planted)
    caplog.set_level(logging.WARNING)
    try:
        agent.configure_claude(ws / "demo")
    finally:
        agent.stop()
    if planted == ".claude":  # the config dir is the agent's: the link makes way for it
        assert not (ws / ".claude").is_symlink()
        assert_written_for_the_container(ws / ".claude" / "settings.json")
    elif planted == "demo/.git/info":
        assert "not installing .mcp.json" in caplog.text
        assert "symbolic link or not a directory" in caplog.text
    else:
        assert f"{ws / planted} is a symbolic link" in caplog.text


def test_links_swapped_in_while_the_agent_writes_are_never_followed(tmp_path: Path,
                                                                    victim: Path) -> None:
    """The container races the agent: the names flip between links and files."""
    agent = make_agent(tmp_path)
    ws = tmp_path / "workspaces"
    stop = threading.Event()

    def swap() -> None:
        names = [ws / ".claude" / "settings.json", ws / "demo" / ".mcp.json"]
        for i in range(100_000):
            if stop.is_set():
                return
            spare = names[i % 2].with_name(f"planted-{i}")
            os.symlink(victim, spare)
            os.replace(spare, names[i % 2])

    (ws / ".claude").mkdir()
    thread = threading.Thread(target=swap)
    thread.start()
    try:
        for _ in range(30):
            agent.configure_claude(ws / "demo")
    finally:
        stop.set()
        thread.join(timeout=30)
        agent.stop()
    assert not thread.is_alive()


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory the container's uid can enter (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp())
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_the_repository_config_runs_nothing_when_the_agent_asks_git(tmp_path: Path,
                                                                    shared_tmp: Path) -> None:
    repo = shared_tmp / "demo"
    marker = shared_tmp / "ran"
    hook = shared_tmp / "fsmonitor"
    hook.write_text(f"#!/bin/sh\nid -u > {marker}\nexit 1\n")
    os.chmod(hook, 0o755)
    git = ["git", "-c", "user.name=n", "-c", "user.email=e@example.com", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".mcp.json").write_text("{}\n")
    subprocess.run([*git, "add", ".mcp.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    subprocess.run([*git, "config", "core.fsmonitor", str(hook)], check=True)
    chown_tree(shared_tmp, UID, GID)
    # The attack works: git asked in this repository runs the hook.
    subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", "--",
                    "git", "-C", str(repo), "ls-files", "--", ".mcp.json"],
                   check=True, capture_output=True, env={"PATH": os.environ["PATH"],
                                                         "HOME": "/nonexistent"})
    assert marker.read_text().strip() == str(UID)
    marker.unlink()
    agent = make_agent(tmp_path)
    agent._runner = run_command  # the real git
    try:
        assert agent._git_tracks(repo, ".mcp.json")
        assert not agent._git_tracks(repo, "untracked.json")
    finally:
        agent.stop()
    assert not marker.exists()


class CloneRunner:
    """Stands in for git: the clone writes a small tree into the scratch path."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 timeout: float) -> CommandResult:
        if "clone" in argv:
            scratch = Path(argv[-1])
            (scratch / ".git").mkdir(parents=True)
            (scratch / "README.md").write_text("hello\n")
        return CommandResult(0, '{"outcome":"success","containerId":"c1"}', "")


@pytest.mark.parametrize("planted", ["demo", ".agentspaces-clone-demo"])
def test_a_restored_link_at_the_clone_paths_is_not_followed(tmp_path: Path, victim: Path,
                                                            planted: str) -> None:
    agent = make_agent(tmp_path)
    agent.stop()
    ws = tmp_path / "workspaces"
    shutil.rmtree(ws / "demo")
    os.symlink(victim.parent, ws / planted)
    (tmp_path / "state" / "bootstrap").write_text("done\n")
    boot = Bootstrap(agent.config, SecretStore(agent.config.paths.secrets),
                     configure_claude=agent.configure_claude, runner=CloneRunner(),
                     poll_interval=0.01, vm_ready_timeout=5)
    boot.request_start(None)
    assert boot.wait(20)
    assert boot.snapshot().stage == READY, boot.snapshot().message
    repo = ws / "demo"
    assert repo.is_dir() and not repo.is_symlink()
    assert (repo / "README.md").read_text() == "hello\n"
    assert os.lstat(repo / "README.md").st_uid == UID
    assert not (ws / ".agentspaces-clone-demo").exists()


def test_chown_tree_changes_links_not_their_targets(tmp_path: Path, victim: Path) -> None:
    tree = tmp_path / "clone"
    (tree / "sub").mkdir(parents=True)
    os.symlink(victim, tree / "sub" / "file-link")
    os.symlink(victim.parent, tree / "dir-link")
    chown_tree(tree, UID, GID)
    assert os.lstat(tree / "sub" / "file-link").st_uid == UID
    assert os.lstat(tree / "dir-link").st_uid == UID
    assert os.stat(tree).st_uid == UID
    chown_tree(tree / "dir-link", UID, GID)  # a linked root is not entered either


def test_the_api_key_is_not_written_through_a_planted_name(tmp_path: Path,
                                                           victim: Path) -> None:
    """secrets/claude is the container user's (mounted read-only in the container):
    a host process with that uid must not get root to write the key elsewhere."""
    claude = tmp_path / "state" / "secrets" / "claude"
    claude.mkdir(parents=True)
    os.chown(claude, UID, GID)
    for name in (f".{API_KEY_NAME}.tmp", API_KEY_NAME):
        os.symlink(victim, claude / name)
    _write_private(claude / API_KEY_NAME, "sk-test\n", owner=(UID, GID))
    assert_written_for_the_container(claude / API_KEY_NAME)
    assert (claude / API_KEY_NAME).read_text() == "sk-test\n"


@pytest.mark.parametrize("planted", [".devcontainer/devcontainer.json", ".devcontainer.json",
                                     ".devcontainer"])
def test_a_devcontainer_config_leading_out_of_the_repository_is_not_read(
        tmp_path: Path, planted: str) -> None:
    """Root reads the repository's devcontainer.json: a link must not make it read (and
    hand the CLI) a root-only file such as the agent's own state."""
    private = tmp_path / "state" / "private"
    private.mkdir(parents=True)
    (private / "devcontainer.json").write_text('{"image": "x", "containerEnv": '
                                               '{"LEAKED": "root-only"}}')
    repo = tmp_path / "workspaces" / "demo"
    repo.mkdir(parents=True)
    target = private if planted == ".devcontainer" else private / "devcontainer.json"
    (repo / planted).parent.mkdir(exist_ok=True)
    os.symlink(target, repo / planted)
    kwargs: dict[str, Any] = dict(image=None, default_text=None, work_dir=tmp_path / "dc",
                                  secrets_dir=tmp_path / "s", claude_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="leads outside the repository"):
        choose_config(repo=repo, devcontainer_path=None, **kwargs)
    with pytest.raises(ValueError, match="leads outside the repository"):
        choose_config(repo=repo, devcontainer_path="../../state/private", **kwargs)
    # A link that stays inside the repository still works.
    os.unlink(repo / planted)
    (repo / "tools").mkdir()
    (repo / "tools" / "devcontainer.json").write_text('{"image": "mine"}')
    os.symlink("tools/devcontainer.json", repo / ".devcontainer.json")
    choice = choose_config(repo=repo, devcontainer_path=None, **kwargs)
    assert choice.document["image"] == "mine"
