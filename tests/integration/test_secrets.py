"""Secrets reach the VM only over the pinned agent channel, rotate within one poll
interval, and never appear in user-data, status, events or logs."""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator

import pytest
import yaml

from tests.conftest import Kubectl
from tests.support.stack import (
    VmStack,
    condition,
    secret,
    vm_stack,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "secrets"
HTTP_PORT = 18082
API_KEY_1 = "sk-ant-api03-first-" + "A" * 24
API_KEY_2 = "sk-ant-api03-second-" + "B" * 24
REPO_TOKEN = "ghp_repository_token_" + "C" * 20
REGISTRY_PASSWORD_1 = "registry-password-first-" + "D" * 16
REGISTRY_PASSWORD_2 = "registry-password-second-" + "E" * 16
OAUTH_TOKEN_1 = "sk-ant-oat01-first-" + "F" * 24
OAUTH_TOKEN_2 = "sk-ant-oat01-second-" + "G" * 24
GATEWAY_TOKEN_1 = "gateway-token-first-" + "H" * 24
GATEWAY_TOKEN_2 = "gateway-token-second-" + "I" * 24


def _registry_secret(name: str, namespace: str, password: str) -> dict[str, object]:
    """A Secret as `kubectl create secret docker-registry` makes it."""
    auth = base64.b64encode(f"puller:{password}".encode()).decode()
    config = {"auths": {"registry.example.test:5000": {
        "username": "puller", "password": password, "auth": auth}}}
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {".dockerconfigjson": json.dumps(config)}}


