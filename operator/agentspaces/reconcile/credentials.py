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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agentspaces.api.enums import Reason
from agentspaces.api.model import CLASS_KIND, NAMESPACED_CLASS_KIND, ClassKind
from agentspaces.api.types import (
    AgentCredential,
    Gateway,
    SecretKeyRef,
    WorkspaceClass,
    WorkspaceSpec,
)
from agentspaces.class_inputs import ClassInputs
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
    claude_oauth_token: str | None = None
    """A Claude subscription token (agent.oauthTokenSecretRef)."""
    gateway: Gateway | None = None
    gateway_token: str | None = None
    """The LLM gateway's settings and its token (agent.gateway)."""

    def workspace_secrets_fingerprint(self) -> str:
        """Changes whenever a secret delivered to the VM changes (never reversible)."""
        digest = hashlib.sha256()
        for value in (self.anthropic_api_key or "", self.repository_token or ""):
            digest.update(hashlib.sha256(value.encode()).digest())
        # Each only when present, so fingerprints without one stay as they were.
        if self.registry_config is not None:
            digest.update(hashlib.sha256(self.registry_config.encode()).digest())
        if self.claude_oauth_token is not None:
            digest.update(hashlib.sha256(b"oauth-token\0" + self.claude_oauth_token.encode())
                          .digest())
        if self.gateway is not None:
            settings = json.dumps(self.gateway.to_json(), sort_keys=True)
            digest.update(hashlib.sha256(f"gateway\0{settings}\0{self.gateway_token}"
                                         .encode()).digest())
        return digest.hexdigest()[:16]

    def gateway_delivery(self) -> dict[str, Any] | None:
        """The agent protocol's `gateway`: the settings and the token."""
        if self.gateway is None or self.gateway_token is None:
            return None
        return {**self.gateway.to_json(), "authToken": self.gateway_token}


@dataclass(frozen=True)
class CredentialsProblem:
    reason: Reason
    message: str


class _SecretReader:
    """Reads each Secret once per resolve (several keys often live in one Secret); the
    class's own Secrets through the shared `ClassInputs`."""

    def __init__(self, kube: KubePort, shared: ClassInputs | None, fresh: bool) -> None:
        self._kube = kube
        self._shared = shared
        self._fresh = fresh
        self._seen: dict[tuple[str, str], SecretData | None] = {}
        self.class_namespaced: set[tuple[str, str]] = set()

    async def read(self, namespace: str, name: str) -> SecretData | None:
        key = (namespace, name)
        if key not in self._seen:
            if self._shared is not None and key in self.class_namespaced:
                self._seen[key] = await self._shared.secret(namespace, name,
                                                            fresh=self._fresh)
            else:
                self._seen[key] = await self._kube.read_secret(namespace, name)
        return self._seen[key]


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
TOKEN_LIMIT = 8192
# Anthropic's prefixes: an API key from the Console, a token from `claude setup-token`.
API_KEY_PREFIX, OAUTH_TOKEN_PREFIX = "sk-ant-api", "sk-ant-oat"
_FIELDS = {"api-key": "apiKeySecretRef", "oauth-token": "oauthTokenSecretRef",
           "gateway": "gateway.authTokenSecretRef"}


