"""The real Claude Code CLI gets each credential the product delivers, and nothing else.

The real agent (simulated start) receives the credential over PUT /v1/secrets, keeps it
under its secrets directory and writes Claude's settings.json; the real `claude`
(AGENTSPACES_CLAUDE_BIN) is started the way CloudCLI starts it on a VM: through the
`agentspaces-claude` wrapper from the rendered user-data, whose `devcontainer exec`
(a stand-in that runs the command where the container would) runs the wrapper's
in-container launcher, in a private mount namespace where the agent's secrets mount is
at /run/agentspaces, read-only, as in the devcontainer. The test's environment carries
no credential: the scripted Messages API sees what the product wired, so it shows that

- an API key goes out as `x-api-key` (from the apiKeyHelper);
- a Claude subscription token goes out as `authorization: Bearer` with the OAuth beta
  and no API key (CLAUDE_CODE_OAUTH_TOKEN, exported by the launcher);
- a gateway gets its base URL's path, `authorization: Bearer <its token>`, its extra
  headers and its model names (settings.json `env` and the apiKeyHelper);
- a rotated value is used by the next session without restarting anything, and a
  switch of credential leaves nothing of the previous one behind;
- no value is in any argument list the wrapper passes on, nor in settings.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentspaces.lifeline import die_with_parent
from agentspaces.vmconfig.claude import render_claude_settings
from agentspaces.vmconfig.layout import VmLayout
from agentspaces.vmconfig.userdata import read_write_files
from agentspaces_vm.password_hash import hash_password
from tests.component.agent_harness import AgentProcess, make_agent, stop_process
from tests.component.test_claude_real import claude_binary, status_client
from tests.support.messages_api import MessagesAPI, Request, Text
from tests.support.waiting import wait_for
from tests.unit.vmconfig_inputs import make_klass, make_spec, render_variant

pytestmark = pytest.mark.timeout(300)

WRAPPER = "/usr/local/bin/agentspaces-claude"
API_KEY = ("sk-ant-api03-component-one-" + "A" * 16, "sk-ant-api03-component-two-" + "B" * 16)
OAUTH = ("sk-ant-oat01-component-one-" + "C" * 16, "sk-ant-oat01-component-two-" + "D" * 16)
GATEWAY_TOKEN = ("gateway-token-one-" + "E" * 16, "gateway-token-two-" + "F" * 16)
OAUTH_BETA = "oauth-2025-04-20"
HASH = hash_password("component-password", log_n=10)
# Enters a private mount namespace with the agent's secrets directory ($1) read-only at
# /run/agentspaces, as the devcontainer mounts it, then runs the rest.
_MOUNT = ('mount -t tmpfs agentspaces-test /run && mkdir /run/agentspaces && '
          'mount --bind -- "$1" /run/agentspaces && '
          'mount -o remount,bind,ro /run/agentspaces && shift && exec "$@"')


@dataclass
class Session:
    result: subprocess.CompletedProcess[str]
    argv: str
    """Every argument the wrapper passed to `devcontainer`."""


class Workspace:
    """The agent, its secrets API, and claude started as CloudCLI starts it."""

    def __init__(self, agent: AgentProcess, tmp: Path) -> None:
        self.agent = agent
        self.tmp = tmp
        self.version = 0
        self.bin = tmp / "bin"
        self.bin.mkdir()
        self.argv_log = tmp / "devcontainer-argv"
        repo = agent.workspaces / "demo"
        (self.bin / "claude").symlink_to(claude_binary())
        # docker: the devcontainer is running, its folder is the repository.
        _script(self.bin / "docker", f'''case "$1" in
  ps) echo c0ffee ;;
  inspect) case "$3" in *local_folder*) echo "{repo}" ;; *) echo "<no value>" ;; esac ;;
  *) exit 2 ;;
esac''')
        # devcontainer exec: records its arguments, then runs the command in the folder,
        # with the environment it was given (the container's, in this test).
        _script(self.bin / "devcontainer", f'''printf '%s\\n' "$@" >> "{self.argv_log}"
[ "$1" = exec ] || exit 2
shift
while [ $# -gt 0 ]; do
  case "$1" in
    --workspace-folder) cd "$2" || exit 2; shift 2 ;;
    --config) shift 2 ;;
    *) break ;;
  esac
done
exec "$@"''')
        wrapper = read_write_files(render_variant("minimal"))[WRAPPER]
        self.wrapper = tmp / "agentspaces-claude"
        self.wrapper.write_bytes(wrapper.content)
        self.wrapper.chmod(0o755)

    def deliver(self, **credential: Any) -> None:
        """PUT /v1/secrets with this credential (a full replacement, a new version)."""
        self.version += 1
        body = {"version": f"v{self.version}",
                "basicAuth": {"username": "dev", "scryptHash": HASH}, **credential}
        with status_client(self.agent) as c:
            response = c.put("/v1/secrets", json=body)
            assert response.status_code == 200, response.text
            wait_for(lambda: c.get("/v1/status").json()["secrets"]["version"]
                     == f"v{self.version}", 10, "the delivery applied")

    def settings(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(
            (self.agent.workspaces / ".claude" / "settings.json").read_text())
        return doc

    def claude(self, api: MessagesAPI, *args: str, base_url: str | None) -> Session:
        """`agentspaces-claude -p ...` as CloudCLI runs it; `base_url` stands in for
        Anthropic's API (None: only what the product configured)."""
        self.argv_log.write_text("")
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        env = {"PATH": f"{self.bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": str(home), "LANG": "C.UTF-8",
               # What the devcontainer sets for every process in it (docs/vm.md).
               "CLAUDE_CONFIG_DIR": str(self.agent.workspaces / ".claude"),
               "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               # Anything but the scripted API on loopback goes nowhere.
               "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "NO_PROXY": "127.0.0.1,localhost"}
        if base_url is not None:
            env["ANTHROPIC_BASE_URL"] = base_url
        unshare = shutil.which("unshare")
        assert unshare, "util-linux unshare is needed (apt-get install util-linux)"
        namespaces = ["--mount"] if os.geteuid() == 0 else \
            ["--user", "--map-root-user", "--mount"]
        argv = [unshare, *namespaces, "--propagation", "private", "--", "sh", "-c", _MOUNT,
                "enter", str(self.agent.state / "secrets" / "claude"), str(self.wrapper),
                "-p", *args]
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, preexec_fn=die_with_parent)
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            stop_process(proc)  # type: ignore[arg-type]
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        assert result.returncode == 0, (f"claude failed: {out[-2000:]}\n{err[-3000:]}\n"
                                        f"requests: {[r.path for r in api.requests]}")
        return Session(result, self.argv_log.read_text())


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    root = tmp_path / "agent"
    root.mkdir()
    proc = make_agent(root)
    layout = VmLayout(local_listen=f"{proc.addr}:{proc.ports['local']}",
                      config_dir=str(root), workspaces_dir=str(proc.workspaces))
    seeds = Path(layout.claude_seed_dir)
    seeds.mkdir()
    (seeds / "settings.json").write_text(json.dumps(render_claude_settings(
        make_spec(make_klass()), layout=layout)))
    try:
        proc.start()
        with status_client(proc) as c:
            assert c.post("/v1/start", json={"restore": None}).status_code == 202
            wait_for(lambda: c.get("/v1/status").json()["bootStage"] == "ready", 30,
                     "the simulated start to reach ready")
        yield Workspace(proc, tmp_path)
    finally:
        proc.stop()


