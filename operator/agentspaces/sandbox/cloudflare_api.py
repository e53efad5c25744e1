"""Routes of the Cloudflare emulator: zones and DNS records. Handlers get the resolved
zone (and record) and return (status, result, result_info); ApiError for API errors."""

from __future__ import annotations

import copy
from typing import Any

from .cloudflare_errors import ApiError, Json, envelope
from .cloudflare_filters import check_known, first, page_of, paging, select_records
from .cloudflare_records import Zone
from .cloudflare_zones import ZoneStore, parse_json_object, zone_json
from .emulator import Match, Reply, Request, RouteTable

Result = tuple[int, Any, Json | None]


class CloudflareApi:
    def __init__(self, store: ZoneStore, tokens: dict[str, set[str] | None],
                 max_per_page: int) -> None:
        self.store = store
        self.tokens = tokens
        self.max_per_page = max_per_page
        self.routes = RouteTable()
        self.routes.add("/zones", GET=self.list_zones)
        self.routes.add("/zones/{zone:str}", GET=self.get_zone)
        self.routes.add("/zones/{zone:str}/dns_records", GET=self.list_records,
                        POST=self.create_record)
        self.routes.add("/zones/{zone:str}/dns_records/{record:str}", GET=self.get_record,
                        PATCH=self.patch_record, PUT=self.put_record,
                        DELETE=self.delete_record)

    def call(self, match: Match, request: Request) -> Reply:
        with self.store.lock:
            args: list[Any] = []
            if "zone" in match.params:
                zone = self._zone(match.params["zone"], request)
                args.append(zone)
                if "record" in match.params:
                    args.append(self._record(zone, match.params["record"]))
            status, result, info = match.handler(*args, request)
        return Reply(status, envelope(result, info))

    def _zone(self, zone_id: str, request: Request) -> Zone:
        zone = self.store.zones.get(zone_id)
        if zone is None:
            raise ApiError(400, 7003, f"Could not route to {request.path}, perhaps your "
                                      "object identifier is invalid?")
        allowed = self.tokens.get(request.token or "")
        if allowed is not None and zone.name not in allowed:
            raise ApiError(403, 10000, "Authentication error")
        return zone

    @staticmethod
    def _record(zone: Zone, record_id: str) -> Json:
        record = zone.records.get(record_id)
        if record is None:
            raise ApiError(404, 81044, "Record does not exist.")
        return record

    # -- zones -----------------------------------------------------------------------
    def list_zones(self, request: Request) -> Result:
        check_known(request.query, ("name", "page", "per_page"))
        allowed = self.tokens.get(request.token or "")
        zones = [z for z in self.store.zones.values()
                 if allowed is None or z.name in allowed]
        name = first(request.query, "name")
        if name is not None:
            zones = [z for z in zones if z.name == name.lower().rstrip(".")]
        page, per_page = paging(request.query, default=20, maximum=50)
        return 200, *page_of([zone_json(z) for z in zones], page, per_page)

    def get_zone(self, zone: Zone, request: Request) -> Result:
        return 200, zone_json(zone), None

    # -- records ---------------------------------------------------------------------
    def list_records(self, zone: Zone, request: Request) -> Result:
        records = [copy.deepcopy(r) for r in zone.records.values()]
        return 200, *select_records(records, request.query, self.max_per_page)

    def create_record(self, zone: Zone, request: Request) -> Result:
        return 200, self.store.create(zone, parse_json_object(request.body)), None

    def get_record(self, zone: Zone, record: Json, request: Request) -> Result:
        return 200, copy.deepcopy(record), None

    def patch_record(self, zone: Zone, record: Json, request: Request) -> Result:
        body = parse_json_object(request.body)
        return 200, self.store.update(zone, record, body, replace=False), None

    def put_record(self, zone: Zone, record: Json, request: Request) -> Result:
        body = parse_json_object(request.body)
        return 200, self.store.update(zone, record, body, replace=True), None

    def delete_record(self, zone: Zone, record: Json, request: Request) -> Result:
        del zone.records[record["id"]]
        return 200, {"id": record["id"]}, None
