"""Claude Code from npm (class devcontainer.claudeCode: npm): the installer's decisions
with a recording runner, the devcontainer config and argv it leads to, the start
sequence around it, and the setting's way from the class to agent.json."""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agentspaces.api import model
from agentspaces.api.types import WorkspaceClass
from agentspaces.vmconfig.agent_config import render_agent_config
from agentspaces_vm import claude_install as ci
from agentspaces_vm import devcontainer as dc
from agentspaces_vm.bootstrap import FAILED, READY, Bootstrap, CommandResult
from agentspaces_vm.caddy import BasicAuth
from agentspaces_vm.config import ConfigError, parse_config
from agentspaces_vm.secrets import Delivery, SecretStore
from tests.unit.vmconfig_inputs import HOST, WS, make_klass, make_spec

REPO = Path(__file__).resolve().parents[2]
PACKAGE = ci.PACKAGES["x86_64"]
VERSION_LINE = f"{ci.CLAUDE_CODE_VERSION} (Claude Code)\n"


class Runner:
    """Stands in for npm, `claude --version`, git, the devcontainer CLI and docker exec;
    records (argv, env, cwd) and what the install directory held when npm ran."""

    def __init__(self, *, npm: CommandResult | None = None, version: str = VERSION_LINE,
                 in_container: CommandResult | None = None,
                 up: str = '{"outcome":"success","containerId":"c1"}') -> None:
        self.calls: list[tuple[list[str], dict[str, str], Path | None]] = []
        self.npm = npm or CommandResult(0, "added 1 package in 6s\n", "")
        self.version = version
        self.in_container = in_container or CommandResult(0, VERSION_LINE, "")
        self.up = up
        self.seen: dict[str, Any] = {}

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 timeout: float) -> CommandResult:
        argv = list(argv)
        self.calls.append((argv, dict(env), cwd))
        if argv[1:2] == ["ci"]:
            assert cwd is not None
            self.seen = {"lock": json.loads((cwd / "package-lock.json").read_text()),
                         "manifest": json.loads((cwd / "package.json").read_text()),
                         "timeout": timeout}
            if self.npm.returncode == 0:  # what npm ci leaves: the package, extracted
                pkg = cwd / "node_modules" / next(iter(self.seen["manifest"]["dependencies"]))
                pkg.mkdir(parents=True)
                (pkg / "claude").write_text("#!/bin/sh\n")
            return self.npm
        if argv[-1] == "--version" and "exec" not in argv:
            return CommandResult(0, self.version, "")
        if "clone" in argv:
            (Path(argv[-1]) / ".git").mkdir(parents=True)
            return CommandResult(0, "", "")
        if argv[1:2] == ["up"]:
            return CommandResult(0 if '"success"' in self.up else 1, self.up, "")
        if argv[1:2] == ["exec"]:
            return self.in_container
        return CommandResult(0, "", "")

    def argvs(self) -> list[list[str]]:
        return [argv for argv, _, _ in self.calls]


def _install(root: Path, runner: Runner, **kwargs: Any) -> ci.Installed:
    return ci.install(root, npm="/usr/local/bin/npm", runner=runner,
                      env={"PATH": "/usr/local/bin:/usr/bin"},
                      **{"package": PACKAGE, **kwargs})


# -- pins and documents ------------------------------------------------------------------


def test_the_pinned_version_is_the_one_the_tests_install() -> None:
    script = (REPO / "scripts" / "install-claude.sh").read_text()
    found = re.search(r'^CLAUDE_VERSION="\$\{AGENTSPACES_CLAUDE_VERSION:-([^}]+)\}"$', script,
                      re.MULTILINE)
    assert found and found.group(1) == ci.CLAUDE_CODE_VERSION
    for package in ci.PACKAGES.values():
        assert package.version == ci.CLAUDE_CODE_VERSION
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", package.integrity)


