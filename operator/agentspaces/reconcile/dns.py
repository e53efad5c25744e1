"""DNS records for one workspace: what should exist, the plan to get there, and doing it.

Each workspace gets `{host}` and `*.{host}` A records (and AAAA with IPv6), so a new
port never needs a DNS call. A record belongs to a workspace when its comment starts
with `agentspaces:<workspace uid>`; anything else at our names is someone else's and is
never changed or deleted, only reported as a conflict. With `txtRegistry` on, every
address record also gets an external-dns style TXT twin (see docs/dns.md).

While a workspace is stopped by an idle or lifetime stop that a request may end, its
address records point at the class's wake gateway instead (`stopped_target`): the same
records, updated in place, so a stop and a wake each cost one write per address record
(docs/dns.md, "Names while stopped").

`plan` is pure. `ensure_records`/`remove_records` run a plan through a `DnsProvider`,
listing only the names the workspace uses and writing nothing when nothing differs.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from agentspaces.api.enums import StoppedBy
from agentspaces.api.status import DnsRecordStatus, DnsStatus
from agentspaces.api.types import WakeGateway
from agentspaces.clouds.cloudflare import (
    IDENTICAL_RECORD,
    DnsProvider,
    DnsRecord,
)
from agentspaces.clouds.errors import CloudError, ErrorKind
from agentspaces.reconcile.lifecycle import AUTOMATIC_STOPS

OWNER_PREFIX = "agentspaces:"
MAX_COMMENT = 100  # Cloudflare Free plan limit
ADDRESS_TYPES = ("A", "AAAA")
TXT_WILDCARD = "wildcard"  # stands in for "*" in TXT registry names, like external-dns
TXT_HERITAGE = "heritage=external-dns"
DEFAULT_TXT_OWNER = "agentspaces"
# Create failures that mean "the zone changed since we listed it": list and plan again.
_RACE_CODES = frozenset(str(code) for code in (IDENTICAL_RECORD, 81053, 81054, 81057))


# --- ownership ---------------------------------------------------------------------------
def owner_comment(uid: str, namespace: str = "", name: str = "",
                  max_length: int = MAX_COMMENT) -> str:
    """`agentspaces:<uid> <namespace>/<name>`, or `agentspaces:<uid>` when that is too long."""
    if not uid or " " in uid:
        raise ValueError("workspace uid must be non-empty and contain no spaces")
    marker = f"{OWNER_PREFIX}{uid}"
    if len(marker) > max_length:
        raise ValueError(f"owner marker {marker!r} exceeds {max_length} characters")
    full = f"{marker} {namespace}/{name}"
    return full if namespace and name and len(full) <= max_length else marker


def comment_owner(comment: str | None) -> str | None:
    """The workspace uid a record comment names, or None when it is not our marker."""
    if not comment or not comment.startswith(OWNER_PREFIX):
        return None
    uid = comment[len(OWNER_PREFIX):].split(" ", 1)[0]
    return uid or None


def is_owned(record: DnsRecord, uid: str) -> bool:
    return comment_owner(record.comment) == uid


# --- desired records ---------------------------------------------------------------------
def wildcard(host: str) -> str:
    return f"*.{host}"


def txt_registry_name(record_type: str, name: str) -> str:
    """external-dns TXT name for one record: type prefix on the first label, `*` replaced."""
    first, _, rest = name.partition(".")
    if first == "*":
        first = TXT_WILDCARD
    prefixed = f"{record_type.lower()}-{first}"
    return f"{prefixed}.{rest}" if rest else prefixed


def txt_registry_content(owner_id: str, namespace: str, name: str) -> str:
    return (f'"{TXT_HERITAGE},external-dns/owner={owner_id},'
            f'external-dns/resource=workspace/{namespace}/{name}"')


def record_names(host: str, *, txt_registry: bool = False, ipv6: bool = True) -> list[str]:
    """Every name the workspace's records may use (what `remove_records` should list)."""
    names = [host, wildcard(host)]
    if txt_registry:
        types = ADDRESS_TYPES if ipv6 else ("A",)
        names += [txt_registry_name(t, n) for n in (host, wildcard(host)) for t in types]
    return names


