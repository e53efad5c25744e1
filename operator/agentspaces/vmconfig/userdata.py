"""The cloud-config document a workspace VM boots with (Hetzner's Ubuntu 24.04 or
Debian 13: the OS profile of the workspace's image, vmconfig.osprofile).

`render_user_data` is pure: same inputs, same bytes (golden files pin the output). It
carries no secret the workspace could misuse elsewhere: no Anthropic key, repository
token, cloud credential or password; only the agent's own TLS certificate and key and
the sha256 of the operator's bearer token. Those still must not leak into the
devcontainer, which is why the VM blocks the metadata service after cloud-init has
read it (cloudinit/firewall.sh, docs/vm.md).

Hetzner caps user-data at 32 KiB, far less than the agent bundle. By default
(`agent_delivery="push"`) the user-data carries only the bundle's sha256 and a small
loader that accepts the bundle from the operator over the agent's pinned TLS channel;
"inline" embeds the gzipped bundle instead, for bundles small enough to fit.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import yaml

from agentspaces.api.types import ServerSettings, WorkspaceClass, WorkspaceRef, WorkspaceSpec
from agentspaces.vmconfig import templates
from agentspaces.vmconfig.agent_bundle import AgentBundle, load_agent_bundle, strip_source
from agentspaces.vmconfig.agent_config import machine_config, render_agent_config
from agentspaces.vmconfig.claude import (
    render_claude_md,
    render_claude_settings,
    render_mcp_json,
)
from agentspaces.vmconfig.layout import (
    SLICE,
    SUDOERS_FILE,
    UI_UID,
    UI_USER,
    VM_LAYOUT,
    VmLayout,
)
from agentspaces.vmconfig.osprofile import OsProfile, profile_for

USER_DATA_LIMIT = 32 * 1024  # Hetzner: "This field is limited to 32KiB."
# Larger files go in gzipped (the repository's cloudinit/ has them readable): without
# that the scripts, loader and seeds alone would fill the 32 KiB.
COMPRESS_OVER = 1024
AgentDelivery = Literal["push", "inline"]


class AgentCredentialsLike(Protocol):
    """What the user-data needs of the agent's credentials (agentspaces.pki)."""

    @property
    def cert_pem(self) -> str: ...

    @property
    def key_pem(self) -> str: ...

    @property
    def token_sha256(self) -> str: ...


