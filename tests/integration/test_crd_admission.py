"""Invalid Workspaces and classes are rejected by the real apiserver at admission."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO, Kubectl

pytestmark = pytest.mark.integration

VALID = {
    "apiVersion": "agentspaces.dev/v1alpha1",
    "kind": "Workspace",
    "metadata": {"name": "demo"},
    "spec": {
        "className": "standard",
        "repository": {"url": "https://github.com/example/app", "ref": "main"},
    },
}


def _with(patch: dict, name: str = "demo") -> dict:
    doc = yaml.safe_load(yaml.safe_dump(VALID))
    doc["metadata"]["name"] = name

    def merge(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            elif value is None:
                dst.pop(key, None)
            else:
                dst[key] = value

    merge(doc, patch)
    return doc


# (case id, patch, text the apiserver's message must contain)
INVALID_WORKSPACES = [
    ("bad-server-type", {"spec": {"server": {"type": "huge1"}}}, "spec.server.type"),
    ("bad-location", {"spec": {"server": {"location": "mars1"}}}, "spec.server.location"),
    # Only images with an OS profile (the user-data is written for them), or numeric ids.
    ("unsupported-image", {"spec": {"server": {"image": "debian-12"}}}, "spec.server.image"),
    ("unsupported-image-other-os", {"spec": {"server": {"image": "fedora-42"}}},
     "spec.server.image"),
    ("bad-duration", {"spec": {"idle": {"timeout": "thirty minutes"}}}, "spec.idle.timeout"),
    ("too-short-timeout", {"spec": {"idle": {"timeout": "10s"}}},
     "must be a duration of at least 1m"),
    ("bad-repository-url", {"spec": {"repository": {"url": "ftp://example.com/x"}}},
     "spec.repository.url"),
    ("unknown-field", {"spec": {"colour": "blue"}}, 'unknown field "spec.colour"'),
    ("missing-class", {"spec": {"className": None}}, "spec.className: Required value"),
    ("missing-repository", {"spec": {"repository": None}}, "spec.repository: Required value"),
    ("path-and-image", {"spec": {"devcontainer": {"path": ".devcontainer/x.json",
                                                   "image": "ubuntu"}}},
     "set devcontainer.path or devcontainer.image, not both"),
    ("path-escapes-repo", {"spec": {"devcontainer": {"path": "../../etc/devcontainer.json"}}},
     "devcontainer.path must stay inside the repository"),
    ("bad-port", {"spec": {"access": {"ports": [{"port": 70000}]}}},
     "spec.access.ports[0].port"),
    ("bad-visibility", {"spec": {"access": {"ports": [{"port": 3000,
                                                       "visibility": "world"}]}}},
     "spec.access.ports[0].visibility"),
    ("duplicate-port", {"spec": {"access": {"ports": [{"port": 3000}, {"port": 3000}]}}},
     "Duplicate value"),
    ("bad-on-delete", {"spec": {"persistence": {"onDelete": "Shred"}}},
     "spec.persistence.onDelete"),
    ("stdio-mcp-without-command", {"spec": {"agent": {"mcpServers": {"x": {"type": "stdio"}}}}},
     "stdio MCP servers need a command"),
    ("bad-ssh-key", {"spec": {"sshKeys": ["not a key"]}}, "spec.sshKeys[0]"),
    ("bad-agent-kind", {"spec": {"agent": {"kind": "other-agent"}}}, "spec.agent.kind"),
    ("running-not-bool", {"spec": {"running": "yes"}}, "spec.running"),
    # The VM's own services must never get a (public) URL: CloudCLI, the agent's
    # local /ask listener, Caddy's admin API, SSH.
    ("publish-cloudcli", {"spec": {"access": {"ports": [{"port": 3001,
                                                         "visibility": "public"}]}}},
     "are the VM's own services and cannot be published"),
    ("publish-agent-local", {"spec": {"access": {"ports": [{"port": 3000},
                                                            {"port": 9180,
                                                             "visibility": "public"}]}}},
     "spec.access.ports[1].port: Invalid value"),
    ("publish-caddy-admin", {"spec": {"access": {"ports": [{"port": 2019}]}}},
     "are the VM's own services and cannot be published"),
    ("publish-agent-api", {"spec": {"access": {"ports": [{"port": 9443}]}}},
     "are the VM's own services and cannot be published"),
    # git would take these refs for options.
    ("ref-is-an-option", {"spec": {"repository": {"ref": "-c"}}},
     "repository.ref must not start with '-'"),
    ("ref-upload-pack", {"spec": {"repository": {"ref": "--upload-pack=x"}}},
     "repository.ref must not start with '-'"),
    # The Secret's key is fixed (.dockerconfigjson): only a name may be given.
    ("registry-secret-without-name",
     {"spec": {"devcontainer": {"registryCredentialsSecretRef": {}}}},
     "spec.devcontainer.registryCredentialsSecretRef.name: Required value"),
    ("registry-secret-with-key",
     {"spec": {"devcontainer": {"registryCredentialsSecretRef": {"name": "pull",
                                                                 "key": "auth"}}}},
     'unknown field "spec.devcontainer.registryCredentialsSecretRef.key"'),
    # Claude Code's credential: at most one; a gateway over https (http only to the VM
    # itself) whose headers cannot carry a credential.
    ("two-credentials", {"spec": {"agent": {"apiKeySecretRef": {"name": "a"},
                                            "oauthTokenSecretRef": {"name": "b"}}}},
     "set at most one of apiKeySecretRef, oauthTokenSecretRef and gateway"),
    ("key-and-gateway", {"spec": {"agent": {"apiKeySecretRef": {"name": "a"}, "gateway": {
        "baseUrl": "https://llm.example.com", "authTokenSecretRef": {"name": "g"}}}}},
     "set at most one of apiKeySecretRef, oauthTokenSecretRef and gateway"),
    ("gateway-over-http", {"spec": {"agent": {"gateway": {
        "baseUrl": "http://llm.example.com", "authTokenSecretRef": {"name": "g"}}}}},
     "gateway.baseUrl must use https"),
    ("gateway-looks-like-loopback", {"spec": {"agent": {"gateway": {
        "baseUrl": "http://127.0.0.1.example.com", "authTokenSecretRef": {"name": "g"}}}}},
     "gateway.baseUrl must use https"),
    ("gateway-url-with-credentials", {"spec": {"agent": {"gateway": {
        "baseUrl": "https://user:pw@llm.example.com", "authTokenSecretRef": {"name": "g"}}}}},
     "spec.agent.gateway.baseUrl"),
    ("gateway-without-token", {"spec": {"agent": {"gateway": {
        "baseUrl": "https://llm.example.com"}}}},
     "spec.agent.gateway.authTokenSecretRef: Required value"),
    ("gateway-authorization-header", {"spec": {"agent": {"gateway": {
        "baseUrl": "https://llm.example.com", "authTokenSecretRef": {"name": "g"},
        "headers": {"Authorization": "Bearer x"}}}}},
     "gateway.headers must not set Authorization or X-Api-Key"),
    ("gateway-bad-header-name", {"spec": {"agent": {"gateway": {
        "baseUrl": "https://llm.example.com", "authTokenSecretRef": {"name": "g"},
        "headers": {"X Team": "a"}}}}},
     "gateway.headers: names must be HTTP header names"),
    ("gateway-unknown-model-slot", {"spec": {"agent": {"gateway": {
        "baseUrl": "https://llm.example.com", "authTokenSecretRef": {"name": "g"},
        "models": {"fast": "m"}}}}},
     'unknown field "spec.agent.gateway.models.fast"'),
    # Each field within its own cap, together more than the user-data can carry.
    ("user-text-over-budget", {"spec": {
        "agent": {"instructions": "x" * 8000,
                  "mcpServers": {"big": {"command": "npx", "args": ["y" * 1024] * 2}}},
        "sshKeys": ["ssh-ed25519 " + "A" * 1000]}},
     "agent.instructions, agent.mcpServers and sshKeys together must stay within 10240"),
]


@pytest.mark.parametrize(("case", "patch", "expected"), INVALID_WORKSPACES,
                         ids=[c[0] for c in INVALID_WORKSPACES])
def test_invalid_workspace_is_rejected_with_a_readable_message(
        kubectl: Kubectl, namespace: str, case: str, patch: dict, expected: str) -> None:
    manifest = yaml.safe_dump(_with(patch, name=case))
    code, out, err = kubectl.run("apply", "-n", namespace, "-f", "-", input=manifest)
    assert code != 0, f"{case} was accepted: {out}"
    assert expected in err, err
    assert kubectl.get_json("workspace", case, "-n", namespace) is None


def test_long_name_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    manifest = yaml.safe_dump(_with({}, name="w" * 64))
    code, _, err = kubectl.run("apply", "-n", namespace, "-f", "-", input=manifest)
    assert code != 0
    assert "at most 63 characters" in err


def test_user_text_within_the_budget_is_accepted(kubectl: Kubectl, namespace: str) -> None:
    spec = {"spec": {"agent": {"instructions": "x" * 8192,
                               "mcpServers": {"docs": {"command": "npx",
                                                       "args": ["-y", "docs-server"],
                                                       "env": {"MODE": "read-only"}}}},
                     "sshKeys": ["ssh-ed25519 " + "A" * 68 + " dev@laptop"]}}
    kubectl("apply", "-n", namespace, "-f", "-",
            input=yaml.safe_dump(_with(spec, name="text-budget")))
    stored = kubectl.get_json("workspace", "text-budget", "-n", namespace)
    assert stored is not None and len(stored["spec"]["agent"]["instructions"]) == 8192


def test_valid_workspace_is_accepted_with_defaults(kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(_with({})))
    ws = kubectl.get_json("workspace", "demo", "-n", namespace)
    assert ws is not None
    spec = ws["spec"]
    assert spec["running"] is True
    # Defaults come from the schema; class-level defaults are applied by the operator.
    assert "server" not in spec
    out = kubectl("get", "ws", "-n", namespace)
    assert out.split("\n")[0].split() == ["NAME", "PHASE", "URL", "IDLE", "AGENT", "AGE"]


INVALID_CLASSES = [
    ("storage-without-encryption",
     {"storage": {"endpoint": "https://x.r2.cloudflarestorage.com", "bucket": "backups",
                  "credentialsSecretRef": {"name": "r2"}}},
     "storage needs encryption.keySecretRef"),
    ("base-domain-outside-zone",
     {"dns": {"zoneName": "example.com", "baseDomain": "ws.example.org",
              "tokenSecretRef": {"name": "cf"}}},
     "dns.baseDomain must be inside dns.zoneName"),
    ("bad-tls-mode", {"tls": {"mode": "selfsigned"}}, "spec.tls.mode"),
    ("warm-pool-too-large", {"warmPool": {"size": 21}}, "spec.warmPool.size"),
    ("warm-pool-negative", {"warmPool": {"size": -1}}, "spec.warmPool.size"),
    # A class's own defaults must respect its own limits (workspaces inherit them).
    ("default-type-not-allowed", {"server": {"type": "cx23"},
                                  "limits": {"serverTypes": ["cpx32"]}},
     "server.type must be one of limits.serverTypes"),
    ("implicit-image-not-allowed", {"limits": {"images": ["12345"]}},
     "server.image must be one of limits.images"),
    ("implicit-idle-over-cap", {"limits": {"idleTimeout": "10m"}},
     "idle.timeout (30m when unset) must not exceed limits.idleTimeout"),
    ("busy-cap-over-cap", {"idle": {"agentBusyCap": "12h"}, "limits": {"agentBusyCap": "8h"}},
     "idle.agentBusyCap (6h when unset) must not exceed limits.agentBusyCap"),
    ("lifetime-over-cap", {"lifetime": {"max": "48h"}, "limits": {"lifetime": "24h"}},
     "lifetime.max must not exceed limits.lifetime"),
    ("bad-allowed-type", {"limits": {"serverTypes": ["huge1"]}},
     "spec.limits.serverTypes[0]"),
    # Images: supported names or numeric ids; a numeric id needs the class's osProfile.
    ("unsupported-class-image", {"server": {"image": "ubuntu-22.04"}}, "spec.server.image"),
    ("unsupported-allowed-image", {"limits": {"images": ["ubuntu-24.04", "debian-12"]}},
     "spec.limits.images[1]"),
    ("numeric-image-without-profile", {"server": {"image": "4711"}},
     "a numeric image id (server.image or limits.images) needs server.osProfile"),
    ("numeric-allowed-image-without-profile",
     {"limits": {"images": ["ubuntu-24.04", "4711"]}},
     "a numeric image id (server.image or limits.images) needs server.osProfile"),
    ("bad-os-profile", {"server": {"image": "4711", "osProfile": "debian-12"}},
     "spec.server.osProfile"),
    ("ca-bundle-not-pem", {"trust": {"caBundle": "MIIBhTCCASugAwIBAgIQ"}},
     "trust.caBundle must hold PEM certificates"),
    ("ca-bundle-too-large",
     {"trust": {"caBundle": "-----BEGIN CERTIFICATE-----\n" + "A" * 65536}},
     "spec.trust.caBundle: Too long"),
    ("empty-agent-credentials", {"agentCredentials": {}},
     "set exactly one of apiKeySecretRef, oauthTokenSecretRef and gateway"),
    ("two-agent-credentials", {"agentCredentials": {"apiKeySecretRef": {"name": "a"},
                                                    "oauthTokenSecretRef": {"name": "b"}}},
     "set exactly one of apiKeySecretRef, oauthTokenSecretRef and gateway"),
    ("vm-endpoint-not-http",
     {"storage": {"endpoint": "https://x.r2.cloudflarestorage.com", "bucket": "backups",
                  "vmEndpoint": "10.0.2.2:9000", "credentialsSecretRef": {"name": "r2"}},
      "encryption": {"keySecretRef": {"name": "k"}}},
     "spec.storage.vmEndpoint"),
]


def test_class_with_consistent_limits_is_accepted(kubectl: Kubectl) -> None:
    spec = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
            "server": {"type": "cpx32", "image": "ubuntu-24.04", "osProfile": "debian-13"},
            "idle": {"timeout": "1h"}, "lifetime": {"max": "8h"},
            "limits": {"serverTypes": ["cx23", "cpx32"],
                       "images": ["ubuntu-24.04", "debian-13", "4711"],
                       "idleTimeout": "2h", "agentBusyCap": "6h", "lifetime": "12h"}}
    manifest = yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1",
                               "kind": "WorkspaceClass",
                               "metadata": {"name": "limited-consistent"}, "spec": spec})
    try:
        kubectl("apply", "-f", "-", input=manifest)
        stored = kubectl.get_json("workspaceclass", "limited-consistent")
        assert stored is not None and stored["spec"]["limits"] == spec["limits"]
    finally:
        kubectl("delete", "workspaceclass", "limited-consistent", "--ignore-not-found")


def test_debian_class_and_snapshot_class_are_accepted(kubectl: Kubectl,
                                                      namespace: str) -> None:
    base = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}}}
    classes = {"debian": {**base, "server": {"image": "debian-13"}},
               "snapshot": {**base, "server": {"image": "4711", "osProfile": "debian-13"}}}
    try:
        for name, spec in classes.items():
            kubectl("apply", "-f", "-", input=yaml.safe_dump(
                {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
                 "metadata": {"name": f"os-{name}"}, "spec": spec}))
            stored = kubectl.get_json("workspaceclass", f"os-{name}")
            assert stored is not None
            assert stored["spec"]["server"].items() >= spec["server"].items()
        for image in ("debian-13", "ubuntu-24.04", "4711"):
            name = f"image-{image.replace('.', '-')}"
            kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
                _with({"spec": {"server": {"image": image}}}, name=name)))
            stored = kubectl.get_json("workspace", name, "-n", namespace)
            assert stored is not None and stored["spec"]["server"]["image"] == image
    finally:
        for name in classes:
            kubectl("delete", "workspaceclass", f"os-{name}", "--ignore-not-found")


def test_class_trust_storage_vm_endpoint_and_registry_secret_are_accepted(
        kubectl: Kubectl, namespace: str) -> None:
    pem = ("-----BEGIN CERTIFICATE-----\nMIIBhTCCASugAwIBAgIQ\n-----END CERTIFICATE-----\n")
    spec = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
            "trust": {"caBundle": pem},
            "storage": {"endpoint": "https://x.r2.cloudflarestorage.com", "bucket": "backups",
                        "vmEndpoint": "http://10.0.2.2:9000",
                        "credentialsSecretRef": {"name": "r2"}},
            "encryption": {"keySecretRef": {"name": "k"}}}
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
             "metadata": {"name": "private-network"}, "spec": spec}))
        stored = kubectl.get_json("workspaceclass", "private-network")
        assert stored is not None
        assert stored["spec"]["trust"]["caBundle"] == pem
        assert stored["spec"]["storage"]["vmEndpoint"] == "http://10.0.2.2:9000"
        devcontainer = {"image": "registry.example.com:5000/team/dev:1",
                        "registryCredentialsSecretRef": {"name": "pull"}}
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
            _with({"spec": {"devcontainer": devcontainer}}, name="private-registry")))
        ws = kubectl.get_json("workspace", "private-registry", "-n", namespace)
        assert ws is not None and ws["spec"]["devcontainer"] == devcontainer
    finally:
        kubectl("delete", "workspaceclass", "private-network", "--ignore-not-found")


def test_each_credential_and_a_class_gateway_are_accepted(kubectl: Kubectl,
                                                         namespace: str) -> None:
    gateway = {"baseUrl": "https://llm.example.com/anthropic",
               "authTokenSecretRef": {"name": "llm"},
               "headers": {"X-Team": "platform"},
               "models": {"default": "team-large", "opus": "team-xl",
                          "sonnet": "claude-sonnet-4-5[1m]", "haiku": "gpt-5(minimal)"}}
    agents = {"cred-key": {"apiKeySecretRef": {"name": "anthropic"}},
              "cred-oauth": {"oauthTokenSecretRef": {"name": "claude"}},
              "cred-gateway": {"gateway": gateway},
              "cred-local-gateway": {"gateway": {"baseUrl": "http://127.0.0.1:4000",
                                                 "authTokenSecretRef": {"name": "l"}}},
              "cred-none": {}}
    for name, agent in agents.items():
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
            _with({"spec": {"agent": agent}}, name=name)))
        stored = kubectl.get_json("workspace", name, "-n", namespace)
        assert stored is not None
    stored = kubectl.get_json("workspace", "cred-oauth", "-n", namespace)
    assert stored is not None and stored["spec"]["agent"]["oauthTokenSecretRef"] == \
        {"name": "claude", "key": "oauthToken"}
    stored = kubectl.get_json("workspace", "cred-gateway", "-n", namespace)
    assert stored is not None
    assert stored["spec"]["agent"]["gateway"]["authTokenSecretRef"]["key"] == "authToken"
    assert stored["spec"]["agent"]["gateway"]["models"] == gateway["models"]
    spec = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
            "agentCredentials": {"gateway": {**gateway, "authTokenSecretRef": {
                "name": "llm", "namespace": "platform"}}}}
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
             "metadata": {"name": "company-gateway"}, "spec": spec}))
        stored = kubectl.get_json("workspaceclass", "company-gateway")
        assert stored is not None
        assert stored["spec"]["agentCredentials"]["gateway"]["authTokenSecretRef"] == \
            {"name": "llm", "namespace": "platform", "key": "authToken"}
    finally:
        kubectl("delete", "workspaceclass", "company-gateway", "--ignore-not-found")


@pytest.mark.parametrize(("case", "patch", "expected"), INVALID_CLASSES,
                         ids=[c[0] for c in INVALID_CLASSES])
def test_invalid_class_is_rejected(kubectl: Kubectl, case: str, patch: dict,
                                   expected: str) -> None:
    spec = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}}}
    spec.update(patch)
    manifest = yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1",
                               "kind": "WorkspaceClass", "metadata": {"name": case},
                               "spec": spec})
    code, _, err = kubectl.run("apply", "-f", "-", input=manifest)
    assert code != 0
    assert expected in err, err


def _image(name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceImage",
                           "metadata": {"name": name}, "spec": spec})


def test_the_example_workspace_image_is_accepted_with_defaults(kubectl: Kubectl) -> None:
    example = (REPO / "manifests" / "examples" / "workspaceimage.yaml").read_text()
    minimal = _image("minimal-image", {"hetzner": {"tokenSecretRef": {"name": "hetzner"}}})
    try:
        kubectl("apply", "-f", "-", input=example)
        kubectl("apply", "-f", "-", input=minimal)
        stored = kubectl.get_json("workspaceimage", "minimal-image")
        assert stored is not None and stored["spec"]["bakeTimeout"] == "45m"
        # builder unset: the operator applies its defaults (cx23, fsn1, debian-13).
        assert "builder" not in stored["spec"]
    finally:
        kubectl("delete", "workspaceimage", "debian-dev", "minimal-image",
                "--ignore-not-found")


@pytest.mark.parametrize(("case", "spec", "expected"), [
    ("no-project", {}, "spec.hetzner: Required value"),
    ("ubuntu-base", {"builder": {"baseImage": "ubuntu-24.04"}}, "spec.builder.baseImage"),
    ("short-timeout", {"bakeTimeout": "30s"}, "must be a duration of at least 1m"),
    ("bad-type", {"builder": {"type": "CX 23"}}, "spec.builder.type"),
])
def test_invalid_workspace_image_is_rejected(kubectl: Kubectl, case: str, spec: dict,
                                             expected: str) -> None:
    body = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}}, **spec} \
        if case != "no-project" else {}
    code, _, err = kubectl.run("apply", "-f", "-", input=_image(f"bad-{case}", body))
    assert code != 0
    assert expected in err, err


def test_a_class_names_a_workspace_image_by_a_valid_name(kubectl: Kubectl) -> None:
    spec = {"hetzner": {"tokenSecretRef": {"name": "hetzner"}},
            "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
            "server": {"image": "debian-13", "workspaceImage": "Not_A_Name"}}
    manifest = yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1",
                               "kind": "WorkspaceClass", "metadata": {"name": "bad-image-ref"},
                               "spec": spec})
    code, _, err = kubectl.run("apply", "-f", "-", input=manifest)
    assert code != 0 and "spec.server.workspaceImage" in err, err