def test_the_lockfile_pins_the_platform_package_by_url_and_sha512() -> None:
    lock = ci.lockfile(PACKAGE)
    assert lock["lockfileVersion"] == 3
    root = lock["packages"][""]
    assert root["dependencies"] == {"@anthropic-ai/claude-code-linux-x64": "2.1.332"}
    entry = lock["packages"]["node_modules/@anthropic-ai/claude-code-linux-x64"]
    assert entry["resolved"] == ("https://registry.npmjs.org/@anthropic-ai/claude-code-linux-x64"
                                 "/-/claude-code-linux-x64-2.1.332.tgz")
    assert entry["integrity"] == PACKAGE.integrity
    assert (entry["os"], entry["cpu"], entry["libc"]) == (["linux"], ["x64"], ["glibc"])
    assert ci.manifest(PACKAGE)["dependencies"] == root["dependencies"]
    assert ci.PACKAGES["aarch64"].tarball_url.endswith(
        "/@anthropic-ai/claude-code-linux-arm64/-/claude-code-linux-arm64-2.1.332.tgz")


def test_the_package_follows_the_architecture() -> None:
    assert ci.platform_package("x86_64") is PACKAGE
    assert ci.platform_package("aarch64").cpu == "arm64"
    with pytest.raises(ci.InstallError, match="architecture 'riscv64'"):
        ci.platform_package("riscv64")


def test_npm_gets_only_what_it_needs_of_the_environment(tmp_path: Path) -> None:
    environ = {"PATH": "/p", "HOME": "/root", "https_proxy": "http://proxy:3128",
               "ANTHROPIC_API_KEY": "sk-secret", "AWS_SECRET_ACCESS_KEY": "x"}
    assert ci.npm_env(environ) == {"PATH": "/p", "HOME": "/root",
                                   "https_proxy": "http://proxy:3128"}
    assert ci.npm_env({})["PATH"] == ci.DEFAULT_PATH
    bundle = tmp_path / "ca.pem"
    assert "NODE_EXTRA_CA_CERTS" not in ci.npm_env(environ, extra_ca_certs=bundle)  # missing
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    assert ci.npm_env(environ, extra_ca_certs=bundle)["NODE_EXTRA_CA_CERTS"] == str(bundle)


# -- the installer's decisions -------------------------------------------------------------


def test_a_fresh_install_runs_npm_ci_on_the_lockfile_then_checks_the_version(
        tmp_path: Path) -> None:
    root = tmp_path / "claude-code"
    runner = Runner()
    done = _install(root, runner)
    assert done == ci.Installed(ci.binary_path(root, PACKAGE), installed_now=True)
    assert done.binary == (root / "2.1.332" / "node_modules" / "@anthropic-ai"
                           / "claude-code-linux-x64" / "claude")
    assert done.binary.is_file() and done.binary.stat().st_mode & 0o777 == 0o755
    (npm, npm_env, npm_cwd), (version, version_env, _) = runner.calls
    assert npm[:3] == ["/usr/local/bin/npm", "ci", "--ignore-scripts"]
    assert npm[npm.index("--cache") + 1] == str(root / ".npm-cache")
    assert npm_cwd == root / ".2.1.332.partial" and npm_env == {"PATH": "/usr/local/bin:/usr/bin"}
    assert runner.seen["lock"] == ci.lockfile(PACKAGE)
    assert runner.seen["manifest"] == ci.manifest(PACKAGE)
    assert runner.seen["timeout"] == ci.INSTALL_TIMEOUT
    # The version is asked of the binary before it is moved into place.
    assert version == [str(npm_cwd / "node_modules" / PACKAGE.name / "claude"), "--version"]
    assert version_env["DISABLE_AUTOUPDATER"] == "1"
    assert sorted(p.name for p in root.iterdir()) == ["2.1.332"]  # no partial, no cache
    assert ci.is_installed(root, PACKAGE)


