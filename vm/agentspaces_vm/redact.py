"""Scrub credentials out of text that may reach a log or the status document."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
_QUERY = re.compile(r"(\bhttps?://[^\s?#]+)\?[^\s\"']*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s\"']+")


def redact(text: str, limit: int = 2000) -> str:
    """Drop URL userinfo and query strings (presigned URLs carry signatures there) and
    bearer tokens; keep the tail, where tools put the actual error."""
    text = _USERINFO.sub(r"\1", text)
    text = _QUERY.sub(r"\1?<redacted>", text)
    text = _BEARER.sub(r"\1<redacted>", text)
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-limit:]
