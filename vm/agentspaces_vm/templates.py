"""Find the template files the agent ships with (Caddy config, default devcontainer).

From a source checkout they are package data of `agentspaces_cloudinit`. In the VM's
zipapp the build puts that package (its `__init__.py` and the templates) next to
`agentspaces_vm`, so the same `importlib.resources` lookup works inside the archive.
A copy inside `agentspaces_vm` itself is accepted as well.
"""

from __future__ import annotations

import importlib.resources

_PACKAGES = ("agentspaces_cloudinit", "agentspaces_vm")


class TemplateNotFound(FileNotFoundError):
    pass


def load_template(name: str) -> str:
    """The text of template `name` (e.g. "caddy.json"); TemplateNotFound if absent."""
    for package in _PACKAGES:
        try:
            resource = importlib.resources.files(package).joinpath(name)
            if resource.is_file():
                return resource.read_text(encoding="utf-8")
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            continue
    raise TemplateNotFound(f"template {name!r} not found in {', '.join(_PACKAGES)}")
