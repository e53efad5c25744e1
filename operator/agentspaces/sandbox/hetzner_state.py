"""In-memory state of the Hetzner emulator: servers, actions and SSH keys, with timed
status transitions (initializing -> running, power actions; a deleted server is gone at
once, or after a while in status deleting when `linger_deletes` is set).

All public methods are thread-safe (one re-entrant lock) and return deep copies.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import ipaddress
import itertools
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import hetzner_catalog as catalog
from .hetzner_errors import ApiError, invalid_input, locked, not_found
from .hetzner_workers import HookDispatcher, Scheduler

DOC_NET = ipaddress.IPv4Network("203.0.113.0/24")  # RFC 5737 documentation range
# command -> (status while running, status when done)
POWER_ACTIONS = {"poweron": ("start_server", "starting", "running"),
                 "poweroff": ("stop_server", "stopping", "off"),
                 "shutdown": ("shutdown_server", "stopping", "off"),
                 "reboot": ("reboot_server", "starting", "running"),
                 "reset": ("reset_server", "starting", "running")}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ServerSpec:
    """A validated create request."""
    name: str
    server_type: catalog.ServerType
    image: dict[str, Any]
    location: str
    labels: dict[str, str] = field(default_factory=dict)
    user_data: str | None = None
    ssh_key_ids: list[int] = field(default_factory=list)
    enable_ipv4: bool = True
    enable_ipv6: bool = True
    start_after_create: bool = True


@dataclass
class _Server:
    api: dict[str, Any]
    user_data: str | None
    ssh_key_ids: list[int]
    busy_action: int | None = None  # a non-create action in progress

    def snapshot(self) -> dict[str, Any]:
        return {**copy.deepcopy(self.api), "user_data": self.user_data,
                "ssh_key_ids": list(self.ssh_key_ids)}


class CloudState:
    def __init__(self, scheduler: Scheduler, hooks: HookDispatcher,
                 ip_allocator: Callable[[], str] | None = None, id_block: int = 0) -> None:
        self.lock = threading.RLock()
        self.boot_seconds = 1.0
        self.delete_seconds = 0.5
        self.action_seconds = 0.3
        self.linger_deletes = False
        # Snapshots (hetzner_images.py): None = as long as a power action.
        self.snapshot_seconds: float | None = None
        self.snapshot_size_gb = 2.5
        self.id_block = id_block
        self.ip_allocator: Callable[[], str] = ip_allocator or self.next_documentation_ip
        self._scheduler = scheduler
        self._hooks = hooks
        self._servers: dict[int, _Server] = {}
        self._actions: dict[int, dict[str, Any]] = {}
        self._ssh_keys: dict[int, dict[str, Any]] = {}
        # Disjoint id ranges, so mixing up a server id and an action id shows up as 404;
        # each project of one emulator its own block, as ids are global at Hetzner.
        block = id_block * 100_000
        self._server_ids = itertools.count(10_000_001 + block)
        self._action_ids = itertools.count(500_000_001 + block)
        self._ip_ids = itertools.count(80_000_001 + block)
        self._key_ids = itertools.count(2_000_001 + block)
        # Called with a server's id once it is gone (e.g. firewalls drop it).
        self.delete_listeners: list[Callable[[int], None]] = []

    # -- helpers ---------------------------------------------------------------------
    def next_documentation_ip(self) -> str:
        """Default allocator: lowest free address of 203.0.113.10-254."""
        with self.lock:
            used = {s.api["public_net"]["ipv4"]["ip"] for s in self._servers.values()
                    if s.api["public_net"]["ipv4"]}
            for host in DOC_NET.hosts():
                if int(host) - int(DOC_NET.network_address) >= 10 and str(host) not in used:
                    return str(host)
        raise ApiError(412, "resource_unavailable", "no IPv4 address available")

    def _require(self, server_id: int) -> _Server:
        server = self._servers.get(server_id)
        if server is None:
            raise not_found("server", server_id)
        return server

    def _new_action(self, command: str, server_id: int) -> dict[str, Any]:
        action: dict[str, Any] = {
            "id": next(self._action_ids), "command": command, "status": "running",
            "progress": 0, "started": now_iso(), "finished": None,
            "resources": [{"id": server_id, "type": "server"}], "error": None}
        self._actions[action["id"]] = action
        return action

    def finished_action(self, command: str, resources: list[dict[str, Any]]
                        ) -> dict[str, Any]:
        """An action that completed at once (e.g. on a firewall)."""
        with self.lock:
            stamp = now_iso()
            action: dict[str, Any] = {
                "id": next(self._action_ids), "command": command, "status": "success",
                "progress": 100, "started": stamp, "finished": stamp,
                "resources": copy.deepcopy(resources), "error": None}
            self._actions[action["id"]] = action
            return copy.deepcopy(action)

    def _finish_action(self, action_id: int, ok: bool = True) -> None:
        action = self._actions[action_id]
        action.update(status="success" if ok else "error", progress=100,
                      finished=now_iso())
        if not ok:
            action["error"] = {"code": "action_failed", "message": "Action failed"}

    def _set_status(self, server: _Server, status: str) -> None:
        if server.api["status"] != status:
            server.api["status"] = status
            self._hooks.emit("status", server.snapshot())

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            with self.lock:
                fn()
        self._scheduler.call_later(delay, run)

    def _name_taken(self, name: str, except_id: int | None = None) -> bool:
        return any(s.api["name"] == name and sid != except_id
                   for sid, s in self._servers.items())

    # -- servers ---------------------------------------------------------------------
    def create_server(self, spec: ServerSpec) -> dict[str, Any]:
        with self.lock:
            if self._name_taken(spec.name):
                raise ApiError(409, "uniqueness_error", "server name is already used",
                               {"fields": [{"name": "name"}]})
            server_id = next(self._server_ids)
            ipv4 = None
            if spec.enable_ipv4:
                ip = self.ip_allocator()
                ipv4 = {"id": next(self._ip_ids), "ip": ip, "blocked": False,
                        "dns_ptr": f"static.{ip}.clients.your-server.de"}
            ipv6 = None
            if spec.enable_ipv6:
                net = ipaddress.IPv6Network(f"2001:db8:{server_id % 0xFFFF:x}::/64")
                ipv6 = {"id": next(self._ip_ids), "ip": str(net), "blocked": False,
                        "dns_ptr": []}
            api = {
                "id": server_id, "name": spec.name, "status": "initializing",
                "created": now_iso(),
                "public_net": {"ipv4": ipv4, "ipv6": ipv6, "floating_ips": [],
                               "firewalls": []},
                "private_net": [],
                "server_type": catalog.server_type_dict(spec.server_type),
                "datacenter": catalog.datacenter_dict(spec.location),
                "location": catalog.location_dict(spec.location),
                "image": copy.deepcopy(spec.image), "iso": None, "rescue_enabled": False,
                "locked": False, "backup_window": None, "outgoing_traffic": 0,
                "ingoing_traffic": 0,
                "included_traffic": catalog.included_traffic(spec.server_type, spec.location),
                "protection": {"delete": False, "rebuild": False},
                "labels": dict(spec.labels), "volumes": [], "load_balancers": [],
                "primary_disk_size": spec.server_type.disk, "placement_group": None,
            }
            server = _Server(api, spec.user_data, list(spec.ssh_key_ids))
            self._servers[server_id] = server
            action = self._new_action("create_server", server_id)
            next_actions = ([self._new_action("start_server", server_id)]
                            if spec.start_after_create else [])
            ids = [action["id"], *(a["id"] for a in next_actions)]
            self._later(self.boot_seconds,
                        lambda: self._finish_boot(server_id, ids, spec.start_after_create))
            self._hooks.emit("created", server.snapshot())
            return copy.deepcopy({
                "server": api, "action": action, "next_actions": next_actions,
                "root_password": None if spec.ssh_key_ids else secrets.token_urlsafe(15),
            })

    def _finish_boot(self, server_id: int, action_ids: list[int], start: bool) -> None:
        server = self._servers.get(server_id)
        ok = server is not None and server.api["status"] == "initializing"
        for action_id in action_ids:
            self._finish_action(action_id, ok)
        if server is not None and ok:
            self._set_status(server, "running" if start else "off")

    def get_server(self, server_id: int) -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._require(server_id).api)

    def list_servers(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(s.api) for _, s in sorted(self._servers.items())]

    def snapshots(self) -> dict[int, dict[str, Any]]:
        with self.lock:
            return {sid: s.snapshot() for sid, s in sorted(self._servers.items())}

    def update_server(self, server_id: int, name: str | None,
                      labels: dict[str, str] | None) -> dict[str, Any]:
        with self.lock:
            server = self._require(server_id)
            if name is not None and self._name_taken(name, except_id=server_id):
                raise ApiError(409, "uniqueness_error", "server name is already used",
                               {"fields": [{"name": "name"}]})
            if name is not None:
                server.api["name"] = name
            if labels is not None:
                server.api["labels"] = dict(labels)
            return copy.deepcopy(server.api)

    def delete_server(self, server_id: int) -> dict[str, Any]:
        """Like the real API, the server is gone at once (its name free again) and the
        delete action finishes after `delete_seconds`. With `linger_deletes` the server
        stays visible, locked in status deleting, until the action finishes; deleting it
        again meanwhile is locked. Deleting is allowed while the server initializes."""
        with self.lock:
            server = self._require(server_id)
            if server.api["status"] == "deleting":
                raise locked("server", server_id)
            action = self._new_action("delete_server", server_id)
            if self.linger_deletes:
                server.busy_action = action["id"]
                server.api["locked"] = True
                self._set_status(server, "deleting")
            else:
                self._remove(server_id)

            def finish() -> None:
                self._remove(server_id)
                self._finish_action(action["id"])
            self._later(self.delete_seconds, finish)
            return copy.deepcopy(action)

    def _remove(self, server_id: int) -> None:
        server = self._servers.pop(server_id, None)
        if server is None:
            return
        for listener in self.delete_listeners:
            listener(server_id)
        self._hooks.emit("deleted", server.snapshot())

    def power_action(self, server_id: int, verb: str) -> dict[str, Any]:
        command, during, after = POWER_ACTIONS[verb]
        with self.lock:
            server = self._require(server_id)
            if server.busy_action is not None or server.api["status"] in (
                    "initializing", "deleting"):
                raise locked("server", server_id)
            action = self._new_action(command, server_id)
            if (verb, server.api["status"]) not in (("poweron", "running"),
                                                    ("poweroff", "off"),
                                                    ("shutdown", "off")):
                server.busy_action = action["id"]
                server.api["locked"] = True
                self._set_status(server, during)
            self._later(self.action_seconds,
                        lambda: self._finish_power(server_id, action["id"], after))
            return copy.deepcopy(action)

    def guest_shutdown(self, server_id: int) -> bool:
        """The guest powered itself off (`poweroff` inside it, as cloud-init's
        power_state does): status off, with no action, as Hetzner shows it. False when
        the server is not here or not running."""
        with self.lock:
            server = self._servers.get(server_id)
            if server is None or server.api["status"] != "running":
                return False
            self._set_status(server, "off")
            return True

    def _finish_power(self, server_id: int, action_id: int, after: str) -> None:
        self._finish_action(action_id)
        server = self._servers.get(server_id)
        if server is not None and server.busy_action == action_id:
            server.busy_action = None
            server.api["locked"] = False
            self._set_status(server, after)

    def locking_action(self, server_id: int, command: str, seconds: float,
                       done: Callable[[], None]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(server, action): an action that locks the server without changing its
        status (create_image), finished after `seconds`; then `done` runs under the
        lock. A server that is busy, initializing or deleting is locked."""
        with self.lock:
            server = self._require(server_id)
            if server.busy_action is not None or server.api["status"] in (
                    "initializing", "deleting"):
                raise locked("server", server_id)
            action = self._new_action(command, server_id)
            server.busy_action = action["id"]
            server.api["locked"] = True

            def finish() -> None:
                self._finish_action(action["id"])
                current = self._servers.get(server_id)
                if current is not None and current.busy_action == action["id"]:
                    current.busy_action = None
                    current.api["locked"] = False
                done()
            self._later(seconds, finish)
            return copy.deepcopy(server.api), copy.deepcopy(action)

    # -- actions ---------------------------------------------------------------------
    def get_action(self, action_id: int, server_id: int | None = None) -> dict[str, Any]:
        with self.lock:
            action = self._actions.get(action_id)
            if action is None or (server_id is not None and {"id": server_id, "type": "server"}
                                  not in action["resources"]):
                raise not_found("action", action_id)
            return copy.deepcopy(action)

    def list_actions(self, server_id: int | None = None) -> list[dict[str, Any]]:
        with self.lock:
            if server_id is not None:
                self._require(server_id)
            return [copy.deepcopy(a) for _, a in sorted(self._actions.items())
                    if server_id is None
                    or {"id": server_id, "type": "server"} in a["resources"]]

    # -- ssh keys --------------------------------------------------------------------
    def create_ssh_key(self, name: str, public_key: str,
                       labels: dict[str, str]) -> dict[str, Any]:
        fingerprint = ssh_fingerprint(public_key)
        if fingerprint is None:
            raise invalid_input({"public_key": ["invalid public key"]})
        with self.lock:
            if any(k["name"] == name for k in self._ssh_keys.values()):
                raise ApiError(409, "uniqueness_error", "SSH key name is already used",
                               {"fields": [{"name": "name"}]})
            if any(k["fingerprint"] == fingerprint for k in self._ssh_keys.values()):
                raise ApiError(409, "uniqueness_error",
                               "SSH key with the same fingerprint already exists",
                               {"fields": [{"name": "public_key"}]})
            key: dict[str, Any] = {
                "id": next(self._key_ids), "name": name, "fingerprint": fingerprint,
                "public_key": public_key.strip(), "labels": dict(labels),
                "created": now_iso()}
            self._ssh_keys[key["id"]] = key
            return copy.deepcopy(key)

    def find_ssh_key(self, id_or_name: object) -> dict[str, Any] | None:
        with self.lock:
            return next((copy.deepcopy(k) for k in self._ssh_keys.values()
                         if str(id_or_name) in (str(k["id"]), k["name"])), None)

    def get_ssh_key(self, key_id: int) -> dict[str, Any]:
        with self.lock:
            if key_id not in self._ssh_keys:
                raise not_found("ssh_key", key_id)
            return copy.deepcopy(self._ssh_keys[key_id])

    def list_ssh_keys(self) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(k) for _, k in sorted(self._ssh_keys.items())]

    def delete_ssh_key(self, key_id: int) -> None:
        with self.lock:
            if self._ssh_keys.pop(key_id, None) is None:
                raise not_found("ssh_key", key_id)


def ssh_fingerprint(public_key: str) -> str | None:
    """MD5 fingerprint (colon hex) of an OpenSSH public key line, None if malformed."""
    parts = public_key.strip().split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
