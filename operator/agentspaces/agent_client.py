"""The operator's side of the VM agent protocol (docs/agent-protocol.md).

The agent is reached by IP, so host names mean nothing: trust comes from pinning. The
TLS context trusts exactly the workspace's own certificate (nothing from the system
store) with hostname checks off, and every response is also checked against the
certificate's SHA-256 fingerprint. The bearer token is sent in a header and appears in
no exception message or log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agentspaces import metrics
from agentspaces_vm.contracts import (
    AgentStatus,
    BackupJob,
    BackupPlan,
    ContractError,
    RestorePlan,
    SaveJob,
    SaveRequest,
)

T = TypeVar("T")


class AgentError(Exception):
    """The agent answered with an error status."""

    def __init__(self, status: int, body: object, message: str | None = None) -> None:
        self.status = status
        self.body = body
        super().__init__(message or f"agent answered {status}: {_summary(body)}")


class AgentAuthError(AgentError):
    """401: the agent does not accept our token (a VM for another workspace?)."""


class AgentRateLimited(AgentError):
    """429: too many failed attempts from our address; `retry_after` in seconds."""

    def __init__(self, status: int, body: object, retry_after: float | None) -> None:
        super().__init__(status, body)
        self.retry_after = retry_after


class AgentUnreachable(Exception):
    """No answer: connection refused or reset, timeout, TLS handshake failure."""


class AgentClientClosed(AgentUnreachable):
    """The client was closed (its server or credentials were replaced, or the operator
    is shutting down) while a long-poll waited on it."""


class AgentCertificateMismatch(Exception):
    """The server's certificate is not the pinned one."""


class AgentProtocolError(AgentError):
    """The agent answered 2xx with a document that breaks its contract
    (agentspaces_vm.contracts); the message names the field, never a value."""


PRIMED_FOR = 2.0
"""How long a status document a long-poll received may stand in for a GET."""


@dataclass(frozen=True)
class WatchedStatus:
    """One answer to a long-poll of GET /v1/status."""

    status: AgentStatus
    etag: str | None
    """The document's ETag; None from an agent that has none (no long-polls)."""
    waited: bool
    """The agent honoured the wait (`Preference-Applied`)."""


