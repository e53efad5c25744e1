"""The CRDs, generated from the pydantic models of `api.model` and `api.status`.

pydantic's own JSON Schema is not what the apiserver accepts (it uses $ref, anyOf and
titles; a CRD needs a structural schema), so this module walks the models itself:
every field's type, default, constraints, description and Kubernetes markers come
from its one declaration. `crds/*.yaml` is this module's output (`make crds`); a unit
test fails when the checked-in file drifts from it.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from agentspaces.api.image_model import (
    IMAGE_KIND,
    IMAGE_PLURAL,
    WorkspaceImageSpec,
    WorkspaceImageStatus,
)
from agentspaces.api.model import (
    GROUP,
    NAMESPACED_CLASS_KIND,
    VERSION,
    Cel,
    DurationAtLeast,
    NamespacedWorkspaceClassSpecModel,
    WorkspaceClassSpecModel,
    WorkspaceSpecModel,
)
from agentspaces.api.quota_model import (
    QUOTA_KIND,
    QUOTA_PLURAL,
    WorkspaceQuotaSpec,
    WorkspaceQuotaStatus,
)
from agentspaces.api.status import WorkspaceClassStatus, WorkspaceStatus

Schema = dict[str, Any]


@dataclass
class _Facts:
    """What the declarations around one type say about it, outermost first."""

    description: str | None = None
    constraints: list[Any] = field(default_factory=list)
    rules: list[Cel] = field(default_factory=list)
    extra: Schema = field(default_factory=dict)

    def absorb(self, items: Iterable[Any]) -> None:
        for item in items:
            if isinstance(item, FieldInfo):
                self.absorb_field(item)
            elif isinstance(item, Cel):
                self.rules.append(item)
            elif isinstance(item, DurationAtLeast):
                self.rules.append(item.cel)
            else:
                self.constraints.append(item)

    def absorb_field(self, info: FieldInfo) -> None:
        if self.description is None:
            self.description = info.description
        extra = info.json_schema_extra
        if callable(extra):
            raise TypeError("callable json_schema_extra cannot be walked")
        for key, value in (extra or {}).items():
            self.extra.setdefault(key, value)
        self.absorb(info.metadata)


def _unwrap(annotation: Any, facts: _Facts) -> Any:
    """Strip Annotated (collecting its metadata) and `| None` down to the value type."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *metadata = get_args(annotation)
            facts.absorb(metadata)
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                raise TypeError(f"only `T | None` unions are structural: {annotation}")
            annotation = members[0]
        else:
            return annotation


def _docstring(model: type[BaseModel]) -> str | None:
    """The model's own docstring, or an API ancestor's (never pydantic's)."""
    for klass in model.__mro__:
        if klass is BaseModel:
            return None
        doc = klass.__dict__.get("__doc__")
        if doc:
            return " ".join(inspect.cleandoc(doc).split())
    return None


def object_schema(model: type[BaseModel], facts: _Facts | None = None) -> Schema:
    facts = facts or _Facts()
    properties: Schema = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        properties[key] = field_schema(info)
        if info.is_required():
            required.append(key)
    schema: Schema = {"type": "object"}
    description = facts.description or _docstring(model)
    if description:
        schema["description"] = description
    schema["properties"] = properties
    if required:
        schema["required"] = required
    rules = [*facts.rules, *getattr(model, "cel_rules", ())]
    if rules:
        schema["x-kubernetes-validations"] = [rule.schema() for rule in rules]
    return schema


def field_schema(info: FieldInfo) -> Schema:
    facts = _Facts()
    facts.absorb_field(info)
    schema = type_schema(info.annotation, facts)
    if info.default not in (PydanticUndefined, None) and info.default_factory is None:
        schema["default"] = info.default
    return schema


