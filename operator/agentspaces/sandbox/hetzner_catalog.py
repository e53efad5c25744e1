"""Static catalogue of the Hetzner Cloud emulator: locations, data centers, server types
(with per-location prices), system images and the price list.

Shapes follow the public API (GET /locations, /datacenters, /server_types, /images,
/pricing); /pricing lists each server type with the same prices as /server_types.
Prices are illustrative (net EUR, 19 % VAT for gross); clients must read them from
GET /server_types at runtime rather than rely on these figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

CATALOGUE_CREATED = "2024-01-01T00:00:00+00:00"
TB = 1024**4
VAT = Decimal("1.19")
EU = ("fsn1", "nbg1", "hel1")
EVERYWHERE = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")

# name -> (id, description, country, city, latitude, longitude, network_zone, datacenter)
_LOCATIONS: dict[str, tuple[int, str, str, str, float, float, str, str]] = {
    "fsn1": (1, "Falkenstein DC Park 1", "DE", "Falkenstein", 50.47612, 12.370071,
             "eu-central", "fsn1-dc14"),
    "nbg1": (2, "Nuremberg DC Park 1", "DE", "Nuremberg", 49.452102, 11.076665,
             "eu-central", "nbg1-dc3"),
    "hel1": (3, "Helsinki DC Park 1", "FI", "Helsinki", 60.169855, 24.938379,
             "eu-central", "hel1-dc2"),
    "ash": (4, "Ashburn, VA", "US", "Ashburn, VA", 39.045821, -77.487073,
            "us-east", "ash-dc1"),
    "hil": (5, "Hillsboro, OR", "US", "Hillsboro, OR", 45.54222, -122.95194,
            "us-west", "hil-dc1"),
    "sin": (6, "Singapore", "SG", "Singapore", 1.283333, 103.833333,
            "ap-southeast", "sin-dc1"),
}

# Location surcharge on the EU price and included traffic per location group.
_REGION_FACTOR = {"eu-central": Decimal("1.00"), "us-east": Decimal("1.20"),
                  "us-west": Decimal("1.20"), "ap-southeast": Decimal("1.35")}
_INCLUDED_TRAFFIC = {"eu-central": 20 * TB, "us-east": 1 * TB, "us-west": 1 * TB,
                     "ap-southeast": TB // 2}
# Monthly net EUR of the other priced resources (the emulator serves none of them).
_IPV4_MONTHLY = Decimal("0.50")
_FLOATING_MONTHLY = {"ipv4": Decimal("3.00"), "ipv6": Decimal("1.00")}
_PER_GB_MONTH = {"image": Decimal("0.0110"), "volume": Decimal("0.0440")}
BACKUP_PERCENTAGE = "20.00"
_TRAFFIC_PER_TB = {"eu-central": Decimal("1.00"), "us-east": Decimal("1.00"),
                   "us-west": Decimal("1.00"), "ap-southeast": Decimal("7.40")}


@dataclass(frozen=True)
class ServerType:
    id: int
    name: str
    cores: int
    memory: float
    disk: int
    cpu_type: str
    architecture: str
    category: str
    monthly_eur: str
    locations: tuple[str, ...]


SERVER_TYPES: tuple[ServerType, ...] = (
    ServerType(101, "cx23", 2, 4.0, 40, "shared", "x86", "cost_optimized", "3.99", EU),
    ServerType(102, "cx33", 4, 8.0, 80, "shared", "x86", "cost_optimized", "6.49", EU),
    ServerType(103, "cx43", 8, 16.0, 160, "shared", "x86", "cost_optimized", "11.99", EU),
    ServerType(104, "cx53", 16, 32.0, 320, "shared", "x86", "cost_optimized", "22.99", EU),
    ServerType(111, "cpx12", 1, 2.0, 40, "shared", "x86", "regular_purpose", "6.49",
               EVERYWHERE),
    ServerType(112, "cpx22", 2, 4.0, 80, "shared", "x86", "regular_purpose", "8.99",
               EVERYWHERE),
    ServerType(113, "cpx32", 4, 8.0, 160, "shared", "x86", "regular_purpose", "15.99",
               EVERYWHERE),
    ServerType(114, "cpx42", 8, 16.0, 320, "shared", "x86", "regular_purpose", "29.99",
               EVERYWHERE),
    ServerType(115, "cpx52", 12, 24.0, 480, "shared", "x86", "regular_purpose", "42.99",
               EVERYWHERE),
    ServerType(116, "cpx62", 16, 32.0, 640, "shared", "x86", "regular_purpose", "57.99",
               EVERYWHERE),
    ServerType(121, "cax11", 2, 4.0, 40, "shared", "arm", "cost_optimized", "4.49", EU),
    ServerType(122, "cax21", 4, 8.0, 80, "shared", "arm", "cost_optimized", "7.49", EU),
    ServerType(123, "cax31", 8, 16.0, 160, "shared", "arm", "cost_optimized", "14.49", EU),
    ServerType(124, "cax41", 16, 32.0, 320, "shared", "arm", "cost_optimized", "28.49", EU),
    ServerType(131, "ccx13", 2, 8.0, 80, "dedicated", "x86", "general_purpose", "15.99",
               EVERYWHERE),
    ServerType(132, "ccx23", 4, 16.0, 160, "dedicated", "x86", "general_purpose", "31.49",
               EVERYWHERE),
    ServerType(133, "ccx33", 8, 32.0, 240, "dedicated", "x86", "general_purpose", "62.49",
               EVERYWHERE),
    ServerType(134, "ccx43", 16, 64.0, 360, "dedicated", "x86", "general_purpose",
               "124.99", EVERYWHERE),
    ServerType(135, "ccx53", 32, 128.0, 600, "dedicated", "x86", "general_purpose",
               "249.99", EVERYWHERE),
    ServerType(136, "ccx63", 48, 192.0, 960, "dedicated", "x86", "general_purpose",
               "374.99", EVERYWHERE),
)

# (name, os_flavor, os_version, description, {architecture: id})
_IMAGES: tuple[tuple[str, str, str, str, dict[str, int]], ...] = (
    ("ubuntu-24.04", "ubuntu", "24.04", "Ubuntu 24.04", {"x86": 161547269, "arm": 161547270}),
    ("ubuntu-22.04", "ubuntu", "22.04", "Ubuntu 22.04", {"x86": 67794396, "arm": 103908070}),
    ("debian-12", "debian", "12", "Debian 12", {"x86": 114690387, "arm": 114690389}),
    ("debian-13", "debian", "13", "Debian 13", {"x86": 305325614, "arm": 305325615}),
)


def _money(value: Decimal, places: int) -> str:
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


def _price_pair(net: Decimal) -> dict[str, str]:
    # The API renders net with 10 decimals and gross with 16.
    return {"net": _money(net, 10), "gross": _money(net * VAT, 16)}


def location_dict(name: str) -> dict[str, Any]:
    lid, description, country, city, lat, lon, zone, _dc = _LOCATIONS[name]
    return {"id": lid, "name": name, "description": description, "country": country,
            "city": city, "latitude": lat, "longitude": lon, "network_zone": zone}


def location_names() -> list[str]:
    return list(_LOCATIONS)


def datacenter_name(location: str) -> str:
    return _LOCATIONS[location][7]


def datacenter_dicts() -> list[dict[str, Any]]:
    out = []
    for name, row in _LOCATIONS.items():
        ids = [t.id for t in SERVER_TYPES if name in t.locations]
        out.append({
            "id": row[0], "name": row[7],
            "description": f"{row[3]} DC {row[7].rsplit('dc', 1)[-1]}",
            "location": location_dict(name),
            "server_types": {"supported": ids, "available": ids,
                             "available_for_migration": ids},
        })
    return out


def datacenter_dict(location: str) -> dict[str, Any]:
    return next(d for d in datacenter_dicts() if d["location"]["name"] == location)


def _hourly(monthly: Decimal) -> Decimal:
    # Illustrative: hourly use costs more than the monthly price spread over a month.
    return (monthly / Decimal(620)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)


def _prices(server_type: ServerType) -> list[dict[str, Any]]:
    out = []
    for loc in server_type.locations:
        zone = _LOCATIONS[loc][6]
        monthly = Decimal(server_type.monthly_eur) * _REGION_FACTOR[zone]
        hourly = _hourly(monthly)
        out.append({
            "location": loc,
            "price_hourly": _price_pair(hourly),
            "price_monthly": _price_pair(monthly),
            "included_traffic": _INCLUDED_TRAFFIC[zone],
            "price_per_tb_traffic": _price_pair(_TRAFFIC_PER_TB[zone]),
        })
    return out


def pricing_dict() -> dict[str, Any]:
    """The body of GET /pricing under "pricing"."""
    def per_location(prices: dict[str, Decimal], hourly: bool) -> list[dict[str, Any]]:
        out = []
        for kind, monthly in prices.items():
            rows = []
            for loc in _LOCATIONS:
                row: dict[str, Any] = {"location": loc,
                                       "price_monthly": _price_pair(monthly)}
                if hourly:
                    row["price_hourly"] = _price_pair(_hourly(monthly))
                rows.append(row)
            out.append({"type": kind, "prices": rows})
        return out

    return {
        "currency": "EUR", "vat_rate": _money((VAT - 1) * 100, 2),
        "image": {"price_per_gb_month": _price_pair(_PER_GB_MONTH["image"])},
        "volume": {"price_per_gb_month": _price_pair(_PER_GB_MONTH["volume"])},
        "floating_ip": {"price_monthly": _price_pair(_FLOATING_MONTHLY["ipv4"])},
        "floating_ips": per_location(_FLOATING_MONTHLY, hourly=False),
        "primary_ips": per_location({"ipv4": _IPV4_MONTHLY, "ipv6": Decimal(0)},
                                    hourly=True),
        "server_backup": {"percentage": BACKUP_PERCENTAGE},
        "server_types": [{"id": t.id, "name": t.name, "prices": _prices(t)}
                         for t in SERVER_TYPES],
        "load_balancer_types": [],
    }


def server_type_dict(server_type: ServerType) -> dict[str, Any]:
    return {
        "id": server_type.id, "name": server_type.name,
        "description": server_type.name.upper(), "category": server_type.category,
        "cores": server_type.cores, "memory": server_type.memory,
        "disk": server_type.disk, "deprecated": False, "deprecation": None,
        "prices": _prices(server_type), "storage_type": "local",
        "cpu_type": server_type.cpu_type, "architecture": server_type.architecture,
        "locations": [{"id": _LOCATIONS[loc][0], "name": loc, "deprecation": None,
                       "available": True, "recommended": loc in EU}
                      for loc in server_type.locations],
    }


def included_traffic(server_type: ServerType, location: str) -> int:
    return _INCLUDED_TRAFFIC[_LOCATIONS[location][6]]


def image_dicts() -> list[dict[str, Any]]:
    out = []
    for name, flavor, version, description, ids in _IMAGES:
        for arch, image_id in ids.items():
            out.append({
                "id": image_id, "type": "system", "status": "available", "name": name,
                "description": description, "image_size": None, "disk_size": 5,
                "created": CATALOGUE_CREATED, "created_from": None, "bound_to": None,
                "os_flavor": flavor, "os_version": version, "rapid_deploy": True,
                "protection": {"delete": False}, "deprecated": None, "deleted": None,
                "labels": {}, "architecture": arch,
            })
    return sorted(out, key=lambda i: i["id"])


def find_server_type(id_or_name: object) -> ServerType | None:
    key = str(id_or_name)
    return next((t for t in SERVER_TYPES if t.name == key or str(t.id) == key), None)


def find_location(id_or_name: object) -> str | None:
    key = str(id_or_name)
    return next((n for n, row in _LOCATIONS.items() if key in (n, str(row[0]))), None)


def find_datacenter(id_or_name: object) -> str | None:
    """The location name of a data center given by id or name."""
    key = str(id_or_name)
    return next((n for n, row in _LOCATIONS.items() if key in (row[7], str(row[0]))), None)


def find_image(id_or_name: object, architecture: str) -> dict[str, Any] | None:
    """Resolve an image: by id (any architecture) or by name for the given architecture."""
    key = str(id_or_name)
    for image in image_dicts():
        if str(image["id"]) == key:
            return image
    return next((i for i in image_dicts()
                 if i["name"] == key and i["architecture"] == architecture), None)