def test_an_install_that_is_there_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "claude-code"
    _install(root, Runner())
    runner = Runner()
    assert _install(root, runner) == ci.Installed(ci.binary_path(root, PACKAGE), False)
    assert runner.calls == []
    # A different pin for the same version (or a marker that does not match) reinstalls.
    other = ci.PlatformPackage(PACKAGE.name, PACKAGE.version, "sha512-" + "A" * 86 + "==", "x64")
    assert not ci.is_installed(root, other)
    assert _install(root, runner, package=other).installed_now
    assert runner.seen["lock"]["packages"][f"node_modules/{PACKAGE.name}"]["integrity"] == \
        other.integrity
    assert ci.is_installed(root, other) and not ci.is_installed(root, PACKAGE)
    # A binary gone from under its marker is reinstalled too.
    ci.binary_path(root, other).unlink()
    assert _install(root, Runner(), package=other).installed_now


def test_npm_failing_leaves_nothing_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "claude-code"
    stderr = ("npm error code EINTEGRITY\n"
              "npm error sha512-x integrity checksum failed when using sha512: wanted "
              "sha512-x but got sha512-y. (186117258 bytes)\n"
              "npm error A complete log of this run can be found in: /x/_logs/1.log\n")
    with pytest.raises(ci.InstallError) as info:
        _install(root, Runner(npm=CommandResult(1, "", stderr)))
    message = str(info.value)
    assert message.startswith("npm ci @anthropic-ai/claude-code-linux-x64@2.1.332 exited 1:")
    assert "EINTEGRITY" in message and "wanted sha512-x but got sha512-y" in message
    assert "complete log" not in message
    assert list(root.iterdir()) == []
    with pytest.raises(ci.InstallError, match="exited 124: npm timed out after 1200s"):
        _install(root, Runner(npm=CommandResult(124, "", "npm timed out after 1200s")))
    assert list(root.iterdir()) == []


def test_a_binary_that_does_not_report_the_version_is_not_installed(tmp_path: Path) -> None:
    root = tmp_path / "claude-code"
    with pytest.raises(ci.InstallError, match=r"claude --version did not report 2\.1\.332"):
        _install(root, Runner(version="2.1.300 (Claude Code)\n"))
    assert list(root.iterdir()) == []
    assert not ci.is_installed(root, PACKAGE)


def test_a_leftover_partial_install_is_replaced_and_a_given_cache_kept(tmp_path: Path) -> None:
    root, cache = tmp_path / "claude-code", tmp_path / "npm-cache"
    stale = root / ".2.1.332.partial" / "node_modules" / PACKAGE.name
    stale.mkdir(parents=True)
    (stale / "claude").write_text("half\n")
    cache.mkdir()
    runner = Runner()
    _install(root, runner, npm_cache=cache)
    assert runner.calls[0][0][runner.calls[0][0].index("--cache") + 1] == str(cache)
    assert cache.is_dir()
    assert ci.binary_path(root, PACKAGE).read_text() == "#!/bin/sh\n"


# -- what the devcontainer gets ------------------------------------------------------------


def test_the_binary_is_bound_read_only_on_the_path_and_no_feature_is_added(
        tmp_path: Path) -> None:
    binary = Path("/var/lib/agentspaces/claude-code/2.1.332/node_modules/x/claude")
    out, _ = dc.augment({"image": "i"}, secrets_dir=Path("/s"), claude_dir=Path("/c"),
                        claude_binary=binary)
    assert out["mounts"][-1] == f"source={binary},target=/usr/local/bin/claude,type=bind,readonly"
    plain, _ = dc.augment({"image": "i"}, secrets_dir=Path("/s"), claude_dir=Path("/c"))
    assert not [m for m in plain["mounts"] if "/usr/local/bin/claude" in m]
    argv = dc.up_argv("devcontainer", Path("/w/r"), ("--config", "/c.json"),
                      claude_feature=False)
    assert "--additional-features" not in argv and not [a for a in argv if "ghcr.io" in a]
    assert argv[-2:] == ["--remote-env", "CLAUDE_CONFIG_DIR=/workspaces/.claude"]
    assert "--additional-features" in dc.up_argv("devcontainer", Path("/w/r"), ())
    # Both the generated config and a repository's override get the bind.
    repo = tmp_path / "repo"
    (repo / ".devcontainer").mkdir(parents=True)
    for present in (False, True):
        if present:
            (repo / ".devcontainer" / "devcontainer.json").write_text('{"image": "own"}')
        choice = dc.choose_config(repo=repo, devcontainer_path=None, image=None,
                                  default_text=None, work_dir=tmp_path / "w",
                                  secrets_dir=Path("/s"), claude_dir=Path("/c"),
                                  claude_binary=binary)
        assert choice.write_path.name == ("override.json" if present else "devcontainer.json")
        assert f"source={binary},target=/usr/local/bin/claude,type=bind,readonly" in \
            choice.document["mounts"]