def _turns(api: MessagesAPI) -> list[Request]:
    turns = api.conversation()
    assert turns, [r.path for r in api.requests]
    return turns


def _no_value_leaked(ws: Workspace, session: Session, *values: str) -> None:
    settings = json.dumps(ws.settings())
    for value in values:
        assert value not in session.argv, "a secret in the wrapper's argument list"
        assert value not in settings, "a secret in settings.json"
        assert value not in ws.agent.logs(), "a secret in the agent's log"


def test_an_api_key_is_sent_as_x_api_key_and_rotates_in_place(workspace: Workspace) -> None:
    ws = workspace
    with MessagesAPI([Text("one"), Text("two")]) as api:
        ws.deliver(anthropicApiKey=API_KEY[0])
        first = ws.claude(api, "say one", base_url=api.url)
        ws.deliver(anthropicApiKey=API_KEY[1])
        second = ws.claude(api, "say two", base_url=api.url)
    one, two = _turns(api)
    assert one.headers["x-api-key"] == API_KEY[0]
    assert two.headers["x-api-key"] == API_KEY[1]
    for request in (one, two):
        assert OAUTH_BETA not in request.headers.get("anthropic-beta", "")
    assert ws.settings()["apiKeyHelper"] == "cat /run/agentspaces/anthropic-api-key"
    _no_value_leaked(ws, first, *API_KEY)
    _no_value_leaked(ws, second, *API_KEY)


