"""The pre-stop save: uncommitted work in the cloned repository becomes a commit on a
new branch `agentspaces/wip/<workspace>-<UTC time>`, optionally pushed, within a deadline.

The repository is untrusted (the container owns it and anything may be in its
`.git/config`: hooks, an fsmonitor, clean filters, credential helpers), so:

- every git runs as the container's user (as root only in simulate mode, where the
  agent is not root's), with no system or global config, `core.hooksPath=/dev/null`,
  `core.fsmonitor=false` and an empty environment of our own;
- the snapshot is taken in a *shadow* git directory of ours (a fresh temporary
  directory outside /workspaces) whose work tree is the repository and whose object
  store is the repository's: git reads none of the repository's config there, so no
  filter, hook or helper of the repository runs. The user's branch, HEAD, index and
  working tree are not touched; only the new objects and the new branch are written;
- the push runs in that shadow directory too, to the configured repository URL (never
  the repository's remotes), with the delivered token read by an askpass helper from a
  file in the shadow directory: the token is never in a URL, argv or the environment.

Every command gets what is left of the deadline and is killed with its whole process
group when it runs out. `save()` never raises for git's failures; it returns a
`SaveResult` whose messages are scrubbed (`redact`, and the token itself).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agentspaces_vm.contracts import SaveMode, SaveOutcome, SaveResult
from agentspaces_vm.redact import redact

BRANCH_PREFIX = "agentspaces/wip/"
AUTHOR_NAME = "agentspaces"
SHADOW_PREFIX = "agentspaces-save-"
# The tree of an empty index, per object format: an unborn HEAD with nothing to add.
EMPTY_TREES = {"sha1": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
               "sha256": "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321"}
# The hardening every git command gets; the shadow's own config repeats it.
SAFE_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "credential.helper=",
               "core.untrackedCache=false", "gc.auto=0", "maintenance.auto=false")
_PASSED_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "http_proxy", "https_proxy",
               "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ASKPASS = ("#!/bin/sh\n# git asks for a username, then a password: the token is read from "
            "a file, never argv or the environment.\ncase \"$1\" in\n"
            "  [Uu]sername*) echo x-access-token ;;\n  *) cat \"$(dirname \"$0\")/token\" ;;\n"
            "esac\n")


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


GitRunner = Callable[[Sequence[str], Mapping[str, str], Path | None, float], GitResult]
"""(argv, env, cwd, timeout seconds) -> result; never raises for the command's failure."""


def run_git(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
            timeout: float) -> GitResult:
    """Run without a shell or stdin in a new session; on timeout the whole process
    group is killed (git's helpers too: a hanging git-remote-https holds the pipes)."""
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as exc:
        return GitResult(127, "", f"{argv[0]}: {exc.strerror}")
    try:
        out, err = proc.communicate(timeout=max(timeout, 0.01))
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        # The group is gone, so the pipes close; the bound only guards against a child
        # that left the group.
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=5)
        return GitResult(124, "", "", timed_out=True)
    return GitResult(proc.returncode, out, err)


def wip_branch(workspace: str, now: datetime) -> str:
    """`agentspaces/wip/<workspace>-<UTC time>`; workspace names are DNS labels."""
    return f"{BRANCH_PREFIX}{workspace}-{now.strftime('%Y%m%dT%H%M%SZ')}"


def push_refusal(url: str, has_token: bool) -> str | None:
    """Why the configured URL cannot be pushed to with what the agent holds (None: it
    can). https needs the delivered token; a local file:// remote needs nothing; for
    ssh the agent holds no key."""
    if not url:
        return "no repository URL is configured"
    if url.startswith("file://"):
        return None
    if url.startswith(("https://", "http://")):
        return None if has_token else "no repository token was delivered to push with"
    return "the agent holds no SSH key: ssh URLs are not pushed"


@dataclass(frozen=True)
class SaveContext:
    repo: Path
    """The clone, e.g. /workspaces/app."""
    workspace: str
    host: str
    url: str
    """The configured repository URL (the push target; the repository's remotes are
    never read)."""
    git: str = "git"
    user: tuple[int, int] | None = None
    """(uid, gid) to run git as; None: as ourselves (simulate mode, tests)."""
    token: str | None = None
    reason: str = ""


class _Deadline(Exception):
    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


class _Failed(Exception):
    pass


