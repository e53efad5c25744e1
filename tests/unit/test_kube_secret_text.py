"""A Secret value that is not UTF-8 text becomes a clear credentials problem, never an
exception on every retry."""

from __future__ import annotations

import asyncio
import base64

from kubernetes import client

from agentspaces.api.enums import Reason
from agentspaces.api.types import SecretKeyRef
from agentspaces.kube import SecretData, _decode
from agentspaces.reconcile.credentials import CredentialsProblem, _secret_value


def _secret(data: dict[str, bytes]) -> client.V1Secret:
    return client.V1Secret(metadata=client.V1ObjectMeta(name="s", uid="u1"),
                           data={k: base64.b64encode(v).decode() for k, v in data.items()})


def test_binary_values_are_set_aside_not_decoded() -> None:
    decoded = _decode(_secret({"token": b"abc", "apiKey": b"\xff\xfe\x00binary"}))
    assert dict(decoded.data) == {"token": "abc"}
    assert decoded.not_text == ("apiKey",)


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