def test_a_subscription_token_is_sent_as_an_oauth_bearer(workspace: Workspace) -> None:
    ws = workspace
    with MessagesAPI([Text("one"), Text("two")]) as api:
        ws.deliver(claudeOauthToken=OAUTH[0])
        first = ws.claude(api, "say one", base_url=api.url)
        ws.deliver(claudeOauthToken=OAUTH[1])  # rotated: the next session has it
        second = ws.claude(api, "say two", base_url=api.url)
    one, two = _turns(api)
    for request, token in ((one, OAUTH[0]), (two, OAUTH[1])):
        assert request.headers["authorization"] == f"Bearer {token}"
        assert OAUTH_BETA in request.headers["anthropic-beta"].split(",")
        assert "x-api-key" not in request.headers
    assert "apiKeyHelper" not in ws.settings()  # it would outrank the token
    _no_value_leaked(ws, first, *OAUTH)
    _no_value_leaked(ws, second, *OAUTH)


def test_a_gateway_gets_its_url_token_headers_and_models(workspace: Workspace) -> None:
    ws = workspace
    with MessagesAPI([Text("one"), Text("two"), Text("three")], prefix="/llm/anthropic",
                     model="gateway-answer") as api:
        gateway = {"baseUrl": f"{api.url}/llm/anthropic", "authToken": GATEWAY_TOKEN[0],
                   "headers": {"X-Team": "platform"},
                   "models": {"default": "team-large", "haiku": "team-small"}}
        ws.deliver(gateway=gateway)
        first = ws.claude(api, "say one", base_url=None)
        haiku = ws.claude(api, "--model", "haiku", "say two", base_url=None)
        ws.deliver(gateway={**gateway, "authToken": GATEWAY_TOKEN[1],
                            "models": {"default": "team-larger"}})
        rotated = ws.claude(api, "say three", base_url=None)
    one, two, three = _turns(api)
    for request in (one, two, three):
        assert request.path.startswith("/llm/anthropic/v1/messages")
        assert request.headers["x-team"] == "platform"
        assert OAUTH_BETA not in request.headers.get("anthropic-beta", "")
    assert one.headers["authorization"] == two.headers["authorization"] == \
        f"Bearer {GATEWAY_TOKEN[0]}"
    assert three.headers["authorization"] == f"Bearer {GATEWAY_TOKEN[1]}"
    assert (one.model, two.model, three.model) == ("team-large", "team-small", "team-larger")
    env = ws.settings()["env"]
    assert env["ANTHROPIC_BASE_URL"] == gateway["baseUrl"]
    assert "ANTHROPIC_DEFAULT_HAIKU_MODEL" not in env  # the new delivery names no haiku
    for session in (first, haiku, rotated):
        _no_value_leaked(ws, session, *GATEWAY_TOKEN)


def test_switching_credentials_leaves_nothing_of_the_previous_one(
        workspace: Workspace) -> None:
    ws = workspace
    with MessagesAPI([Text("one"), Text("two")], prefix="/gw") as gateway_api, \
            MessagesAPI([Text("three")]) as api:
        ws.deliver(gateway={"baseUrl": f"{gateway_api.url}/gw", "authToken": GATEWAY_TOKEN[0],
                            "models": {"default": "team-large"}})
        ws.claude(gateway_api, "say one", base_url=None)
        ws.deliver(claudeOauthToken=OAUTH[0])
        ws.claude(api, "say three", base_url=api.url)
    (through_gateway,) = _turns(gateway_api)
    assert through_gateway.headers["authorization"] == f"Bearer {GATEWAY_TOKEN[0]}"
    (direct,) = _turns(api)
    # The gateway's URL, model and token are gone: Anthropic's API, Claude's own model,
    # the subscription token alone.
    assert direct.headers["authorization"] == f"Bearer {OAUTH[0]}"
    assert direct.model != "team-large" and "x-api-key" not in direct.headers
    assert not any(k.startswith("ANTHROPIC_") for k in ws.settings()["env"])
    assert sorted(p.name for p in (ws.agent.state / "secrets" / "claude").iterdir()) == \
        ["claude-oauth-token"]