def ipv6_address(value: str) -> str:
    """An IPv6 address; a network (Hetzner reports a /64) gives its first host, `::1`."""
    if "/" in value:
        return str(ipaddress.IPv6Network(value, strict=False)[1])
    return str(ipaddress.IPv6Address(value))


def desired_records(host: str, *, ipv4: str, ipv6: str | None = None, ttl: int = 60,
                    proxied: bool = False, uid: str, namespace: str = "", name: str = "",
                    txt_registry: bool = False,
                    txt_owner_id: str | None = None) -> list[DnsRecord]:
    """The records one workspace should have, each carrying the owner comment."""
    host = _name(host)
    comment = owner_comment(uid, namespace, name)
    # Cloudflare reports proxied records with TTL 1 (automatic), whatever was sent.
    address_ttl = 1 if proxied else ttl
    addresses = [("A", str(ipaddress.IPv4Address(ipv4)))]
    if ipv6:
        addresses.append(("AAAA", ipv6_address(ipv6)))
    records = [DnsRecord(id="", name=n, type=t, content=c, ttl=address_ttl, proxied=proxied,
                         comment=comment)
               for n in (host, wildcard(host)) for t, c in addresses]
    if txt_registry:
        content = txt_registry_content(txt_owner_id or DEFAULT_TXT_OWNER, namespace, name)
        records += [DnsRecord(id="", name=txt_registry_name(r.type, r.name), type="TXT",
                              content=content, ttl=ttl, proxied=False,
                              comment=comment)
                    for r in list(records)]
    return records


def stopped_target(gateway: WakeGateway | None, wake_on_request: bool,
                   stopped_by: StoppedBy | None) -> WakeGateway | None:
    """Where a stopped workspace's names point: the class's wake gateway when opening the
    URL may wake it, else nowhere (None: the records are removed). Only idle and lifetime
    stops end with a wake; a stop by the user (spec.running false) does not, so its names
    are removed as without a gateway."""
    if gateway is None or not wake_on_request or stopped_by not in AUTOMATIC_STOPS:
        return None
    return gateway


# --- the plan ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Conflict:
    """A record we do not own where we need one."""

    name: str
    type: str
    record: DnsRecord

    @property
    def message(self) -> str:
        r = self.record
        owner = f" (comment {r.comment!r})" if r.comment else ""
        return (f"{r.type} record {r.name} -> {r.content} (id {r.id}){owner} is not owned by "
                f"this workspace")


@dataclass(frozen=True)
class Update:
    current: DnsRecord
    desired: DnsRecord  # carries current.id and current.comment


@dataclass(frozen=True)
class Plan:
    creates: tuple[DnsRecord, ...] = ()
    updates: tuple[Update, ...] = ()
    deletes: tuple[DnsRecord, ...] = ()
    conflicts: tuple[Conflict, ...] = ()
    kept: tuple[DnsRecord, ...] = ()  # ours, already right (or at a conflicted name)

    @property
    def empty(self) -> bool:
        return not (self.creates or self.updates or self.deletes)

    @property
    def writes(self) -> int:
        return len(self.creates) + len(self.updates) + len(self.deletes)


def _name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def normalized_content(record_type: str, content: str) -> str:
    """Content as compared: canonical IP text, CNAME without case/dot, TXT without quotes."""
    if record_type in ADDRESS_TYPES:
        try:
            return ipaddress.ip_address(content.strip()).compressed
        except ValueError:
            return content.strip()
    if record_type == "CNAME":
        return _name(content)
    if record_type == "TXT" and len(content) >= 2 and content[0] == content[-1] == '"':
        return content[1:-1]
    return content


