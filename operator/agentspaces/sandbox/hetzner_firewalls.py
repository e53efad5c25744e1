"""Firewalls of the Hetzner emulator, shaped as the real API: rules, `apply_to` by server
or label selector, `applied_to` with the servers a selector currently matches, and the
API's errors (uniqueness, resource_in_use, already applied, managed by a selector).

The simulated VMs are local processes and cannot really be filtered, so the emulator
only records which servers each firewall applies to (`servers_of`) for tests to check.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from typing import Any

from .hetzner_errors import ApiError, invalid_input, not_found
from .hetzner_labels import label_errors, parse_selector
from .hetzner_state import CloudState, now_iso

DIRECTIONS = ("in", "out")
PROTOCOLS = ("tcp", "udp", "icmp", "esp", "gre")
PORTED = ("tcp", "udp")
MAX_RULES = 50
MAX_IPS = 100
MAX_NAME = 128


def _port_ok(port: object) -> bool:
    if port == "any":
        return True
    if not isinstance(port, str):
        return False
    low, dash, high = port.partition("-")
    try:
        lo, hi = int(low), int(high) if dash else int(low)
    except ValueError:
        return False
    return 1 <= lo <= hi <= 65535


def _canonical_cidrs(ips: object, errors: list[str]) -> list[str]:
    if not isinstance(ips, list) or len(ips) > MAX_IPS:
        errors.append(f"must be a list of at most {MAX_IPS} CIDR blocks")
        return []
    out = []
    for ip in ips:
        try:
            out.append(str(ipaddress.ip_network(str(ip), strict=True)))
        except ValueError:
            errors.append(f"{ip!r} is not a valid CIDR block")
    return out


def validate_rules(raw: object) -> list[dict[str, Any]]:
    """Rules in their API representation; invalid_input naming the bad ones."""
    if not isinstance(raw, list) or len(raw) > MAX_RULES:
        raise invalid_input({"rules": [f"must be a list of at most {MAX_RULES} rules"]})
    rules: list[dict[str, Any]] = []
    errors: list[str] = []
    for index, rule in enumerate(raw):
        problems: list[str] = []
        if not isinstance(rule, dict):
            errors.append(f"rule {index}: must be an object")
            continue
        direction, protocol, port = rule.get("direction"), rule.get("protocol"), rule.get("port")
        if direction not in DIRECTIONS:
            problems.append("direction must be in or out")
        if protocol not in PROTOCOLS:
            problems.append(f"protocol must be one of {', '.join(PROTOCOLS)}")
        if protocol in PORTED and not _port_ok(port):
            problems.append("port must be a port, a range lo-hi or any")
        if protocol not in PORTED and port is not None:
            problems.append("port is only allowed for tcp and udp")
        own, other = ("source_ips", "destination_ips") if direction == "in" else (
            "destination_ips", "source_ips")
        if rule.get(other):
            problems.append(f"{other} is not allowed for direction {direction}")
        ips = _canonical_cidrs(rule.get(own) or [], problems)
        if not ips:
            problems.append(f"{own} must not be empty")
        description = rule.get("description")
        if description is not None and (not isinstance(description, str)
                                        or len(description) > 255):
            problems.append("description must be a string of at most 255 characters")
        errors.extend(f"rule {index}: {p}" for p in problems)
        rules.append({"description": description, "direction": direction,
                      "protocol": protocol, "port": port if protocol in PORTED else None,
                      "source_ips": ips if direction == "in" else [],
                      "destination_ips": ips if direction == "out" else []})
    if errors:
        raise invalid_input({"rules": errors})
    return rules


def _resource_key(entry: dict[str, Any]) -> tuple[str, str]:
    if entry["type"] == "server":
        return ("server", str(entry["server"]["id"]))
    return ("label_selector", entry["label_selector"]["selector"])


class FirewallBook:
    """The project's firewalls; shares the servers' lock, actions and clock."""

    def __init__(self, state: CloudState) -> None:
        self._state = state
        self._firewalls: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count(7_000_001)

    # -- reading ---------------------------------------------------------------------
    def _require(self, firewall_id: int) -> dict[str, Any]:
        firewall = self._firewalls.get(firewall_id)
        if firewall is None:
            raise not_found("firewall", firewall_id)
        return firewall

    def _servers(self) -> dict[int, dict[str, str]]:
        return {s["id"]: s.get("labels", {}) for s in self._state.list_servers()}

    def _render(self, firewall: dict[str, Any], servers: dict[int, dict[str, str]]
                ) -> dict[str, Any]:
        applied: list[dict[str, Any]] = []
        for entry in firewall["apply_to"]:
            if entry["type"] == "server":
                applied.append({"type": "server", "server": {"id": entry["server"]["id"]}})
                continue
            match = parse_selector(entry["label_selector"]["selector"])
            applied.append({
                "type": "label_selector",
                "label_selector": {"selector": entry["label_selector"]["selector"]},
                "applied_to_resources": [{"type": "server", "server": {"id": sid}}
                                         for sid, labels in sorted(servers.items())
                                         if match(labels)]})
        public = {k: copy.deepcopy(v) for k, v in firewall.items() if k != "apply_to"}
        return {**public, "applied_to": applied}

    def get(self, firewall_id: int) -> dict[str, Any]:
        with self._state.lock:
            return self._render(self._require(firewall_id), self._servers())

    def all(self) -> list[dict[str, Any]]:
        with self._state.lock:
            servers = self._servers()
            return [self._render(f, servers) for _, f in sorted(self._firewalls.items())]

    def servers_of(self, firewall_id: int) -> set[int]:
        """Every server the firewall applies to, directly or through a selector."""
        rendered = self.get(firewall_id)
        out: set[int] = set()
        for entry in rendered["applied_to"]:
            if entry["type"] == "server":
                out.add(entry["server"]["id"])
            out.update(r["server"]["id"] for r in entry.get("applied_to_resources", []))
        return out

    def of_server(self, server_id: int) -> list[int]:
        """Ids of the firewalls applied to a server (for its public_net.firewalls)."""
        with self._state.lock:
            return [fid for fid in sorted(self._firewalls) if server_id in self.servers_of(fid)]

    # -- writing ---------------------------------------------------------------------
    def _resources(self, raw: object, field: str) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            raise invalid_input({field: ["must be a list"]})
        out: list[dict[str, Any]] = []
        errors: list[str] = []
        for entry in raw:
            kind = entry.get("type") if isinstance(entry, dict) else None
            if kind == "server" and isinstance(entry.get("server"), dict) \
                    and isinstance(entry["server"].get("id"), int):
                out.append({"type": "server", "server": {"id": entry["server"]["id"]}})
            elif kind == "label_selector" and isinstance(entry.get("label_selector"), dict) \
                    and isinstance(entry["label_selector"].get("selector"), str):
                selector = entry["label_selector"]["selector"]
                try:
                    parse_selector(selector)
                except ValueError as exc:
                    errors.append(str(exc))
                    continue
                out.append({"type": "label_selector", "label_selector": {"selector": selector}})
            else:
                errors.append("each entry needs type server (with server.id) or "
                              "label_selector (with label_selector.selector)")
        if errors:
            raise invalid_input({field: errors})
        return out

    def _check_servers_exist(self, resources: list[dict[str, Any]]) -> None:
        servers = self._servers()
        for entry in resources:
            if entry["type"] == "server" and entry["server"]["id"] not in servers:
                raise ApiError(404, "firewall_resource_not_found",
                               f"server {entry['server']['id']} not found")

    def _name_taken(self, name: str, except_id: int | None = None) -> bool:
        return any(f["name"] == name and fid != except_id
                   for fid, f in self._firewalls.items())

    def _actions(self, command: str, firewall_id: int, resources: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
        """One finished action per resource (a selector's names only the firewall)."""
        firewall = {"id": firewall_id, "type": "firewall"}
        return [self._state.finished_action(
            command, [{"id": e["server"]["id"], "type": "server"}, firewall]
            if e["type"] == "server" else [firewall]) for e in resources]

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        errors: dict[str, list[str]] = {}
        if not isinstance(name, str) or not name or len(name) > MAX_NAME:
            errors["name"] = [f"must be a string of 1..{MAX_NAME} characters"]
        labels = body.get("labels") or {}
        if label_errors(labels):
            errors["labels"] = label_errors(labels)
        if errors:
            raise invalid_input(errors)
        rules = validate_rules(body.get("rules") or [])
        resources = self._resources(body.get("apply_to") or [], "apply_to")
        with self._state.lock:
            if self._name_taken(str(name)):
                raise ApiError(409, "uniqueness_error", "firewall name is already used",
                               {"fields": [{"name": "name"}]})
            self._check_servers_exist(resources)
            firewall_id = next(self._ids)
            self._firewalls[firewall_id] = {
                "id": firewall_id, "name": name, "labels": dict(labels),
                "created": now_iso(), "rules": rules, "apply_to": resources}
            actions = [self._state.finished_action(
                "set_firewall_rules", [{"id": firewall_id, "type": "firewall"}])]
            if resources:
                actions += self._actions("apply_firewall", firewall_id, resources)
            return {"firewall": self.get(firewall_id), "actions": actions}

    def update(self, firewall_id: int, body: dict[str, Any]) -> dict[str, Any]:
        name, labels = body.get("name"), body.get("labels")
        errors: dict[str, list[str]] = {}
        if name is not None and (not isinstance(name, str) or not name
                                 or len(name) > MAX_NAME):
            errors["name"] = [f"must be a string of 1..{MAX_NAME} characters"]
        if labels is not None and label_errors(labels):
            errors["labels"] = label_errors(labels)
        if errors:
            raise invalid_input(errors)
        with self._state.lock:
            firewall = self._require(firewall_id)
            if name is not None and self._name_taken(name, firewall_id):
                raise ApiError(409, "uniqueness_error", "firewall name is already used",
                               {"fields": [{"name": "name"}]})
            if name is not None:
                firewall["name"] = name
            if labels is not None:
                firewall["labels"] = dict(labels)
            return self.get(firewall_id)

    def delete(self, firewall_id: int) -> None:
        with self._state.lock:
            firewall = self._require(firewall_id)
            if firewall["apply_to"]:
                raise ApiError(422, "resource_in_use",
                               "firewall is still applied to a resource")
            del self._firewalls[firewall_id]

    def set_rules(self, firewall_id: int, body: dict[str, Any]) -> list[dict[str, Any]]:
        if "rules" not in body:
            raise invalid_input({"rules": ["Missing data for required field."]})
        rules = validate_rules(body["rules"])
        with self._state.lock:
            firewall = self._require(firewall_id)
            firewall["rules"] = rules
            return [self._state.finished_action(
                "set_firewall_rules", [{"id": firewall_id, "type": "firewall"}])]

    def apply_to(self, firewall_id: int, body: dict[str, Any]) -> list[dict[str, Any]]:
        resources = self._resources(body.get("apply_to"), "apply_to")
        with self._state.lock:
            firewall = self._require(firewall_id)
            self._check_servers_exist(resources)
            present = {_resource_key(e) for e in firewall["apply_to"]}
            for entry in resources:
                if _resource_key(entry) in present:
                    raise ApiError(422, "firewall_already_applied",
                                   "firewall is already applied to the resource")
            firewall["apply_to"].extend(resources)
            return self._actions("apply_firewall", firewall_id, resources)

    def remove_from(self, firewall_id: int, body: dict[str, Any]) -> list[dict[str, Any]]:
        resources = self._resources(body.get("remove_from"), "remove_from")
        with self._state.lock:
            firewall = self._require(firewall_id)
            by_key = {_resource_key(e): e for e in firewall["apply_to"]}
            selected = self.servers_of(firewall_id)
            for entry in resources:
                key = _resource_key(entry)
                if key in by_key:
                    continue
                if entry["type"] == "server" and entry["server"]["id"] in selected:
                    raise ApiError(422, "firewall_managed_by_label_selector",
                                   "firewall is applied via a label selector")
                raise ApiError(404, "firewall_resource_not_found",
                               "the firewall is not applied to this resource")
            gone = {_resource_key(e) for e in resources}
            firewall["apply_to"] = [e for e in firewall["apply_to"]
                                    if _resource_key(e) not in gone]
            return self._actions("remove_firewall", firewall_id, resources)

    def forget_server(self, server_id: int) -> None:
        """A deleted server leaves every firewall it was applied to directly."""
        with self._state.lock:
            for firewall in self._firewalls.values():
                firewall["apply_to"] = [e for e in firewall["apply_to"]
                                        if _resource_key(e) != ("server", str(server_id))]

