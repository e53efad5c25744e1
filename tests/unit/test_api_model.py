"""Parsing Workspace and WorkspaceClass objects through the API models and the typed
views built from them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentspaces.api.model import WorkspaceClassSpecModel, WorkspaceSpecModel
from agentspaces.api.types import (
    AgentCredential,
    SecretKeyRef,
    WorkspaceClass,
    WorkspaceSpec,
    wants_running,
)

REPO = Path(__file__).resolve().parents[2]

MINIMAL_CLASS: dict[str, Any] = {
    "metadata": {"name": "minimal"},
    "spec": {"hetzner": {"tokenSecretRef": {"name": "hcloud"}},
             "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cloudflare"}}},
}
MINIMAL_SPEC: dict[str, Any] = {"className": "minimal",
                                "repository": {"url": "https://github.com/example/app"}}


def _class(**spec: Any) -> WorkspaceClass:
    return WorkspaceClass.from_body({"metadata": {"name": "c"},
                                     "spec": {**MINIMAL_CLASS["spec"], **spec}})


def test_a_minimal_class_gets_every_default() -> None:
    klass = WorkspaceClass.from_body(MINIMAL_CLASS)
    assert klass.name == "minimal"
    assert (klass.server.type, klass.server.location, klass.server.image) == \
        ("cx23", "fsn1", "ubuntu-24.04")
    assert klass.idle.timeout == timedelta(minutes=30)
    assert klass.idle.grace == timedelta(minutes=5)
    assert klass.idle.agent_busy_cap == timedelta(hours=6)
    assert klass.agent_port == 9443
    assert (klass.tls.mode, klass.tls.http_port, klass.tls.https_port) == ("acme", 80, 443)
    assert klass.hetzner_endpoint == "https://api.hetzner.cloud/v1"
    assert klass.hetzner_token_ref == SecretKeyRef("hcloud", "token", None)
    assert klass.dns.endpoint == "https://api.cloudflare.com/client/v4"
    assert (klass.dns.ttl, klass.dns.proxied, klass.dns.txt_registry) == (60, False, False)
    assert klass.dns.base_domain == "example.com"
    assert klass.storage is None and klass.encryption_key_ref is None
    assert klass.lifetime_max is None
    assert klass.limits.server_types is None and klass.limits.lifetime is None
    assert klass.agent_source_ranges == ()
    assert klass.trust_repository_devcontainer is False


def test_storage_defaults_and_secret_key_defaults_per_secret() -> None:
    klass = _class(storage={"endpoint": "https://r2.example.com", "bucket": "backups",
                            "region": "", "credentialsSecretRef": {"name": "r2",
                                                                   "namespace": "ops"}},
                   encryption={"keySecretRef": {"name": "class-key"}})
    assert klass.storage is not None
    assert (klass.storage.region, klass.storage.addressing_style, klass.storage.prefix,
            klass.storage.keep) == ("auto", "path", "agentspaces/", 3)  # "" region: auto
    assert klass.storage.credentials_ref == SecretKeyRef("r2", "accessKeyId", "ops")
    assert klass.encryption_key_ref == SecretKeyRef("class-key", "key", None)
    spec = WorkspaceSpec.from_spec({**MINIMAL_SPEC, "agent": {"apiKeySecretRef": {
        "name": "anthropic"}}, "repository": {"url": "https://github.com/a/b",
                                              "credentialsSecretRef": {"name": "gh"}}}, klass)
    assert spec.agent_credential == AgentCredential("api-key",
                                                    SecretKeyRef("anthropic", "apiKey", None))
    assert spec.repository_credentials_ref == SecretKeyRef("gh", "token", None)
    assert spec.registry_credentials_ref is None
    assert klass.storage.vm_endpoint is None
    assert klass.storage.presign_endpoint == "https://r2.example.com"
    assert klass.ca_bundle is None


def test_trust_vm_endpoint_and_registry_credentials() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    klass = _class(trust={"caBundle": pem},
                   storage={"endpoint": "https://r2.example.com", "bucket": "backups",
                            "vmEndpoint": "http://10.0.2.2:9000",
                            "credentialsSecretRef": {"name": "r2"}},
                   encryption={"keySecretRef": {"name": "class-key"}})
    assert klass.ca_bundle == pem
    assert klass.storage is not None
    assert klass.storage.endpoint == "https://r2.example.com"
    assert klass.storage.presign_endpoint == "http://10.0.2.2:9000"
    spec = WorkspaceSpec.from_spec({**MINIMAL_SPEC, "devcontainer": {
        "image": "registry.example.com/team/dev:1",
        "registryCredentialsSecretRef": {"name": "pull"}}}, klass)
    # A dockerconfigjson Secret has one key; the reference names only the Secret.
    assert spec.registry_credentials_ref == SecretKeyRef("pull", ".dockerconfigjson", None)


def test_a_minimal_workspace_inherits_everything_from_its_class() -> None:
    klass = _class(server={"type": "cpx32"}, idle={"grace": "0s"}, lifetime={"max": "8h"})
    spec = WorkspaceSpec.from_spec(MINIMAL_SPEC, klass)
    assert spec.running is True
    assert spec.server == klass.server
    assert spec.idle == klass.idle and spec.idle.grace == timedelta(0)
    assert spec.lifetime_max == timedelta(hours=8)
    assert (spec.agent_kind, spec.instructions, spec.mcp_servers) == ("claude-code", "", ())
    assert (spec.ports, spec.refused_ports, spec.ssh_keys) == ((), (), ())
    assert spec.persistence_on_delete == "Retain" and spec.backup_interval is None
    assert spec.persistence_enabled is False  # the class has no storage
    assert spec.repository_ref is None and spec.agent_credential is None


def test_workspace_fields_override_the_class() -> None:
    klass = _class(server={"type": "cpx32", "location": "hel1"}, idle={"timeout": "45m"},
                   limits={"lifetime": "24h"})
    spec = WorkspaceSpec.from_spec({
        **MINIMAL_SPEC, "running": False,
        "server": {"location": "nbg1", "image": "123456"},
        "idle": {"grace": "0s", "agentBusyCap": "2h"},
        "lifetime": {"max": "3h"}, "persistence": {"schedule": "2h"}}, klass)
    assert spec.running is False
    assert (spec.server.type, spec.server.location, spec.server.image) == \
        ("cpx32", "nbg1", "123456")
    assert spec.idle.timeout == timedelta(minutes=45)          # class
    assert spec.idle.grace == timedelta(0)                     # workspace, even 0s
    assert spec.idle.agent_busy_cap == timedelta(hours=2)      # workspace
    assert spec.lifetime_max == timedelta(hours=3)
    assert spec.backup_interval == timedelta(hours=2)
    # Without its own lifetime the class limit is the workspace's lifetime.
    assert WorkspaceSpec.from_spec(MINIMAL_SPEC, klass).lifetime_max == timedelta(hours=24)


def test_reserved_ports_are_split_off_as_refused() -> None:
    klass = _class(tls={"httpPort": 8081}, agent={"port": 9555})
    spec = WorkspaceSpec.from_spec({**MINIMAL_SPEC, "access": {"ports": [
        {"port": 3000}, {"port": 8080, "visibility": "public"},
        {"port": 9555, "visibility": "public"}, {"port": 22}, {"port": 8081}]}}, klass)
    assert [(p.port, p.public) for p in spec.ports] == [(3000, False), (8080, True)]
    assert spec.refused_ports == (22, 8081, 9555)
    assert spec.public_ports == (8080,)


def test_mcp_servers_are_sorted_and_typed() -> None:
    spec = WorkspaceSpec.from_spec({**MINIMAL_SPEC, "agent": {"mcpServers": {
        "zeta": {"command": "npx", "args": ["-y", "x"], "env": {"A": "1"}},
        "alpha": {"type": "http", "url": "https://mcp.example.com"}}}}, _class())
    assert [s.name for s in spec.mcp_servers] == ["alpha", "zeta"]
    alpha, zeta = spec.mcp_servers
    assert (alpha.type, alpha.url, alpha.command) == ("http", "https://mcp.example.com", None)
    assert (zeta.type, zeta.args, dict(zeta.env)) == ("stdio", ("-y", "x"), {"A": "1"})


@pytest.mark.parametrize(("spec", "expected"), [
    ({"hetzner": {}}, "hetzner.tokenSecretRef: Field required"),
    ({"server": {"type": "big"}}, "server.type: String should match pattern"),
    ({"server": {"location": "mars"}}, "server.location: Input should be 'fsn1'"),
    ({"idle": {"timeout": "30s"}}, "idle.timeout: Value error, '30s' is shorter than 1m"),
    ({"idle": {"grace": "5 minutes"}}, "idle.grace: String should match pattern"),
    ({"tls": {"httpPort": 70000}}, "tls.httpPort: Input should be less than or equal to 65535"),
    ({"storage": {"endpoint": "https://r2", "bucket": "backups"}},
     "storage.credentialsSecretRef: Field required"),
    ({"storage": {"endpoint": "https://r2", "bucket": "backups", "vmEndpoint": "ftp://x",
                  "credentialsSecretRef": {"name": "r2"}}},
     "storage.vmEndpoint: String should match pattern"),
    ({"trust": {"caBundle": "not a certificate"}},
     "trust.caBundle: Value error, must hold PEM certificates"),
    ({"trust": {"caBundle": "-----BEGIN CERTIFICATE-----" + "A" * 65536}},
     "trust.caBundle: String should have at most 65536 characters"),
])
def test_an_invalid_class_is_a_value_error_naming_the_field(spec: dict[str, Any],
                                                             expected: str) -> None:
    with pytest.raises(ValueError, match="invalid WorkspaceClass spec") as err:
        _class(**spec)
    assert expected in str(err.value)


def test_an_invalid_workspace_is_a_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError) as err:
        WorkspaceSpec.from_spec({"className": "c", "access": {"ports": [{"port": 0}]}},
                                _class())
    message = str(err.value)
    assert message.startswith("invalid Workspace spec: ")
    assert "repository: Field required" in message
    assert "access.ports.0.port: Input should be greater than or equal to 1" in message


def test_the_running_intent_is_read_even_from_an_invalid_spec() -> None:
    assert wants_running({}) is True
    assert wants_running({"running": False, "server": {"type": "nonsense"}}) is False
    assert WorkspaceSpecModel.parse({**MINIMAL_SPEC, "running": False}).running is False


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_example_workspaces_round_trip_through_the_model(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())["spec"]
    assert WorkspaceSpecModel.parse(spec).dump() == spec


def test_the_example_class_round_trips_and_parses_into_the_view() -> None:
    body = yaml.safe_load((REPO / "manifests" / "examples" / "workspaceclass.yaml").read_text())
    assert WorkspaceClassSpecModel.parse(body["spec"]).dump() == body["spec"]
    klass = WorkspaceClass.from_body(body)
    assert klass.dns.base_domain == "ws.example.com"
    assert klass.limits.server_types == frozenset({"cx23", "cx33", "cpx32"})
    assert klass.limits.lifetime == timedelta(hours=24)


@pytest.mark.parametrize("image", ["debian-12", "ubuntu-22.04", "Ubuntu-24.04", "debian-13 ",
                                   "12a", "fedora-42"])
def test_only_supported_image_names_and_numeric_ids_parse(image: str) -> None:
    with pytest.raises(ValueError, match=r"server\.image"):
        WorkspaceSpec.from_spec({**MINIMAL_SPEC, "server": {"image": image}}, _class())
    with pytest.raises(ValueError, match=r"server\.image"):
        _class(server={"image": image})


def test_os_profiles_of_class_and_workspace() -> None:
    klass = _class(server={"image": "debian-13"})
    assert (klass.server.os_profile, klass.image_os_profile) == ("debian-13", None)
    snapshots = _class(server={"image": "4711", "osProfile": "debian-13"},
                       limits={"images": ["4711", "4712", "ubuntu-24.04"]})
    assert snapshots.server.os_profile == snapshots.image_os_profile == "debian-13"
    for image, profile in (("4712", "debian-13"), ("ubuntu-24.04", "ubuntu-24.04")):
        spec = WorkspaceSpec.from_spec({**MINIMAL_SPEC, "server": {"image": image}}, snapshots)
        assert spec.server.os_profile == profile
    with pytest.raises(ValueError, match=r"needs server\.osProfile"):
        _class(limits={"images": ["4711"]})
    with pytest.raises(ValueError, match=r"server\.osProfile"):
        _class(server={"image": "4711", "osProfile": "debian-12"})
