"""Resolve a Workspace's class and every credential it needs, before any cloud call.

A failure is a value (reason + message for `CredentialsAvailable=False`), not an
exception, so the reconciler reports it and retries slowly instead of crash-looping.
Messages name Secrets and keys, never their contents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentspaces.api.enums import Reason
from agentspaces.api.types import SecretKeyRef, WorkspaceClass, WorkspaceSpec
from agentspaces.kube import KubeError, KubePort, SecretData
from agentspaces.vmconfig.trust import ca_bundle_problem


@dataclass(frozen=True)
class ResolvedCredentials:
    klass: WorkspaceClass
    spec: WorkspaceSpec
    hetzner_token: str
    dns_token: str
    storage_access_key: str | None
    storage_secret_key: str | None
    class_key: bytes | None
    class_key_previous: bytes | None
    anthropic_api_key: str | None
    repository_token: str | None
    registry_config: str | None = None
    """The registry credentials Secret's Docker config, compact JSON."""

    def workspace_secrets_fingerprint(self) -> str:
        """Changes whenever a secret delivered to the VM changes (never reversible)."""
        digest = hashlib.sha256()
        for value in (self.anthropic_api_key or "", self.repository_token or ""):
            digest.update(hashlib.sha256(value.encode()).digest())
        if self.registry_config is not None:  # without one, fingerprints stay as they were
            digest.update(hashlib.sha256(self.registry_config.encode()).digest())
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class CredentialsProblem:
    reason: Reason
    message: str


class _SecretReader:
    """Reads each Secret once per resolve (several keys often live in one Secret)."""

    def __init__(self, kube: KubePort) -> None:
        self._kube = kube
        self._seen: dict[tuple[str, str], SecretData | None] = {}

    async def read(self, namespace: str, name: str) -> SecretData | None:
        if (namespace, name) not in self._seen:
            self._seen[(namespace, name)] = await self._kube.read_secret(namespace, name)
        return self._seen[(namespace, name)]


async def _secret_value(kube: _SecretReader, ref: SecretKeyRef, namespace: str
                        ) -> str | CredentialsProblem:
    try:
        secret = await kube.read(namespace, ref.name)
    except KubeError as err:
        return CredentialsProblem(Reason.SECRET_NOT_FOUND,
                                  f"cannot read Secret {namespace}/{ref.name}: {err.status}")
    if secret is None:
        return CredentialsProblem(Reason.SECRET_NOT_FOUND,
                                  f"Secret {namespace}/{ref.name} not found")
    if ref.key in secret.not_text:
        return CredentialsProblem(Reason.SECRET_KEY_MISSING,
                                  f"Secret {namespace}/{ref.name} key {ref.key!r} is not "
                                  "UTF-8 text")
    value = secret.data.get(ref.key)
    if not value or not value.strip():
        return CredentialsProblem(Reason.SECRET_KEY_MISSING,
                                  f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
    return value.strip()


DOCKER_CONFIG_LIMIT = 64 * 1024


def docker_config(text: str) -> str | None:
    """A kubernetes.io/dockerconfigjson value as compact JSON; None unless it is a JSON
    object whose `auths` maps registries to objects (what `docker login` writes)."""
    if len(text) > DOCKER_CONFIG_LIMIT:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict) or not all(isinstance(v, dict) for v in auths.values()):
        return None
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def decode_class_key(text: str) -> bytes | None:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == 32 else None