def type_schema(annotation: Any, facts: _Facts | None = None) -> Schema:
    facts = facts or _Facts()
    value_type = _unwrap(annotation, facts)
    origin = get_origin(value_type)
    if isinstance(value_type, type) and issubclass(value_type, BaseModel):
        schema = object_schema(value_type, facts)
        facts.rules.clear()  # object_schema placed them
    elif origin is list:
        (item,) = get_args(value_type)
        schema = {"type": "array", "items": type_schema(item)}
    elif origin is dict:
        key, value = get_args(value_type)
        if key is not str:
            raise TypeError(f"object keys are strings: {value_type}")
        schema = {"type": "object"}
        if value is not Any:
            schema["additionalProperties"] = type_schema(value)
    elif origin is Literal:
        values = list(get_args(value_type))
        schema = {"type": _scalar(type(values[0])), "enum": values}
    elif isinstance(value_type, type) and issubclass(value_type, Enum):
        schema = {"type": "string", "enum": [member.value for member in value_type]}
    elif value_type is datetime:
        schema = {"type": "string", "format": "date-time"}
    else:
        schema = {"type": _scalar(value_type)}
    if facts.description and "description" not in schema:
        schema["description"] = facts.description
    _constrain(schema, facts.constraints)
    if facts.rules:
        schema["x-kubernetes-validations"] = [rule.schema() for rule in facts.rules]
    schema.update(facts.extra)
    return schema


def _scalar(python_type: Any) -> str:
    names = {str: "string", bool: "boolean", int: "integer", float: "number"}
    if python_type not in names:
        raise TypeError(f"no OpenAPI type for {python_type!r}")
    return names[python_type]


def _constrain(schema: Schema, constraints: list[Any]) -> None:
    length = {"string": "Length", "array": "Items", "object": "Properties"}.get(schema["type"])
    for item in constraints:
        if isinstance(item, annotated_types.MaxLen) and length:
            schema[f"max{length}"] = item.max_length
        elif isinstance(item, annotated_types.MinLen) and length:
            schema[f"min{length}"] = item.min_length
        elif isinstance(item, annotated_types.Ge):
            schema["minimum"] = item.ge
        elif isinstance(item, annotated_types.Le):
            schema["maximum"] = item.le
        elif getattr(item, "pattern", None) is not None:
            schema["pattern"] = item.pattern
        elif callable(getattr(item, "__get_pydantic_core_schema__", None)) or callable(item):
            continue  # a validator: parsing only, nothing to declare
        else:
            raise TypeError(f"cannot express {item!r} in a structural schema")


# -- the CRDs ----------------------------------------------------------------------

def _crd(kind: str, plural: str, scope: str, short_names: list[str], spec: Schema,
         status: Schema, columns: list[Schema], validations: tuple[Cel, ...] = ()) -> Schema:
    root: Schema = {
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
    if validations:
        root["x-kubernetes-validations"] = [rule.schema() for rule in validations]
    names: Schema = {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                     "singular": kind.lower(), "categories": ["agentspaces"]}
    if short_names:
        names["shortNames"] = short_names
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": names,
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def workspace_crd() -> Schema:
    return _crd(
        "Workspace", "workspaces", "Namespaced", ["ws"], object_schema(WorkspaceSpecModel),
        object_schema(WorkspaceStatus),
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "URL", "type": "string", "jsonPath": ".status.urls.workspace"},
            {"name": "Idle", "type": "boolean", "jsonPath": ".status.activity.idle"},
            {"name": "Agent", "type": "string", "jsonPath": ".status.activity.agentState"},
            # live, stopped, or gateway (stopped; opening the URL wakes it): -o wide.
            {"name": "URL-State", "type": "string", "priority": 1,
             "jsonPath": ".status.urls.state"},
            {"name": "Reason", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type=='Ready')].reason"},
            {"name": "Server", "type": "string", "priority": 1, "jsonPath": ".status.server.ipv4"},
            {"name": "Tokens", "type": "integer", "priority": 1,
             "jsonPath": ".status.usage.totalTokens"},
            {"name": "Token-USD", "type": "string", "priority": 1,
             "jsonPath": ".status.usage.estimatedCost"},
            {"name": "VM-Cost", "type": "string", "priority": 1,
             "jsonPath": ".status.vmCost.summary"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        validations=(Cel("size(self.metadata.name) <= 63",
                         "Workspace names are at most 63 characters (they become DNS labels)"),),
    )


