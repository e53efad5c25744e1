"""The checked-in CRDs are exactly what the schema module generates, and the typed
views read only fields the schema declares."""

from __future__ import annotations

import ast
import inspect
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from agentspaces import pki
from agentspaces.api import schema, types
from agentspaces.api.durations import format_duration, parse_duration
from agentspaces.vmconfig.userdata import USER_DATA_LIMIT, render_user_data
from tests.unit.vmconfig_inputs import HOST, SSH_KEY, WS, make_klass, make_spec

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_crds_match_the_schema_module() -> None:
    on_disk = list(yaml.safe_load_all((REPO / "crds" / "agentspaces.dev.yaml").read_text()))
    assert on_disk == schema.all_crds(), (
        "crds/ drifted from agentspaces.api.schema; regenerate with "
        "`agentspaces crds > crds/agentspaces.dev.yaml`")


def _paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for key, sub in (node.get("properties") or {}).items():
        path = f"{prefix}.{key}" if prefix else key
        out.add(path)
        out |= _paths(sub, path)
        if isinstance(sub.get("items"), dict):
            out |= _paths(sub["items"], path)
        if isinstance(sub.get("additionalProperties"), dict):
            out |= _paths(sub["additionalProperties"], path)
    return out


def _string_keys_read(func: Any) -> set[str]:
    """String literals used as dict keys / .get() keys inside a function's source."""
    tree = ast.parse(inspect.getsource(func).strip().replace("\n    ", "\n"))
    keys: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get" and \
                node.args and isinstance(node.args[0], ast.Constant):
            keys.add(str(node.args[0].value))
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            keys.add(str(node.slice.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_get":
            keys |= {str(a.value) for a in node.args[1:] if isinstance(a, ast.Constant)}
    return keys


def test_workspace_view_reads_only_declared_fields() -> None:
    declared = {p.split(".")[-1] for p in _paths(schema.workspace_spec())}
    read = _string_keys_read(types.WorkspaceSpec.from_spec)
    assert read - declared == set()


def test_class_view_reads_only_declared_fields() -> None:
    declared = {p.split(".")[-1] for p in _paths(schema.workspace_class_spec())}
    declared |= {"metadata", "name", "spec", "secretAccessKey"}
    read = _string_keys_read(types.WorkspaceClass.from_body)
    assert read - declared == set()


def test_status_fields_written_by_the_operator_are_declared() -> None:
    """Kopf status patches with undeclared fields would be silently pruned."""
    declared = _paths(schema.workspace_status())
    written = {"observedGeneration", "phase", "conditions", "hostname", "server", "server.id",
               "server.ipv4", "server.ipv6", "urls.workspace", "urls.ui", "urls.ports",
               "urls.state", "dns.records", "dns.zoneId", "activity.idle",
               "activity.idleSince", "activity.lastActivityTime", "activity.agentState",
               "activity.reasons", "backup.time", "backup.object", "backup.size",
               "stoppedBy", "wakeHandled", "secretsVersion", "startedAt", "stoppedAt",
               "agentEndpoint.url", "failedAgentPolls"}
    assert written - declared == set()


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

    budget = schema.USER_TEXT_BUDGET
    instructions = prose(8192)
    name, command = "docs", "npx"
    arg = prose(budget - len(instructions) - len(SSH_KEY) - len(name) - len(command))
    klass = make_klass()
    spec = make_spec(klass, sshKeys=[SSH_KEY], agent={
        "instructions": instructions, "mcpServers": {name: {"command": command,
                                                            "args": [arg]}}})
    creds = pki.generate(HOST, datetime(2026, 1, 1, tzinfo=UTC))
    size = len(render_user_data(WS, spec, klass, host=HOST, agent_credentials=creds).encode())
    assert size <= USER_DATA_LIMIT, size