@pytest.fixture(scope="module")
def stack(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[VmStack]:
    with vm_stack(control_plane, kubectl, tmp_path_factory.mktemp("vms"), CLASS, 6,
                  HTTP_PORT) as stack:
        yield stack


def _get(ip: str, host: str, auth: tuple[str, str] | None) -> int:
    conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=5)
    headers = {"Host": host}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode()
    conn.request("GET", "/", headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


def _secret_value(kubectl: Kubectl, name: str, ns: str, key: str) -> str:
    doc = kubectl.get_json("secret", name, "-n", ns)
    assert doc is not None
    return base64.b64decode(doc["data"][key]).decode()


def test_secrets_are_delivered_rotated_and_never_leak(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    clouds, vms, op = stack.clouds, stack.vms, stack.operator
    kubectl.apply(yaml.safe_dump_all([
        secret("anthropic", namespace, {"apiKey": API_KEY_1}),
        secret("repo", namespace, {"token": REPO_TOKEN}),
        _registry_secret("pull", namespace, REGISTRY_PASSWORD_1),
    ]))
    kubectl.apply(workspace("vault", namespace, CLASS,
                            agent={"apiKeySecretRef": {"name": "anthropic"}},
                            repository={"url": "https://github.com/example/private",
                                        "credentialsSecretRef": {"name": "repo"}},
                            devcontainer={"image": "registry.example.test:5000/dev:1",
                                          "registryCredentialsSecretRef": {"name": "pull"}}))
    ws = wait_for(lambda: (w := kubectl.get_json("workspace", "vault", "-n", namespace)) and
                  condition(w, "Ready").get("status") == "True" and w, 60, "Ready")
    server_id = int(ws["status"]["server"]["id"])
    vm = vms.vm(server_id)
    assert vm is not None
    state = vm.root / "var" / "lib" / "agentspaces" / "secrets"
    key_file = state / "claude" / "anthropic-api-key"
    assert key_file.read_text().strip() == API_KEY_1
    assert key_file.stat().st_mode & 0o077 == 0
    # Registry logins: root's only, where DOCKER_CONFIG points for devcontainer up.
    docker_config = state / "docker" / "config.json"
    assert REGISTRY_PASSWORD_1 in docker_config.read_text()
    assert docker_config.stat().st_mode & 0o077 == 0
    assert docker_config.parent.stat().st_mode & 0o077 == 0

    # The API key rotates without a rebuild, within one poll interval (1s here).
    kubectl.apply(yaml.safe_dump(secret("anthropic", namespace, {"apiKey": API_KEY_2})))
    changed = time.monotonic()
    wait_for(lambda: key_file.read_text().strip() == API_KEY_2, 15, "rotated key on the VM")
    print(f"\nAPI key rotation reached the VM after {time.monotonic() - changed:.1f}s "
          "(poll interval 1s)")
    assert vms.vm(server_id) is not None and vms.vm(server_id).ip == vm.ip  # same VM
    # So do the registry logins.
    kubectl.apply(yaml.safe_dump(_registry_secret("pull", namespace, REGISTRY_PASSWORD_2)))
    wait_for(lambda: REGISTRY_PASSWORD_2 in docker_config.read_text(), 15,
             "rotated registry logins on the VM")

    # The workspace password gates Caddy and rotates the same way.
    host = f"{ws['status']['hostname']}.example.test"
    password = _secret_value(kubectl, "vault-access", namespace, "password")
    assert _get(vm.ip, host, None) == 401
    assert _get(vm.ip, host, ("agent", password)) == 200
    kubectl("patch", "secret", "vault-access", "-n", namespace, "--type", "merge", "-p",
            '{"stringData":{"password":"a-new-password-chosen-by-the-user"}}')
    wait_for(lambda: _get(vm.ip, host, ("agent", "a-new-password-chosen-by-the-user")) == 200,
             15, "new password accepted")
    assert _get(vm.ip, host, ("agent", password)) == 401

    # The share-link and session keys go only over the agent channel, too.
    link_key = _secret_value(kubectl, "vault-access", namespace, "shareLinkKey")
    session_key = _secret_value(kubectl, "vault-access", namespace, "sessionKey")
    assert (state / "share-link-key").read_text().strip() == link_key
    assert (state / "session-key").stat().st_mode & 0o077 == 0

    # Nothing secret in user-data, status, events or any log.
    token = _secret_value(kubectl, "vault-agent", namespace, "token")
    secrets = {
        "anthropic key 1": API_KEY_1, "anthropic key 2": API_KEY_2,
        "repository token": REPO_TOKEN, "hetzner token": clouds.hetzner_token,
        "registry password 1": REGISTRY_PASSWORD_1, "registry password 2": REGISTRY_PASSWORD_2,
        "registry auth 1": base64.b64encode(f"puller:{REGISTRY_PASSWORD_1}".encode()).decode(),
        "registry auth 2": base64.b64encode(f"puller:{REGISTRY_PASSWORD_2}".encode()).decode(),
        "cloudflare token": clouds.cloudflare_token, "workspace password": password,
        "new password": "a-new-password-chosen-by-the-user", "agent bearer token": token,
        "share-link key": link_key, "session key": session_key,
    }
    places: dict[str, str] = {
        "user-data": clouds.hetzner.servers[server_id]["user_data"],
        "status": yaml.safe_dump(kubectl.get_json("workspace", "vault", "-n", namespace)),
        "events": kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "operator log": op.log(),
    }
    for log in sorted(vm.root.rglob("*.log")):
        places[f"VM log {log.name}"] = log.read_text(errors="replace")
    for place, text in places.items():
        for what, value in secrets.items():
            assert value not in text, f"{what} found in {place}"
    # No cloud credential ever reaches the VM's files either.
    for path in vm.root.rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            for what in ("hetzner token", "cloudflare token"):
                assert secrets[what].encode() not in data, f"{what} in {path}"

    kubectl("delete", "workspace", "vault", "-n", namespace, "--wait=false")
    wait_for(lambda: kubectl.get_json("workspace", "vault", "-n", namespace) is None, 60,
             "deleted")
    assert clouds.hetzner.servers == {}


def test_claude_credentials_are_delivered_rotated_switched_and_never_leak(
        stack: VmStack, kubectl: Kubectl, namespace: str) -> None:
    """A Claude subscription token, then an LLM gateway: each rotates in place, the
    switch between them needs no new server, and neither value leaks."""
    clouds, vms, op = stack.clouds, stack.vms, stack.operator
    kubectl.apply(yaml.safe_dump_all([
        secret("claude", namespace, {"oauthToken": OAUTH_TOKEN_1}),
        secret("llm", namespace, {"authToken": GATEWAY_TOKEN_1}),
    ]))
    kubectl.apply(workspace("subscriber", namespace, CLASS,
                            agent={"oauthTokenSecretRef": {"name": "claude"}}))
    ws = wait_for(lambda: (w := kubectl.get_json("workspace", "subscriber", "-n", namespace))
                  and condition(w, "Ready").get("status") == "True" and w, 60, "Ready")
    server_id = int(ws["status"]["server"]["id"])
    vm = vms.vm(server_id)
    assert vm is not None
    claude_dir = vm.root / "var" / "lib" / "agentspaces" / "secrets" / "claude"
    token_file = claude_dir / "claude-oauth-token"
    assert token_file.read_text().strip() == OAUTH_TOKEN_1
    assert token_file.stat().st_mode & 0o077 == 0

    kubectl.apply(yaml.safe_dump(secret("claude", namespace, {"oauthToken": OAUTH_TOKEN_2})))
    wait_for(lambda: token_file.read_text().strip() == OAUTH_TOKEN_2, 15,
             "rotated subscription token on the VM")

    # Switch to a gateway: the same server, the token file gone, the gateway's settings
    # in Claude's settings.json (its token only where the apiKeyHelper reads it).
    kubectl("patch", "workspace", "subscriber", "-n", namespace, "--type", "json", "-p",
            json.dumps([{"op": "remove", "path": "/spec/agent/oauthTokenSecretRef"},
                        {"op": "add", "path": "/spec/agent/gateway", "value": {
                            "baseUrl": "https://llm.example.test/anthropic",
                            "authTokenSecretRef": {"name": "llm"},
                            "models": {"default": "team-large"}}}]))
    gateway_file = claude_dir / "gateway-token"
    wait_for(lambda: gateway_file.exists() and not token_file.exists(), 15,
             "the gateway delivered instead of the token")
    assert gateway_file.read_text().strip() == GATEWAY_TOKEN_1
    settings_file = vm.workspace_dir / ".claude" / "settings.json"
    settings = wait_for(lambda: (doc := json.loads(settings_file.read_text()))
                        .get("env", {}).get("ANTHROPIC_MODEL") == "team-large" and doc, 15,
                        "the gateway's settings in settings.json")
    assert settings["env"]["ANTHROPIC_BASE_URL"] == "https://llm.example.test/anthropic"
    assert settings["apiKeyHelper"] == "cat /run/agentspaces/gateway-token"
    kubectl.apply(yaml.safe_dump(secret("llm", namespace, {"authToken": GATEWAY_TOKEN_2})))
    wait_for(lambda: gateway_file.read_text().strip() == GATEWAY_TOKEN_2, 15,
             "rotated gateway token on the VM")
    assert vms.vm(server_id) is not None and vms.vm(server_id).ip == vm.ip  # same VM
    assert len(clouds.hetzner.servers) == 1

    # A token in the wrong field is refused with a condition, before the VM sees it.
    kubectl.apply(yaml.safe_dump(secret("llm", namespace, {"authToken": "two words"})))
    bad = wait_for(lambda: (w := kubectl.get_json("workspace", "subscriber", "-n",
                                                  namespace))
                   and condition(w, "CredentialsAvailable").get("reason")
                   == "CredentialsInvalid" and w, 30, "CredentialsInvalid")
    assert "agent.gateway.authTokenSecretRef" in condition(bad, "CredentialsAvailable")[
        "message"]
    assert gateway_file.read_text().strip() == GATEWAY_TOKEN_2
    # Put right again (the operator cleans up only with readable credentials).
    kubectl.apply(yaml.safe_dump(secret("llm", namespace, {"authToken": GATEWAY_TOKEN_2})))
    wait_for(lambda: condition(kubectl.get_json("workspace", "subscriber", "-n", namespace),
                               "CredentialsAvailable").get("status") == "True", 30,
             "credentials available again")

    secrets = {"subscription token 1": OAUTH_TOKEN_1, "subscription token 2": OAUTH_TOKEN_2,
               "gateway token 1": GATEWAY_TOKEN_1, "gateway token 2": GATEWAY_TOKEN_2}
    places: dict[str, str] = {
        "user-data": clouds.hetzner.servers[server_id]["user_data"],
        "status": yaml.safe_dump(kubectl.get_json("workspace", "subscriber", "-n",
                                                  namespace)),
        "events": kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "operator log": op.log(),
        "settings.json": settings_file.read_text(),
    }
    for log in sorted(vm.root.rglob("*.log")):
        places[f"VM log {log.name}"] = log.read_text(errors="replace")
    for place, text in places.items():
        for what, value in secrets.items():
            assert value not in text, f"{what} found in {place}"

    kubectl("delete", "workspace", "subscriber", "-n", namespace, "--wait=false")
    wait_for(lambda: kubectl.get_json("workspace", "subscriber", "-n", namespace) is None,
             60, "deleted")
    assert clouds.hetzner.servers == {}
