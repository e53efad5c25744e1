"""A warm-pool server's user-data and the claim that makes it a workspace's: together
they carry exactly what the workspace's own user-data does, and the pool's names no
workspace."""

from __future__ import annotations

import json

import pytest

from agentspaces.vmconfig.agent_config import CLAIM_KEYS, machine_config, render_agent_config
from agentspaces.vmconfig.claim import render_claim
from agentspaces.vmconfig.layout import VM_LAYOUT
from agentspaces.vmconfig.userdata import (
    read_write_files,
    render_pool_user_data,
    render_user_data,
)
from tests.unit.vmconfig_inputs import (
    FULL_SPEC,
    HOST,
    WS,
    FakeCredentials,
    fake_bundle,
    make_klass,
    make_spec,
)

SEEDS = VM_LAYOUT.claude_seed_dir


def pool_files(**klass_fields: object) -> dict[str, bytes]:
    klass = make_klass(**klass_fields)
    text = render_pool_user_data(klass, klass.server, agent_credentials=FakeCredentials(),
                                 agent_bundle=fake_bundle())
    return {path: f.content for path, f in read_write_files(text).items()}


def workspace_files(klass_fields: dict[str, object], **spec_fields: object
                    ) -> dict[str, bytes]:
    klass = make_klass(**klass_fields)
    text = render_user_data(WS, make_spec(klass, **spec_fields), klass, host=HOST,
                            agent_credentials=FakeCredentials(), agent_bundle=fake_bundle())
    return {path: f.content for path, f in read_write_files(text).items()}


def test_the_pool_user_data_names_no_workspace() -> None:
    klass = make_klass()
    text = render_pool_user_data(klass, klass.server, agent_credentials=FakeCredentials(),
                                 agent_bundle=fake_bundle())
    for needle in (WS.uid, WS.name, HOST, "ssh_authorized_keys"):
        assert needle not in text
    config = json.loads(pool_files()[VM_LAYOUT.agent_json])
    assert config["pool"] == {"class": klass.name}
    assert not set(CLAIM_KEYS) & set(config)


def test_pool_and_workspace_user_data_share_every_machine_file() -> None:
    pool = pool_files()
    ws = workspace_files({}, **FULL_SPEC)
    only_workspace = {p for p in ws if p.startswith(SEEDS + "/")}
    assert only_workspace, "the workspace user-data seeds Claude"
    assert set(pool) == set(ws) - only_workspace
    differing = {p for p in pool if pool[p] != ws[p]}
    assert differing == {VM_LAYOUT.agent_json}


@pytest.mark.parametrize("klass_fields", [{}, {"devcontainer": {"claudeCode": "npm",
                                                                 "trustRepository": True}}])
def test_pool_config_plus_the_claim_is_the_workspace_agent_json(
        klass_fields: dict[str, object]) -> None:
    klass = make_klass(**klass_fields)
    spec = make_spec(klass, **FULL_SPEC)
    pool = json.loads(pool_files(**klass_fields)[VM_LAYOUT.agent_json])
    claim = render_claim(WS, spec, klass, host=HOST)
    merged = {k: v for k, v in pool.items() if k != "pool"} | claim["config"]
    assert set(claim["config"]) <= set(CLAIM_KEYS)
    assert merged == render_agent_config(WS, spec, klass, host=HOST,
                                         token_sha256=FakeCredentials().token_sha256)


def test_the_claim_carries_the_seeds_and_keys_the_user_data_would() -> None:
    klass = make_klass()
    spec = make_spec(klass, **FULL_SPEC)
    ws = workspace_files({}, **FULL_SPEC)
    claim = render_claim(WS, spec, klass, host=HOST)
    assert {f"{SEEDS}/{name}": text.encode() for name, text in claim["claudeSeeds"].items()} \
        == {p: c for p, c in ws.items() if p.startswith(SEEDS + "/")}
    assert claim["sshAuthorizedKeys"] == list(spec.ssh_keys)
    assert claim["sshAuthorizedKeys"], "FULL_SPEC has SSH keys"


def test_machine_config_refuses_a_bad_token_digest() -> None:
    with pytest.raises(ValueError, match="64 lower-case hex"):
        machine_config(make_klass(), token_sha256="ABC")
