"""The request pipeline both emulators share. A request goes:

count the call -> fault rules -> rate limit and bearer token (in the provider's order)
-> route table -> handler -> held, dropped or replaced answer.

Every request under the API prefix is counted, including faulted, rejected and
unroutable ones. Subclasses bring their route table and say how their provider spells
errors, rate-limit headers and injected faults.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, replace
from typing import ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

from .auth import bearer_token
from .calls import CallLog, RequestRecord
from .faults import FaultInjector, FaultPlan, FaultRule
from .ratelimit import RateLimiter, RateLimitState
from .routes import Match, MethodNotAllowed, NoRoute, RouteTable
from .server import HttpFrontend, Reply, Responder

log = logging.getLogger(__name__)


class ApiFailure(Exception):
    """An error answer in the provider's shape, raised anywhere below a handler."""

    def reply(self) -> Reply:
        raise NotImplementedError


@dataclass(frozen=True)
class Request:
    method: str
    path: str                   # after the API prefix, percent-decoded
    query: dict[str, list[str]]
    body: bytes
    token: str | None           # the bearer token, once authenticated


class EmulatorBase(ABC):
    api_prefix: ClassVar[str]
    name: ClassVar[str]
    keep_alive: ClassVar[bool] = False
    # True: every request spends the budget, even one with a wrong token (Hetzner);
    # False: only authenticated requests do, per token (Cloudflare).
    limit_before_auth: ClassVar[bool] = False

    def __init__(self, *, host: str, port: int, routes: RouteTable, limiter: RateLimiter,
                 faults: FaultInjector) -> None:
        self.routes = routes
        self.faults = faults
        self.rate_limiter = limiter
        self._calls = CallLog()
        self._stopping = threading.Event()
        self._http = HttpFrontend(self.handle, host=host, port=port, name=self.name,
                                  keep_alive=self.keep_alive)

    # -- provider specifics ----------------------------------------------------------
    @abstractmethod
    def endpoint_key(self, method: str, path: str) -> str:
        """Counter key of a request, e.g. "GET /servers/{id}"."""

    @abstractmethod
    def authenticate(self, authorization: str | None) -> str:
        """The caller's token, or raise the provider's authentication error."""

    @abstractmethod
    def rate_headers(self, state: RateLimitState) -> dict[str, str]:
        """Headers every answer past the rate limiter carries."""

    @abstractmethod
    def rate_limited(self, state: RateLimitState) -> Reply:
        """The answer to a request over budget."""

    @abstractmethod
    def fault_reply(self, rule: FaultRule, token: str | None) -> Reply:
        """The answer of an injected status fault."""

    @abstractmethod
    def no_route(self, path: str) -> ApiFailure:
        """404: nothing is served at `path`."""

    @abstractmethod
    def method_not_allowed(self, method: str) -> ApiFailure:
        """405: the path is served, not with this method."""

    @abstractmethod
    def internal_error(self) -> ApiFailure:
        """500: a handler raised something other than an ApiFailure."""

    @abstractmethod
    def call(self, match: Match, request: Request) -> Reply:
        """Run a routed handler and shape its result."""

    def extra_headers(self) -> dict[str, str]:
        return {}

    # -- lifecycle -------------------------------------------------------------------
    def start_http(self) -> None:
        self._stopping.clear()
        self._http.start()
        log.info("%s listening on %s", self.name, self.url)

    def stop_http(self) -> None:
        """Stop serving; held or hung requests are released."""
        self._stopping.set()
        self.faults.clear()
        self._http.stop()

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def url(self) -> str:
        return f"http://{self._http.host}:{self.port}{self.api_prefix}"

    # -- call counters ---------------------------------------------------------------
    @property
    def calls(self) -> Counter[str]:
        """Snapshot: "METHOD /normalized/path" -> number of requests received."""
        return self._calls.calls

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of every request in arrival order (status filled once answered)."""
        return self._calls.requests

    def reset_calls(self) -> None:
        self._calls.reset()

    # -- the pipeline (handler threads) ----------------------------------------------
    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes,
               respond: Responder) -> None:
        split = urlsplit(target)
        path = unquote(split.path, errors="replace")
        if not path.startswith(self.api_prefix + "/"):
            respond(self._finish(self.no_route(path).reply()))
            return
        path = path[len(self.api_prefix):]
        record = self._calls.record(method, path, self.endpoint_key(method, path))
        plan = self.faults.plan(method, path, record.endpoint)
        query = parse_qs(split.query, keep_blank_values=True)
        authorization = headers.get("authorization")

        for rule in plan.delays:
            rule.wait(self._stopping, rule.seconds)
        if plan.respond is not None:
            rule = plan.respond
            rule.wait(self._stopping, rule.seconds)
            self._calls.finish(record, rule.status, "status")
            respond(self._finish(self.fault_reply(rule, bearer_token(authorization))))
            return
        if plan.drop_before is not None:
            self._drop(plan.drop_before, record)
            return

        reply = self._answer(Request(method, path, query, body, None), authorization)
        for rule in plan.holds:
            rule.wait(self._stopping, rule.seconds)
        if plan.drop_after is not None:
            self._drop(plan.drop_after, record)
            return
        if plan.replace_after is not None:
            reply = self.fault_reply(plan.replace_after, bearer_token(authorization))
        # Recorded before answering: a client that saw the answer must find it logged.
        self._calls.finish(record, reply.status, _fault_name(plan))
        respond(self._finish(reply))

    def _answer(self, request: Request, authorization: str | None) -> Reply:
        limit: RateLimitState | None = None
        try:
            if self.limit_before_auth:
                limit = self.rate_limiter.take(bearer_token(authorization) or "")
                token = self.authenticate(authorization) if limit.allowed else None
            else:
                token = self.authenticate(authorization)
                limit = self.rate_limiter.take(token)
            reply = (self._route(replace(request, token=token)) if limit.allowed
                     else self.rate_limited(limit))
        except ApiFailure as failure:
            reply = failure.reply()
        if limit is not None:
            reply.headers = {**self.rate_headers(limit), **reply.headers}
        return reply

    def _route(self, request: Request) -> Reply:
        try:
            match = self.routes.match(request.method, request.path)
        except NoRoute:
            raise self.no_route(request.path) from None
        except MethodNotAllowed as exc:
            reply = self.method_not_allowed(request.method).reply()
            reply.headers["Allow"] = ", ".join(exc.allowed)
            return reply
        try:
            return self.call(match, request)
        except ApiFailure:
            raise
        except Exception:
            log.exception("%s: internal error on %s %s", self.name, request.method,
                          request.path)
            raise self.internal_error() from None

    def _finish(self, reply: Reply) -> Reply:
        reply.headers = {**self.extra_headers(), **reply.headers}
        return reply

    def _drop(self, rule: FaultRule, record: RequestRecord) -> None:
        if rule.kind == "hang":
            rule.wait(self._stopping, rule.seconds)
        self._calls.finish(record, None, rule.kind)


def _fault_name(plan: FaultPlan) -> str | None:
    if plan.replace_after is not None:
        return "status"
    return "hold" if plan.holds else None
