"""The class's CA certificates on the VM: kept when delivered, installed into the
system store before the restore and the clone, Docker restarted for them before
`devcontainer up`, Node told about them; idempotent across agent restarts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from agentspaces.pki import generate
from agentspaces_vm.bootstrap import FAILED, READY, CommandResult
from agentspaces_vm.config import ConfigError, validate_ca_bundle
from agentspaces_vm.trust import CERT_PREFIX, TrustStore, bundle_file, node_env
from tests.support.scope_builder import NOW
from tests.unit.test_agent_bootstrap import Runner, make_bootstrap
from tests.unit.test_claude_install import Runner as NpmRunner
from tests.unit.test_claude_install import _boot as npm_boot
from tests.unit.test_claude_install import needs_a_known_machine

CA_1 = generate("ca-one.example", NOW).cert_pem
CA_2 = generate("ca-two.example", NOW).cert_pem
SYSTEM_TOOLS = ("update-ca-certificates", "systemctl")


class Tools(Runner):
    """git and the devcontainer CLI as in the sequence tests, plus the system tools."""

    def __init__(self, fail: str | None = None) -> None:
        super().__init__()
        self.fail = fail

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None,
                 timeout: float) -> CommandResult:
        if argv[0] in SYSTEM_TOOLS:
            self.calls.append((list(argv), dict(env)))
            if argv[0] == self.fail:
                return CommandResult(1, "", f"{argv[0]}: cannot write /etc/ssl/certs")
            return CommandResult(0, "", "")
        return super().__call__(argv, env, cwd, timeout)

    def commands(self) -> list[str]:
        return [f"git {argv[3]}" if argv[0] == "git" else
                " ".join(argv[:3]) if argv[0] == "systemctl" else
                argv[0] if argv[0] in SYSTEM_TOOLS else argv[1]
                for argv, _ in self.calls]


def _store(tmp_path: Path, runner: Tools, simulate: bool = False) -> TrustStore:
    return TrustStore(tmp_path / "state", runner, simulate=simulate,
                      cert_dir=None if simulate else tmp_path / "ca-certificates")


def test_the_pem_delivered_is_checked_and_rewrapped() -> None:
    one_line = CA_1.replace("\n", "").replace("-----BEGIN CERTIFICATE-----",
                                              "-----BEGIN CERTIFICATE-----\n")
    assert validate_ca_bundle(one_line + CA_2, "caBundle") == (CA_1, CA_2)
    assert validate_ca_bundle(None, "caBundle") == ()
    for bad in ("", "hello", CA_1 + "# trailing text", 42,
                "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
                CA_1 * 250):  # over the size cap
        with pytest.raises(ConfigError, match="caBundle"):
            validate_ca_bundle(bad, "caBundle")


def test_install_writes_one_file_per_certificate_and_repeats_nothing(tmp_path: Path) -> None:
    runner = Tools()
    store = _store(tmp_path, runner)
    assert store.install() is False and runner.calls == []  # nothing delivered, nothing done
    assert store.save((CA_1, CA_2)) is True
    assert store.save((CA_1, CA_2)) is False
    assert store.certificates() == (CA_1, CA_2)

    assert store.install() is True
    certs = tmp_path / "ca-certificates"
    assert sorted(p.name for p in certs.iterdir()) == [f"{CERT_PREFIX}1.crt",
                                                       f"{CERT_PREFIX}2.crt"]
    assert (certs / f"{CERT_PREFIX}2.crt").read_text() == CA_2
    assert (certs / f"{CERT_PREFIX}1.crt").stat().st_mode & 0o777 == 0o644
    assert store.restart_docker() is True
    assert runner.commands() == ["update-ca-certificates", "systemctl restart docker.service"]

    # An agent restart: the same bundle installs nothing and restarts nothing.
    again = _store(tmp_path, runner)
    assert again.install() is False and again.restart_docker() is False
    assert len(runner.calls) == 2

    # One certificate less: its file goes, the store and Docker are refreshed once.
    again.save((CA_2,))
    assert again.install() is True and again.restart_docker() is True
    assert [p.name for p in certs.iterdir()] == [f"{CERT_PREFIX}1.crt"]
    assert (certs / f"{CERT_PREFIX}1.crt").read_text() == CA_2
    # None at all: our files go too (someone else's stay).
    (certs / "corporate.crt").write_text(CA_1)
    again.save(())
    assert again.install() is True and again.restart_docker() is True
    assert [p.name for p in certs.iterdir()] == ["corporate.crt"]
    assert runner.commands().count("update-ca-certificates") == 3
    assert not bundle_file(tmp_path / "state").exists()


def test_simulate_writes_the_sim_layout_and_runs_no_system_tool(tmp_path: Path) -> None:
    runner = Tools()
    store = _store(tmp_path, runner, simulate=True)
    store.save((CA_1,))
    assert store.install() is True and store.restart_docker() is False
    installed = tmp_path / "state" / "trust" / "system-ca-certificates" / f"{CERT_PREFIX}1.crt"
    assert installed.read_text() == CA_1
    assert runner.calls == []
    assert node_env(tmp_path / "state") == {
        "NODE_EXTRA_CA_CERTS": str(tmp_path / "state" / "trust" / "ca-bundle.pem")}


def test_the_sequence_trusts_the_bundle_before_fetching_anything(tmp_path: Path) -> None:
    runner = Tools()
    boot, _, events = make_bootstrap(tmp_path, runner)
    boot.trust = _store(tmp_path, runner)
    boot.trust.save((CA_1,))
    boot.request_start({"object": "b/1"})
    assert boot.wait(10)
    assert boot.snapshot().stage == READY
    assert runner.commands() == ["update-ca-certificates", "git clone", "git checkout",
                                 "systemctl restart docker.service", "up"]
    assert events[:2] == ["busy:True", "restore:b/1:ws"]  # after the store was updated
    up_env = runner.calls[-1][1]
    assert up_env["NODE_EXTRA_CA_CERTS"] == str(bundle_file(tmp_path / "state"))
    assert "NODE_EXTRA_CA_CERTS" not in runner.calls[1][1]  # git reads the system store

    # The agent restarts while ready: up runs again, nothing is installed or restarted.
    restarted, _, _ = make_bootstrap(tmp_path, runner)
    restarted.trust = _store(tmp_path, runner)
    restarted.resume()
    assert restarted.wait(10)
    assert runner.commands()[5:] == ["up"]


def test_without_a_bundle_nothing_changes(tmp_path: Path) -> None:
    runner = Tools()
    boot, _, _ = make_bootstrap(tmp_path, runner)
    boot.trust = _store(tmp_path, runner)
    boot.request_start(None)
    assert boot.wait(10)
    assert runner.commands() == ["git clone", "git checkout", "up"]
    assert "NODE_EXTRA_CA_CERTS" not in runner.calls[-1][1]


@pytest.mark.parametrize(("tool", "stage_message"), [
    ("update-ca-certificates", "installing the class's CA certificates failed: "
                               "update-ca-certificates failed"),
    ("systemctl", "systemctl failed: systemctl: cannot write"),
])
def test_a_failing_system_tool_fails_the_start_and_says_which(
        tmp_path: Path, tool: str, stage_message: str) -> None:
    runner = Tools(fail=tool)
    boot, _, _ = make_bootstrap(tmp_path, runner)
    boot.trust = _store(tmp_path, runner)
    boot.trust.save((CA_1,))
    boot.request_start(None)
    assert boot.wait(10)
    state = boot.snapshot()
    assert state.stage == FAILED and stage_message in state.message
    assert "up" not in runner.commands()
    if tool == "update-ca-certificates":
        assert runner.commands() == ["update-ca-certificates"]  # no clone without trust


@needs_a_known_machine
def test_npm_installing_claude_code_trusts_the_bundle_too(tmp_path: Path) -> None:
    """claudeCode: npm behind a registry mirror with a private CA."""
    runner = NpmRunner()
    boot = npm_boot(tmp_path, runner)
    boot.trust = TrustStore(tmp_path / "state", runner, simulate=False,
                            cert_dir=tmp_path / "ca-certificates")
    boot.trust.save((CA_1,))
    assert boot.request_start(None)[0] == 202 and boot.wait(10)
    assert boot.snapshot().stage == READY
    npm = next(env for argv, env, _ in runner.calls if argv[1:2] == ["ci"])
    assert npm["NODE_EXTRA_CA_CERTS"] == str(bundle_file(tmp_path / "state"))
    assert runner.argvs()[0] == ["update-ca-certificates"]
