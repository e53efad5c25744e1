"""The checked-in CRDs are exactly what the API models generate, and what admission
declares (CEL rules, reserved ports, the user-text budget) is there."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agentspaces import pki
from agentspaces.api import crd, model, types
from agentspaces.api.durations import format_duration, parse_duration
from agentspaces.vmconfig.userdata import USER_DATA_LIMIT, render_user_data
from tests.unit.vmconfig_inputs import HOST, SSH_KEY, WS, make_klass, make_spec

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_crds_match_the_models() -> None:
    on_disk = list(yaml.safe_load_all((REPO / "crds" / "agentspaces.dev.yaml").read_text()))
    assert on_disk == crd.all_crds(), (
        "crds/ drifted from agentspaces.api.model/status; regenerate with `make crds`")


def _spec_schema(kind: str) -> dict[str, Any]:
    found = next(c for c in crd.all_crds() if c["spec"]["names"]["kind"] == kind)
    root = found["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root["properties"]["spec"]


def test_reserved_ports_are_refused_by_a_cel_rule_on_the_port() -> None:
    port = _spec_schema("Workspace")["properties"]["access"]["properties"]["ports"]["items"]
    rule = port["properties"]["port"]["x-kubernetes-validations"][0]
    assert rule["rule"] == f"!(self in {list(model.RESERVED_PORTS)})"
    assert rule["message"] == model.RESERVED_PORTS_MESSAGE


def test_class_limit_rules_name_the_defaults_the_class_model_applies() -> None:
    """The CEL that checks a class's own settings against its limits uses the very
    defaults the operator applies when the class leaves them unset."""
    rules = {r["message"]: r["rule"] for r in
             _spec_schema("WorkspaceClass")["x-kubernetes-validations"]}
    defaults = model.WorkspaceClassSpecModel.parse(
        {"hetzner": {"tokenSecretRef": {"name": "h"}},
         "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}}})
    assert f"'{defaults.server.type}') in self.limits.serverTypes" in \
        rules["server.type must be one of limits.serverTypes"]
    assert f"'{defaults.server.image}') in self.limits.images" in \
        rules["server.image must be one of limits.images"]
    timeout_rule = next(r for m, r in rules.items() if m.startswith("idle.timeout"))
    assert f": '{defaults.idle.timeout}')" in timeout_rule
    busy_rule = next(r for m, r in rules.items() if m.startswith("idle.agentBusyCap"))
    assert f": '{defaults.idle.agent_busy_cap}')" in busy_rule


def test_durations_carry_their_minimum_as_cel_and_as_a_parse_check() -> None:
    idle = _spec_schema("Workspace")["properties"]["idle"]["properties"]
    assert idle["timeout"]["x-kubernetes-validations"][0]["rule"] == \
        "duration(self) >= duration('1m')"
    assert idle["timeout"]["pattern"] == model.DURATION_PATTERN
    assert "default" not in idle["timeout"]  # inherited from the class
    assert _spec_schema("WorkspaceClass")["properties"]["idle"]["properties"]["timeout"][
        "default"] == "30m"


def test_class_defaults_flow_into_the_workspace_view() -> None:
    klass = types.WorkspaceClass.from_body({
        "metadata": {"name": "c"},
        "spec": {"hetzner": {"tokenSecretRef": {"name": "h"}},
                 "server": {"type": "cpx32", "location": "hel1"},
                 "dns": {"zoneName": "example.com", "tokenSecretRef": {"name": "cf"}},
                 "idle": {"timeout": "45m"}}})
    spec = types.WorkspaceSpec.from_spec(
        {"className": "c", "repository": {"url": "https://github.com/a/b"},
         "server": {"location": "nbg1"}, "idle": {"grace": "1m"},
         "access": {"ports": [{"port": 8080, "visibility": "public"}, {"port": 3000}]}},
        klass)
    assert spec.server.type == "cpx32"          # from the class
    assert spec.server.location == "nbg1"       # the workspace wins
    assert spec.idle.timeout.total_seconds() == 45 * 60
    assert spec.idle.grace.total_seconds() == 60
    assert spec.idle.agent_busy_cap.total_seconds() == 6 * 3600
    assert spec.public_ports == (8080,)
    assert klass.dns.base_domain == "example.com"
    assert spec.persistence_enabled is False    # the class has no storage


def test_durations_round_trip() -> None:
    for text, seconds in [("30m", 1800), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400),
                          ("250ms", 0.25)]:
        assert parse_duration(text).total_seconds() == seconds
    assert format_duration(parse_duration("1h30m")) == "1h30m"
    for bad in ["", "30", "m30", "1d", "30m ", "-5m"]:
        try:
            parse_duration(bad)
        except ValueError as err:
            assert repr(bad) in str(err)
        else:
            raise AssertionError(f"{bad!r} parsed")


def test_the_admission_text_budget_keeps_ordinary_text_within_the_user_data_limit() -> None:
    """USER_TEXT_BUDGET characters of prose, split like a real spec, still render under
    Hetzner's 32 KiB (text that compresses badly is the operator's UserDataTooLarge)."""
    rng = random.Random(5)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9)))
             for _ in range(800)]

    def prose(chars: int) -> str:
        return " ".join(rng.choice(words) for _ in range(chars))[:chars]

    budget = model.USER_TEXT_BUDGET
    instructions = prose(8192)
    name, command = "docs", "npx"
    text = prose(budget - len(instructions) - len(SSH_KEY) - len(name) - len(command))
    args = [text[i:i + 1024] for i in range(0, len(text), 1024)]  # maxLength per arg
    klass = make_klass()
    spec = make_spec(klass, sshKeys=[SSH_KEY], agent={
        "instructions": instructions, "mcpServers": {name: {"command": command,
                                                            "args": args}}})
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    size = len(render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds).encode())
    assert size <= USER_DATA_LIMIT, size


def test_images_are_the_os_profiles_or_numeric_ids() -> None:
    server = _spec_schema("WorkspaceClass")["properties"]["server"]["properties"]
    assert server["osProfile"]["enum"] == list(model.OS_PROFILES)
    pattern = re.compile(server["image"]["pattern"])
    assert server["image"]["pattern"] == model.IMAGE_PATTERN
    for image in (*model.OS_PROFILES, "4711"):
        assert pattern.match(image), image
    for image in ("debian-12", "ubuntu-24x04", "ubuntu-24.04-beta", "x4711", ""):
        assert not pattern.match(image), image
    workspace_image = _spec_schema("Workspace")["properties"]["server"]["properties"]["image"]
    assert workspace_image["pattern"] == model.IMAGE_PATTERN
    rules = {r["message"]: r["rule"] for r in
             _spec_schema("WorkspaceClass")["x-kubernetes-validations"]}
    assert rules[model.NUMERIC_IMAGE_NEEDS_PROFILE.message] == \
        model.NUMERIC_IMAGE_NEEDS_PROFILE.rule
