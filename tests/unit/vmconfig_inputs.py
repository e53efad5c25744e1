"""Workspace inputs shared by the vmconfig tests (user-data, Claude files, schema)."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import Any

from agentspaces.api.types import WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.vmconfig.agent_bundle import AgentBundle, zip_files

HOST = "demo-default-1a2b3c.example.com"
TOKEN_SHA256 = "5f" * 32
SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl "
           "dev@laptop")


@dataclass(frozen=True)
class FakeCredentials:
    """Shaped like agentspaces.pki.AgentCredentials, with fixed, fake PEM text."""

    cert_pem: str = ("-----BEGIN CERTIFICATE-----\nMIIBfakeCERTIFICATEforGOLDENfilesONLY\n"
                     "-----END CERTIFICATE-----\n")
    key_pem: str = ("-----BEGIN PRIVATE KEY-----\nMIGHfakePRIVATEkeyFORgoldenFILESonly\n"
                    "-----END PRIVATE KEY-----\n")
    token: str = "fake-bearer-token-never-on-the-vm"
    token_sha256: str = TOKEN_SHA256


def klass_body(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hetzner": {"tokenSecretRef": {"name": "hcloud"}},
        "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cloudflare"}},
        "storage": {"endpoint": "https://r2.example.com", "bucket": "backups",
                    "credentialsSecretRef": {"name": "r2"}},
        "encryption": {"keySecretRef": {"name": "class-key"}},
    }
    base.update(spec)
    return {"metadata": {"name": "standard"}, "spec": base}


def make_klass(**spec: Any) -> WorkspaceClass:
    return WorkspaceClass.from_body(klass_body(**spec))


def make_spec(klass: WorkspaceClass, **spec: Any) -> WorkspaceSpec:
    body: dict[str, Any] = {"className": "standard",
                            "repository": {"url": "https://github.com/example/app"}}
    body.update(spec)
    return WorkspaceSpec.from_spec(body, klass)


WS = WorkspaceRef(namespace="default", name="demo", uid="0b1c2d3e-aaaa-bbbb-cccc-1234567890ab",
                  generation=3)

FULL_SPEC: dict[str, Any] = {
    "repository": {"url": "https://github.com/example/app", "ref": "feature/login"},
    "devcontainer": {"path": ".devcontainer/gpu/devcontainer.json"},
    "agent": {
        "instructions": "Run `make test` before every commit.\nNever push to main: open a PR.",
        "mcpServers": {
            "docs": {"type": "http", "url": "https://mcp.example.com/mcp"},
            "events": {"type": "sse", "url": "https://events.example.com/sse"},
            "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem",
                                                 "/workspaces"],
                      "env": {"LOG_LEVEL": "info"}},
        },
    },
    "idle": {"timeout": "45m", "agentBusyCap": "2h"},
    "lifetime": {"max": "12h"},
    "access": {"ports": [{"port": 8080, "visibility": "public"}, {"port": 5173},
                         {"port": 3000, "visibility": "public"}]},
    "sshKeys": [SSH_KEY, "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 ops@bastion"],
}


def fake_bundle() -> AgentBundle:
    """A tiny, fixed zipapp standing in for the real agent in golden files."""
    return AgentBundle(zip_files({"__main__.py": b"print('fake agent')\n"}))


def zip_names(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.namelist()


def render_variant(name: str) -> str:
    """The user-data of one of the named test variants (golden files, schema checks)."""
    from agentspaces.vmconfig.userdata import render_user_data

    creds = FakeCredentials()
    if name == "minimal":
        klass = make_klass()
        return render_user_data(WS, make_spec(klass), klass, host=HOST,
                                agent_credentials=creds, agent_bundle=fake_bundle())
    if name == "full":
        klass = make_klass(tls={"mode": "internal", "httpPort": 8081, "httpsPort": 8443},
                           agent={"port": 9444})
        return render_user_data(WS, make_spec(klass, **FULL_SPEC), klass, host=HOST,
                                agent_credentials=creds, agent_bundle=fake_bundle())
    if name == "inline-simulate":
        klass = make_klass(tls={"mode": "none"})
        spec = make_spec(klass, devcontainer={"image": "ghcr.io/example/dev:1.2"})
        return render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds,
                                agent_bundle=fake_bundle(), agent_delivery="inline",
                                simulate=True)
    if name == "debian-13":
        # The full workspace on Hetzner's Debian 13 image (OS profile debian-13).
        klass = make_klass(server={"image": "debian-13"})
        return render_user_data(WS, make_spec(klass, **FULL_SPEC), klass, host=HOST,
                                agent_credentials=creds, agent_bundle=fake_bundle())
    raise KeyError(name)


VARIANTS = ("minimal", "full", "inline-simulate", "debian-13")
