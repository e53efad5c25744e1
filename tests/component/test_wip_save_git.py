"""The pre-stop save end to end on the VM side: the real agent process (as root, not
simulated), real git as the container's user, a real repository with a hostile
`.git` (hooks, an fsmonitor, a clean filter and a credential helper that would each
leave a marker), and real remotes: a bare repository over file://, smart HTTPS
(`git http-backend`, tests/support/git_server.py) that wants the token, and a remote
that never answers.

The operator's own client (`AgentClient.start_save`/`save_status`) drives it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentspaces.agent_client import AgentClient
from agentspaces_vm.contracts import (
    JobState,
    SaveJob,
    SaveMode,
    SaveOutcome,
    SaveRequest,
    SaveResult,
)
from agentspaces_vm.password_hash import hash_password
from agentspaces_vm.wip_save import SHADOW_PREFIX
from tests.component.agent_harness import AgentProcess, make_agent, pick_loopback
from tests.support.git_remotes import HangingServer, open_dir
from tests.support.git_server import GitRequest, GitServer
from tests.support.tls_servers import make_pki
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="runs git as another user")]
UID = GID = 4242  # the container user: a uid nobody else on this machine has
TOKEN = "ghp_component-test-repository-token-0123456789"
BRANCH = re.compile(r"agentspaces/wip/demo-\d{8}T\d{6}Z")
HOSTILE = ("pre-commit", "post-commit", "reference-transaction", "pre-push",
           "post-index-change", "post-checkout")


def git(*args: str, cwd: Path) -> str:
    """git as root for setting up and checking; none of the repository's programs run
    (the checks use plumbing that runs no filter, hook or fsmonitor)."""
    return subprocess.run(
        ["git", "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null",
         "-c", "core.fsmonitor=false", "-c", "filter.evil.clean=cat",
         "-c", "filter.evil.smudge=cat", "-c", "credential.helper=", *args],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
             "GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.test",
             "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.test"}).stdout


def chown_all(path: Path) -> None:
    subprocess.run(["chown", "-R", f"{UID}:{GID}", str(path)], check=True)


@dataclass
class World:
    base: Path
    repo: Path
    remote: Path
    markers: Path

    def snapshot(self) -> dict[str, str]:
        """What the user has: HEAD, branch, refs, index bytes, working files."""
        files = {str(p.relative_to(self.repo)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(self.repo.rglob("*"))
                 if p.is_file() and ".git" not in p.relative_to(self.repo).parts}
        return {"head": git("rev-parse", "HEAD", cwd=self.repo),
                "branch": git("symbolic-ref", "HEAD", cwd=self.repo),
                "index": hashlib.sha256((self.repo / ".git" / "index").read_bytes()
                                        ).hexdigest(),
                "files": repr(files)}

    def refs(self, where: Path) -> list[str]:
        return git("for-each-ref", "--format=%(refname)", cwd=where).split()

    def show(self, rev: str, path: str) -> str:
        return git("cat-file", "-p", f"{rev}:{path}", cwd=self.repo)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_dir() as base:
        workspaces, remotes, markers = base / "workspaces", base / "remotes", base / "markers"
        for d in (workspaces, remotes, markers):
            d.mkdir(mode=0o755)
        os.chown(markers, UID, GID)
        src = base / "src"
        src.mkdir()
        git("init", "-q", "-b", "main", cwd=src)
        (src / "README.md").write_text("hello\n")
        (src / "app.py").write_text("print('v1')\n")
        (src / ".gitignore").write_text("*.log\n")
        (src / ".gitattributes").write_text("*.py filter=evil\n*.txt filter=evil\n")
        git("add", ".", cwd=src)
        git("commit", "-q", "-m", "first", cwd=src)
        git("clone", "-q", "--bare", str(src), str(remotes / "demo.git"), cwd=base)
        # Served over HTTPS by http-backend as root, so root's.
        git("clone", "-q", "--bare", str(src), str(base / "served" / "demo.git"), cwd=base)
        git("clone", "-q", str(remotes / "demo.git"), str(workspaces / "demo"), cwd=base)
        repo = workspaces / "demo"
        # A hostile .git: every program it names would leave a marker.
        script = base / "mark.sh"
        # Records who ran it (the process chain), then passes data through.
        script.write_text("#!/bin/sh\np=$PPID\nfor i in 1 2 3; do tr '\\\\0' ' ' "
                          "< /proc/$p/cmdline; echo; p=$(awk '/PPid/{print $2}' "
                          f"/proc/$p/status); done > {markers}/\"$(basename \"$0\")-$1\"\n"
                          "cat\n")
        script.chmod(0o755)
        for hook in HOSTILE:
            (repo / ".git" / "hooks" / hook).write_text(
                f"#!/bin/sh\ntouch {markers}/hook-{hook}\n")
            (repo / ".git" / "hooks" / hook).chmod(0o755)
        with (repo / ".git" / "config").open("a") as config:
            config.write(f"[core]\n\tfsmonitor = {script} fsmonitor\n"
                         f"\taskPass = {script}\n\tsshCommand = {script} ssh\n"
                         f"[filter \"evil\"]\n\tclean = {script} clean\n"
                         f"\tsmudge = {script} smudge\n"
                         f"[credential]\n\thelper = !{script} credential\n")
        chown_all(remotes)
        yield World(base=base, repo=repo, remote=remotes / "demo.git", markers=markers)


def dirty(world: World) -> None:
    """Uncommitted work of every kind: modified, staged, untracked and ignored files."""
    repo = world.repo
    (repo / "README.md").write_text("hello, staged\n")
    git("add", "README.md", cwd=repo)
    (repo / "app.py").write_text("print('v2, not committed')\n")
    (repo / "notes.txt").write_text("an untracked note\n")
    (repo / "debug.log").write_text("ignored\n")


def start_agent(world: World, tmp_path: Path, url: str) -> AgentProcess:
    chown_all(world.repo)
    agent = make_agent(tmp_path, simulate=False)
    agent.config["paths"]["workspaces"] = str(world.base / "workspaces")
    agent.config["repository"] = {"url": url}
    agent.config["containerUser"] = {"uid": UID, "gid": GID}
    return agent.start()


async def run_save(agent: AgentProcess, mode: SaveMode, seconds: int = 30,
                   token: str | None = TOKEN) -> tuple[SaveResult, float, SaveJob]:
    async with AgentClient(agent.base_url, agent.creds.token, agent.creds.cert_pem) as client:
        await client.put_secrets(version="v1", basic_auth_username="dev",
                                 basic_auth_scrypt_hash=hash_password("pw", log_n=10),
                                 repository_token=token)
        started = time.monotonic()
        save_id = await client.start_save(SaveRequest("prestop-1", mode, seconds, "inactivity"))
        assert save_id == "prestop-1"
        while (job := await client.save_status()).state is JobState.RUNNING:
            assert time.monotonic() - started < seconds + 20, "the save never ended"
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
    assert job.save_id == "prestop-1" and job.result is not None
    return job.result, elapsed, job


def no_leftovers(world: World, agent: AgentProcess) -> None:
    ran = {p.name: p.read_text(errors="replace") for p in world.markers.iterdir()}
    assert ran == {}, "the repository ran a program"
    digest = hashlib.sha256(str(agent.state).encode()).hexdigest()[:10]
    assert not [p for p in Path("/tmp").iterdir()
                if p.name.startswith(f"{SHADOW_PREFIX}{digest}-")]
    assert TOKEN not in agent.logs()


async def test_uncommitted_work_becomes_a_wip_commit_and_nothing_of_the_users_moves(
        world: World, tmp_path: Path) -> None:
    dirty(world)
    before = world.snapshot()
    agent = start_agent(world, tmp_path, f"file://{world.remote}")
    try:
        result, elapsed, _ = await run_save(agent, SaveMode.COMMIT)
    finally:
        agent.stop()
    assert result.outcome is SaveOutcome.SAVED, result.message
    assert result.branch and BRANCH.fullmatch(result.branch) and not result.pushed
    print(f"\ncommit-only save: {elapsed:.2f}s")
    commit = git("rev-parse", result.branch, cwd=world.repo).strip()
    assert commit == result.commit
    assert git("rev-parse", f"{commit}^", cwd=world.repo) == before["head"]
    assert world.show(commit, "app.py") == "print('v2, not committed')\n"
    assert world.show(commit, "README.md") == "hello, staged\n"
    assert world.show(commit, "notes.txt") == "an untracked note\n"
    assert "debug.log" not in git("ls-tree", "--name-only", commit, cwd=world.repo)
    assert git("log", "-1", "--format=%an <%ae>", commit, cwd=world.repo).strip() == \
        "agentspaces <agentspaces@demo-default-1a2b3c.example.test>"
    # The user's HEAD, branch, index and files are exactly as they were.
    assert world.snapshot() == before
    # git ran as the container's user: the new objects are that user's.
    loose = world.repo / ".git" / "objects" / commit[:2] / commit[2:]
    assert loose.stat().st_uid == UID
    assert f"refs/heads/{result.branch}" not in world.refs(world.remote)
    no_leftovers(world, agent)


async def test_commit_and_push_to_a_file_remote(world: World, tmp_path: Path) -> None:
    dirty(world)
    agent = start_agent(world, tmp_path, f"file://{world.remote}")
    try:
        result, _, _ = await run_save(agent, SaveMode.COMMIT_AND_PUSH, token=None)
    finally:
        agent.stop()
    assert result.outcome is SaveOutcome.SAVED and result.pushed, result.message
    assert git("rev-parse", f"refs/heads/{result.branch}", cwd=world.remote).strip() == \
        result.commit
    no_leftovers(world, agent)


async def test_a_clean_tree_saves_nothing(world: World, tmp_path: Path) -> None:
    refs = world.refs(world.repo)
    agent = start_agent(world, tmp_path, f"file://{world.remote}")
    try:
        result, _, _ = await run_save(agent, SaveMode.COMMIT_AND_PUSH)
    finally:
        agent.stop()
    assert result.outcome is SaveOutcome.NOTHING_TO_SAVE and result.branch is None
    assert world.refs(world.repo) == refs
    no_leftovers(world, agent)


async def test_the_push_over_https_uses_the_token_through_askpass_only(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dirty(world)
    served = world.base / "served"
    pki = make_pki(world.base / "pki")  # the agent passes git its CA variables
    monkeypatch.setenv("GIT_SSL_CAINFO", str(pki.ca_file))
    with GitServer(served, pki, credentials=("x-access-token", TOKEN)) as server:
        agent = start_agent(world, tmp_path, server.repository_url("demo", guest=False))
        try:
            result, elapsed, job = await run_save(agent, SaveMode.COMMIT_AND_PUSH)
        finally:
            agent.stop()
        assert result.outcome is SaveOutcome.SAVED and result.pushed, result.message
        print(f"\ncommit-and-push over HTTPS: {elapsed:.2f}s")
        # git asked without credentials, got 401, then answered with the token.
        assert server.requests[0].user is None
        assert GitRequest("POST", "/demo.git/git-receive-pack", "x-access-token") in \
            server.requests
    assert git("rev-parse", f"refs/heads/{result.branch}", cwd=served / "demo.git").strip() \
        == result.commit
    assert TOKEN not in str(job.to_json())
    # The repository's credential helper (which would have been handed the token) and
    # askPass never ran.
    no_leftovers(world, agent)


async def test_a_hanging_push_is_cut_off_at_the_deadline_and_the_commit_kept(
        world: World, tmp_path: Path) -> None:
    dirty(world)
    with HangingServer(pick_loopback()) as remote:
        agent = start_agent(world, tmp_path, remote.url("demo.git"))
        try:
            result, elapsed, _ = await run_save(agent, SaveMode.COMMIT_AND_PUSH, seconds=3)
        finally:
            agent.stop()
        print(f"\nhanging push with a 3 s timeout: the save ended after {elapsed:.2f}s")
        assert 3 <= elapsed < 6
        assert result.outcome is SaveOutcome.SAVED and not result.pushed
        assert "did not finish" in (result.push_error or "")
        assert remote.accepted >= 1
        # git and its https helper were killed: their connection is gone.
        wait_for(lambda: remote.closed == remote.accepted, 5, "git's connections closed")
    assert git("rev-parse", result.branch or "", cwd=world.repo).strip() == result.commit
    no_leftovers(world, agent)
