"""Firewalls of the Hetzner emulator, driven through the real `hcloud` library: the
shapes and errors the operator relies on, and which servers a firewall applies to."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import hcloud
import pytest
from hcloud.firewalls import FirewallResource, FirewallResourceLabelSelector, FirewallRule
from hcloud.images import Image
from hcloud.server_types import ServerType
from hcloud.servers import BoundServer

from agentspaces.sandbox.hetzner import HetznerEmulator
from tests.support.waiting import wait_for

TOKEN = "firewall-test-token"
SELECTOR = "agentspaces.dev/class=default"


@pytest.fixture
def emulator() -> Iterator[HetznerEmulator]:
    emu = HetznerEmulator(TOKEN, boot_seconds=0.05, delete_seconds=0.05, action_seconds=0.05)
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def client(emulator: HetznerEmulator) -> hcloud.Client:
    return hcloud.Client(token=TOKEN, api_endpoint=emulator.url, poll_interval=0.02)


def _server(client: hcloud.Client, name: str, labels: dict[str, str]) -> BoundServer:
    return client.servers.create(name, server_type=ServerType(name="cx23"),
                                 image=Image(name="ubuntu-24.04"), labels=labels).server


def _error(call: Callable[[], object]) -> hcloud.APIException:
    with pytest.raises(hcloud.APIException) as info:
        call()
    return info.value


def _selector(selector: str) -> FirewallResource:
    return FirewallResource(type="label_selector",
                            label_selector=FirewallResourceLabelSelector(selector))


AGENT_RULE = FirewallRule(direction="in", protocol="tcp", port="9443",
                          source_ips=["198.51.100.7/32", "2001:0db8:0:0::/64"],
                          description="agent")


def test_create_with_label_selector_applies_to_matching_servers(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    ours = _server(client, "ours", {"agentspaces.dev/class": "default"})
    other = _server(client, "other", {"agentspaces.dev/class": "other"})
    created = client.firewalls.create("fw", rules=[AGENT_RULE],
                                      labels={"agentspaces.dev/managed-by": "agentspaces"},
                                      resources=[_selector(SELECTOR)])
    firewall = created.firewall
    assert [a.command for a in created.actions] == ["set_firewall_rules", "apply_firewall"]
    rule = firewall.rules[0]
    assert (rule.direction, rule.protocol, rule.port) == ("in", "tcp", "9443")
    assert rule.source_ips == ["198.51.100.7/32", "2001:db8::/64"]  # canonical IPv6
    assert rule.destination_ips == [] and rule.description == "agent"
    applied = firewall.applied_to[0]
    assert applied.type == "label_selector" and applied.label_selector.selector == SELECTOR
    assert [r.server.id for r in applied.applied_to_resources] == [ours.id]
    assert emulator.firewall_servers(firewall.id) == {ours.id}
    # A server created later with the label is covered at once; the server shows it.
    late = _server(client, "late", {"agentspaces.dev/class": "default"})
    assert emulator.firewall_servers(firewall.id) == {ours.id, late.id}
    assert client.servers.get_by_id(late.id).public_net.firewalls[0].firewall.id == firewall.id
    assert client.servers.get_by_id(other.id).public_net.firewalls == []
    # Listing filters by label selector and name, as the operator looks ours up.
    assert [f.id for f in client.firewalls.get_all(
        label_selector="agentspaces.dev/managed-by=agentspaces")] == [firewall.id]
    assert client.firewalls.get_all(label_selector="agentspaces.dev/managed-by=x") == []
    assert client.firewalls.get_by_name("fw").id == firewall.id
    assert emulator.calls["POST /firewalls"] == 1


def test_set_rules_replaces_every_rule(client: hcloud.Client) -> None:
    firewall = client.firewalls.create("fw", rules=[AGENT_RULE]).firewall
    web = FirewallRule(direction="in", protocol="tcp", port="80-443",
                       source_ips=["0.0.0.0/0", "::/0"])
    ping = FirewallRule(direction="in", protocol="icmp", source_ips=["0.0.0.0/0"])
    actions = client.firewalls.set_rules(firewall, [web, ping])
    assert [a.command for a in actions] == ["set_firewall_rules"]
    rules = client.firewalls.get_by_id(firewall.id).rules
    assert [(r.protocol, r.port) for r in rules] == [("tcp", "80-443"), ("icmp", None)]


@pytest.mark.parametrize("rule, field", [
    (FirewallRule(direction="in", protocol="tcp", port="9443"), "source_ips"),
    (FirewallRule(direction="in", protocol="tcp", port="70000", source_ips=["::/0"]), "port"),
    (FirewallRule(direction="in", protocol="icmp", port="1", source_ips=["::/0"]), "port"),
    (FirewallRule(direction="in", protocol="tcp", port="22", source_ips=["10.0.0.1/8"]),
     "CIDR"),
    (FirewallRule(direction="sideways", protocol="tcp", port="22", source_ips=["::/0"]),
     "direction"),
])
def test_invalid_rules_are_invalid_input(client: hcloud.Client, rule: FirewallRule,
                                         field: str) -> None:
    err = _error(lambda: client.firewalls.create("bad", rules=[rule]))
    assert err.code == "invalid_input" and field in str(err.details)


def test_names_are_unique(client: hcloud.Client) -> None:
    client.firewalls.create("fw")
    assert _error(lambda: client.firewalls.create("fw")).code == "uniqueness_error"


def test_applied_firewall_cannot_be_deleted_until_removed(
        client: hcloud.Client, emulator: HetznerEmulator) -> None:
    server = _server(client, "one", {"agentspaces.dev/class": "default"})
    firewall = client.firewalls.create("fw", resources=[_selector(SELECTOR)]).firewall
    assert _error(lambda: client.firewalls.delete(firewall)).code == "resource_in_use"
    # A server matched by the selector cannot be removed on its own.
    direct = FirewallResource(type="server", server=server)
    assert _error(lambda: client.firewalls.remove_from_resources(firewall, [direct])
                  ).code == "firewall_managed_by_label_selector"
    assert _error(lambda: client.firewalls.apply_to_resources(
        firewall, [_selector(SELECTOR)])).code == "firewall_already_applied"
    client.firewalls.remove_from_resources(firewall, [_selector(SELECTOR)])
    assert emulator.firewall_servers(firewall.id) == set()
    client.firewalls.delete(firewall)
    assert emulator.firewalls == {}
    assert _error(lambda: client.firewalls.get_by_id(firewall.id)).code == "not_found"


def test_direct_application_ends_with_the_server(client: hcloud.Client,
                                                 emulator: HetznerEmulator) -> None:
    server = _server(client, "one", {})
    firewall = client.firewalls.create("fw").firewall
    missing = FirewallResource(type="server", server=BoundServer(
        client.servers, {"id": 999}, complete=False))
    assert _error(lambda: client.firewalls.apply_to_resources(firewall, [missing])
                  ).code == "firewall_resource_not_found"
    actions = client.firewalls.apply_to_resources(
        firewall, [FirewallResource(type="server", server=server)])
    assert [a.command for a in actions] == ["apply_firewall"]
    assert emulator.firewall_servers(firewall.id) == {server.id}
    client.servers.delete(server)
    wait_for(lambda: not emulator.firewall_servers(firewall.id), 5, "server dropped")
    client.firewalls.delete(firewall)  # no longer in use
