"""The start sequence (with a recording command runner) and the devcontainer helpers."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentspaces_vm import devcontainer as dc
from agentspaces_vm.bootstrap import (
    FAILED,
    READY,
    BootState,
    Bootstrap,
    CommandResult,
    repo_dir_name,
)
from agentspaces_vm.caddy import BasicAuth
from agentspaces_vm.config import AgentConfig, parse_config
from agentspaces_vm.secrets import Delivery, SecretStore

REPO_TOKEN = "ghp_unit_secret_token"

# -- devcontainer helpers ---------------------------------------------------------------


def test_jsonc_comments_and_trailing_commas() -> None:
    text = """// leading comment
    {
      "name": "x // not a comment", /* block */
      "url": "http://a/*b*/",
      "list": [1, 2, /* c */ ],
      "esc": "quote \\" // still string",
      "obj": {"a": 1,  // trailing
      },
    }"""
    assert dc.jsonc_loads(text) == {"name": "x // not a comment", "url": "http://a/*b*/",
                                    "list": [1, 2], "esc": 'quote " // still string',
                                    "obj": {"a": 1}}
    with pytest.raises(ValueError):
        dc.jsonc_loads('{"a": 1 /* open')


def test_augment_adds_host_network_and_mounts_without_touching_the_input() -> None:
    base = {"image": "img", "runArgs": ["--cap-add=SYS_PTRACE"],
            "mounts": ["source=a,target=b,type=bind"]}
    out, notes = dc.augment(base, secrets_dir=Path("/s/claude"), claude_dir=Path("/w/.claude"))
    assert out["runArgs"] == ["--cap-add=SYS_PTRACE", "--network=host"]
    assert out["mounts"] == [
        "source=a,target=b,type=bind",
        "source=/s/claude,target=/run/agentspaces,type=bind,readonly",
        "source=/w/.claude,target=/workspaces/.claude,type=bind",
    ]
    assert out["containerEnv"] == {"CLAUDE_CONFIG_DIR": "/workspaces/.claude"}
    assert notes == [] and base["runArgs"] == ["--cap-add=SYS_PTRACE"]
    own_net, _ = dc.augment({"image": "i", "runArgs": ["--network", "bridge"]},
                            secrets_dir=Path("/s"), claude_dir=Path("/c"))
    assert own_net["runArgs"] == ["--network", "bridge"]
    compose, notes = dc.augment({"dockerComposeFile": "c.yml", "service": "app"},
                                secrets_dir=Path("/s"), claude_dir=Path("/c"))
    assert "runArgs" not in compose and notes and "compose" in notes[0]


def _choose(repo: Path, work: Path, **kwargs: Any) -> dc.ConfigChoice:
    return dc.choose_config(repo=repo, work_dir=work, secrets_dir=Path("/s"),
                            claude_dir=Path("/c"), **{"devcontainer_path": None, "image": None,
                                                      "default_text": None, **kwargs})


def test_config_choice_order(tmp_path: Path) -> None:
    repo, work = tmp_path / "repo", tmp_path / "work"
    repo.mkdir()
    # No repository config: the default template, written whole.
    choice = _choose(repo, work, default_text='{"image": "default", // c\n}')
    assert choice.args == ("--config", str(work / "devcontainer.json"))
    assert choice.document["image"] == "default"
    assert "--network=host" in choice.document["runArgs"]
    # No template either: the built-in fallback.
    assert _choose(repo, work).document["image"] == dc.FALLBACK_CONFIG["image"]
    # A configured image wins over the template, keeping only its name.
    img = _choose(repo, work, image="python:3.12", default_text='{"name": "n", "features": {}}')
    assert {k: img.document[k] for k in ("name", "image")} == {"name": "n", "image": "python:3.12"}
    assert "features" not in img.document
    # The repository's own config becomes an override next to --config.
    (repo / ".devcontainer").mkdir()
    own = repo / ".devcontainer" / "devcontainer.json"
    own.write_text('{"build": {"dockerfile": "Dockerfile"}, /* x */ }')
    choice = _choose(repo, work, default_text="{}")
    assert choice.args == ("--config", str(own), "--override-config", str(work / "override.json"))
    assert choice.document["build"] == {"dockerfile": "Dockerfile"}
    # An explicit path must exist.
    with pytest.raises(FileNotFoundError, match="devcontainerPath"):
        _choose(repo, work, devcontainer_path=".devcontainer/python")
    (repo / ".devcontainer" / "python").mkdir()
    (repo / ".devcontainer" / "python" / "devcontainer.json").write_text('{"image": "py"}')
    assert _choose(repo, work, devcontainer_path=".devcontainer/python").document["image"] == "py"
    # ... and an image beats even the repository's own config.
    assert _choose(repo, work, image="alpine").args == ("--config",
                                                        str(work / "devcontainer.json"))


def test_up_argv_and_outcome() -> None:
    argv = dc.up_argv("devcontainer", Path("/workspaces/demo"), ("--config", "/c.json"))
    assert argv[:4] == ["devcontainer", "up", "--workspace-folder", "/workspaces/demo"]
    features = json.loads(argv[argv.index("--additional-features") + 1])
    assert features == {"ghcr.io/anthropics/devcontainer-features/claude-code:1": {}}
    assert argv[argv.index("--remote-env") + 1] == "CLAUDE_CONFIG_DIR=/workspaces/.claude"
    assert "--config" in argv
    ok = dc.parse_up_outcome('log line\n{"outcome":"success","containerId":"abc",'
                             '"remoteUser":"node","remoteWorkspaceFolder":"/workspaces/demo"}\n')
    assert ok == dc.UpOutcome(True, "abc", "node", "")
    bad = dc.parse_up_outcome('{"outcome":"error","message":"Command failed",'
                              '"description":"An error occurred building the image."}')
    assert not bad.success and bad.message == ("Command failed An error occurred building "
                                               "the image.")
    assert dc.parse_up_outcome("no json here\n{broken").message == \
        "devcontainer up printed no outcome"


@pytest.mark.parametrize(("url", "name"), [
    ("https://github.com/org/repo", "repo"),
    ("https://github.com/org/repo.git/", "repo"),
    ("git@github.com:org/my.repo.git", "my.repo"),
    ("file:///srv/git/.hidden.git", "hidden"),
    ("https://example.com/", "example.com"),
    ("https://x/a b", "a-b"),
])
def test_repo_dir_name(url: str, name: str) -> None:
    assert repo_dir_name(url) == name


# -- the sequence -----------------------------------------------------------------------


class Runner:
    """Stands in for git and the devcontainer CLI; records every call."""

    def __init__(self, up_stdout: str = '{"outcome":"success","containerId":"c1"}') -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []
        self.up_stdout = up_stdout
        self.fail_clone = False

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 timeout: float) -> CommandResult:
        self.calls.append((list(argv), dict(env)))
        if "clone" in argv:
            if self.fail_clone:
                return CommandResult(128, "", "fatal: repository not found")
            dest = Path(argv[-1])
            (dest / ".git").mkdir(parents=True)
            (dest / "README.md").write_text("hi")
            return CommandResult(0, "", "")
        if argv[1] == "up":
            return CommandResult(0 if '"success"' in self.up_stdout else 1, self.up_stdout, "")
        return CommandResult(0, "", "")

    def verbs(self) -> list[str]:
        return [argv[3] if argv[0] == "git" else argv[1] for argv, _ in self.calls]


def make_config(tmp_path: Path, simulate: bool = False) -> AgentConfig:
    return parse_config({
        "version": 1, "workspace": {"name": "demo", "namespace": "default"},
        "host": "demo.example.com",
        "listen": {"api": "127.0.0.1:9443", "local": "127.0.0.1:9180"},
        "tls": {"cert": "/c", "key": "/k"}, "tokenSha256": "0" * 64,
        "caddy": {"admin": "127.0.0.1:2019", "tlsMode": "acme"},
        "paths": {"workspaces": str(tmp_path / "ws"), "state": str(tmp_path / "state")},
        "repository": {"url": "https://git.example.com/org/demo.git", "ref": "feature-x"},
        "simulate": simulate,
    })


def make_bootstrap(tmp_path: Path, runner: Runner, simulate: bool = False,
                   restore_error: Exception | None = None, vm_ready: str | None = "done",
                   vm_ready_timeout: float = 10.0,
                   ) -> tuple[Bootstrap, SecretStore, list[str]]:
    cfg = make_config(tmp_path, simulate)
    cfg.paths.state.mkdir(parents=True, exist_ok=True)
    if vm_ready is not None:
        (cfg.paths.state / "bootstrap").write_text(vm_ready + "\n")
    store = SecretStore(cfg.paths.secrets)
    store.apply(Delivery(version="1", basic_auth=BasicAuth("dev", "$2b$04$" + "a" * 53),
                         anthropic_api_key=None, repository_token=REPO_TOKEN))
    events: list[str] = []

    def restore(plan: dict[str, Any], root: Path) -> None:
        events.append(f"restore:{plan['object']}:{root.name}")
        if restore_error is not None:
            raise restore_error

    boot = Bootstrap(cfg, store, configure_claude=lambda repo: events.append(f"claude:{repo.name}"),
                     runner=runner, restore_fn=restore,
                     on_busy=lambda busy: events.append(f"busy:{busy}"),
                     vm_ready_timeout=vm_ready_timeout, poll_interval=0.01)
    return boot, store, events


def test_full_sequence_clones_with_askpass_and_starts_the_devcontainer(tmp_path: Path) -> None:
    runner = Runner()
    boot, store, events = make_bootstrap(tmp_path, runner)
    assert boot.request_start({"object": "b/1"}) [0] == 202
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == READY and state.devcontainer_state == "running"
    assert state.container_id == "c1" and state.restore_state == "succeeded"
    assert events == ["busy:True", "restore:b/1:ws", "claude:demo", "busy:False"]
    assert runner.verbs() == ["clone", "checkout", "up"]
    clone_argv, clone_env = runner.calls[0]
    assert "https://git.example.com/org/demo.git" in clone_argv
    assert clone_env["GIT_ASKPASS"] == str(store.askpass)
    assert clone_env["GIT_TERMINAL_PROMPT"] == "0"
    for argv, env in runner.calls:
        assert not any(REPO_TOKEN in part for part in (*argv, *env.values()))
    assert runner.calls[1][0][-2:] == ["feature-x", "--"]
    repo = tmp_path / "ws" / "demo"
    assert (repo / "README.md").exists()
    assert not list((tmp_path / "ws").glob(".agentspaces-clone-*"))
    up_argv = runner.calls[2][0]
    generated = tmp_path / "state" / "devcontainer" / "devcontainer.json"
    assert up_argv[up_argv.index("--config") + 1] == str(generated)
    doc = json.loads(generated.read_text())
    assert f"source={store.claude_dir},target=/run/agentspaces,type=bind,readonly" in doc["mounts"]
    # The state survives a restart of the agent.
    assert BootState.load(tmp_path / "state" / "boot.json").stage == READY
    # And a second start is a no-op.
    assert boot.request_start(None) == (202, {"bootStage": READY})
    assert len(runner.calls) == 3


def test_simulate_runs_no_commands(tmp_path: Path) -> None:
    runner = Runner()
    boot, _, events = make_bootstrap(tmp_path, runner, simulate=True)
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == READY and state.devcontainer_state == "simulated"
    assert runner.calls == [] and "claude:demo" in events


def test_a_failed_devcontainer_can_be_retried_without_cloning_again(tmp_path: Path) -> None:
    runner = Runner(up_stdout='{"outcome":"error","message":"docker: no space left"}')
    boot, _, _ = make_bootstrap(tmp_path, runner)
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED and state.devcontainer_state == "failed"
    assert "no space left" in state.devcontainer_message
    runner.up_stdout = '{"outcome":"success","containerId":"c2"}'
    assert boot.request_start(None)[0] == 202
    assert boot.wait(10)
    assert boot.snapshot().stage == READY and boot.snapshot().container_id == "c2"
    assert runner.verbs() == ["clone", "checkout", "up", "up"]


def test_a_failed_clone_leaves_no_partial_directory(tmp_path: Path) -> None:
    runner = Runner()
    runner.fail_clone = True
    boot, _, _ = make_bootstrap(tmp_path, runner)
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED and "repository not found" in state.message
    assert not (tmp_path / "ws" / "demo").exists()


def test_a_restored_repository_is_not_cloned(tmp_path: Path) -> None:
    runner = Runner()
    boot, _, _ = make_bootstrap(tmp_path, runner)
    (tmp_path / "ws" / "demo" / ".git").mkdir(parents=True)
    boot.request_start(None)
    assert boot.wait(10)
    assert runner.verbs() == ["up"] and boot.snapshot().stage == READY


class Corrupt(Exception):
    reason = "BackupCorrupt"


def test_a_failed_restore_is_final(tmp_path: Path) -> None:
    runner = Runner()
    boot, _, _ = make_bootstrap(tmp_path, runner, restore_error=Corrupt(
        "bad tag at chunk 2 of https://r2.example.com/o?X-Amz-Signature=deadbeef"))
    boot.request_start({"object": "b/1"})
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED and state.restore_state == "failed"
    assert state.restore_reason == "BackupCorrupt"
    assert "deadbeef" not in (state.restore_error or "")
    assert runner.calls == []
    status, body = boot.request_start(None)
    assert status == 409 and body["error"] == "restore failed"


def test_resume_after_an_agent_restart(tmp_path: Path) -> None:
    runner = Runner()
    boot, _, _ = make_bootstrap(tmp_path, runner)
    state_file = tmp_path / "state" / "boot.json"
    BootState(start_requested=True, stage="restoring", restore_state="running").save(state_file)
    restarted, _, _ = make_bootstrap(tmp_path, runner)
    restarted.resume()
    state = restarted.snapshot()
    assert state.stage == FAILED and state.restore_reason == "Interrupted"

    BootState(start_requested=True, stage=READY, cloned=True, restored=True,
              devcontainer_state="running").save(state_file)
    again, _, _ = make_bootstrap(tmp_path, runner)
    again.resume()
    assert again.wait(10)
    assert runner.verbs() == ["up"] and again.snapshot().stage == READY
    assert boot is not again


def test_workspace_is_writable_only_after_restore(tmp_path: Path) -> None:
    boot, _, _ = make_bootstrap(tmp_path, Runner(), simulate=True)
    assert boot.workspace_writable is False
    boot.request_start(None)
    assert boot.wait(10)
    assert boot.workspace_writable is True


def test_devcontainer_up_waits_for_the_vm_bootstrap(tmp_path: Path) -> None:
    runner = Runner()
    boot, _, _ = make_bootstrap(tmp_path, runner, vm_ready="running packages")
    boot.request_start(None)
    ready_file = tmp_path / "state" / "bootstrap"
    for _ in range(500):  # cloned, then held back before `up`
        if "waiting for the VM bootstrap" in boot.snapshot().message:
            break
        boot.wait(0.01)
    assert "running packages" in boot.snapshot().message
    assert runner.verbs() == ["clone", "checkout"]
    ready_file.write_text("done\n")
    assert boot.wait(10)
    assert boot.snapshot().stage == READY and runner.verbs() == ["clone", "checkout", "up"]


@pytest.mark.parametrize(("line", "message"), [
    ("failed npm", "VM bootstrap failed at npm"),
    (None, "did not finish within 0s (not started)"),
])
def test_a_failed_or_missing_vm_bootstrap_fails_the_start(tmp_path: Path, line: str | None,
                                                          message: str) -> None:
    runner = Runner()
    boot, _, _ = make_bootstrap(tmp_path, runner, vm_ready=line, vm_ready_timeout=0)
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED and message in state.message
    assert "up" not in runner.verbs()


def test_concurrent_starts_run_the_sequence_once(tmp_path: Path) -> None:
    runner = Runner()
    boot, _, events = make_bootstrap(tmp_path, runner)
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait(5)
        boot.request_start({"object": "b/1"})

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert boot.wait(10)
    assert events.count("restore:b/1:ws") == 1
    assert runner.verbs() == ["clone", "checkout", "up"]


def test_a_vm_bootstrap_that_failed_first_is_named_not_the_clone_it_broke(
        tmp_path: Path) -> None:
    runner = Runner()
    boot, _, _ = make_bootstrap(tmp_path, runner, vm_ready="failed repositories")
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED
    assert "VM bootstrap failed at repositories" in state.message
    assert runner.verbs() == []  # no clone against a VM whose setup already failed


def test_a_clone_failure_after_the_vm_bootstrap_failed_names_the_failed_step(
        tmp_path: Path) -> None:
    ready_file = tmp_path / "state" / "bootstrap"

    class CloneFailsAsTheBootstrapFails(Runner):
        def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                     timeout: float) -> CommandResult:
            ready_file.write_text("failed packages\n")  # the bootstrap fails meanwhile
            return super().__call__(argv, env, cwd, timeout)

    runner = CloneFailsAsTheBootstrapFails()
    runner.fail_clone = True
    boot, _, _ = make_bootstrap(tmp_path, runner, vm_ready="running packages")
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED
    assert "VM bootstrap failed at packages" in state.message
