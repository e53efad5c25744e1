"""Route table of an emulator: (method, path template) -> handler.

Templates name their parameters: `{id:int}` (ASCII digits, passed as int), `{ref:str}`
(any one segment), `{verb:poweron|poweroff}` (one of the listed words). A path no
template matches raises NoRoute; a template that matches without the request's method
raises MethodNotAllowed with the methods it does have.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Handler = Callable[..., Any]
_PARAM = re.compile(r"\{(\w+):([^}]+)\}")
# ASCII only on purpose: `\d` and str.isdigit() accept other scripts' digits (Arabic-Indic,
# full-width), which int() would quietly turn into a valid-looking id.
_ASCII_INT = re.compile(r"[0-9]+")


class NoRoute(Exception):
    pass


class MethodNotAllowed(Exception):
    def __init__(self, allowed: tuple[str, ...]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


@dataclass(frozen=True)
class Match:
    handler: Handler
    params: dict[str, Any]


def ascii_int(text: str) -> int | None:
    """The integer an id or number parameter spells in ASCII digits, else None."""
    return int(text) if _ASCII_INT.fullmatch(text) else None


def _compile(template: str) -> tuple[re.Pattern[str], dict[str, bool]]:
    pattern, ints, at = "", {}, 0
    for param in _PARAM.finditer(template):
        name, kind = param.groups()
        pattern += re.escape(template[at:param.start()])
        body = {"int": _ASCII_INT.pattern, "str": "[^/]+"}.get(kind)
        pattern += f"(?P<{name}>{body or '|'.join(map(re.escape, kind.split('|')))})"
        ints[name] = kind == "int"
        at = param.end()
    return re.compile(pattern + re.escape(template[at:])), ints


class RouteTable:
    def __init__(self) -> None:
        self._routes: list[tuple[re.Pattern[str], dict[str, bool], dict[str, Handler]]] = []

    def add(self, template: str, **handlers: Handler) -> None:
        """add("/servers/{id:int}", GET=get_server, DELETE=delete_server)"""
        pattern, ints = _compile(template)
        self._routes.append((pattern, ints, handlers))

    def match(self, method: str, path: str) -> Match:
        path = path.rstrip("/") or "/"
        for pattern, ints, handlers in self._routes:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise MethodNotAllowed(tuple(handlers))
            params = {k: int(v) if ints[k] else v for k, v in found.groupdict().items()}
            return Match(handler, params)
        raise NoRoute(path)
