"""What the gateway app answers with: the waking page, its JSON state, the stopped
answers, and the page's own script and stylesheet (pure; every value escaped).

The page carries no inline script or style: its Content-Security-Policy allows only
the two files the gateway serves itself and fetches to its own origin.
"""

from __future__ import annotations

import html
import importlib.resources
import json
from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from typing import Any

from agentspaces.gateway.caddy_config import GATEWAY_PREFIX
from agentspaces.gateway.served import Served
from agentspaces_vm.webauth import Answer

STATE_PATH = GATEWAY_PREFIX + "status"
ASSETS = {GATEWAY_PREFIX + "waking.js": ("waking.js", "text/javascript; charset=utf-8"),
          GATEWAY_PREFIX + "waking.css": ("waking.css", "text/css; charset=utf-8")}
POLL_MILLISECONDS = 2000
MAX_POLLS = 600  # 20 minutes at one poll every 2 s; then the page asks for a reload
RETRY_AFTER_SECONDS = 30
MAX_CONDITIONS = 12
MAX_MESSAGE = 300

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_PAGE_HEADERS = (
    ("Content-Type", "text/html; charset=utf-8"),
    ("Content-Security-Policy", CSP),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
)


class Outcome(StrEnum):
    """What a signed-in navigation led to."""

    WAKING = "waking"  # the gateway asked for the wake (or one is under way)
    LINK_CANNOT_WAKE = "link-cannot-wake"
    OWNER_STOPPED = "owner-stopped"  # spec.running: false; the annotation cannot start it
    WAKE_DISABLED = "wake-disabled"  # --wake-on never
    TOO_MANY = "too-many"


def _texts(ws: Served, outcome: Outcome, retry: int | None) -> tuple[str, str]:
    name = ws.name
    if outcome is Outcome.WAKING:
        return (f"Waking {name}",
                f"Starting {name}. This page opens it as soon as it is ready.")
    if outcome is Outcome.LINK_CANNOT_WAKE:
        return (f"{name} is stopped",
                "This link does not wake it. The page opens it if its owner starts it.")
    if outcome is Outcome.OWNER_STOPPED:
        return (f"{name} is stopped",
                f"{name} was stopped by its owner (spec.running: false); opening its URL "
                "does not start it.")
    if outcome is Outcome.WAKE_DISABLED:
        return (f"{name} is stopped",
                "Waking from the URL is turned off on this gateway. The page opens it if "
                "it is started another way.")
    return (f"{name} is stopped",
            f"Too many wake requests from your address; try again in {retry or 60} s.")


def state(ws: Served, *, ready: bool, messages: bool) -> dict[str, Any]:
    """The waking page's JSON: the phase, the conditions (their messages only for the
    password holder: a share link's holder sees types and states), and `ready` once
    the gateway routes the names to the new server."""
    conditions = [{"type": c.type, "status": c.status,
                   **({"reason": c.reason, "message": c.message[:MAX_MESSAGE]}
                      if messages else {})}
                  for c in ws.conditions[:MAX_CONDITIONS]]
    return {"workspace": ws.name, "phase": ws.phase or "Unknown", "ready": ready,
            "starting": ws.starting, "conditions": conditions}


def state_answer(payload: Mapping[str, Any]) -> Answer:
    return Answer(200, (("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                        ("X-Content-Type-Options", "nosniff")),
                  json.dumps(payload).encode())


def waking_page(ws: Served, outcome: Outcome, *, messages: bool, retry: int | None = None
                ) -> Answer:
    title, summary = _texts(ws, outcome, retry)
    current = state(ws, ready=False, messages=messages)
    items = "".join(
        "<li>" + html.escape(f"{c['type']} {c['status']}" + (
            f" ({': '.join(v for v in (c.get('reason'), c.get('message')) if v)})"
            if c.get("reason") or c.get("message") else "")) + "</li>"
        for c in current["conditions"])
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="{GATEWAY_PREFIX}waking.css">
<script src="{GATEWAY_PREFIX}waking.js" defer></script>
</head><body>
<main id="waking" data-status="{STATE_PATH}" data-interval="{POLL_MILLISECONDS}"
 data-polls="{MAX_POLLS}">
<h1>{html.escape(title)}</h1>
<p id="summary">{html.escape(summary)}</p>
<p>Phase: <span id="phase">{html.escape(current['phase'])}</span></p>
<ul id="conditions">{items}</ul>
<p id="note"></p>
</main></body></html>
"""
    status = 429 if outcome is Outcome.TOO_MANY else 200
    extra = (("Retry-After", str(retry)),) if retry else ()
    return Answer(status, (*_PAGE_HEADERS, *extra), body.encode())


def _text(status: int, message: str, *extra: tuple[str, str]) -> Answer:
    return Answer(status, (("Content-Type", "text/plain; charset=utf-8"),
                           ("Cache-Control", "no-store"), *extra), (message + "\n").encode())


def not_now(ws: Served) -> Answer:
    """Signed in, but not a navigation (polling, HEAD, POST, WebSocket): never wakes."""
    return _text(503, f"{ws.name} is stopped; open it in a browser to wake it",
                 ("Retry-After", str(RETRY_AFTER_SECONDS)))


def stopped_public() -> Answer:
    """A public port while the workspace is stopped: anyone may ask, nobody wakes it."""
    return _text(503, "stopped", ("Retry-After", str(RETRY_AFTER_SECONDS)))


def unavailable() -> Answer:
    return _text(503, "try again shortly", ("Retry-After", "10"))


def forbidden() -> Answer:
    return _text(403, "forbidden")


def unknown_host() -> Answer:
    return _text(404, "unknown host")


@cache
def _asset(name: str) -> bytes:
    return importlib.resources.files("agentspaces.gateway").joinpath("static", name
                                                                    ).read_bytes()


def asset(path: str) -> Answer | None:
    found = ASSETS.get(path)
    if found is None:
        return None
    name, content_type = found
    return Answer(200, (("Content-Type", content_type), ("Cache-Control", "max-age=3600"),
                        ("X-Content-Type-Options", "nosniff")), _asset(name))
