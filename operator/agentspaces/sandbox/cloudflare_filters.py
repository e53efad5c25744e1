"""Query parameters of the Cloudflare emulator's lists: record filters, ordering and
page/per_page pagination. A filter the emulator does not implement is refused with 400
rather than ignored, so a client never mistakes a whole zone for a filtered answer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .cloudflare_errors import ApiError, Json, validation
from .emulator import ascii_int

Query = dict[str, list[str]]
Test = Callable[[Json], bool]
PAGING = ("page", "per_page")
TEXT_OPS = ("exact", "contains", "startswith", "endswith")
ORDER_FIELDS = ("type", "name", "content", "ttl", "proxied")


def first(query: Query, key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def unsupported(names: list[str], code: int) -> ApiError:
    listed = ", ".join(sorted(names))
    return ApiError(400, code, "Invalid request: unsupported filter",
                    [(code, f"unsupported or unknown query parameter(s): {listed}")])


def check_known(query: Query, known: tuple[str, ...], code: int = 1004) -> None:
    unknown = [key for key in query if key not in known]
    if unknown:
        raise unsupported(unknown, code)


def paging(query: Query, *, default: int, maximum: int) -> tuple[int, int]:
    page = ascii_int(first(query, "page") or "1")
    per_page = ascii_int(first(query, "per_page") or str(default))
    if page is None or per_page is None:
        raise validation("page and per_page must be integers.")
    if page < 1 or not 1 <= per_page <= maximum:
        raise validation(f"page must be >= 1 and per_page between 1 and {maximum}.")
    return page, per_page


def page_of(items: list[Json], page: int, per_page: int) -> tuple[list[Json], Json]:
    chunk = items[(page - 1) * per_page: page * per_page]
    info = {"page": page, "per_page": per_page, "count": len(chunk),
            "total_count": len(items), "total_pages": math.ceil(len(items) / per_page)}
    return chunk, info


def _text_test(field_name: str, op: str, value: str) -> Test:
    needle = value.lower()

    def test(record: Json) -> bool:
        have = record.get(field_name)
        if op == "present":
            return bool(have)
        if op == "absent":
            return not have
        text = (have or "").lower()
        want = needle.rstrip(".") if field_name == "name" else needle
        return {"exact": text == want, "contains": want in text,
                "startswith": text.startswith(want), "endswith": text.endswith(want)}[op]
    return test


def _record_test(key: str, value: str) -> Test | None:
    """The test a filter parameter stands for; None if it is not a filter."""
    field_name, _, op = key.partition(".")
    ops = (*TEXT_OPS, "present", "absent") if field_name == "comment" else TEXT_OPS
    if field_name in ("name", "content", "comment") and op in ("", *ops):
        return _text_test(field_name, op or "exact", value)
    if key == "type":
        return _equals("type", value.upper())
    if key == "proxied" and value.lower() in ("true", "false"):
        return _equals("proxied", value.lower() == "true")
    return None


def _equals(field_name: str, value: object) -> Test:
    return lambda record: record.get(field_name) == value


def select_records(records: list[Json], query: Query, max_per_page: int
                   ) -> tuple[list[Json], Json]:
    """The page of `records` a list request asks for; 400 on anything unsupported."""
    tests: list[Test] = []
    bad: list[str] = []
    for key, values in query.items():
        if key in (*PAGING, "match", "order", "direction"):
            continue
        test = _record_test(key, values[0])
        if test is None:
            bad.append(key)
        else:
            tests.append(test)
    match = (first(query, "match") or "all").lower()
    order = first(query, "order")
    direction = (first(query, "direction") or "asc").lower()
    bad += [name for name, ok in (("match", match in ("all", "any")),
                                  ("order", order is None or order in ORDER_FIELDS),
                                  ("direction", direction in ("asc", "desc"))) if not ok]
    if bad:
        raise unsupported(bad, 1004)
    combine: Callable[[Any], bool] = any if match == "any" else all
    selected = [r for r in records if not tests or combine(t(r) for t in tests)]
    if order is not None:
        selected.sort(key=lambda r: r[order], reverse=direction == "desc")
    page, per_page = paging(query, default=100, maximum=max_per_page)
    return page_of(selected, page, per_page)
