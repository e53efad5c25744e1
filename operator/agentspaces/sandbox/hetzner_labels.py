"""Hetzner label rules: validation of label maps and the label-selector language
(`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma = AND)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")

Matcher = Callable[[Mapping[str, str]], bool]


def label_errors(labels: object) -> list[str]:
    """Messages for an invalid label map; empty when valid."""
    if not isinstance(labels, dict):
        return ["must be an object"]
    errors = []
    for key, value in labels.items():
        if not isinstance(value, str):
            errors.append(f"value of {key!r} must be a string")
            continue
        prefix, _, name = key.rpartition("/")
        if not _NAME.match(name) or (prefix and (len(prefix) > 253
                                                 or not _DNS_SUBDOMAIN.match(prefix))):
            errors.append(f"invalid label key {key!r}")
        elif prefix == "hetzner.cloud" or prefix.endswith(".hetzner.cloud"):
            errors.append(f"label key prefix of {key!r} is reserved")
        if not _VALUE.match(value):
            errors.append(f"invalid label value {value!r} for key {key!r}")
    return errors


def _split_terms(selector: str) -> list[str]:
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return terms


def _term(term: str) -> Matcher:
    set_match = _SET_TERM.match(term)
    if set_match:
        key = set_match["key"]
        values = {v.strip() for v in set_match["values"].split(",")}
        if set_match["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, _, value = (part.strip() for part in term.partition(op))
            if not key or not _VALUE.match(value):
                break
            if op == "!=":
                # As in Kubernetes: a missing key also "does not equal" the value.
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    else:
        if term.startswith("!") and _is_key(term[1:].strip()):
            key = term[1:].strip()
            return lambda labels: key not in labels
        if _is_key(term):
            return lambda labels: term in labels
    raise ValueError(f"invalid label selector term {term!r}")


def _is_key(text: str) -> bool:
    return bool(text) and not label_errors({text: ""})


def parse_selector(selector: str) -> Matcher:
    """Compile a selector; raise ValueError on a malformed one."""
    if not selector.strip():
        return lambda labels: True
    matchers = [_term(term) for term in _split_terms(selector)]
    return lambda labels: all(m(labels) for m in matchers)
