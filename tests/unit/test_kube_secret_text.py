"""A Secret value that is not UTF-8 text becomes a clear credentials problem, never an
exception on every retry."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from agentspaces.api.enums import Reason
from agentspaces.api.types import SecretKeyRef
from agentspaces.kube import SecretData, _decode
from agentspaces.reconcile.credentials import CredentialsProblem, _secret_value


def _secret(data: dict[str, bytes]) -> dict[str, Any]:
    """A Secret as the apiserver's JSON has it."""
    return {"metadata": {"name": "s", "uid": "u1", "resourceVersion": "5",
                         "labels": {"role": "agent"}, "finalizers": ["f"],
                         "ownerReferences": [{"kind": "Workspace", "name": "w", "uid": "w1",
                                              "apiVersion": "agentspaces.dev/v1alpha1"}]},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def test_binary_values_are_set_aside_not_decoded() -> None:
    decoded = _decode(_secret({"token": b"abc", "apiKey": b"\xff\xfe\x00binary"}))
    assert dict(decoded.data) == {"token": "abc"}
    assert decoded.not_text == ("apiKey",)
    assert (decoded.uid, decoded.resource_version, decoded.labels, decoded.finalizers,
            decoded.owner_uids) == ("u1", "5", {"role": "agent"}, ("f",), ("w1",))
    assert decoded.owners[0].kind == "Workspace" and decoded.owners[0].name == "w"


class _Reader:
    def __init__(self, secret: SecretData) -> None:
        self.secret = secret

    async def read(self, namespace: str, name: str) -> SecretData | None:
        return self.secret


def test_a_binary_key_is_reported_as_not_text() -> None:
    secret = _decode(_secret({"apiKey": b"\x80\x81"}))
    problem = asyncio.run(_secret_value(_Reader(secret), SecretKeyRef("s", "apiKey"),  # type: ignore[arg-type]
                                        "team"))
    assert isinstance(problem, CredentialsProblem)
    assert problem.reason == Reason.SECRET_KEY_MISSING
    assert "'apiKey' is not UTF-8 text" in problem.message
