"""Routes and request validation of the Hetzner emulator: handlers take path parameters,
`query` and (POST/PUT) `body`, return (HTTP status, JSON payload) and raise ApiError for
API errors. No HTTP plumbing here."""

from __future__ import annotations

import json
import re
from typing import Any

from . import hetzner_catalog as catalog
from .emulator import Match, RouteTable, ascii_int
from .hetzner_errors import ApiError, invalid_input, not_found
from .hetzner_firewalls import FirewallBook
from .hetzner_images import ImageBook
from .hetzner_labels import label_errors, parse_selector
from .hetzner_state import POWER_ACTIONS, CloudState, ServerSpec

Query = dict[str, list[str]]
Result = tuple[int, dict[str, Any] | None]

MAX_PER_PAGE = 50
DEFAULT_PER_PAGE = 25
USER_DATA_LIMIT = 32 * 1024
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def endpoint_key(method: str, path: str) -> str:
    """Counter key: numeric segments become {id}, a second one {action_id}.
    e.g. GET /servers/42/actions/7 -> "GET /servers/{id}/actions/{action_id}"."""
    out, seen = [], 0
    for part in path.strip("/").split("/"):
        if ascii_int(part) is not None:
            out.append("{id}" if seen == 0 else "{action_id}")
            seen += 1
        else:
            out.append(part)
    return f"{method} /{'/'.join(out)}"


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "json_error", "invalid JSON input in request body") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "json_error", "request body must be a JSON object")
    return body