async def resolve(kube: KubePort, spec_raw: Mapping[str, Any], workspace_namespace: str,
                  operator_namespace: str) -> ResolvedCredentials | CredentialsProblem:
    class_name = spec_raw.get("className", "")
    secrets = _SecretReader(kube)
    try:
        body = await kube.get_workspace_class(class_name)
    except KubeError as err:
        return CredentialsProblem(Reason.CLASS_NOT_FOUND,
                                  f"cannot read WorkspaceClass {class_name}: {err.status}")
    if body is None:
        return CredentialsProblem(Reason.CLASS_NOT_FOUND,
                                  f"WorkspaceClass {class_name!r} not found")
    try:
        klass = WorkspaceClass.from_body(body)
        spec = WorkspaceSpec.from_spec(spec_raw, klass)
    except (ValueError, KeyError, TypeError) as err:
        return CredentialsProblem(Reason.CLASS_INVALID,
                                  f"WorkspaceClass {class_name}: {err}")
    bad_bundle = ca_bundle_problem(klass.ca_bundle)
    if bad_bundle is not None:
        return CredentialsProblem(Reason.INVALID_CA_BUNDLE,
                                  f"WorkspaceClass {class_name} trust.caBundle: {bad_bundle}")

    def class_ns(ref: SecretKeyRef) -> str:
        return ref.namespace or operator_namespace

    hetzner = await _secret_value(secrets, klass.hetzner_token_ref,
                                  class_ns(klass.hetzner_token_ref))
    if isinstance(hetzner, CredentialsProblem):
        return hetzner
    dns = await _secret_value(secrets, klass.dns.token_ref, class_ns(klass.dns.token_ref))
    if isinstance(dns, CredentialsProblem):
        return dns

    access_key = secret_key = None
    class_key: bytes | None = None
    class_key_previous: bytes | None = None
    if spec.persistence_enabled and klass.storage is not None:
        ref = klass.storage.credentials_ref
        access = await _secret_value(secrets, ref, class_ns(ref))
        if isinstance(access, CredentialsProblem):
            return access
        secret = await _secret_value(secrets, SecretKeyRef(ref.name, "secretAccessKey",
                                                        ref.namespace), class_ns(ref))
        if isinstance(secret, CredentialsProblem):
            return secret
        access_key, secret_key = access, secret
        if klass.encryption_key_ref is None:
            return CredentialsProblem(Reason.CLASS_INVALID,
                                      "storage needs encryption.keySecretRef")
        raw_key = await _secret_value(secrets, klass.encryption_key_ref,
                                      class_ns(klass.encryption_key_ref))
        if isinstance(raw_key, CredentialsProblem):
            return raw_key
        class_key = decode_class_key(raw_key)
        # During a rotation the same Secret carries the old key as previousKey.
        previous_ref = SecretKeyRef(klass.encryption_key_ref.name, "previousKey",
                                    klass.encryption_key_ref.namespace)
        previous = await _secret_value(secrets, previous_ref, class_ns(previous_ref))
        class_key_previous = None if isinstance(previous, CredentialsProblem) \
            else decode_class_key(previous)
        if class_key is None:
            return CredentialsProblem(
                Reason.CREDENTIALS_INVALID,
                f"Secret {klass.encryption_key_ref.name} key {klass.encryption_key_ref.key!r} "
                "must be 32 bytes, base64-encoded (e.g. `openssl rand -base64 32`)")

    api_key = repo_token = None
    if spec.api_key_ref is not None:
        value = await _secret_value(secrets, spec.api_key_ref, workspace_namespace)
        if isinstance(value, CredentialsProblem):
            return value
        api_key = value
    if spec.repository_credentials_ref is not None:
        value = await _secret_value(secrets, spec.repository_credentials_ref, workspace_namespace)
        if isinstance(value, CredentialsProblem):
            return value
        repo_token = value
    registry = None
    registry_ref = spec.registry_credentials_ref
    if registry_ref is not None:
        value = await _secret_value(secrets, registry_ref, workspace_namespace)
        if isinstance(value, CredentialsProblem):
            return value
        registry = docker_config(value)
        if registry is None:
            return CredentialsProblem(
                Reason.CREDENTIALS_INVALID,
                f"Secret {workspace_namespace}/{registry_ref.name} key {registry_ref.key!r} is "
                f"not a Docker config (JSON with \"auths\", at most {DOCKER_CONFIG_LIMIT} "
                "bytes), as `kubectl create secret docker-registry` makes it")

    return ResolvedCredentials(
        klass=klass, spec=spec, hetzner_token=hetzner, dns_token=dns,
        storage_access_key=access_key, storage_secret_key=secret_key, class_key=class_key,
        class_key_previous=class_key_previous,
        anthropic_api_key=api_key, repository_token=repo_token, registry_config=registry)