def _summary(body: object) -> str:
    if isinstance(body, Mapping):
        text = str(body.get("error", ""))
        if body.get("detail"):
            text += f": {body['detail']}"
        return text[:300] or "no details"
    return str(body)[:300] or "no details"


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which the ssl module has no name for.
_NO_CHECK_TIME = 0x200000


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """An SSL context that trusts only `cert_pem` (a self-signed leaf)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    # The pinned leaf is its own trust anchor. Its dates are not checked: trust is the
    # pin, which changes with every server (docs/agent-protocol.md, "HTTPS API").
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | _NO_CHECK_TIME
    ctx.load_verify_locations(cadata=cert_pem)
    return ctx


def _is_cert_failure(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return True
        current = current.__cause__ or current.__context__
    return False


class AgentClient:
    def __init__(self, base_url: str, token: str, cert_pem: str, timeout: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._base_url = base_url.rstrip("/")
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        self._fingerprint = cert.fingerprint(hashes.SHA256())
        self._timeout = timeout
        self._monotonic = monotonic
        self._client = httpx.AsyncClient(
            base_url=self._base_url, verify=pinned_context(cert_pem), timeout=timeout,
            headers={"Authorization": f"Bearer {token}"}, follow_redirects=False,
            trust_env=False)
        self._watches: set[asyncio.Task[httpx.Response]] = set()
        self._closing = False
        self._primed: tuple[AgentStatus, float] | None = None
        self.last_answer = 0.0
        """When (monotonic) the agent last answered any request on this client."""

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool; a long-poll waiting on it ends with AgentClientClosed."""
        self._closing = True
        for task in list(self._watches):
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        await self._client.aclose()

    def __repr__(self) -> str:
        return f"AgentClient({self._base_url!r})"

    async def _call(self, method: str, path: str, body: object = None,
                    expect: Iterable[int] = (200,), content: bytes | None = None) -> Any:
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        if content is not None:
            # A TLS connection keeps buffers the size of the largest body it carried for
            # as long as it lives, and the long-polls would reuse it: one that carried the
            # agent bundle (about 300 KB) is closed after its answer (docs/scale.md).
            kwargs = {"content": content,
                      "headers": {"Content-Type": "application/octet-stream",
                                  "Connection": "close"}}
        return self._answer(await self._send(method, path, **kwargs), expect)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; the response checked against the pin. Each is timed for the
        metrics (a long-poll, which waits by design, apart from the others)."""
        started, code = time.monotonic(), "error"
        try:
            response = await self._client.request(method, path, **kwargs)
            code = str(response.status_code)
        except httpx.TransportError as exc:
            if _is_cert_failure(exc):
                code = "certificate"
                raise AgentCertificateMismatch(
                    f"agent at {self._base_url} presented a certificate other than the "
                    "pinned one") from None
            code = "unreachable"
            raise AgentUnreachable(
                f"agent at {self._base_url} unreachable: {type(exc).__name__}") from None
        finally:
            if code != "error":  # not cancelled (a closed client ends its long-polls)
                metrics.agent_request(method, path, code, time.monotonic() - started,
                                      long_poll="Prefer" in kwargs.get("headers", {}))
        self._check_pin(response)
        self.last_answer = self._monotonic()
        return response

    def _answer(self, response: httpx.Response, expect: Iterable[int]) -> Any:
        """The response's JSON document, or the AgentError its status means."""
        try:
            doc: Any = response.json() if response.content else None
        except ValueError:
            doc = response.text[:500]
        if response.status_code in expect:
            return doc
        if response.status_code == 401:
            raise AgentAuthError(401, doc, f"agent at {self._base_url} rejected the token")
        if response.status_code == 429:
            retry = response.headers.get("Retry-After")
            raise AgentRateLimited(429, doc, float(retry) if retry and retry.isdigit() else None)
        raise AgentError(response.status_code, doc)

    def _check_pin(self, response: httpx.Response) -> None:
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            # The server closed the connection after answering (Connection: close), so
            # the TLS object is gone. The handshake itself was verified against a context
            # that trusts only the pinned certificate, which is the pin that matters.
            return
        if hashlib.sha256(der).digest() != self._fingerprint:
            raise AgentCertificateMismatch(
                f"agent at {self._base_url}: certificate fingerprint does not match the pin")

    async def claim(self, claim: Mapping[str, Any]) -> dict[str, Any]:
        """Claim a warm-pool server (bootStage "awaiting-claim") for a workspace: PUT
        /v1/claim with `{"config", "claudeSeeds", "sshAuthorizedKeys"}`
        (vmconfig.claim.render_claim). 202 when claimed now, 200 for a repeat of the same
        workspace uid; `{"workspace": {...}}` either way. AgentError 409 with
        `already-claimed` (another workspace has it), `not-a-pool-server`, and 400
        `bad-claim` (its `field` names the part)."""
        doc: dict[str, Any] = await self._call("PUT", "/v1/claim", dict(claim),
                                               expect=(200, 202))
        return doc

    async def put_agent_bundle(self, bundle: bytes) -> dict[str, Any]:
        """Hand the agent zipapp to the VM's loader (bootStage "awaiting-agent"); the
        loader checks it against the sha256 pinned in the user-data before running it."""
        doc: dict[str, Any] = await self._call("PUT", "/v1/agent", expect=(202,),
                                               content=bundle)
        return doc

    async def status(self) -> dict[str, Any]:
        """The raw status document, for diagnostics; the reconciler reads agent_status."""
        doc: dict[str, Any] = await self._call("GET", "/v1/status")
        return doc

    async def agent_status(self) -> AgentStatus:
        """GET /v1/status, parsed (AgentProtocolError when it breaks the contract); or the
        document a long-poll received less than PRIMED_FOR ago (`prime`), once."""
        primed, self._primed = self._primed, None
        if primed is not None and self._monotonic() - primed[1] <= PRIMED_FOR:
            return primed[0]
        return _parsed(AgentStatus.from_json, await self._call("GET", "/v1/status"))

    def prime(self, status: AgentStatus) -> None:
        """Let the next agent_status() answer with `status`, a document just received, so
        the reconcile a long-poll triggers does not ask for it again."""
        self._primed = (status, self._monotonic())

    async def watch_status(self, etag: str | None, wait: float) -> WatchedStatus:
        """GET /v1/status as a long-poll: the agent answers at once when its document's
        ETag differs from `etag`, else when it changes or after `wait` seconds.

        The request's read timeout is `wait` plus the client's timeout, so a held
        request always ends. Closing the client ends it with AgentClientClosed.
        """
        headers = {"Prefer": f"wait={wait:g}"}
        if etag is not None:
            headers["If-None-Match"] = f'"{etag}"'
        timeout = httpx.Timeout(self._timeout, read=wait + self._timeout)
        if self._closing:
            raise AgentClientClosed(f"client for {self._base_url} is closed")
        task = asyncio.ensure_future(self._send("GET", "/v1/status", headers=headers,
                                                timeout=timeout))
        self._watches.add(task)
        try:
            response = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and (current is None or not current.cancelling()):
                raise AgentClientClosed(f"client for {self._base_url} closed") from None
            raise
        finally:
            self._watches.discard(task)
        status = _parsed(AgentStatus.from_json, self._answer(response, (200,)))
        tag = response.headers.get("ETag")
        applied = response.headers.get("Preference-Applied", "")
        return WatchedStatus(status, tag.removeprefix("W/").strip('"') or None if tag else None,
                             waited="wait" in applied.lower())

    async def put_secrets(self, *, version: str, basic_auth_username: str,
                          basic_auth_scrypt_hash: str, anthropic_api_key: str | None = None,
                          repository_token: str | None = None,
                          registry_config: str | None = None,
                          claude_oauth_token: str | None = None,
                          gateway: Mapping[str, Any] | None = None,
                          share_link_key: str | None = None,
                          session_key: str | None = None) -> dict[str, Any]:
        """Deliver the workspace's secrets (a full replacement); returns {"version", ...}.
        `registry_config`: a Docker config.json (registry logins for the devcontainer).
        Claude Code's credential is at most one of `anthropic_api_key`,
        `claude_oauth_token` and `gateway` ({"baseUrl", "authToken", "headers"?,
        "models"?}). `share_link_key` and `session_key`: the workspace's keys for share
        links and browser sessions (the access Secret's)."""
        body: dict[str, Any] = {
            "version": version,
            "basicAuth": {"username": basic_auth_username, "scryptHash": basic_auth_scrypt_hash},
        }
        if anthropic_api_key is not None:
            body["anthropicApiKey"] = anthropic_api_key
        if claude_oauth_token is not None:
            body["claudeOauthToken"] = claude_oauth_token
        if gateway is not None:
            body["gateway"] = dict(gateway)
        if repository_token is not None:
            body["repositoryToken"] = repository_token
        if registry_config is not None:
            body["registryConfig"] = registry_config
        if share_link_key is not None:
            body["shareLinkKey"] = share_link_key
        if session_key is not None:
            body["sessionKey"] = session_key
        doc: dict[str, Any] = await self._call("PUT", "/v1/secrets", body)
        return doc

    async def put_config(self, public_ports: Iterable[int],
                         ca_bundle: str | None = None,
                         link_ports: Iterable[int] = ()) -> dict[str, Any]:
        """The agent's settings that may change after boot (a full replacement): the
        public ports, the ports share links open, and the class's CA certificates
        (installed before the clone)."""
        body: dict[str, Any] = {"publicPorts": sorted(set(public_ports))}
        links = sorted(set(link_ports))
        if links:  # only then: an agent from before share links knows no such field
            body["linkPorts"] = links
        if ca_bundle is not None:
            body["caBundle"] = ca_bundle
        doc: dict[str, Any] = await self._call("PUT", "/v1/config", body)
        return doc

    async def start(self, restore_plan: RestorePlan | None) -> dict[str, Any]:
        """Start the boot sequence, restoring the plan's backup first (if any)."""
        body = {"restore": restore_plan.to_json() if restore_plan is not None else None}
        doc: dict[str, Any] = await self._call("POST", "/v1/start", body, expect=(202,))
        return doc

    async def start_backup(self, plan: BackupPlan) -> str:
        """Start a backup; its id. AgentError with status 409 while one runs."""
        doc = await self._call("POST", "/v1/backup", plan.to_json(), expect=(202,))
        if not isinstance(doc, Mapping) or not isinstance(doc.get("id"), str):
            raise AgentProtocolError(202, None, "POST /v1/backup: the answer has no id")
        return doc["id"]

    async def backup_status(self) -> BackupJob:
        return _parsed(BackupJob.from_json, await self._call("GET", "/v1/backup"))

    async def start_save(self, request: SaveRequest) -> str:
        """Start the pre-stop save; its id. AgentError with status 409 (its body names
        the running save's id) while one runs, 404 from an agent without saves."""
        doc = await self._call("POST", "/v1/save", request.to_json(), expect=(202,))
        if not isinstance(doc, Mapping) or not isinstance(doc.get("id"), str):
            raise AgentProtocolError(202, None, "POST /v1/save: the answer has no id")
        return doc["id"]

    async def save_status(self) -> SaveJob:
        return _parsed(SaveJob.from_json, await self._call("GET", "/v1/save"))