def _same(record: DnsRecord, want: DnsRecord) -> bool:
    return normalized_content(want.type, record.content) == normalized_content(
        want.type, want.content)


def _settled(record: DnsRecord, want: DnsRecord) -> bool:
    ttl = 1 if want.proxied else want.ttl
    return _same(record, want) and record.proxied == want.proxied and record.ttl == ttl


def _blocks(foreign: DnsRecord, wanted_types: set[str]) -> bool:
    # A CNAME excludes everything else at its name; address records at one name are
    # served together, so a stranger's A or AAAA would take part of our traffic.
    if foreign.type == "CNAME" or foreign.type in wanted_types:
        return True
    return foreign.type in ADDRESS_TYPES and bool(wanted_types & set(ADDRESS_TYPES))


def plan(desired: Sequence[DnsRecord], existing_by_name: Mapping[str, Sequence[DnsRecord]],
         uid: str) -> Plan:
    """Changes that make the listed names hold exactly `desired`, touching only our records.

    `existing_by_name` maps each desired name to every record listed at it. A name where
    someone else's record blocks ours is reported in `conflicts` and left as it is (our
    records there are kept, nothing is created); a registry TXT twin of a blocked record
    is held back too.
    """
    wanted: dict[str, dict[str, DnsRecord]] = {}
    for record in desired:
        by_type = wanted.setdefault(_name(record.name), {})
        if record.type in by_type:
            raise ValueError(f"two desired {record.type} records for {record.name}")
        by_type[record.type] = replace(record, name=_name(record.name))
    listed = {_name(n): list(rs) for n, rs in existing_by_name.items()}

    conflicts: list[Conflict] = []
    blocked: set[str] = set()
    for name, by_type in wanted.items():
        for record in listed.get(name, []):
            if not is_owned(record, uid) and _blocks(record, set(by_type)):
                conflicts.append(Conflict(name=name, type=record.type, record=record))
                blocked.add(name)
    # Hold back registry TXT records whose address record is blocked.
    for name, by_type in wanted.items():
        if name in blocked:
            for rtype in by_type:
                if rtype in ADDRESS_TYPES:
                    blocked.add(txt_registry_name(rtype, name))

    creates: list[DnsRecord] = []
    updates: list[Update] = []
    deletes: list[DnsRecord] = []
    kept: list[DnsRecord] = []
    for name, by_type in wanted.items():
        ours = [r for r in listed.get(name, []) if is_owned(r, uid)]
        if name in blocked:
            kept += ours
            continue
        for rtype, want in by_type.items():
            mine = [r for r in ours if r.type == rtype]
            keep = next((r for r in mine if _same(r, want)), mine[0] if mine else None)
            if keep is None:
                creates.append(want)
            elif _settled(keep, want):
                kept.append(keep)
            else:
                updates.append(Update(current=keep, desired=replace(
                    want, id=keep.id, comment=keep.comment)))
            deletes += [r for r in mine if r is not keep]
        deletes += [r for r in ours if r.type not in by_type]
    return Plan(creates=tuple(creates), updates=tuple(updates), deletes=tuple(deletes),
                conflicts=tuple(conflicts), kept=tuple(kept))


# --- doing it ----------------------------------------------------------------------------
@dataclass(frozen=True)
class EnsureResult:
    zone_id: str
    records: tuple[DnsRecord, ...]  # ours after the run: what status.dns.records shows
    conflicts: tuple[Conflict, ...] = ()
    created: tuple[DnsRecord, ...] = ()
    updated: tuple[DnsRecord, ...] = ()
    deleted: tuple[DnsRecord, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.conflicts

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)

    def conflict_message(self) -> str:
        return "; ".join(c.message for c in self.conflicts)

    def status(self) -> DnsStatus:
        """The `status.dns` object."""
        return DnsStatus(zone_id=self.zone_id, records=status_records(self.records))