# -- the start sequence ------------------------------------------------------------------


def _boot(tmp_path: Path, runner: Runner, claude_code: str = "npm") -> Bootstrap:
    cfg = parse_config({
        "version": 1, "workspace": {"name": "demo", "namespace": "default"},
        "host": "demo.example.com",
        "listen": {"api": "127.0.0.1:9443", "local": "127.0.0.1:9180"},
        "tls": {"cert": "/c", "key": "/k"}, "tokenSha256": "0" * 64,
        "caddy": {"admin": "127.0.0.1:2019", "tlsMode": "acme"},
        "paths": {"workspaces": str(tmp_path / "ws"), "state": str(tmp_path / "state")},
        "repository": {"url": "https://git.example.com/org/demo.git"},
        "tools": {"npm": "/usr/local/bin/npm"},
        "claudeCode": claude_code,
    })
    cfg.paths.state.mkdir(parents=True)
    (cfg.paths.state / "bootstrap").write_text("done\n")
    store = SecretStore(cfg.paths.secrets)
    store.apply(Delivery(version="1", basic_auth=BasicAuth("dev", "$2b$04$" + "a" * 53),
                         anthropic_api_key=None, repository_token=None))
    return Bootstrap(cfg, store, configure_claude=lambda repo: None, runner=runner,
                     poll_interval=0.01)


def _started(boot: Bootstrap) -> None:
    assert boot.request_start(None)[0] == 202
    assert boot.wait(10)


needs_a_known_machine = pytest.mark.skipif(platform.machine() not in ci.PACKAGES,
                                           reason="no Claude Code build for this machine")


@needs_a_known_machine
def test_npm_mode_installs_before_up_and_mounts_instead_of_the_feature(tmp_path: Path) -> None:
    runner = Runner()
    boot = _boot(tmp_path, runner)
    _started(boot)
    state = boot.snapshot()
    assert state.stage == READY and state.devcontainer_state == "running", state
    assert state.message == "" and state.notes == []
    argvs = runner.argvs()
    assert [a[1] for a in argvs] == ["-c", "ci", "--version", "up", "exec"]
    binary = ci.binary_path(tmp_path / "state" / "claude-code", ci.platform_package())
    assert argvs[2] == [str(tmp_path / "state" / "claude-code" / ".2.1.332.partial"
                            / binary.relative_to(binary.parents[3])), "--version"]
    up = argvs[3]
    assert "--additional-features" not in up
    generated = json.loads((tmp_path / "state" / "devcontainer" / "devcontainer.json")
                           .read_text())
    assert f"source={binary},target=/usr/local/bin/claude,type=bind,readonly" in \
        generated["mounts"]
    # The docker guard lets exactly that bind through.
    guard = (tmp_path / "state" / "devcontainer" / "docker-guard").read_text()
    assert json.dumps(str(binary))[1:-1] in guard
    assert up[up.index("--docker-path") + 1] == str(tmp_path / "state" / "devcontainer"
                                                    / "docker-guard")
    # ... and `claude` in the started container, run as agentspaces-claude runs it (the
    # container's user and login PATH), is the mounted binary.
    config = str(tmp_path / "state" / "devcontainer" / "devcontainer.json")
    assert argvs[4] == ["devcontainer", "exec", "--workspace-folder", str(tmp_path / "ws"
                                                                          / "demo"),
                        "--config", config, "--remote-env", "DISABLE_AUTOUPDATER=1",
                        "claude", "--version"]


