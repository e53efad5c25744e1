"""The create form: its fields become a Workspace manifest, and the apiserver's
admission errors (a 422's details.causes[].field) go back next to the field they
concern. The apiserver is the validator; only what the form itself encodes (the class
choice, the port list, the MCP servers' JSON) is checked here."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentspaces.api.model import API_VERSION, NAMESPACED_CLASS_KIND

FIELDS = ("namespace", "name", "class_name", "repository_url", "ref", "ports",
          "idle_timeout", "instructions", "mcp_servers", "api_key_secret")
# API paths (a cause's field) to the form field that sets them; the longest match wins.
PATHS = {
    "metadata.namespace": "namespace",
    "metadata.name": "name",
    "spec.className": "class_name",
    "spec.classKind": "class_name",
    "spec.repository.url": "repository_url",
    "spec.repository.ref": "ref",
    "spec.repository": "repository_url",
    "spec.access": "ports",
    "spec.idle.timeout": "idle_timeout",
    "spec.idle": "idle_timeout",
    "spec.agent.instructions": "instructions",
    "spec.agent.mcpServers": "mcp_servers",
    "spec.agent.apiKeySecretRef": "api_key_secret",
}
_PORT = re.compile(r"^(\d{1,5})(?::(private|public))?$")
# The class select's value: a cluster WorkspaceClass by its bare name, the namespace's
# own class as "NamespacedWorkspaceClass/<name>". Class names are DNS subdomains, so a
# "/" never occurs in one and the two cannot be mistaken for each other.
NAMESPACED_PREFIX = f"{NAMESPACED_CLASS_KIND}/"


@dataclass
class CreateForm:
    values: dict[str, str]
    errors: dict[str, list[str]] = field(default_factory=dict)
    general: list[str] = field(default_factory=list)

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, []).append(message)


def parse_ports(text: str) -> list[dict[str, Any]]:
    """"3000, 8080:public" -> [{port: 3000, visibility: private}, ...]."""
    ports = []
    for item in filter(None, (part.strip() for part in text.replace("\n", ",").split(","))):
        match = _PORT.match(item)
        if not match:
            raise ValueError(f"{item!r} is not PORT or PORT:public / PORT:private")
        ports.append({"port": int(match.group(1)),
                      "visibility": match.group(2) or "private"})
    return ports


def class_choice(name: str, namespaced: bool) -> str:
    """The class select's value for a class (parse_class_choice reads it back)."""
    return NAMESPACED_PREFIX + name if namespaced else name


def parse_class_choice(value: str) -> tuple[str, str | None]:
    """"sandbox" -> ("sandbox", None); "NamespacedWorkspaceClass/gpu" -> ("gpu",
    "NamespacedWorkspaceClass"); any other value with a "/" is refused."""
    kind, slash, name = value.rpartition("/")
    if not slash:
        return value, None
    if kind != NAMESPACED_CLASS_KIND or not name:
        raise ValueError(f"{value!r} is neither a class name nor {NAMESPACED_PREFIX}NAME")
    return name, NAMESPACED_CLASS_KIND


def _set_class(spec: dict[str, Any], form: CreateForm) -> None:
    """className, and classKind only for a namespace's own class (the default kind is
    the cluster's WorkspaceClass, so a cluster class's manifest stays as before)."""
    try:
        name, kind = parse_class_choice(form.values["class_name"])
    except ValueError as err:
        form.add("class_name", str(err))
        return
    spec["className"] = name
    if kind:
        spec["classKind"] = kind


def manifest(values: Mapping[str, str]) -> tuple[dict[str, Any] | None, CreateForm]:
    """The Workspace the form describes, or None with the form's own errors."""
    form = CreateForm({name: str(values.get(name, "")).strip() for name in FIELDS})
    form.values["instructions"] = str(values.get("instructions", ""))
    v = form.values
    spec: dict[str, Any] = {"className": v["class_name"],
                            "repository": {"url": v["repository_url"]}}
    _set_class(spec, form)
    if v["ref"]:
        spec["repository"]["ref"] = v["ref"]
    try:
        ports = parse_ports(v["ports"])
    except ValueError as err:
        form.add("ports", str(err))
    else:
        if ports:
            spec["access"] = {"ports": ports}
    if v["idle_timeout"]:
        spec["idle"] = {"timeout": v["idle_timeout"]}
    agent: dict[str, Any] = {}
    if v["instructions"].strip():
        agent["instructions"] = v["instructions"]
    if v["mcp_servers"]:
        try:
            servers = json.loads(v["mcp_servers"])
        except ValueError as err:
            form.add("mcp_servers", f"not JSON: {err}")
        else:
            if isinstance(servers, dict):
                agent["mcpServers"] = servers
            else:
                form.add("mcp_servers", "must be a JSON object: name -> server")
    if v["api_key_secret"]:
        agent["apiKeySecretRef"] = {"name": v["api_key_secret"]}
    if agent:
        spec["agent"] = agent
    for required in ("namespace", "name", "class_name", "repository_url"):
        if not v[required]:
            form.add(required, "required")
    if form.errors:
        return None, form
    return {"apiVersion": API_VERSION, "kind": "Workspace",
            "metadata": {"name": v["name"], "namespace": v["namespace"]},
            "spec": spec}, form


def field_for(path: str) -> str | None:
    """The form field an API path belongs to (spec.access.ports[0].port -> ports)."""
    best = None
    for prefix, name in PATHS.items():
        if (path == prefix or path.startswith((prefix + ".", prefix + "["))) and (
                best is None or len(prefix) > len(best[0])):
            best = (prefix, name)
    return best[1] if best else None


def add_api_errors(form: CreateForm, causes: list[dict[str, Any]], message: str) -> None:
    """A 422's causes next to their fields; the rest (and a cause-less refusal) on top."""
    placed = False
    for cause in causes:
        text = str(cause.get("message") or cause.get("reason") or "invalid")
        name = field_for(str(cause.get("field") or ""))
        if name:
            form.add(name, text)
            placed = True
        else:
            form.general.append(text)
            placed = True
    if not placed:
        form.general.append(message)