@dataclass(frozen=True)
class RemoveResult:
    zone_id: str
    deleted: tuple[DnsRecord, ...] = ()
    foreign: tuple[DnsRecord, ...] = ()  # left in place: not ours


def status_records(records: Iterable[DnsRecord]) -> list[DnsRecordStatus]:
    return [DnsRecordStatus(id=r.id, name=r.name, type=r.type, content=r.content)
            for r in sorted(records, key=lambda r: (r.name, r.type, r.content))]


def records_match(status: Iterable[DnsRecordStatus] | None,
                  desired: Iterable[DnsRecord]) -> bool:
    """True when status already lists exactly the desired records (same names, types and
    addresses, each with an id): the caller can then skip `ensure_records` entirely."""
    if status is None:
        return False
    have: Counter[tuple[str, str, str]] = Counter()
    for entry in status:
        if not entry.id:
            return False
        rtype = (entry.type or "").upper()
        have[(_name(entry.name or ""), rtype,
              normalized_content(rtype, entry.content or ""))] += 1
    want = Counter((_name(r.name), r.type, normalized_content(r.type, r.content))
                   for r in desired)
    return have == want


async def _listing(provider: DnsProvider, zone_id: str,
                   names: Iterable[str]) -> dict[str, list[DnsRecord]]:
    listed: dict[str, list[DnsRecord]] = {}
    for name in names:
        if name not in listed:
            listed[name] = [r for r in await provider.list_records(zone_id, name)
                            if _name(r.name) == name]
    return listed


async def ensure_records(provider: DnsProvider, zone_name: str, desired: Sequence[DnsRecord],
                         uid: str, *, zone_id: str | None = None) -> EnsureResult:
    """Make the zone hold `desired` for workspace `uid`: one list call per name, then only
    the writes the plan needs (none when all is right). Raises the provider's
    `CloudError`s (a transient or rate-limited one means: requeue and call again; the
    next call lists again, so a half-done run never leaves duplicates)."""
    zid = zone_id or await provider.zone_id(zone_name)
    names = list(dict.fromkeys(_name(r.name) for r in desired))
    created: list[DnsRecord] = []
    updated: list[DnsRecord] = []
    deleted: list[DnsRecord] = []
    for attempt in range(2):
        current = plan(desired, await _listing(provider, zid, names), uid)
        written: list[DnsRecord] = []
        try:
            for record in current.deletes:
                await provider.delete_record(zid, record.id)
                deleted.append(record)
            for change in current.updates:
                written.append(await provider.update_record(zid, change.current.id,
                                                            change.desired))
                updated.append(written[-1])
            for record in current.creates:
                written.append(await provider.create_record(zid, record))
                created.append(written[-1])
        except CloudError as err:
            # Someone wrote at our names since we listed: list and plan once more.
            if attempt == 0 and err.kind is ErrorKind.PERMANENT and err.code in _RACE_CODES:
                continue
            raise
        return EnsureResult(zone_id=zid, records=(*current.kept, *written),
                            conflicts=current.conflicts, created=tuple(created),
                            updated=tuple(updated), deleted=tuple(deleted))
    raise AssertionError("unreachable")


async def remove_records(provider: DnsProvider, zone_name: str, names: Iterable[str],
                         uid: str, *, zone_id: str | None = None) -> RemoveResult:
    """Delete every record of workspace `uid` at `names`; leave all others alone."""
    zid = zone_id or await provider.zone_id(zone_name)
    listed = await _listing(provider, zid, [_name(n) for n in names])
    deleted: list[DnsRecord] = []
    foreign: list[DnsRecord] = []
    for records in listed.values():
        for record in records:
            if is_owned(record, uid):
                await provider.delete_record(zid, record.id)
                deleted.append(record)
            else:
                foreign.append(record)
    return RemoveResult(zone_id=zid, deleted=tuple(deleted), foreign=tuple(foreign))
