"""The real agent process, as root, starting on a /workspaces full of planted links:
directly (the container's own tree) and through a real backup and restore (moto on
loopback). The root-owned file the links aim at must come through untouched."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentspaces.agent_client import pinned_context
from agentspaces.clouds.r2 import S3ObjectStore
from agentspaces.persistence import backups as bk
from agentspaces.persistence import keys
from tests.component import test_backup_s3 as s3
from tests.component.agent_harness import AgentProcess, running_agent
from tests.component.test_backup_s3 import T0, run_backup, workspace
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root agent")]

# The S3 server, bucket and data key of the backup tests.
moto_endpoint, store, data_key = s3.moto_endpoint, s3.store, s3.data_key


def plant(tree: Path, victim: Path) -> None:
    """Links at every name the agent writes, as the container (root inside) can."""
    (tree / ".claude").mkdir(parents=True)
    (tree / "demo" / ".git").mkdir(parents=True)
    for name in (".claude/settings.json", ".claude/CLAUDE.md", "demo/.mcp.json",
                 ".claude/.settings.json.agentspaces-tmp"):
        os.symlink(victim, tree / name)
    os.symlink(victim.parent, tree / "demo" / ".git" / "info")


def start(agent: AgentProcess, restore: dict[str, Any] | None) -> dict[str, Any]:
    seeds = agent.config_path.parent / "claude"
    seeds.mkdir()
    (seeds / "settings.json").write_text(json.dumps({"env": {"DISABLE_AUTOUPDATER": "1"}}))
    (seeds / "CLAUDE.md").write_text("# demo workspace\n")
    (seeds / "mcp.json").write_text(json.dumps({"mcpServers": {"docs": {"type": "http",
                                                                        "url": "https://d"}}}))
    transport = httpx.HTTPTransport(verify=pinned_context(agent.creds.cert_pem))
    with httpx.Client(base_url=agent.base_url, transport=transport, timeout=10,
                      headers={"Authorization": f"Bearer {agent.creds.token}"}) as c:
        assert c.post("/v1/start", json={"restore": restore}).status_code == 202
        doc: dict[str, Any] = wait_for(
            lambda: (d := c.get("/v1/status").json())["bootStage"] in ("ready", "failed")
            and d, 30, "the start sequence to end")
    return doc


def assert_agent_files_are_real(workspaces: Path) -> None:
    for name in (".claude/settings.json", ".claude/CLAUDE.md", "demo/.mcp.json"):
        assert stat.S_ISREG(os.lstat(workspaces / name).st_mode), name
    settings = json.loads((workspaces / ".claude" / "settings.json").read_text())
    assert settings["env"] == {"DISABLE_AUTOUPDATER": "1"}
    assert (workspaces / ".claude" / "CLAUDE.md").read_text() == "# demo workspace\n"


def test_a_start_on_planted_links_writes_nothing_outside(tmp_path: Path,
                                                        victim: Path) -> None:
    root = tmp_path / "agent"
    root.mkdir()
    plant(root / "workspaces", victim)
    with running_agent(root) as agent:
        doc = start(agent, None)
        logs = agent.logs()
    assert doc["bootStage"] == "ready", doc["bootMessage"]
    assert_agent_files_are_real(agent.workspaces)
    assert "not installing .mcp.json" in logs and "symbolic link or not a directory" in logs


def test_links_kept_by_a_backup_are_harmless_after_the_restore(
        store: S3ObjectStore, data_key: keys.DataKey, tmp_path: Path, victim: Path) -> None:
    source = tmp_path / "container-tree"
    plant(source, victim)
    os.symlink("../../../etc/sudoers.d", source / "demo" / "up-and-out")
    record, _, _ = run_backup(store, workspace(), data_key, source, T0)
    root = tmp_path / "agent"
    root.mkdir()
    plan = bk.restore_plan(store, record, data_key, 600, datetime.now(UTC))
    with running_agent(root) as agent:
        doc = start(agent, plan.to_json())
        logs = agent.logs()
    assert doc["bootStage"] == "ready", doc["bootMessage"]
    assert doc["restore"]["state"] == "succeeded"
    assert_agent_files_are_real(agent.workspaces)
    assert not os.path.lexists(agent.workspaces / "demo" / "up-and-out")
    assert not os.path.lexists(agent.workspaces / "demo" / ".git" / "info" / "90-admins")
    assert "restore: removed 6 entries" in logs