# Both class kinds print the same columns.
CLASS_COLUMNS = [
    {"name": "Zone", "type": "string", "jsonPath": ".spec.dns.zoneName"},
    {"name": "Server", "type": "string", "jsonPath": ".spec.server.type"},
    {"name": "Location", "type": "string", "jsonPath": ".spec.server.location"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def workspace_class_crd() -> Schema:
    return _crd(
        "WorkspaceClass", "workspaceclasses", "Cluster", ["wsc"],
        object_schema(WorkspaceClassSpecModel), object_schema(WorkspaceClassStatus),
        [*CLASS_COLUMNS[:-1],
         {"name": "Pool", "type": "integer", "jsonPath": ".spec.warmPool.size"},
         {"name": "Pool-Ready", "type": "integer", "jsonPath": ".status.warmPool.ready"},
         CLASS_COLUMNS[-1]],
    )


def namespaced_workspace_class_crd() -> Schema:
    """A tenant's own class: the same spec, in a namespace (docs/security.md)."""
    return _crd(
        NAMESPACED_CLASS_KIND, "namespacedworkspaceclasses", "Namespaced", ["nwsc"],
        object_schema(NamespacedWorkspaceClassSpecModel), object_schema(WorkspaceClassStatus),
        CLASS_COLUMNS,
    )


def workspace_quota_crd() -> Schema:
    return _crd(
        QUOTA_KIND, QUOTA_PLURAL, "Namespaced", ["wsq"], object_schema(WorkspaceQuotaSpec),
        object_schema(WorkspaceQuotaStatus),
        [
            {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
            {"name": "Max", "type": "integer", "jsonPath": ".spec.maxRunning"},
            {"name": "Spent", "type": "string", "jsonPath": ".status.spent"},
            {"name": "Budget", "type": "string", "jsonPath": ".spec.monthlyBudget.amount"},
            {"name": "Currency", "type": "string",
             "jsonPath": ".spec.monthlyBudget.currency"},
            {"name": "Limit", "type": "string",
             "jsonPath": ".status.conditions[?(@.type=='LimitReached')].reason"},
            {"name": "Types", "type": "string", "priority": 1, "jsonPath": ".spec.serverTypes"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def workspace_image_crd() -> Schema:
    return _crd(
        IMAGE_KIND, IMAGE_PLURAL, "Cluster", ["wsi"], object_schema(WorkspaceImageSpec),
        object_schema(WorkspaceImageStatus),
        [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Image", "type": "integer", "jsonPath": ".status.imageId"},
            {"name": "Size-GB", "type": "number", "jsonPath": ".status.imageSizeGB"},
            {"name": "Revision", "type": "string", "jsonPath": ".status.revision"},
            {"name": "Reason", "type": "string", "priority": 1,
             "jsonPath": ".status.conditions[?(@.type=='Ready')].reason"},
            {"name": "Built", "type": "date", "priority": 1, "jsonPath": ".status.builtAt"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


PEERING_GROUP = "kopf.dev"


def peering_crd() -> Schema:
    """Kopf's ClusterKopfPeering: where operator replicas publish keep-alives and
    priorities so that one acts and the others stand by (docs/design-decisions.md).
    Kopf writes free-form `status` (one entry per replica) on the object itself: no
    status subresource, so its merge patch of `status` is stored as sent."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"clusterkopfpeerings.{PEERING_GROUP}"},
        "spec": {
            "group": PEERING_GROUP,
            "scope": "Cluster",
            "names": {"kind": "ClusterKopfPeering", "listKind": "ClusterKopfPeeringList",
                      "plural": "clusterkopfpeerings", "singular": "clusterkopfpeering"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def all_crds() -> list[Schema]:
    return [workspace_crd(), workspace_class_crd(), namespaced_workspace_class_crd(),
            workspace_quota_crd(), workspace_image_crd(), peering_crd()]