def _int_param(query: Query, name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    number = ascii_int(values[-1].strip())
    if number is None:
        raise invalid_input({name: ["must be an integer"]})
    return number


def paginate(items: list[dict[str, Any]], query: Query, key: str) -> Result:
    """The API's page/per_page pagination with meta.pagination (per_page capped at 50)."""
    page = max(1, _int_param(query, "page", 1))
    per_page = min(MAX_PER_PAGE, max(1, _int_param(query, "per_page", DEFAULT_PER_PAGE)))
    total = len(items)
    last = max(1, -(-total // per_page))
    chunk = items[(page - 1) * per_page: page * per_page]
    return 200, {key: chunk, "meta": {"pagination": {
        "page": page, "per_page": per_page,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page < last else None,
        "last_page": last, "total_entries": total}}}


def _sort(items: list[dict[str, Any]], query: Query, allowed: tuple[str, ...]
          ) -> list[dict[str, Any]]:
    for spec in reversed(query.get("sort", [])):
        field, _, direction = spec.partition(":")
        if field not in allowed or direction not in ("", "asc", "desc"):
            raise invalid_input({"sort": [f"invalid sort {spec!r}"]})
        items = sorted(items, key=lambda i: (i[field] is None, i[field]),
                       reverse=direction == "desc")
    return items


def _filter_common(items: list[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
    if "name" in query:
        items = [i for i in items if i.get("name") == query["name"][-1]]
    if "label_selector" in query:
        try:
            match = parse_selector(query["label_selector"][-1])
        except ValueError as exc:
            raise invalid_input({"label_selector": [str(exc)]}) from None
        items = [i for i in items if match(i.get("labels", {}))]
    return items


class HetznerApi:
    """Routes for the subset of the Hetzner Cloud API the operator and sandbox use."""

    def __init__(self, state: CloudState) -> None:
        self.state = state
        self.firewalls = FirewallBook(state)
        state.delete_listeners.append(self.firewalls.forget_server)
        self.images = ImageBook(state)
        state.delete_listeners.append(self.images.forget_server)
        self.routes = RouteTable()
        add = self.routes.add
        add("/servers", GET=self.list_servers, POST=self.create_server)
        add("/servers/actions", GET=self.list_server_actions)
        add("/servers/actions/{id:int}", GET=self.get_action)
        add("/servers/{id:int}", GET=self.get_server, PUT=self.update_server,
            DELETE=self.delete_server)
        add("/servers/{id:int}/actions", GET=self.list_server_actions_of)
        add("/servers/{id:int}/actions/{action_id:int}", GET=self.get_server_action)
        add(f"/servers/{{id:int}}/actions/{{verb:{'|'.join(POWER_ACTIONS)}}}",
            POST=self.power_action)
        add("/servers/{id:int}/actions/create_image", POST=self.create_image)
        add("/actions", GET=self.list_actions)
        add("/actions/{id:int}", GET=self.get_action)
        add("/server_types", GET=self.list_server_types)
        add("/server_types/{id:int}", GET=self.get_server_type)
        add("/locations", GET=self.list_locations)
        add("/locations/{id:int}", GET=self.get_location)
        add("/datacenters", GET=self.list_datacenters)
        add("/images", GET=self.list_images)
        add("/images/{id:int}", GET=self.get_image, PUT=self.update_image,
            DELETE=self.delete_image)
        add("/images/{id:int}/actions/change_protection", POST=self.change_image_protection)
        add("/pricing", GET=self.get_pricing)
        add("/firewalls", GET=self.list_firewalls, POST=self.create_firewall)
        add("/firewalls/{id:int}", GET=self.get_firewall, PUT=self.update_firewall,
            DELETE=self.delete_firewall)
        add("/firewalls/{id:int}/actions/"
            "{verb:set_rules|apply_to_resources|remove_from_resources}",
            POST=self.firewall_action)
        add("/ssh_keys", GET=self.list_ssh_keys, POST=self.create_ssh_key)
        add("/ssh_keys/{id:int}", GET=self.get_ssh_key, DELETE=self.delete_ssh_key)

    @staticmethod
    def call(match: Match, method: str, query: Query, raw_body: bytes) -> Result:
        if method in ("POST", "PUT"):
            return match.handler(*match.params.values(), query=query,
                                 body=parse_body(raw_body))
        return match.handler(*match.params.values(), query=query)

    # -- servers ---------------------------------------------------------------------
    def _with_firewalls(self, server: dict[str, Any]) -> dict[str, Any]:
        server["public_net"]["firewalls"] = [
            {"id": fid, "status": "applied"} for fid in self.firewalls.of_server(server["id"])]
        return server

    def list_servers(self, *, query: Query) -> Result:
        items = _filter_common(self.state.list_servers(), query)
        if "status" in query:
            items = [i for i in items if i["status"] in query["status"]]
        items = [self._with_firewalls(i) for i in items]
        return paginate(_sort(items, query, ("id", "name", "created")), query, "servers")

    def get_server(self, server_id: int, *, query: Query) -> Result:
        return 200, {"server": self._with_firewalls(self.state.get_server(server_id))}

    def create_server(self, *, query: Query, body: dict[str, Any]) -> Result:
        return 201, self.state.create_server(self._server_spec(body))

    def _server_spec(self, body: dict[str, Any]) -> ServerSpec:
        errors: dict[str, list[str]] = {}
        for name in ("name", "server_type", "image"):
            if body.get(name) in (None, ""):
                errors[name] = ["Missing data for required field."]
        if errors:
            raise invalid_input(errors)
        name = body["name"]
        if not isinstance(name, str) or not _HOSTNAME.match(name):
            errors["name"] = ["must be a valid hostname (RFC 1123)"]
        server_type = catalog.find_server_type(body["server_type"])
        if server_type is None:
            errors["server_type"] = [f"server type {body['server_type']!r} not found"]
        location = self._location(body, errors)
        image = None
        if server_type is not None:
            image = self.images.for_server(body["image"], server_type.architecture)
            if image is None:
                errors["image"] = [f"image {body['image']!r} not found"]
            elif image["architecture"] != server_type.architecture:
                errors["image"] = ["image architecture does not match the server type"]
            elif image["disk_size"] > server_type.disk:
                errors["image"] = ["image disk is bigger than the server type's disk"]
        labels = body.get("labels") or {}
        if label_errors(labels):
            errors["labels"] = label_errors(labels)
        user_data = body.get("user_data")
        if user_data is not None and (not isinstance(user_data, str)
                                      or len(user_data.encode()) > USER_DATA_LIMIT):
            errors["user_data"] = ["must be a string of at most 32 KiB"]
        key_ids = self._ssh_key_ids(body.get("ssh_keys") or [], errors)
        public_net = body.get("public_net") or {}
        if errors:
            raise invalid_input(errors)
        assert server_type is not None and image is not None
        if location is None:
            location = "fsn1" if "fsn1" in server_type.locations else server_type.locations[0]
        if location not in server_type.locations:
            raise ApiError(422, "invalid_input", "unsupported location for server type")
        return ServerSpec(name=name, server_type=server_type, image=image, location=location,
                          labels=dict(labels), user_data=user_data, ssh_key_ids=key_ids,
                          enable_ipv4=bool(public_net.get("enable_ipv4", True)),
                          enable_ipv6=bool(public_net.get("enable_ipv6", True)),
                          start_after_create=bool(body.get("start_after_create", True)))

    @staticmethod
    def _location(body: dict[str, Any], errors: dict[str, list[str]]) -> str | None:
        if body.get("location") is not None and body.get("datacenter") is not None:
            errors["location"] = ["must not be used together with datacenter"]
            return None
        if body.get("location") is not None:
            location = catalog.find_location(body["location"])
            if location is None:
                errors["location"] = [f"location {body['location']!r} not found"]
            return location
        if body.get("datacenter") is not None:
            location = catalog.find_datacenter(body["datacenter"])
            if location is None:
                errors["datacenter"] = [f"datacenter {body['datacenter']!r} not found"]
            return location
        return None

    def _ssh_key_ids(self, refs: object, errors: dict[str, list[str]]) -> list[int]:
        if not isinstance(refs, list):
            errors["ssh_keys"] = ["must be a list"]
            return []
        ids, missing = [], []
        for ref in refs:
            key = self.state.find_ssh_key(ref)
            if key is None:
                missing.append(f"ssh key {ref!r} not found")
            else:
                ids.append(key["id"])
        if missing:
            errors["ssh_keys"] = missing
        return ids

    def update_server(self, server_id: int, *, query: Query, body: dict[str, Any]) -> Result:
        errors: dict[str, list[str]] = {}
        name, labels = body.get("name"), body.get("labels")
        if name is not None and (not isinstance(name, str) or not _HOSTNAME.match(name)):
            errors["name"] = ["must be a valid hostname (RFC 1123)"]
        if labels is not None and label_errors(labels):
            errors["labels"] = label_errors(labels)
        if errors:
            raise invalid_input(errors)
        return 200, {"server": self.state.update_server(server_id, name, labels)}

    def delete_server(self, server_id: int, *, query: Query) -> Result:
        return 200, {"action": self.state.delete_server(server_id)}

    def power_action(self, server_id: int, verb: str, *, query: Query,
                     body: dict[str, Any]) -> Result:
        return 201, {"action": self.state.power_action(server_id, verb)}

    # -- actions ---------------------------------------------------------------------
    def _actions_page(self, actions: list[dict[str, Any]], query: Query) -> Result:
        if "id" in query:
            wanted = {int(i) for i in query["id"] if i.isdigit()}
            actions = [a for a in actions if a["id"] in wanted]
        if "status" in query:
            actions = [a for a in actions if a["status"] in query["status"]]
        actions = _sort(actions, query, ("id", "command", "status", "started", "finished"))
        return paginate(actions, query, "actions")

    def list_actions(self, *, query: Query) -> Result:
        return self._actions_page(self.state.list_actions(), query)

    def list_server_actions(self, *, query: Query) -> Result:
        return self._actions_page(self.state.list_actions(), query)

    def list_server_actions_of(self, server_id: int, *, query: Query) -> Result:
        return self._actions_page(self.state.list_actions(server_id), query)

    def get_action(self, action_id: int, *, query: Query) -> Result:
        return 200, {"action": self.state.get_action(action_id)}

    def get_server_action(self, server_id: int, action_id: int, *, query: Query) -> Result:
        self.state.get_server(server_id)
        return 200, {"action": self.state.get_action(action_id, server_id)}

    # -- catalogue -------------------------------------------------------------------
    def list_server_types(self, *, query: Query) -> Result:
        items = [catalog.server_type_dict(t) for t in catalog.SERVER_TYPES]
        return paginate(_filter_common(items, query), query, "server_types")

    def get_server_type(self, type_id: int, *, query: Query) -> Result:
        server_type = catalog.find_server_type(type_id)
        if server_type is None:
            raise not_found("server_type", type_id)
        return 200, {"server_type": catalog.server_type_dict(server_type)}

    def list_locations(self, *, query: Query) -> Result:
        items = [catalog.location_dict(n) for n in catalog.location_names()]
        return paginate(_filter_common(items, query), query, "locations")

    def get_location(self, location_id: int, *, query: Query) -> Result:
        name = catalog.find_location(location_id)
        if name is None:
            raise not_found("location", location_id)
        return 200, {"location": catalog.location_dict(name)}

    def list_datacenters(self, *, query: Query) -> Result:
        items = _filter_common(catalog.datacenter_dicts(), query)
        return paginate(items, query, "datacenters")

    # -- images --------------------------------------------------------------------
    def list_images(self, *, query: Query) -> Result:
        items = _filter_common(self.images.all(), query)
        for name in ("type", "status"):
            if name in query:
                items = [i for i in items if i[name] in query[name]]
        if "architecture" in query:
            items = [i for i in items if i["architecture"] == query["architecture"][-1]]
        if "bound_to" in query:
            items = [i for i in items if str(i["bound_to"]) in query["bound_to"]]
        if query.get("include_deprecated", ["false"])[-1].lower() != "true":
            items = [i for i in items if i["deprecated"] is None]
        return paginate(_sort(items, query, ("id", "name", "created")), query, "images")

    def get_image(self, image_id: int, *, query: Query) -> Result:
        return 200, {"image": self.images.get(image_id)}

    def update_image(self, image_id: int, *, query: Query, body: dict[str, Any]) -> Result:
        return 200, {"image": self.images.update(image_id, body)}

    def delete_image(self, image_id: int, *, query: Query) -> Result:
        self.images.delete(image_id)
        return 204, None

    def change_image_protection(self, image_id: int, *, query: Query,
                                body: dict[str, Any]) -> Result:
        return 201, {"action": self.images.change_protection(image_id, body)}

    def create_image(self, server_id: int, *, query: Query, body: dict[str, Any]) -> Result:
        return 201, self.images.create(server_id, body)

    def get_pricing(self, *, query: Query) -> Result:
        return 200, {"pricing": catalog.pricing_dict()}

    # -- firewalls ------------------------------------------------------------------
    def list_firewalls(self, *, query: Query) -> Result:
        items = _filter_common(self.firewalls.all(), query)
        return paginate(_sort(items, query, ("id", "name", "created")), query, "firewalls")

    def create_firewall(self, *, query: Query, body: dict[str, Any]) -> Result:
        return 201, self.firewalls.create(body)

    def get_firewall(self, firewall_id: int, *, query: Query) -> Result:
        return 200, {"firewall": self.firewalls.get(firewall_id)}

    def update_firewall(self, firewall_id: int, *, query: Query, body: dict[str, Any]
                        ) -> Result:
        return 200, {"firewall": self.firewalls.update(firewall_id, body)}

    def delete_firewall(self, firewall_id: int, *, query: Query) -> Result:
        self.firewalls.delete(firewall_id)
        return 204, None

    def firewall_action(self, firewall_id: int, verb: str, *, query: Query,
                        body: dict[str, Any]) -> Result:
        act = {"set_rules": self.firewalls.set_rules,
               "apply_to_resources": self.firewalls.apply_to,
               "remove_from_resources": self.firewalls.remove_from}[verb]
        return 201, {"actions": act(firewall_id, body)}

    # -- ssh keys --------------------------------------------------------------------
    def list_ssh_keys(self, *, query: Query) -> Result:
        items = _filter_common(self.state.list_ssh_keys(), query)
        if "fingerprint" in query:
            items = [k for k in items if k["fingerprint"] == query["fingerprint"][-1]]
        return paginate(_sort(items, query, ("id", "name")), query, "ssh_keys")

    def create_ssh_key(self, *, query: Query, body: dict[str, Any]) -> Result:
        errors = {f: ["Missing data for required field."] for f in ("name", "public_key")
                  if not isinstance(body.get(f), str) or not body[f]}
        labels = body.get("labels") or {}
        if label_errors(labels):
            errors["labels"] = label_errors(labels)
        if errors:
            raise invalid_input(errors)
        key = self.state.create_ssh_key(body["name"], body["public_key"], labels)
        return 201, {"ssh_key": key}

    def get_ssh_key(self, key_id: int, *, query: Query) -> Result:
        return 200, {"ssh_key": self.state.get_ssh_key(key_id)}

    def delete_ssh_key(self, key_id: int, *, query: Query) -> Result:
        self.state.delete_ssh_key(key_id)
        return 204, None