def test_feature_mode_installs_nothing(tmp_path: Path) -> None:
    runner = Runner()
    boot = _boot(tmp_path, runner, claude_code="feature")
    _started(boot)
    assert boot.snapshot().stage == READY
    [up] = [a for a in runner.argvs() if a[1] == "up"]
    assert json.loads(up[up.index("--additional-features") + 1]) == {
        "ghcr.io/anthropics/devcontainer-features/claude-code:1": {}}
    assert [a[1] for a in runner.argvs()] == ["-c", "up"]
    assert not (tmp_path / "state" / "claude-code").exists()


@needs_a_known_machine
def test_a_failed_install_is_named_and_up_does_not_run(tmp_path: Path) -> None:
    runner = Runner(npm=CommandResult(1, "", "npm error code ECONNREFUSED\n"
                                             "npm error errno ECONNREFUSED\n"))
    boot = _boot(tmp_path, runner)
    _started(boot)
    state = boot.snapshot()
    assert state.stage == FAILED and state.devcontainer_state == "failed"
    assert state.devcontainer_message.startswith("Claude Code install from npm failed: npm ci ")
    assert "ECONNREFUSED" in state.devcontainer_message
    assert "up" not in [a[1] for a in runner.argvs()]
    # A retry installs and starts.
    runner.npm = CommandResult(0, "", "")
    _started(boot)
    assert boot.snapshot().stage == READY
    assert [a[1] for a in runner.argvs()].count("up") == 1


@needs_a_known_machine
def test_a_container_that_cannot_run_the_binary_is_noted(tmp_path: Path) -> None:
    runner = Runner(in_container=CommandResult(
        127, "", "exec /usr/local/bin/claude: no such file or directory"))
    boot = _boot(tmp_path, runner)
    _started(boot)
    state = boot.snapshot()
    assert state.stage == READY and state.devcontainer_state == "running"
    [note] = state.notes
    assert "must be glibc-based" in note and "exit 127: exec /usr/local/bin/claude" in note
    assert state.message == note
    # Another claude first on the PATH (the image's own) is not the one installed either.
    runner = Runner(in_container=CommandResult(0, "1.0.0 (Claude Code)\n", ""))
    boot = _boot(tmp_path / "again", runner)
    _started(boot)
    [note] = boot.snapshot().notes
    assert "is not the Claude Code the VM installed" in note and "1.0.0" in note


# -- from the class to agent.json ----------------------------------------------------------


def test_the_class_field_reaches_agent_json() -> None:
    assert model.default_of(model.ClassDevcontainerSpec, "claude_code") == "feature"
    for value in ("feature", "npm"):
        klass = make_klass(devcontainer={"claudeCode": value})
        assert isinstance(klass, WorkspaceClass) and klass.claude_code == value
        doc = render_agent_config(WS, make_spec(klass), klass, host=HOST,
                                  token_sha256="0" * 64)
        assert doc.get("claudeCode", "feature") == value
        assert ("claudeCode" in doc) == (value == "npm")  # the default costs no user-data
    assert make_klass().claude_code == "feature"
    with pytest.raises(ValueError, match="claudeCode"):
        make_klass(devcontainer={"claudeCode": "apt"})


def test_agent_json_claude_code_is_checked() -> None:
    base: dict[str, Any] = {
        "version": 1, "workspace": {"name": "d", "namespace": "n"}, "host": "d.example.com",
        "listen": {"api": "127.0.0.1:9443", "local": "127.0.0.1:9180"},
        "tls": {"cert": "/c", "key": "/k"}, "tokenSha256": "0" * 64,
        "caddy": {"admin": "127.0.0.1:2019", "tlsMode": "acme"},
        "paths": {"workspaces": "/w", "state": "/s"}}
    assert parse_config(base).claude_code == "feature"
    assert parse_config(base).tools.npm == "npm"
    assert parse_config({**base, "claudeCode": "npm"}).claude_code == "npm"
    with pytest.raises(ConfigError, match="claudeCode: expected one of feature, npm"):
        parse_config({**base, "claudeCode": "pip"})