def credential_problem(credential: AgentCredential, value: str) -> str | None:
    """Why `value` cannot be this credential (never quoting it), or None."""
    if len(value) > TOKEN_LIMIT or not all("\x21" <= c <= "\x7e" for c in value):
        return (f"is not a token: one line of at most {TOKEN_LIMIT} printable characters "
                "without spaces")
    if credential.kind == "api-key" and value.startswith(OAUTH_TOKEN_PREFIX):
        return ("holds a Claude subscription token (from `claude setup-token`), not an API "
                f"key: name it in {_FIELDS['oauth-token']}")
    if credential.kind == "oauth-token" and value.startswith(API_KEY_PREFIX):
        return f"holds an Anthropic API key, not a subscription token: name it in " \
               f"{_FIELDS['api-key']}"
    return None


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
                  operator_namespace: str, *, for_cleanup: bool = False,
                  shared: ClassInputs | None = None, fresh: bool = True
                  ) -> ResolvedCredentials | CredentialsProblem:
    """The class and every Secret the workspace needs, or the first problem.

    `for_cleanup` (a stop or a delete): only the class's Secrets are read. The secrets a
    running VM is given (Claude Code's credential, the repository token, registry
    logins) play no part in backing up and deleting, so a Secret of theirs that is gone
    or broken never keeps a billed server alive.

    `shared`: the class and its Secrets come from there, read afresh only when `fresh`.
    """
    class_name = spec_raw.get("className", "")
    # A namespaced class is looked up in the Workspace's own namespace, never another.
    class_kind: ClassKind = NAMESPACED_CLASS_KIND \
        if spec_raw.get("classKind") == NAMESPACED_CLASS_KIND else CLASS_KIND
    title = (f"{class_kind} {workspace_namespace}/{class_name}"
             if class_kind == NAMESPACED_CLASS_KIND else f"{class_kind} {class_name}")
    secrets = _SecretReader(kube, shared, fresh)
    try:
        if shared is not None:
            body = await shared.workspace_class(class_name, fresh=fresh, kind=class_kind,
                                                namespace=workspace_namespace)
        elif class_kind == NAMESPACED_CLASS_KIND:
            body = await kube.get_namespaced_workspace_class(workspace_namespace, class_name)
        else:
            body = await kube.get_workspace_class(class_name)
    except KubeError as err:
        return CredentialsProblem(Reason.CLASS_NOT_FOUND,
                                  f"cannot read {title}: {err.status}")
    if body is None:
        return CredentialsProblem(Reason.CLASS_NOT_FOUND, f"{title} not found")
    try:
        klass = WorkspaceClass.from_body(body, class_kind)
        if klass.namespaced and klass.namespace != workspace_namespace:
            raise ValueError(f"is in namespace {klass.namespace}, not the Workspace's")
        spec = WorkspaceSpec.from_spec(spec_raw, klass)
    except (ValueError, KeyError, TypeError) as err:
        return CredentialsProblem(Reason.CLASS_INVALID, f"{title}: {err}")
    bad_bundle = ca_bundle_problem(klass.ca_bundle)
    if bad_bundle is not None:
        return CredentialsProblem(Reason.INVALID_CA_BUNDLE,
                                  f"{title} trust.caBundle: {bad_bundle}")

    def class_ns(ref: SecretKeyRef) -> str:
        # A namespaced class's Secrets are in its namespace: parsing it refused any
        # namespace on a reference, and none would be read anyway.
        namespace = klass.namespace if klass.namespace is not None \
            else ref.namespace or operator_namespace
        secrets.class_namespaced.add((namespace, ref.name))
        return namespace

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

    if for_cleanup:
        return ResolvedCredentials(
            klass=klass, spec=spec, hetzner_token=hetzner, dns_token=dns,
            storage_access_key=access_key, storage_secret_key=secret_key,
            class_key=class_key, class_key_previous=class_key_previous,
            anthropic_api_key=None, repository_token=None)
    agent_secret = await _agent_secret(secrets, spec.agent_credential, workspace_namespace,
                                       class_ns)
    if isinstance(agent_secret, CredentialsProblem):
        return agent_secret
    kind = spec.agent_credential.kind if spec.agent_credential else None
    repo_token = None
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
        anthropic_api_key=agent_secret if kind == "api-key" else None,
        claude_oauth_token=agent_secret if kind == "oauth-token" else None,
        gateway=spec.agent_credential.gateway if spec.agent_credential else None,
        gateway_token=agent_secret if kind == "gateway" else None,
        repository_token=repo_token, registry_config=registry)


async def _agent_secret(secrets: _SecretReader, credential: AgentCredential | None,
                        workspace_namespace: str, class_ns: Callable[[SecretKeyRef], str]
                        ) -> str | CredentialsProblem | None:
    """The value of Claude Code's credential, checked: a class's Secret is in the class's
    namespace (default: the operator's), a workspace's in its own."""
    if credential is None:
        return None
    ref = credential.secret_ref
    namespace = class_ns(ref) if credential.from_class else workspace_namespace
    value = await _secret_value(secrets, ref, namespace)
    if isinstance(value, CredentialsProblem):
        return value
    problem = credential_problem(credential, value)
    if problem is not None:
        where = "WorkspaceClass agentCredentials" if credential.from_class else "agent"
        return CredentialsProblem(
            Reason.CREDENTIALS_INVALID, f"Secret {namespace}/{ref.name} key {ref.key!r} "
                                        f"({where}.{_FIELDS[credential.kind]}) {problem}")
    return value


async def class_hetzner_token(kube: KubePort, klass: WorkspaceClass, operator_namespace: str
                              ) -> str | CredentialsProblem:
    """A cluster class's Hetzner token, for work of the class's own (its warm pool)."""
    ref = klass.hetzner_token_ref
    return await _secret_value(_SecretReader(kube, None, True), ref,
                               ref.namespace or operator_namespace)
