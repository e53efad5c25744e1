"""A local emulator of the Cloudflare v4 DNS API, for the sandbox and the tests.

It follows the public API where the operator depends on it: the response envelope
(`success`/`errors`/`messages`/`result`, `result_info` on lists), zone lookup by name,
record list filters (`name`, `name.exact`, `type`, `content`, `comment.*`, `match`),
page/per_page pagination, the error codes clients see (81058 identical record,
81053/81054 CNAME clashes, 81044 unknown record, 9005/9006 bad addresses, 9109 bad
token, 971 rate limited) and the per-token rate limit with `Retry-After` and
`Ratelimit` headers. Like the real API, a record name that does not end in the zone
name is taken as relative to it, and proxied records report TTL 1 (automatic).

Where the public docs give no code (comment too long, bad per_page, a list filter the
emulator does not implement) the emulator answers 400 with code 1004 and a descriptive
`error_chain`; unknown filters are refused rather than ignored.

Tests drive it through real HTTP, inject faults (status codes, slow responses, lost
responses after the change was applied), read per-endpoint call counters and seed
records that belong to someone else directly, without HTTP. The pipeline, route table,
limiter, faults and counters are the shared emulator base (agentspaces.sandbox.emulator).

Standalone: `python -m agentspaces.sandbox.cloudflare --zone example.com --token T`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .cloudflare_api import CloudflareApi
from .cloudflare_errors import ApiError, Json, failed, no_method, no_route
from .cloudflare_records import RecordRules
from .cloudflare_zones import ZoneStore
from .emulator import (
    EmulatorBase,
    FaultInjector,
    FaultRule,
    Match,
    RateLimiter,
    RateLimitState,
    Reply,
    Request,
)
from .emulator.auth import bearer_token, known_token

API_PREFIX = "/client/v4"
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_THROTTLED = "Please wait and consider throttling your request speed"


def endpoint_key(method: str, path: str) -> str:
    """Counter key for a request: ids replaced by {id}, e.g. "GET /zones/{id}/dns_records"."""
    parts = [p for p in path.split("/") if p]
    keyed = []
    for i, part in enumerate(parts):
        keyed.append("{id}" if i > 0 and parts[i - 1] in ("zones", "dns_records") else part)
    return f"{method} /" + "/".join(keyed)


class CloudflareEmulator(EmulatorBase):
    """Cloudflare DNS API on 127.0.0.1: `start()`/`stop()` or use as a context manager.

    `tokens` maps each valid API token to the zone names it may use (None = all zones).
    """

    api_prefix = API_PREFIX
    name = "cloudflare-emulator"
    keep_alive = True
    limit_before_auth = False

    def __init__(self, zones: tuple[str, ...] = ("example.com",),
                 tokens: dict[str, set[str] | None] | None = None, *,
                 host: str = "127.0.0.1", port: int = 0,
                 rate_limit: int = 1200, rate_period: float = 300.0,
                 max_per_page: int = 5_000_000, max_comment: int = 100,
                 record_quota: int = 200, min_ttl: int = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tokens: dict[str, set[str] | None] = dict(tokens or {"test-token": None})
        self._store = ZoneStore(RecordRules(max_comment=max_comment,
                                            record_quota=record_quota, min_ttl=min_ttl))
        self._api = CloudflareApi(self._store, self.tokens, max_per_page)
        super().__init__(host=host, port=port, routes=self._api.routes,
                         faults=FaultInjector(clock),
                         limiter=RateLimiter(rate_limit, rate_period, continuous=False,
                                             clock=clock))
        for name in zones:
            self.add_zone(name)

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> CloudflareEmulator:
        if not self._http.started:
            self.start_http()
        return self

    def stop(self) -> None:
        self.stop_http()

    def __enter__(self) -> CloudflareEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def rate_limit(self) -> int:
        return self.rate_limiter.limit

    @rate_limit.setter
    def rate_limit(self, limit: int) -> None:
        """A new budget per window; every token's window starts afresh."""
        self.rate_limiter.configure(limit, self.rate_limiter.period)

    # --- direct state access (no HTTP, not counted) --------------------------------------
    def add_zone(self, name: str) -> str:
        with self._store.lock:
            return self._store.add_zone(name)

    def zone_id(self, name: str) -> str:
        with self._store.lock:
            return self._store.find(name).id

    def seed_record(self, zone: str, type: str, name: str, content: str, *, ttl: int = 1,
                    proxied: bool = False, comment: str | None = None) -> Json:
        """Put a record in place as if someone else made it (skips duplicate checks)."""
        with self._store.lock:
            return self._store.seed(self._store.find(zone), type, name, content, ttl,
                                    proxied, comment)

    def records(self, zone: str | None = None) -> list[Json]:
        """Every record (of one zone, by name or id), in creation order."""
        with self._store.lock:
            zones = [self._store.find(zone)] if zone else list(self._store.zones.values())
            return [copy.deepcopy(r) for z in zones for r in z.records.values()]

    # --- faults and counters ---------------------------------------------------------------
    def inject(self, status: int | None = 503, *, times: int | None = 1,
               duration: float | None = None, delay: float = 0.0,
               endpoint: str | None = None, retry_after: int = 1,
               after_apply: bool = False) -> FaultRule:
        """A fault on requests to `endpoint` (a counter key such as
        "POST /zones/{id}/dns_records", a bare method such as "POST", or None for all),
        for `times` requests or, with times None, for `duration` seconds. The answer
        waits `delay` seconds first; with `status` None the request is then served
        normally (a slow response). With `after_apply` the request is carried out and
        its answer replaced by the fault, like a reply lost on the way."""
        if times is None and duration is None:
            raise ValueError("a fault needs times or duration")
        where: dict[str, Any] = ({"method": endpoint} if endpoint in HTTP_METHODS
                                 else {"endpoint": endpoint})
        count = times
        if status is None:
            return self.faults.add_delay(delay, count=count, duration=duration, **where)
        return self.faults.add(status, count=count, duration=duration, delay=delay,
                               after_apply=after_apply, retry_after=retry_after, **where)

    def clear_faults(self) -> None:
        self.faults.clear()

    @property
    def writes(self) -> int:
        return sum(n for key, n in self.calls.items() if key.split(" ")[0] in WRITE_METHODS)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def log(self) -> list[tuple[str, str, int | None]]:
        """(method, path, status) of every request, in order."""
        return [(r.method, API_PREFIX + r.path, r.status) for r in self.requests]

    def reset_counts(self) -> None:
        self.reset_calls()

    def reset_rate_limit(self) -> None:
        self.rate_limiter.reset()

    # --- Cloudflare's side of the pipeline ------------------------------------------------
    def endpoint_key(self, method: str, path: str) -> str:
        return endpoint_key(method, path)

    def authenticate(self, authorization: str | None) -> str:
        if authorization is None:
            raise ApiError(400, 9106, "Missing X-Auth-Key, X-Auth-Email or Authorization headers")
        token = bearer_token(authorization)
        if token is None:
            raise ApiError(400, 6003, "Invalid request headers",
                           [(6111, "Invalid format for Authorization header")])
        known = known_token(token, self.tokens)
        if known is None:
            raise ApiError(403, 9109, "Invalid access token")
        return known

    def rate_headers(self, state: RateLimitState) -> dict[str, str]:
        reset = max(1, math.ceil(state.reset_after))
        return {"Ratelimit": f'"default";r={state.remaining};t={reset}',
                "Ratelimit-Policy": f'"default";q={state.limit};w={int(state.period)}'}

    def rate_limited(self, state: RateLimitState) -> Reply:
        reset = max(1, math.ceil(state.reset_after))
        return ApiError(429, 971, _THROTTLED, headers={"Retry-After": str(reset)}).reply()

    def fault_reply(self, rule: FaultRule, token: str | None) -> Reply:
        status = rule.status or 503
        if status == 502 or not rule.json_body:
            # The edge answers 502 with an HTML page, not the JSON envelope.
            return Reply(status, "<html><body><h1>502 Bad Gateway</h1></body></html>",
                         content_type="text/html")
        if status == 429:
            return Reply(status, failed([{"code": 971, "message": _THROTTLED}]),
                         {"Retry-After": str(rule.retry_after or 1)})
        code = 10000 if status < 500 else 1000
        message = rule.message or ("Injected fault" if status < 500
                                   else "Internal server error")
        return Reply(status, failed([{"code": code, "message": message}]))

    def no_route(self, path: str) -> ApiError:
        return no_route()

    def method_not_allowed(self, method: str) -> ApiError:
        return no_method(method)

    def internal_error(self) -> ApiError:
        return ApiError(500, 1000, "Internal server error")

    def call(self, match: Match, request: Request) -> Reply:
        return self._api.call(match, request)


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[CloudflareEmulator]:
    """A started emulator that is always stopped afterwards."""
    emulator = CloudflareEmulator(**kwargs).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Cloudflare DNS API emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--zone", action="append", default=None,
                        help="zone to serve (repeatable; default example.com)")
    parser.add_argument("--token", default="sandbox-token", help="accepted API token")
    parser.add_argument("--rate-limit", type=int, default=1200)
    args = parser.parse_args(argv)
    emulator = CloudflareEmulator(tuple(args.zone or ["example.com"]), {args.token: None},
                                  host=args.host, port=args.port, rate_limit=args.rate_limit)
    with emulator:
        print(f"Cloudflare DNS emulator at {emulator.url}", flush=True)
        for zone in args.zone or ["example.com"]:
            print(f"  zone {zone}: {emulator.zone_id(zone)}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