def _parsed(parse: Callable[[object], T], doc: object) -> T:
    try:
        return parse(doc)
    except ContractError as exc:
        raise AgentProtocolError(200, None, f"the agent's answer breaks the contract: "
                                            f"{exc}") from None


@runtime_checkable
class StatusWatchPort(Protocol):
    """A client that can long-poll the agent's status (`AgentClient` implements it)."""

    last_answer: float
    """When (monotonic) the agent last answered any request on this client."""

    async def watch_status(self, etag: str | None, wait: float) -> WatchedStatus: ...

    def prime(self, status: AgentStatus) -> None: ...


class AgentPort(Protocol):
    """What the reconciler asks of a workspace's agent (`AgentClient` implements it)."""

    async def agent_status(self) -> AgentStatus: ...

    async def claim(self, claim: Mapping[str, Any]) -> dict[str, Any]: ...

    async def put_agent_bundle(self, bundle: bytes) -> dict[str, Any]: ...

    async def put_secrets(self, *, version: str, basic_auth_username: str,
                          basic_auth_scrypt_hash: str, anthropic_api_key: str | None = None,
                          repository_token: str | None = None,
                          registry_config: str | None = None,
                          claude_oauth_token: str | None = None,
                          gateway: Mapping[str, Any] | None = None,
                          share_link_key: str | None = None,
                          session_key: str | None = None) -> dict[str, Any]: ...

    async def put_config(self, public_ports: Iterable[int],
                         ca_bundle: str | None = None,
                         link_ports: Iterable[int] = ()) -> dict[str, Any]: ...

    async def start(self, restore_plan: RestorePlan | None) -> dict[str, Any]: ...

    async def start_backup(self, plan: BackupPlan) -> str: ...

    async def backup_status(self) -> BackupJob: ...

    async def start_save(self, request: SaveRequest) -> str: ...

    async def save_status(self) -> SaveJob: ...
