"""The start sequence: restore -> clone -> Claude files -> devcontainer up.

It runs once, in a background thread, when the operator POSTs /v1/start, and records
its progress in state/boot.json so an agent restart knows where it stood:

- interrupted while restoring: failed (a half-restored tree must not be used);
- interrupted while cloning: the clone is retried (it goes to a scratch directory and
  is renamed into place only when complete);
- interrupted while starting the devcontainer, or after it was ready: `devcontainer up`
  runs again (it reuses the existing container).

`devcontainer up` waits for the VM's own bootstrap (state/bootstrap reads `done`).

After a failure another POST /v1/start retries the steps that did not complete, except
a failed restore, which is final (the operator replaces the VM).

In `simulate` mode clone, Docker and devcontainer are skipped and the devcontainer is
reported as `simulated`; restore still runs, and so does the vetting of a repository
devcontainer.json found in the (restored) tree, so its outcome is reported as on a VM.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentspaces_vm import claude_install, devcontainer, docker_guard, safefs
from agentspaces_vm.config import AgentConfig
from agentspaces_vm.devcontainer_policy import DevcontainerRefused
from agentspaces_vm.redact import redact
from agentspaces_vm.secrets import SecretStore
from agentspaces_vm.templates import TemplateNotFound, load_template
from agentspaces_vm.trust import TrustError, TrustStore, bundle_file, node_env

log = logging.getLogger(__name__)

WAITING, RESTORING, CLONING, STARTING, READY, FAILED = (
    "waiting-for-start", "restoring", "cloning", "starting-devcontainer", "ready", "failed")
CLONE_TIMEOUT = 15 * 60.0
UP_TIMEOUT = 45 * 60.0
# The VM's own bootstrap (packages, Docker, devcontainer CLI) reports in
# state/bootstrap; `devcontainer up` waits for "done" (docs/vm.md).
VM_READY_TIMEOUT = 60 * 60.0
RestoreFn = Callable[[dict[str, Any], Path], None]


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], Mapping[str, str], "Path | None", float], CommandResult]


def run_command(argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                timeout: float) -> CommandResult:
    """Run a command without a shell or stdin; never raises for the command's failure."""
    try:
        proc = subprocess.run(list(argv), env=dict(env), cwd=cwd, timeout=timeout,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
    except subprocess.TimeoutExpired:
        return CommandResult(124, "", f"{argv[0]} timed out after {timeout:.0f}s")
    except OSError as exc:
        return CommandResult(127, "", f"{argv[0]}: {exc.strerror}")
    return CommandResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class BootState:
    start_requested: bool = False
    stage: str = WAITING
    message: str = ""
    devcontainer_state: str = "absent"
    devcontainer_message: str = ""
    restore_state: str = "none"
    restore_error: str | None = None
    restore_reason: str | None = None
    restored: bool = False
    cloned: bool = False
    repo_dir: str | None = None
    container_id: str | None = None
    notes: list[str] = field(default_factory=list)
    # How far the devcontainer config was trusted and what the policy removed from it.
    devcontainer_policy: str | None = None
    devcontainer_removed: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> BootState:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        os.replace(tmp, path)


def repo_dir_name(url: str) -> str:
    """The directory a repository is cloned into: its last path segment, sans .git."""
    tail = re.split(r"[/:]", url.rstrip("/"))[-1]
    tail = tail.removesuffix(".git")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", tail).lstrip(".-")
    return name or "repo"


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give a tree to `uid`: each name itself, links included, and never what a link
    points to (os.fwalk enters no linked directory, not even a linked `root`)."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        if dirpath == str(root):
            os.fchown(dirfd, uid, gid)
        for name in (*dirnames, *filenames):
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


class Bootstrap:
    def __init__(self, config: AgentConfig, store: SecretStore, *,
                 configure_claude: Callable[[Path], None],
                 on_change: Callable[[], None] = lambda: None,
                 runner: Runner = run_command,
                 restore_fn: RestoreFn | None = None,
                 on_busy: Callable[[bool], None] = lambda busy: None,
                 vm_ready_timeout: float = VM_READY_TIMEOUT,
                 poll_interval: float = 2.0) -> None:
        self._config = config
        self._store = store
        self._configure_claude = configure_claude
        self._on_change = on_change
        self._runner = runner
        self._restore_fn = restore_fn
        # Told when the sequence starts and ends: its own file writes are not activity.
        self._on_busy = on_busy
        self._state_file = config.paths.state / "boot.json"
        self._vm_ready_file = config.paths.state / "bootstrap"
        # claudeCode: npm installs Claude Code here (claude_install).
        self._claude_root = config.paths.state / "claude-code"
        self._vm_ready_timeout = vm_ready_timeout
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.state = BootState.load(self._state_file)
        # The class's CA certificates (PUT /v1/config): installed before anything fetches.
        self.trust = TrustStore(config.paths.state, runner, simulate=config.simulate)

    # -- state -------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.state, key, value)
            self.state.save(self._state_file)
        self._on_change()

    def snapshot(self) -> BootState:
        with self._lock:
            return BootState(**asdict(self.state))

    @property
    def workspace_writable(self) -> bool:
        """True once nothing (a restore) may still replace files under /workspaces."""
        with self._lock:
            return self.state.start_requested and self.state.stage not in (WAITING, RESTORING)

    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait for a running sequence to end; True when none is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running()

    # -- entry points --------------------------------------------------------------

    def resume(self) -> None:
        """Called once at agent start: settle what an earlier process left behind."""
        state = self.snapshot()
        if not state.start_requested:
            return
        if state.stage == RESTORING:
            self._update(stage=FAILED, restore_state="failed", restore_reason="Interrupted",
                         restore_error="the agent stopped while restoring",
                         message="restore interrupted")
        elif state.stage in (CLONING, STARTING, READY):
            log.info("resuming the start sequence after an agent restart (was %s)", state.stage)
            self._spawn(None)

    def request_start(self, restore_plan: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        """POST /v1/start: (HTTP status, body)."""
        with self._lock:  # held while spawning, so two calls cannot both start a run
            state = self.state
            if self.running() or state.stage == READY:
                return 202, {"bootStage": state.stage}
            if state.restore_state == "failed":
                return 409, {"error": "restore failed",
                             "detail": "a failed restore is final; replace the VM"}
            first = not state.start_requested
            state.start_requested = True
            state.save(self._state_file)
            self._spawn(restore_plan if first else None)
            return 202, {"bootStage": state.stage}

    def _spawn(self, restore_plan: dict[str, Any] | None) -> None:
        self._thread = threading.Thread(target=self._run, args=(restore_plan,),
                                        name="bootstrap", daemon=True)
        self._thread.start()

    # -- the sequence --------------------------------------------------------------

    def _run(self, restore_plan: dict[str, Any] | None) -> None:
        self._on_busy(True)
        try:
            self._sequence(restore_plan)
        except Exception as exc:  # the thread must always leave a readable state
            log.exception("start sequence crashed")
            self._update(stage=FAILED, message=redact(f"internal error: {exc}", 500))
        finally:
            self._on_busy(False)

    def _sequence(self, restore_plan: dict[str, Any] | None) -> None:
        cfg = self._config
        cfg.paths.workspaces.mkdir(parents=True, exist_ok=True)
        if not self._install_trust():
            return
        if (restore_plan is not None and not self.state.restored
                and not self._restore(restore_plan)):
            return
        if self._vm_bootstrap_failed():
            return  # named first: whatever fails after it is likely its consequence
        repo = self._clone_step()
        if repo is None:
            self._vm_bootstrap_failed()  # e.g. no network: the failed step says why
            return
        self._update(stage=STARTING, message="")
        self._configure_claude(repo)
        if cfg.simulate:
            if self._prepare_devcontainer(repo) is not None:
                self._update(stage=READY, devcontainer_state="simulated",
                             devcontainer_message="simulate mode: no Docker, no devcontainer")
            return
        if self._wait_for_vm():
            self._devcontainer_up(repo)

    def _install_trust(self) -> bool:
        """The class's CA certificates into the system store, before the restore, the
        clone and any pull; False (failed) when a system tool refused."""
        try:
            self.trust.install()
        except (TrustError, OSError) as exc:
            self._update(stage=FAILED, message=redact(
                f"installing the class's CA certificates failed: {exc}", 500))
            return False
        return True

    def _wait_for_vm(self) -> bool:
        """Wait until the VM's bootstrap reads `done`; fail on `failed <step>`."""
        deadline = time.monotonic() + self._vm_ready_timeout
        shown = None
        while True:
            try:
                line = self._vm_ready_file.read_text(encoding="utf-8").strip()
            except OSError:
                line = ""
            if line == "done":
                if shown is not None:
                    self._update(message="")
                return True
            if self._vm_bootstrap_failed(line):
                return False
            if line != shown:
                shown = line
                self._update(message=f"waiting for the VM bootstrap ({line or 'not started'})")
            if time.monotonic() >= deadline:
                self._update(stage=FAILED, message="the VM bootstrap did not finish "
                             f"within {self._vm_ready_timeout:.0f}s ({line or 'not started'})")
                return False
            time.sleep(self._poll_interval)

    def _vm_bootstrap_failed(self, line: str | None = None) -> bool:
        """True, with the failed step named in the boot state, when the VM's bootstrap
        (cloud-init's runcmd) recorded `failed <step>`."""
        if line is None:
            try:
                line = self._vm_ready_file.read_text(encoding="utf-8").strip()
            except OSError:
                return False
        if not line.startswith("failed"):
            return False
        step = line.partition(" ")[2] or "unknown step"
        self._update(stage=FAILED, message=f"VM bootstrap failed at {step}; see "
                     "/var/log/cloud-init-output.log")
        return True

    def _restore(self, plan: dict[str, Any]) -> bool:
        self._update(stage=RESTORING, restore_state="running", message="restoring /workspaces")
        try:
            restore = self._restore_fn or _load_restore()
            restore(plan, self._config.paths.workspaces)
        except Exception as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            error = redact(str(exc) or type(exc).__name__, 500)
            log.error("restore failed (%s): %s", reason, error)
            self._update(stage=FAILED, restore_state="failed", restore_reason=str(reason),
                         restore_error=error, message="restore failed")
            return False
        self._update(restore_state="succeeded", restored=True, message="")
        return True

    def _clone_step(self) -> Path | None:
        cfg = self._config
        repo_cfg = cfg.repository
        name = repo_dir_name(repo_cfg.url) if repo_cfg else "workspace"
        repo = cfg.paths.workspaces / name
        # /workspaces is root's, but a restored tree may hold a link at the repository's
        # name: it would send the clone, the chown and the container's mount elsewhere.
        if safefs.kind(cfg.paths.workspaces, name) == "link":
            log.warning("%s is a symbolic link; replacing it with a directory", repo)
            safefs.remove(cfg.paths.workspaces, name)
        if self.state.cloned or cfg.simulate or repo_cfg is None:
            repo.mkdir(parents=True, exist_ok=True)
            self._update(repo_dir=str(repo))
            return repo
        if (repo / ".git").exists():
            log.info("repository already present (restored), not cloning")
            self._update(cloned=True, repo_dir=str(repo))
            return repo
        if repo.exists() and any(repo.iterdir()):
            self._update(cloned=True, repo_dir=str(repo),
                         notes=[*self.state.notes, f"{name} exists without .git; not cloned"])
            return repo
        self._update(stage=CLONING, message=f"cloning {redact(repo_cfg.url, 300)}")
        scratch = cfg.paths.workspaces / f".agentspaces-clone-{name}"
        safefs.remove(cfg.paths.workspaces, scratch.name)  # a link too, not its target
        env = self._git_env()
        git = cfg.tools.git
        steps = [[git, "-c", "credential.helper=", "clone", "--quiet", "--", repo_cfg.url,
                  str(scratch)]]
        if repo_cfg.ref:
            steps.append([git, "-C", str(scratch), "checkout", "--quiet", repo_cfg.ref, "--"])
        for argv in steps:
            result = self._runner(argv, env, None, CLONE_TIMEOUT)
            if result.returncode != 0:
                shutil.rmtree(scratch, ignore_errors=True)
                self._update(stage=FAILED, message=redact(
                    f"git {argv[3]} failed: "
                    f"{result.stderr or result.stdout}", 800))
                return None
        if repo.exists():
            repo.rmdir()  # empty, checked above
        os.replace(scratch, repo)
        if os.geteuid() == 0:
            chown_tree(repo, cfg.container_user.uid, cfg.container_user.gid)
        self._update(cloned=True, repo_dir=str(repo), message="")
        return repo

    def _git_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR",
                        "GIT_SSH_COMMAND", "http_proxy", "https_proxy", "no_proxy")}
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env["GIT_TERMINAL_PROMPT"] = "0"
        if self._store.repository_token_file.is_file():
            env["GIT_ASKPASS"] = str(self._store.askpass)
        return env

    def _prepare_devcontainer(self, repo: Path, claude_binary: Path | None = None
                              ) -> devcontainer.ConfigChoice | None:
        """Choose, vet and write the config `devcontainer up` gets; None when refused."""
        cfg = self._config
        repo_cfg = cfg.repository
        try:
            default_text: str | None = load_template("devcontainer.json")
        except TemplateNotFound:
            default_text = None
        claude_dir = cfg.paths.workspaces / ".claude"
        try:
            choice = devcontainer.choose_config(
                repo=repo, devcontainer_path=repo_cfg.devcontainer_path if repo_cfg else None,
                image=repo_cfg.devcontainer_image if repo_cfg else None,
                default_text=default_text, work_dir=cfg.paths.state / "devcontainer",
                secrets_dir=self._store.claude_dir, claude_dir=claude_dir,
                trust_repository=repo_cfg.trust_devcontainer if repo_cfg else False,
                claude_binary=claude_binary)
        except DevcontainerRefused as exc:
            self._update(devcontainer_policy=devcontainer.RESTRICTED, devcontainer_removed=[])
            self._fail_devcontainer(str(exc), state="refused")
            return None
        except (OSError, ValueError) as exc:
            self._fail_devcontainer(f"devcontainer config: {exc}")
            return None
        choice.write_path.parent.mkdir(parents=True, exist_ok=True)
        choice.write_path.write_text(json.dumps(choice.document, indent=2), encoding="utf-8")
        if choice.removed:
            log.warning("removed from the repository's devcontainer.json (the class does not "
                        "trust it): %s", ", ".join(choice.removed))
        self._update(devcontainer_policy=choice.policy,
                     devcontainer_removed=list(choice.removed))
        return choice

    def _devcontainer_up(self, repo: Path) -> None:
        cfg = self._config
        self._update(stage=STARTING, devcontainer_state="starting", devcontainer_message="")
        package = None
        if cfg.claude_code == "npm":
            try:
                package = claude_install.platform_package()
            except claude_install.InstallError as exc:
                self._fail_devcontainer(f"Claude Code install from npm failed: {exc}")
                return
        claude_binary = claude_install.binary_path(self._claude_root, package) \
            if package else None
        choice = self._prepare_devcontainer(repo, claude_binary)
        if choice is None:
            return
        if package is not None and not self._install_claude(package):
            return
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "DOCKER_HOST")}
        env.update(node_env(cfg.paths.state))  # the CLI fetches features itself
        env.update(self._store.docker_env())  # registry logins for its pulls and docker's
        try:
            self.trust.restart_docker()  # its pulls trust the class's certificates
        except TrustError as exc:
            self._fail_devcontainer(str(exc))
            return
        guard = None if choice.policy == devcontainer.TRUSTED else \
            self._docker_guard(repo, env.get("PATH"),
                               (str(claude_binary),) if claude_binary else ())
        argv = devcontainer.up_argv(cfg.tools.devcontainer, repo, choice.args,
                                    docker_path=str(guard.path) if guard else None,
                                    claude_feature=claude_binary is None)
        result = self._runner(argv, env, repo, UP_TIMEOUT)
        outcome = devcontainer.parse_up_outcome(result.stdout)
        if guard is not None and guard.refusal.exists():
            self._fail_devcontainer(guard.refusal.read_text(encoding="utf-8").strip(),
                                    state="refused")
            return
        if not outcome.success or result.returncode != 0:
            # The CLI's log says which command failed and what it printed; the
            # condition gets only the outcome's message.
            log.error("devcontainer up exited %s; its log ends:\n%s", result.returncode,
                      redact("\n".join(result.stderr.splitlines()[-40:]), 6000))
            detail = outcome.message if outcome.message else result.stderr
            self._fail_devcontainer(f"devcontainer up failed: {detail or result.stderr}")
            return
        notes = list(choice.notes)
        if claude_binary is not None:
            notes += self._claude_in_container(repo, choice.args, env)
        self._update(stage=READY, devcontainer_state="running", container_id=outcome.container_id,
                     devcontainer_message="", message="; ".join(notes), notes=notes)

    def _install_claude(self, package: claude_install.PlatformPackage) -> bool:
        """claudeCode: npm: Claude Code onto the VM before `devcontainer up` mounts it."""
        self._update(message=f"installing Claude Code {package.version} from npm")
        # Node reads only its own CA list and NODE_EXTRA_CA_CERTS: the class's extra CAs
        # (spec.trust.caBundle), as delivered, when there are any.
        env = claude_install.npm_env(os.environ,
                                     extra_ca_certs=bundle_file(self._config.paths.state))
        try:
            done = claude_install.install(self._claude_root, npm=self._config.tools.npm,
                                          runner=self._runner, env=env, package=package)
        except (claude_install.InstallError, OSError) as exc:
            self._fail_devcontainer(f"Claude Code install from npm failed: {exc}")
            return False
        if done.installed_now:
            log.info("installed Claude Code %s from npm at %s", package.version, done.binary)
        self._update(message="")
        return True

    def _claude_in_container(self, repo: Path, config_args: Sequence[str],
                             env: Mapping[str, str]) -> list[str]:
        """A note when `claude`, run in the container the way agentspaces-claude runs it,
        is not the mounted binary (a musl image cannot run the glibc build; a user's
        PATH without /usr/local/bin would miss it); the container itself is fine."""
        result = self._runner(devcontainer.exec_argv(
            self._config.tools.devcontainer, repo, config_args, "claude", "--version"),
            env, repo, claude_install.VERSION_TIMEOUT)
        if result.returncode == 0 and result.stdout.split()[:1] == [
                claude_install.CLAUDE_CODE_VERSION]:
            return []
        detail = redact((result.stderr or result.stdout).strip() or "no output", 200)
        return [f"`claude` in the container is not the Claude Code the VM installed "
                f"(claudeCode: npm; the image must be glibc-based and have "
                f"{devcontainer.CLAUDE_BINARY_TARGET} on the PATH): exit "
                f"{result.returncode}: {detail}"]

    def _docker_guard(self, repo: Path, search_path: str | None,
                      extra_binds: tuple[str, ...] = ()) -> _Guard:
        """Write the `--docker-path` wrapper that refuses what the config could not say
        itself (the image's and the features' metadata); see docker_guard.
        `extra_binds`: more host paths the agent itself binds (the Claude Code binary)."""
        work = self._config.paths.state / "devcontainer"
        guard = _Guard(work / "docker-guard", work / "docker-refused")
        guard.refusal.unlink(missing_ok=True)
        policy = docker_guard.Policy(
            docker=shutil.which("docker", path=search_path) or "/usr/bin/docker",
            bind_sources=(str(repo), str(self._store.claude_dir),
                          str(self._config.paths.workspaces / ".claude"), *extra_binds),
            refusal_file=str(guard.refusal))
        guard.path.write_text(docker_guard.launcher(policy), encoding="utf-8")
        guard.path.chmod(0o700)
        return guard

    def _fail_devcontainer(self, message: str, state: str = "failed") -> None:
        text = redact(message, 800)
        log.error("%s", text)
        self._update(stage=FAILED, devcontainer_state=state, devcontainer_message=text,
                     message=text)


@dataclass(frozen=True)
class _Guard:
    path: Path
    refusal: Path


def _load_restore() -> RestoreFn:
    from agentspaces_vm import backup  # written separately; imported only when needed

    restore: RestoreFn = backup.restore  # type: ignore[attr-defined]
    return restore
