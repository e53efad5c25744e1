"""Read the templates in cloudinit/ (package `agentspaces_cloudinit`) and fill them.

Placeholders are `{{name}}`. Filling is strict both ways: a placeholder without a
value and a value without a placeholder are errors, so a renamed placeholder cannot
silently ship as literal text.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from collections.abc import Mapping
from typing import Any

_PACKAGE = "agentspaces_cloudinit"
_PLACEHOLDER = re.compile(r"\{\{([a-z][a-z0-9_]*)\}\}")
# A whole-line shell comment; not the shebang, not a `# shellcheck` directive.
_SHELL_COMMENT = re.compile(r"^[ \t]*#(?!!)(?! shellcheck ).*$", re.MULTILINE)


class TemplateError(ValueError):
    """A template is missing or does not match the values given for it."""


def read_template(name: str) -> str:
    try:
        return importlib.resources.files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"template {name!r} not found in {_PACKAGE}") from None


def read_shell_script(name: str) -> str:
    """Shell template `name` with its whole-line comments emptied (line numbers kept, so
    bash's error lines still point at the repository's file): the VM runs the script, the
    repository keeps it readable, and the 32 KiB of user-data is better spent. The
    scripts hold no here-documents, where a `#` line would be data."""
    text = read_template(name)
    if "<<" in text:
        raise TemplateError(f"template {name}: a here-document; its comment lines may be "
                            "data, so it cannot be stripped")
    return _SHELL_COMMENT.sub("", text)


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def _check(name: str, found: set[str], values: Mapping[str, Any]) -> None:
    missing = sorted(found - set(values))
    unused = sorted(set(values) - found)
    if missing or unused:
        raise TemplateError(f"template {name}: missing values {missing}, unused values {unused}")


def fill_text(name: str, values: Mapping[str, Any]) -> str:
    """Template `name` with every `{{key}}` replaced by str(values[key])."""
    text = read_template(name)
    _check(name, placeholders(text), values)
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def fill_json(name: str, values: Mapping[str, Any]) -> Any:
    """JSON template `name` decoded, then filled: a string that is exactly `{{key}}`
    becomes values[key] (any JSON value); placeholders inside longer strings become
    str(values[key])."""
    text = read_template(name)
    _check(name, placeholders(text), values)

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(item) for item in node]
        if isinstance(node, str):
            whole = _PLACEHOLDER.fullmatch(node)
            if whole:
                return copy.deepcopy(values[whole.group(1)])
            return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), node)
        return node

    return fill(json.loads(text))
