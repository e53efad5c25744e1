"""Renaming and relabelling a server in one request, and finding servers by a label
selector: the operator's HcloudServers adapter against the Hetzner emulator (the real
`hcloud` library underneath). A warm-pool server is handed to a workspace this way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.clouds.hetzner import HcloudServers, ServerRequest
from agentspaces.sandbox.hetzner import HetznerEmulator

TOKEN = "relabel-test-token"
POOL = {"agentspaces.dev/managed-by": "agentspaces", "agentspaces.dev/pool": "standard"}


@pytest.fixture
def emulator() -> Iterator[HetznerEmulator]:
    with HetznerEmulator(TOKEN, boot_seconds=0.05, delete_seconds=0.05,
                         action_seconds=0.05) as emu:
        yield emu


def request(name: str, labels: dict[str, str]) -> ServerRequest:
    return ServerRequest(name=name, server_type="cx23", location="fsn1", image="debian-13",
                         labels=labels, user_data="#cloud-config\n")


def test_relabel_renames_and_replaces_every_label_in_one_request(
        emulator: HetznerEmulator) -> None:
    async def scenario() -> None:
        servers = HcloudServers(TOKEN, emulator.url)
        try:
            pooled = await servers.create(request("standard-pool-0", POOL))
            other = await servers.create(request("standard-pool-1", POOL))
            claimed = {"agentspaces.dev/managed-by": "agentspaces",
                       "agentspaces.dev/workspace-uid": "uid-1"}
            moved = await servers.relabel(pooled.id, "ws-alpha", claimed)
            assert (moved.id, moved.name, dict(moved.labels)) == (pooled.id, "ws-alpha",
                                                                   claimed)
            assert moved.workspace_uid == "uid-1"
            fetched = await servers.get(pooled.id)
            assert fetched is not None and fetched.name == "ws-alpha"
            assert "agentspaces.dev/pool" not in fetched.labels
            # The pool's selector no longer finds it; the workspace's does.
            left = await servers.find_by_selector("agentspaces.dev/pool=standard")
            assert [s.id for s in left] == [other.id]
            assert [s.id for s in await servers.find_by_uid("uid-1")] == [pooled.id]
        finally:
            await servers.aclose()
    asyncio.run(scenario())


def test_relabel_to_a_taken_name_is_refused_and_changes_nothing(
        emulator: HetznerEmulator) -> None:
    async def scenario() -> None:
        servers = HcloudServers(TOKEN, emulator.url)
        try:
            first = await servers.create(request("standard-pool-0", POOL))
            await servers.create(request("ws-alpha", {"agentspaces.dev/workspace-uid": "x"}))
            with pytest.raises(CloudError) as info:
                await servers.relabel(first.id, "ws-alpha", {"a": "b"})
            assert info.value.code == "uniqueness_error"
            kept = await servers.get(first.id)
            assert kept is not None and kept.name == "standard-pool-0"
            assert dict(kept.labels) == POOL
        finally:
            await servers.aclose()
    asyncio.run(scenario())


def test_relabel_of_a_deleted_server_is_not_found(emulator: HetznerEmulator) -> None:
    async def scenario() -> None:
        servers = HcloudServers(TOKEN, emulator.url)
        try:
            gone = await servers.create(request("standard-pool-0", POOL))
            await servers.delete(gone.id)
            with pytest.raises(CloudError) as info:
                await servers.relabel(gone.id, "ws-alpha", {"a": "b"})
            assert info.value.kind is ErrorKind.NOT_FOUND
        finally:
            await servers.aclose()
    asyncio.run(scenario())


def test_relabel_with_an_invalid_label_value_is_invalid_input(
        emulator: HetznerEmulator) -> None:
    async def scenario() -> None:
        servers = HcloudServers(TOKEN, emulator.url)
        try:
            first = await servers.create(request("standard-pool-0", POOL))
            with pytest.raises(CloudError) as info:
                await servers.relabel(first.id, "ws-alpha", {"a": "x" * 64})
            assert info.value.code == "invalid_input"
            kept = await servers.get(first.id)
            assert kept is not None and kept.name == "standard-pool-0"
        finally:
            await servers.aclose()
    asyncio.run(scenario())
