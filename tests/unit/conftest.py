"""Unit-tier fixtures: one workspace reconciled against in-memory fakes."""

from __future__ import annotations

import pytest

from agentspaces.reconcile import server_step
from tests.support.scope_builder import ScopeBuilder, quick_user_data


@pytest.fixture
def scope_builder(monkeypatch: pytest.MonkeyPatch) -> ScopeBuilder:
    # The server step renders the VM's user-data in-line; a stub keeps each test in
    # milliseconds (one test in test_server_step.py runs the real renderer).
    monkeypatch.setattr(server_step, "render_user_data", quick_user_data)
    return ScopeBuilder()