class WipSave:
    """One save: `WipSave(context, mode, timeout).run()`."""

    def __init__(self, ctx: SaveContext, mode: SaveMode, timeout: float, *,
                 runner: GitRunner = run_git, clock: Callable[[], datetime] | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 tmp_root: Path | None = None, shadow_prefix: str = SHADOW_PREFIX) -> None:
        self.ctx = ctx
        self.mode = mode
        self.timeout = timeout
        self._runner = runner
        self._clock = clock
        self._monotonic = monotonic
        self._deadline = monotonic() + timeout
        self._tmp_root = tmp_root
        self._prefix = shadow_prefix
        self._shadow: Path | None = None

    # -- commands -----------------------------------------------------------------

    def env(self, shadow: Path | None) -> dict[str, str]:
        """Only what git needs: nothing of the agent's own environment but the CA and
        proxy settings the clone also gets."""
        env = {k: v for k, v in os.environ.items() if k in _PASSED_ENV}
        env.update({
            "PATH": os.environ.get("PATH", _DEFAULT_PATH), "LANG": "C", "LC_ALL": "C",
            "HOME": str(shadow or "/nonexistent"), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0",
            # Never look above the repository for another .git.
            "GIT_CEILING_DIRECTORIES": str(self.ctx.repo.parent),
            "GIT_AUTHOR_NAME": AUTHOR_NAME, "GIT_AUTHOR_EMAIL": f"agentspaces@{self.ctx.host}",
            "GIT_COMMITTER_NAME": AUTHOR_NAME,
            "GIT_COMMITTER_EMAIL": f"agentspaces@{self.ctx.host}"})
        return env

    def argv(self, *args: str) -> list[str]:
        safe = [item for pair in SAFE_CONFIG for item in ("-c", pair)]
        argv = [self.ctx.git, *safe, *args]
        if self.ctx.user is not None:
            uid, gid = self.ctx.user
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                    "--no-new-privs", "--", *argv]
        return argv

    def _git(self, step: str, *args: str, shadow_env: Mapping[str, str] | None = None,
             cwd: Path | None = None, check: bool = True) -> GitResult:
        left = self._deadline - self._monotonic()
        if left <= 0:
            raise _Deadline(step)
        env = self.env(self._shadow)
        env.update(shadow_env or {})
        result = self._runner(self.argv(*args), env, cwd, left)
        if result.timed_out:
            raise _Deadline(step)
        if check and result.returncode != 0:
            raise _Failed(f"{step}: {self._scrub(result.stderr or result.stdout)}")
        return result

    def _scrub(self, text: str) -> str:
        if self.ctx.token:
            text = text.replace(self.ctx.token, "<redacted>")
        return redact(" ".join(text.split()), 300) or "no output"

    # -- the save -----------------------------------------------------------------

    def run(self) -> SaveResult:
        try:
            return self._save()
        except _Deadline as late:
            return SaveResult(SaveOutcome.TIMED_OUT, f"the save did not finish within "
                              f"{self.timeout:.0f}s ({late.step})")
        except _Failed as failed:
            return SaveResult(SaveOutcome.FAILED, str(failed))
        except OSError as exc:
            return SaveResult(SaveOutcome.FAILED, self._scrub(f"{type(exc).__name__}: {exc}"))
        finally:
            self._remove_shadow()

    def _save(self) -> SaveResult:
        repo = self.ctx.repo
        if not repo.is_dir():
            return SaveResult(SaveOutcome.NO_REPOSITORY, f"{repo} does not exist")
        found = self._git("inspect", "rev-parse", "--path-format=absolute",
                          "--show-toplevel", "--git-common-dir", "--show-object-format",
                          cwd=repo, check=False)
        lines = found.stdout.splitlines()
        if found.returncode != 0 or len(lines) != 3 or lines[2] not in EMPTY_TREES:
            return SaveResult(SaveOutcome.NO_REPOSITORY,
                              f"no git repository at {repo}: {self._scrub(found.stderr)}")
        top, common, object_format = lines
        if Path(top) != repo.resolve():
            return SaveResult(SaveOutcome.NO_REPOSITORY, f"{repo} is not a repository's top")
        head = self._head(repo)
        branch_now = self._git("inspect", "symbolic-ref", "-q", "--short", "HEAD",
                               cwd=repo, check=False).stdout.strip()
        shadow = self._make_shadow(object_format)
        shadow_env = {"GIT_DIR": str(shadow / "git"), "GIT_WORK_TREE": str(repo),
                      "GIT_OBJECT_DIRECTORY": str(Path(common) / "objects"),
                      "GIT_INDEX_FILE": str(shadow / "git" / "index")}
        if head is None:
            self._git("snapshot", "read-tree", "--empty", shadow_env=shadow_env, cwd=repo)
        else:
            self._git("snapshot", "read-tree", head, shadow_env=shadow_env, cwd=repo)
        self._git("snapshot", "add", "--all", shadow_env=shadow_env, cwd=repo)
        tree = self._git("snapshot", "write-tree", shadow_env=shadow_env,
                         cwd=repo).stdout.strip()
        head_tree = EMPTY_TREES[object_format] if head is None else self._git(
            "snapshot", "rev-parse", f"{head}^{{tree}}", shadow_env=shadow_env,
            cwd=repo).stdout.strip()
        if tree == head_tree:
            return SaveResult(SaveOutcome.NOTHING_TO_SAVE,
                              "no uncommitted changes (untracked files included, ignored "
                              "ones not)")
        branch = wip_branch(self.ctx.workspace, self._now())
        parents = ["-p", head] if head is not None else []
        commit = self._git("commit", "commit-tree", tree, *parents, "-m",
                           self._message(branch_now), shadow_env=shadow_env,
                           cwd=repo).stdout.strip()
        # The empty old value: the branch must not exist yet.
        self._git("branch", "update-ref", "-m", "agentspaces: pre-stop save",
                  f"refs/heads/{branch}", commit, "", cwd=repo)
        saved = f"committed {commit[:12]} to {branch}"
        if self.mode is not SaveMode.COMMIT_AND_PUSH:
            return SaveResult(SaveOutcome.SAVED, saved, branch, commit)
        refused = push_refusal(self.ctx.url, self.ctx.token is not None)
        if refused is not None:
            return SaveResult(SaveOutcome.SAVED, f"{saved}; not pushed: {refused}", branch,
                              commit, push_error=refused)
        error = self._push(shadow, shadow_env, commit, branch)
        if error is not None:
            return SaveResult(SaveOutcome.SAVED, f"{saved}; the push failed: {error}", branch,
                              commit, push_error=error)
        return SaveResult(SaveOutcome.SAVED, f"{saved} and pushed it", branch, commit,
                          pushed=True)

    def _head(self, repo: Path) -> str | None:
        """HEAD's commit; None for an unborn branch. A HEAD that names a missing or
        non-commit object fails the save."""
        named = self._git("inspect", "rev-parse", "-q", "--verify", "HEAD", cwd=repo,
                          check=False)
        if named.returncode != 0:
            return None
        commit = self._git("inspect", "rev-parse", "-q", "--verify", "HEAD^{commit}",
                           cwd=repo, check=False)
        if commit.returncode != 0:
            raise _Failed(f"HEAD names {named.stdout.strip()[:12]}, which is not a commit "
                          "in the repository")
        return commit.stdout.strip()

    def _push(self, shadow: Path, shadow_env: Mapping[str, str], commit: str,
              branch: str) -> str | None:
        """Push the commit as the new branch; the reason when it did not happen."""
        env = {k: v for k, v in shadow_env.items() if k != "GIT_WORK_TREE"}
        if self.ctx.token is not None:
            self._write_private(shadow / "token", self.ctx.token + "\n", 0o600)
            self._write_private(shadow / "askpass", _ASKPASS, 0o700)
            env["GIT_ASKPASS"] = str(shadow / "askpass")
        try:
            self._git("push", "push", "--porcelain", "--no-verify", "--", self.ctx.url,
                      f"{commit}:refs/heads/{branch}", shadow_env=env, cwd=shadow)
        except _Deadline:
            return f"the push did not finish within the save's {self.timeout:.0f}s"
        except _Failed as failed:
            return str(failed).removeprefix("push: ")
        finally:
            with contextlib.suppress(FileNotFoundError):
                (shadow / "token").unlink()
        return None

    def _message(self, branch_now: str) -> str:
        where = f"on {branch_now}" if branch_now else "on a detached HEAD"
        why = f" ({self.ctx.reason})" if self.ctx.reason else ""
        return (f"agentspaces: work in progress before the workspace stopped{why}\n\n"
                f"Uncommitted changes {where} in workspace {self.ctx.workspace}, saved "
                "before an automatic stop. The branch you were on is unchanged.\n")

    def _now(self) -> datetime:
        return self._clock() if self._clock is not None else datetime.now(UTC)

    # -- the shadow directory ---------------------------------------------------------

    def _make_shadow(self, object_format: str) -> Path:
        """A git directory of ours, outside /workspaces, that the container's user owns
        (git runs as that user) and nobody else can enter."""
        shadow = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._tmp_root))
        self._shadow = shadow
        git_dir = shadow / "git"
        (git_dir / "refs").mkdir(parents=True)
        (git_dir / "objects").mkdir()
        (git_dir / "HEAD").write_text("ref: refs/heads/agentspaces-save\n", encoding="utf-8")
        settings = "".join(f"\t{key.split('.', 1)[1]} = {value}\n"
                           for key, _, value in (p.partition("=") for p in SAFE_CONFIG)
                           if key.startswith("core."))
        version = 1 if object_format != "sha1" else 0
        config = (f"[core]\n\trepositoryformatversion = {version}\n\tbare = false\n{settings}"
                  "[credential]\n\thelper =\n")
        if version:
            config += f"[extensions]\n\tobjectFormat = {object_format}\n"
        (git_dir / "config").write_text(config, encoding="utf-8")
        if self.ctx.user is not None:
            uid, gid = self.ctx.user
            for dirpath, dirnames, filenames, dirfd in os.fwalk(shadow, follow_symlinks=False):
                if dirpath == str(shadow):
                    os.fchown(dirfd, uid, gid)
                for name in (*dirnames, *filenames):
                    os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        return shadow

    def _write_private(self, path: Path, text: str, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if self.ctx.user is not None:
                os.fchown(fh.fileno(), *self.ctx.user)
            os.fchmod(fh.fileno(), mode)
            fh.write(text)

    def _remove_shadow(self) -> None:
        if self._shadow is not None:
            shutil.rmtree(self._shadow, ignore_errors=True)
            self._shadow = None


def sweep_shadows(prefix: str, tmp_root: Path | None = None) -> None:
    """Remove shadow directories an interrupted save of this agent left behind (one
    may hold a token)."""
    root = Path(tmp_root or tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if entry.name.startswith(prefix) and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