class UserDataTooLarge(ValueError):
    """The rendered user-data exceeds Hetzner's limit."""

    def __init__(self, size: int, limit: int, hint: str) -> None:
        super().__init__(f"user-data is {size} bytes, Hetzner allows {limit}; {hint}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class WrittenFile:
    """One write_files entry, decoded."""

    content: bytes
    permissions: str


def json_text(doc: Any) -> str:
    """A JSON file as the user-data writes them (and a claim delivers them)."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _file(path: str, content: str, permissions: str = "0644") -> dict[str, Any]:
    """A write_files entry; text over COMPRESS_OVER bytes is stored gzipped."""
    data = content.encode()
    if len(data) <= COMPRESS_OVER:
        return {"path": path, "permissions": permissions, "content": content}
    packed = base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode()
    return {"path": path, "permissions": permissions, "encoding": "gz+b64", "content": packed}


def _units(layout: VmLayout) -> list[dict[str, Any]]:
    unit_dir = "/etc/systemd/system"
    values: dict[str, Mapping[str, Any]] = {
        "agentspaces-agent.service": {
            "agent_loader": layout.agent_loader, "agent_json": layout.agent_json,
            "agent_pyz": layout.agent_pyz, "agent_sha256_file": layout.agent_sha256_file},
        "agentspaces-caddy.service": {"caddy_bootstrap": layout.caddy_bootstrap},
        "agentspaces-cloudcli.service": {
            "ui_port": layout.ui_port, "claude_config_dir": layout.claude_config_dir,
            "workspaces": layout.workspaces_dir, "install_dir": layout.install_dir,
            "ui_user": UI_USER},
        "agentspaces-firewall.service": {
            "slice": SLICE, "install_dir": layout.install_dir,
            "guarded_ports": " ".join(str(p) for p in layout.guarded_ports),
            "ui_uid": UI_UID,
            "ui_guarded_ports": " ".join(str(p) for p in layout.ui_guarded_ports)},
    }
    files = [_file(f"{unit_dir}/{SLICE}", templates.read_template(SLICE))]
    files += [_file(f"{unit_dir}/{name}", templates.fill_text(name, values[name]))
              for name in sorted(values)]
    files.append(_file(f"{unit_dir}/docker.service.d/agentspaces.conf",
                       templates.read_template("docker-agentspaces.conf")))
    return files


def _scripts(layout: VmLayout, profile: OsProfile) -> list[dict[str, Any]]:
    scripts = [_file(f"{layout.install_dir}/bootstrap.sh",
                     templates.read_shell_script(profile.bootstrap), "0755")]
    scripts += [_file(f"{layout.install_dir}/{name}", templates.read_shell_script(name),
                      "0755") for name in ("cloudcli-register.sh", "firewall.sh")]
    scripts.append(_file("/usr/local/bin/agentspaces-claude",
                         templates.read_shell_script("agentspaces-claude.sh"), "0755"))
    # Its one way to root (Docker), for CloudCLI's unprivileged user.
    scripts.append(_file(SUDOERS_FILE, templates.fill_text("sudoers-agentspaces-claude",
                                                           {"ui_user": UI_USER}), "0440"))
    # Comments and docstrings stripped (line numbers kept), as in the agent bundle: the
    # loader is the largest file in the 32 KiB.
    scripts.append(_file(layout.agent_loader, strip_source(
        templates.read_template("agent_loader.py"), "agent_loader.py")))
    return scripts


def render_user_data(ws: WorkspaceRef, spec: WorkspaceSpec, klass: WorkspaceClass, *,
                     host: str, agent_credentials: AgentCredentialsLike,
                     simulate: bool = False, agent_bundle: AgentBundle | None = None,
                     agent_delivery: AgentDelivery = "push",
                     layout: VmLayout = VM_LAYOUT) -> str:
    """The `#cloud-config` user-data for one workspace VM.

    `agent_bundle` defaults to the installed agent (`load_agent_bundle()`); with
    "push" delivery only its sha256 is used. Raises UserDataTooLarge past 32 KiB.
    A `layout` other than VM_LAYOUT changes agent.json and the units, not the fixed
    paths inside the scripts: it is for the local sandbox, which runs no scripts.
    The packages and the bootstrap script follow the OS profile of `spec.server`.
    """
    agent_config = render_agent_config(ws, spec, klass, host=host,
                                       token_sha256=agent_credentials.token_sha256,
                                       simulate=simulate, layout=layout)
    seeds = layout.claude_seed_dir
    workspace_files = [
        _file(f"{seeds}/settings.json", json_text(render_claude_settings(spec, layout=layout))),
        _file(f"{seeds}/CLAUDE.md", render_claude_md(ws, spec, klass, host=host, layout=layout)),
    ]
    mcp = render_mcp_json(spec)
    if mcp is not None:
        workspace_files.append(_file(f"{seeds}/mcp.json", json_text(mcp)))
    hint = "shorten spec.agent.instructions, spec.agent.mcpServers or spec.sshKeys"
    return _render(profile_for(spec.server), agent_config, workspace_files,
                   header=f"workspace {ws.namespace}/{ws.name}", ssh_keys=spec.ssh_keys,
                   agent_credentials=agent_credentials, agent_bundle=agent_bundle,
                   agent_delivery=agent_delivery, layout=layout, hint=hint)


def render_pool_user_data(klass: WorkspaceClass, server: ServerSettings, *,
                          agent_credentials: AgentCredentialsLike,
                          agent_bundle: AgentBundle | None = None,
                          layout: VmLayout = VM_LAYOUT) -> str:
    """The user-data of a warm-pool server of `klass`: the workspace user-data without
    anything that names a workspace. Its agent.json is the machine part with `pool` set
    (the loader then waits for a claim, `vmconfig.claim`); no Claude seeds, no SSH keys.
    `server` is what it boots (its OS profile picks the packages and bootstrap)."""
    agent_config = {**machine_config(klass, token_sha256=agent_credentials.token_sha256,
                                     layout=layout),
                    "pool": {"class": klass.name}}
    return _render(profile_for(server), agent_config, [], header=f"warm pool {klass.name}",
                   ssh_keys=(), agent_credentials=agent_credentials,
                   agent_bundle=agent_bundle, agent_delivery="push", layout=layout,
                   hint="shorten spec.trust.caBundle")


def _render(profile: OsProfile, agent_config: Mapping[str, Any],
            workspace_files: list[dict[str, Any]], *, header: str,
            ssh_keys: Sequence[str], agent_credentials: AgentCredentialsLike,
            agent_bundle: AgentBundle | None, agent_delivery: AgentDelivery,
            layout: VmLayout, hint: str) -> str:
    bundle = agent_bundle or load_agent_bundle()
    files = [
        _file("/etc/apt/apt.conf.d/80-agentspaces", templates.read_template("apt-retries.conf")),
        _file("/etc/docker/daemon.json",
              json_text(templates.fill_json("docker-daemon.json", {"slice": SLICE}))),
        *_units(layout),
        *_scripts(layout, profile),
        _file(layout.agent_json, json_text(agent_config), "0600"),
        _file(layout.tls_cert, agent_credentials.cert_pem, "0600"),
        _file(layout.tls_key, agent_credentials.key_pem, "0600"),
        _file(layout.agent_sha256_file, bundle.sha256 + "\n"),
        _file(layout.caddy_bootstrap, json_text(templates.fill_json(
            "caddy-bootstrap.json", {"caddy_admin": layout.caddy_admin}))),
        *workspace_files,
    ]
    if agent_delivery == "inline":
        packed = base64.b64encode(gzip.compress(bundle.data, compresslevel=9, mtime=0))
        files.append({"path": layout.agent_pyz, "permissions": "0644", "encoding": "gz+b64",
                      "content": packed.decode()})
    elif agent_delivery != "push":
        raise ValueError(f"agent_delivery must be 'push' or 'inline', not {agent_delivery!r}")

    doc: dict[str, Any] = yaml.safe_load(templates.read_template(profile.cloud_config))
    if ssh_keys:
        doc["ssh_authorized_keys"] = list(ssh_keys)
    doc["write_files"] = files
    doc["runcmd"] = [["bash", f"{layout.install_dir}/bootstrap.sh"]]
    text = (f"#cloud-config\n# agentspaces {header}: "
            "generated by the operator, do not edit.\n" + dump_yaml(doc))
    size = len(text.encode())
    if size > USER_DATA_LIMIT:
        raise UserDataTooLarge(size, USER_DATA_LIMIT, "use agent_delivery='push'"
                               if agent_delivery == "inline" else hint)
    return text


# libyaml's emitter when PyYAML has it: the same text, several times faster (the dump
# was a tenth of the operator's CPU in a burst of 200 creates).
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Dumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Block literals for multi-line text, double quotes for anything with a colon,
    no anchors: readable, unambiguous and stable."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else '"' if ":" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=1_000_000)


def _decode(entry: Mapping[str, Any]) -> bytes:
    content = str(entry.get("content", ""))
    encoding = str(entry.get("encoding", "text/plain")).lower()
    if encoding in ("b64", "base64"):
        return base64.b64decode(content)
    if encoding in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(content))
    if encoding in ("text/plain", ""):
        return content.encode()
    raise ValueError(f"write_files entry {entry.get('path')!r}: unknown encoding {encoding!r}")


def read_write_files(user_data: str) -> dict[str, WrittenFile]:
    """Path -> decoded content and mode of every write_files entry (for the sandbox's
    emulated VM and for tests)."""
    doc = yaml.safe_load(user_data)
    return {entry["path"]: WrittenFile(_decode(entry), str(entry.get("permissions", "0644")))
            for entry in doc.get("write_files", [])}
