"""The agent's pre-stop save as a plan of git commands, against a scripted git: what
runs, as whom, with which config and environment, what each answer leads to, and that
the token reaches git only through the askpass file. The real git runs in
tests/component/test_wip_save_git.py."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentspaces_vm.contracts import (
    ContractError,
    JobState,
    SaveJob,
    SaveMode,
    SaveOutcome,
    SaveRequest,
    SaveResult,
)
from agentspaces_vm.wip_save import (
    EMPTY_TREES,
    GitResult,
    SaveContext,
    WipSave,
    push_refusal,
    wip_branch,
)

NOW = datetime(2026, 12, 2, 10, 0, 5, tzinfo=UTC)
HEAD = "a" * 40
TREE = "b" * 40
HEAD_TREE = "c" * 40
COMMIT = "d" * 40
TOKEN = "ghp_token-that-must-stay-in-its-file"
BRANCH = "agentspaces/wip/demo-20261202T100005Z"


@dataclass
class Call:
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None
    timeout: float
    token_file: tuple[str, int] | None = None  # (content, mode) while git ran


@dataclass
class ScriptedGit:
    """Answers each git subcommand from `answers` (default: success, no output)."""

    answers: dict[str, GitResult] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 timeout: float) -> GitResult:
        call = Call(list(argv), dict(env), cwd, timeout)
        askpass = env.get("GIT_ASKPASS")
        if askpass:
            token = Path(askpass).with_name("token")
            call.token_file = (token.read_text(), stat.S_IMODE(token.stat().st_mode))
        self.calls.append(call)
        return self.answers.get(key(argv), GitResult(0, "", ""))

    def subcommands(self) -> list[str]:
        return [key(c.argv) for c in self.calls]

    def one(self, name: str) -> Call:
        [call] = [c for c in self.calls if key(c.argv) == name]
        return call


def git_args(argv: Sequence[str]) -> list[str]:
    """The arguments after `git` and its `-c` pairs (and any setpriv prefix)."""
    args = list(argv)
    if args[0] == "setpriv":
        args = args[args.index("--") + 1:]
    args = args[1:]
    while args and args[0] == "-c":
        args = args[2:]
    return args


def key(argv: Sequence[str]) -> str:
    """A name for the command: `rev-parse HEAD^{commit}`, `add`, `push`, ..."""
    args = git_args(argv)
    if args[0] == "rev-parse":
        return "rev-parse " + args[-1]
    return args[0]


def repository(tmp_path: Path) -> tuple[Path, dict[str, GitResult]]:
    repo = tmp_path / "workspaces" / "demo"
    repo.mkdir(parents=True)
    found = f"{repo.resolve()}\n{repo.resolve()}/.git\nsha1\n"
    return repo, {
        "rev-parse --show-object-format": GitResult(0, found, ""),
        "rev-parse HEAD": GitResult(0, HEAD + "\n", ""),
        "rev-parse HEAD^{commit}": GitResult(0, HEAD + "\n", ""),
        "symbolic-ref": GitResult(0, "main\n", ""),
        "write-tree": GitResult(0, TREE + "\n", ""),
        f"rev-parse {HEAD}^{{tree}}": GitResult(0, HEAD_TREE + "\n", ""),
        "commit-tree": GitResult(0, COMMIT + "\n", ""),
    }


def save(tmp_path: Path, answers: dict[str, GitResult], *, mode: SaveMode = SaveMode.COMMIT,
         url: str = "https://git.example.test/org/demo.git", token: str | None = TOKEN,
         user: tuple[int, int] | None = None, timeout: float = 60,
         monotonic: list[float] | None = None) -> tuple[SaveResult, ScriptedGit]:
    git = ScriptedGit(answers)
    ticks = iter(monotonic) if monotonic else None
    ctx = SaveContext(repo=tmp_path / "workspaces" / "demo", workspace="demo",
                      host="demo.example.test", url=url, user=user, token=token,
                      reason="inactivity")
    shadows = tmp_path / "tmp"
    shadows.mkdir(exist_ok=True)
    result = WipSave(ctx, mode, timeout, runner=git, clock=lambda: NOW,
                     monotonic=(lambda: next(ticks)) if ticks else (lambda: 0.0),
                     tmp_root=shadows).run()
    assert list(shadows.iterdir()) == []  # the shadow directory never outlives the save
    return result, git


def test_a_dirty_tree_becomes_a_commit_on_a_new_branch(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    result, git = save(tmp_path, answers)
    assert result == SaveResult(SaveOutcome.SAVED, f"committed {COMMIT[:12]} to {BRANCH}",
                                BRANCH, COMMIT)
    assert git.subcommands() == [
        "rev-parse --show-object-format", "rev-parse HEAD", "rev-parse HEAD^{commit}",
        "symbolic-ref", "read-tree", "add", "write-tree", f"rev-parse {HEAD}^{{tree}}",
        "commit-tree", "update-ref"]
    assert git_args(git.one("read-tree").argv) == ["read-tree", HEAD]
    assert git_args(git.one("add").argv) == ["add", "--all"]
    commit = git_args(git.one("commit-tree").argv)
    assert commit[:4] == ["commit-tree", TREE, "-p", HEAD]
    assert "on main" in commit[-1] and "(inactivity)" in commit[-1]
    # The branch must not exist yet (old value ""); the user's branch is not named.
    assert git_args(git.one("update-ref").argv)[-3:] == [f"refs/heads/{BRANCH}", COMMIT, ""]


def test_the_snapshot_is_taken_in_a_shadow_git_dir_over_the_repositorys_objects(
        tmp_path: Path) -> None:
    repo, answers = repository(tmp_path)
    _, git = save(tmp_path, answers)
    for name in ("read-tree", "add", "write-tree", "commit-tree"):
        env = git.one(name).env
        shadow = Path(env["GIT_DIR"]).parent
        assert shadow.parent == tmp_path / "tmp" and shadow.name.startswith("agentspaces-save")
        assert env["GIT_WORK_TREE"] == str(repo)
        assert env["GIT_OBJECT_DIRECTORY"] == f"{repo.resolve()}/.git/objects"
        assert env["GIT_INDEX_FILE"] == str(shadow / "git" / "index")
    # Only refs are written in the repository itself; no shadow there.
    for name in ("rev-parse HEAD", "symbolic-ref", "update-ref"):
        call = git.one(name)
        assert call.cwd == repo and "GIT_DIR" not in call.env


def test_every_git_is_hardened_and_gets_none_of_our_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTSPACES_SECRET", "from-the-agent")
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -i /root/key")
    monkeypatch.setenv("SSL_CERT_FILE", "/etc/ca.pem")
    repo, answers = repository(tmp_path)
    _, git = save(tmp_path, answers, mode=SaveMode.COMMIT_AND_PUSH)
    for call in git.calls:
        pairs = call.argv[1:call.argv.index(git_args(call.argv)[0])]
        for setting in ("core.hooksPath=/dev/null", "core.fsmonitor=false",
                        "credential.helper="):
            assert ["-c", setting] in [pairs[i:i + 2] for i in range(0, len(pairs), 2)]
        env = call.env
        assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == os.devnull
        assert env["GIT_CEILING_DIRECTORIES"] == str(repo.parent)
        assert env["GIT_TERMINAL_PROMPT"] == "0" and env["SSL_CERT_FILE"] == "/etc/ca.pem"
        assert "AGENTSPACES_SECRET" not in env and "GIT_SSH_COMMAND" not in env
        assert env["GIT_AUTHOR_NAME"] == env["GIT_COMMITTER_NAME"] == "agentspaces"
        assert TOKEN not in " ".join(call.argv) + " ".join(env.values())


def test_as_root_git_runs_as_the_container_user(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    _, git = save(tmp_path, answers, user=(1000, 1001))
    for call in git.calls:
        assert call.argv[:6] == ["setpriv", "--reuid=1000", "--regid=1001", "--clear-groups",
                                 "--no-new-privs", "--"]


def test_a_clean_tree_saves_nothing(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    answers["write-tree"] = GitResult(0, HEAD_TREE + "\n", "")
    result, git = save(tmp_path, answers, mode=SaveMode.COMMIT_AND_PUSH)
    assert result.outcome is SaveOutcome.NOTHING_TO_SAVE and result.branch is None
    assert "commit-tree" not in git.subcommands() and "push" not in git.subcommands()


@pytest.mark.parametrize("dirty", [True, False])
def test_an_unborn_branch_starts_from_an_empty_index(tmp_path: Path, dirty: bool) -> None:
    _, answers = repository(tmp_path)
    answers["rev-parse HEAD"] = GitResult(1, "", "")
    answers["write-tree"] = GitResult(0, (TREE if dirty else EMPTY_TREES["sha1"]) + "\n", "")
    result, git = save(tmp_path, answers)
    assert git_args(git.one("read-tree").argv) == ["read-tree", "--empty"]
    if dirty:
        assert result.outcome is SaveOutcome.SAVED
        assert "-p" not in git_args(git.one("commit-tree").argv)
    else:
        assert result.outcome is SaveOutcome.NOTHING_TO_SAVE


def test_a_head_that_names_no_commit_fails(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    answers["rev-parse HEAD^{commit}"] = GitResult(1, "", "")
    result, git = save(tmp_path, answers)
    assert result.outcome is SaveOutcome.FAILED and "not a commit" in result.message
    assert "add" not in git.subcommands()


@pytest.mark.parametrize("problem", ["not-a-repo", "missing", "nested"])
def test_no_repository_at_the_clone_path(tmp_path: Path, problem: str) -> None:
    repo, answers = repository(tmp_path)
    if problem == "not-a-repo":
        answers["rev-parse --show-object-format"] = GitResult(128, "", "fatal: not a git "
                                                                       "repository")
    elif problem == "missing":
        repo.rmdir()
    else:  # git found a repository above the clone path: not the clone's
        answers["rev-parse --show-object-format"] = GitResult(
            0, f"{tmp_path}\n{tmp_path}/.git\nsha1\n", "")
    result, git = save(tmp_path, answers)
    assert result.outcome is SaveOutcome.NO_REPOSITORY
    assert "add" not in git.subcommands()


def test_the_push_reads_the_token_from_a_private_file_only(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    result, git = save(tmp_path, answers, mode=SaveMode.COMMIT_AND_PUSH,
                       url="https://git.example.test/org/demo.git")
    assert result.outcome is SaveOutcome.SAVED and result.pushed and result.push_error is None
    push = git.one("push")
    assert git_args(push.argv) == ["push", "--porcelain", "--no-verify", "--",
                                   "https://git.example.test/org/demo.git",
                                   f"{COMMIT}:refs/heads/{BRANCH}"]
    assert push.token_file == (TOKEN + "\n", 0o600)
    askpass = Path(push.env["GIT_ASKPASS"])
    assert askpass.parent == Path(push.env["GIT_DIR"]).parent and push.cwd == askpass.parent
    assert "GIT_WORK_TREE" not in push.env
    assert all(c.token_file is None for c in git.calls if c is not push)


@pytest.mark.parametrize(("url", "token", "why"), [
    ("git@github.com:org/demo.git", TOKEN, "no SSH key"),
    ("ssh://git@github.com/org/demo.git", TOKEN, "no SSH key"),
    ("https://github.com/org/demo.git", None, "no repository token"),
])
def test_a_commit_that_cannot_be_pushed_is_still_saved(tmp_path: Path, url: str,
                                                       token: str | None, why: str) -> None:
    _, answers = repository(tmp_path)
    result, git = save(tmp_path, answers, mode=SaveMode.COMMIT_AND_PUSH, url=url, token=token)
    assert result.outcome is SaveOutcome.SAVED and not result.pushed
    assert result.push_error is not None and why in result.push_error
    assert "push" not in git.subcommands()


def test_push_errors_are_reported_without_the_token(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    answers["push"] = GitResult(128, "", f"fatal: unable to access "
                                f"'https://x-access-token:{TOKEN}@git.example.test/': 403\n")
    result, _ = save(tmp_path, answers, mode=SaveMode.COMMIT_AND_PUSH)
    assert result.outcome is SaveOutcome.SAVED and not result.pushed
    assert result.push_error is not None and "403" in result.push_error
    assert TOKEN not in result.message + result.push_error


def test_a_save_past_its_deadline_times_out(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    answers["add"] = GitResult(124, "", "", timed_out=True)
    result, git = save(tmp_path, answers)
    assert result.outcome is SaveOutcome.TIMED_OUT and "(snapshot)" in result.message
    assert "commit-tree" not in git.subcommands()


def test_each_command_gets_only_what_is_left_of_the_deadline(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    # The clock: 0 at the start, then 4 s later for the first command, then past 10 s.
    result, git = save(tmp_path, answers, timeout=10, monotonic=[0.0, 4.0, 11.0])
    assert [c.timeout for c in git.calls] == [6.0]
    assert result.outcome is SaveOutcome.TIMED_OUT


def test_a_push_past_the_deadline_keeps_the_commit(tmp_path: Path) -> None:
    _, answers = repository(tmp_path)
    answers["push"] = GitResult(124, "", "", timed_out=True)
    result, _ = save(tmp_path, answers, mode=SaveMode.COMMIT_AND_PUSH)
    assert result.outcome is SaveOutcome.SAVED and result.commit == COMMIT
    assert not result.pushed and "did not finish" in (result.push_error or "")


def test_branch_names_and_push_targets() -> None:
    assert wip_branch("demo", NOW) == BRANCH
    assert push_refusal("file:///srv/git/demo.git", False) is None
    assert push_refusal("https://github.com/org/demo.git", True) is None
    assert push_refusal("", True) is not None


def test_the_save_documents_round_trip_and_refuse_bad_input() -> None:
    request = SaveRequest("prestop-1", SaveMode.COMMIT_AND_PUSH, 60, "lifetime")
    assert SaveRequest.from_json(request.to_json()) == request
    job = SaveJob(JobState.SUCCEEDED, "prestop-1",
                  SaveResult(SaveOutcome.SAVED, "ok", BRANCH, COMMIT, True))
    assert SaveJob.from_json(job.to_json()) == job
    assert SaveJob.from_json({"state": "idle", "id": None, "result": None}) == SaveJob()
    for bad in ({**request.to_json(), "id": "../x"}, {**request.to_json(), "timeoutSeconds": 0},
                {**request.to_json(), "timeoutSeconds": 601},
                {**request.to_json(), "mode": "push"}, {**request.to_json(), "reason": "A B"},
                {"mode": "commit"}, []):
        with pytest.raises(ContractError):
            SaveRequest.from_json(bad)
    with pytest.raises(ContractError):
        SaveJob.from_json({"state": "done"})
