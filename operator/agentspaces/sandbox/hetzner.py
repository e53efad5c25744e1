"""Hetzner Cloud API emulator: a local HTTP server that speaks enough of the real v1 API
for the `hcloud` library (servers, actions, server types, locations, data centers,
images and snapshots, pricing, SSH keys, firewalls), with the real error bodies,
pagination, per-token rate limiting, runtime fault injection, per-endpoint call counters
and hooks for simulated VMs.

    with HetznerEmulator(token="t", boot_seconds=0.2) as emu:
        client = hcloud.Client(token="t", api_endpoint=emu.url)

The request pipeline, route table, limiter, faults and counters are the shared emulator
base (agentspaces.sandbox.emulator). Hetzner's order: the rate limit applies to every
request, even unauthenticated ones, like the real API; then the bearer token.
Run standalone: python -m agentspaces.sandbox.hetzner --port 8081 --token X
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

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
from .hetzner_api import HetznerApi, endpoint_key
from .hetzner_errors import STATUS_CODES, ApiError, error_body
from .hetzner_state import CloudState
from .hetzner_workers import Callback, HookDispatcher, Scheduler

log = logging.getLogger(__name__)
API_PREFIX = "/v1"


class HetznerEmulator(EmulatorBase):
    api_prefix = API_PREFIX
    name = "hetzner-emulator"
    keep_alive = False  # one request per connection: easy to drop or hang
    limit_before_auth = True

    def __init__(self, token: str, *, host: str = "127.0.0.1", port: int = 0,
                 boot_seconds: float = 1.0, delete_seconds: float = 0.5,
                 action_seconds: float = 0.3, linger_deletes: bool = False,
                 ip_allocator: Callable[[], str] | None = None,
                 rate_limit: int = 3600, rate_refill_per_second: float = 1.0,
                 rate_clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self._scheduler = Scheduler()
        self._hooks = HookDispatcher()
        self.state = CloudState(self._scheduler, self._hooks, ip_allocator)
        self.state.boot_seconds = boot_seconds
        self.state.delete_seconds = delete_seconds
        self.state.action_seconds = action_seconds
        self.state.linger_deletes = linger_deletes
        self.api = self._wired(HetznerApi(self.state))
        # A token belongs to one project, as at Hetzner: the first token's is `state`;
        # add_project makes more, each seeing only its own servers, firewalls and keys.
        self._projects: dict[str, HetznerApi] = {token: self.api}
        super().__init__(host=host, port=port, routes=self.api.routes, faults=FaultInjector(),
                         limiter=RateLimiter(rate_limit, rate_limit / rate_refill_per_second,
                                             continuous=True, clock=rate_clock))

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> HetznerEmulator:
        if self._http.started:
            raise RuntimeError("emulator already started")
        self.start_http()
        self._scheduler.start()
        self._hooks.start()
        return self

    def stop(self) -> None:
        """Stop serving; held or hung requests are released, pending hooks dropped."""
        self.stop_http()
        self._scheduler.stop()
        self._hooks.stop()

    def __enter__(self) -> HetznerEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- projects --------------------------------------------------------------------
    def add_project(self, token: str) -> None:
        """A further project whose API token is `token` (another tenant's account). It
        takes the timing knobs as they are now and the same address allocator."""
        if token in self._projects:
            raise ValueError("that token already has a project")
        state = CloudState(self._scheduler, self._hooks, lambda: self.state.ip_allocator(),
                           id_block=len(self._projects))
        for knob in ("boot_seconds", "delete_seconds", "action_seconds", "linger_deletes",
                     "snapshot_seconds", "snapshot_size_gb"):
            setattr(state, knob, getattr(self.state, knob))
        self._projects[token] = self._wired(HetznerApi(state))

    def _wired(self, api: HetznerApi) -> HetznerApi:
        """`api`, its image events going to the hooks."""
        api.images.emit = self._hooks.emit
        return api

    def project_servers(self, token: str) -> dict[int, dict[str, Any]]:
        """`servers` of the project `token` belongs to."""
        return self._projects[token].state.snapshots()

    def project_images(self, token: str) -> dict[int, dict[str, Any]]:
        """`images` of the project `token` belongs to."""
        return self._projects[token].images.own()

    def guest_shutdown(self, server_id: int) -> bool:
        """A VM backend's report that the guest powered itself off, in whichever
        project the server is. False when no running server has that id."""
        return any(api.state.guest_shutdown(server_id) for api in self._projects.values())

    # -- simulation knobs ------------------------------------------------------------
    @property
    def boot_seconds(self) -> float:
        return self.state.boot_seconds

    @boot_seconds.setter
    def boot_seconds(self, value: float) -> None:
        self.state.boot_seconds = value

    @property
    def delete_seconds(self) -> float:
        return self.state.delete_seconds

    @delete_seconds.setter
    def delete_seconds(self, value: float) -> None:
        self.state.delete_seconds = value

    @property
    def linger_deletes(self) -> bool:
        """True: a deleted server stays in status deleting for `delete_seconds`."""
        return self.state.linger_deletes

    @linger_deletes.setter
    def linger_deletes(self, value: bool) -> None:
        self.state.linger_deletes = value

    @property
    def action_seconds(self) -> float:
        return self.state.action_seconds

    @action_seconds.setter
    def action_seconds(self, value: float) -> None:
        self.state.action_seconds = value

    @property
    def snapshot_seconds(self) -> float:
        """How long a create_image action runs (the image is creating meanwhile);
        `action_seconds` until set."""
        seconds = self.state.snapshot_seconds
        return self.state.action_seconds if seconds is None else seconds

    @snapshot_seconds.setter
    def snapshot_seconds(self, value: float) -> None:
        self.state.snapshot_seconds = value

    @property
    def snapshot_size_gb(self) -> float:
        """The image_size (GB) a finished snapshot reports."""
        return self.state.snapshot_size_gb

    @snapshot_size_gb.setter
    def snapshot_size_gb(self, value: float) -> None:
        self.state.snapshot_size_gb = value

    @property
    def ip_allocator(self) -> Callable[[], str]:
        return self.state.ip_allocator

    @ip_allocator.setter
    def ip_allocator(self, allocator: Callable[[], str]) -> None:
        self.state.ip_allocator = allocator

    def set_rate_limit(self, limit: int, refill_per_second: float = 1.0) -> None:
        """New bucket size and refill rate; every token's bucket starts full."""
        self.rate_limiter.configure(limit, limit / refill_per_second)

    # -- observation (calls, requests, reset_calls: see EmulatorBase) ----------------
    @property
    def servers(self) -> dict[int, dict[str, Any]]:
        """Snapshot: server id -> API representation plus "user_data" and
        "ssh_key_ids". Deleted servers are gone from it."""
        return self.state.snapshots()

    @property
    def images(self) -> dict[int, dict[str, Any]]:
        """Snapshot: image id -> API representation of the project's own images
        (snapshots and backups; not the system catalogue)."""
        return self.api.images.own()

    def server(self, server_id: int) -> dict[str, Any] | None:
        return self.servers.get(server_id)

    @property
    def firewalls(self) -> dict[int, dict[str, Any]]:
        """Snapshot: firewall id -> API representation (with `applied_to`)."""
        return {f["id"]: f for f in self.api.firewalls.all()}

    def firewall_servers(self, firewall_id: int) -> set[int]:
        """The servers a firewall applies to, directly or by label selector. The
        simulated VMs are local processes, so nothing is actually filtered."""
        return self.api.firewalls.servers_of(firewall_id)

    def user_data(self, server_id: int) -> str | None:
        server = self.server(server_id)
        return None if server is None else server["user_data"]

    # -- hooks -----------------------------------------------------------------------
    def on_server_created(self, callback: Callback) -> Callback:
        """Call `callback(server_snapshot)` after each server is created (status
        initializing; the snapshot includes user_data). Usable as a decorator."""
        return self._hooks.register("created", callback)

    def on_server_deleted(self, callback: Callback) -> Callback:
        """Call `callback(server_snapshot)` when a deleted server disappears."""
        return self._hooks.register("deleted", callback)

    def on_server_status_changed(self, callback: Callback) -> Callback:
        """Call `callback(server_snapshot)` on every status change."""
        return self._hooks.register("status", callback)

    def on_image_created(self, callback: Callback) -> Callback:
        """Call `callback(image)` when a create_image call makes an image (still
        creating; `created_from` names the server), in any project."""
        return self._hooks.register("image_created", callback)

    def on_image_deleted(self, callback: Callback) -> Callback:
        """Call `callback(image)` when an image is deleted (a backup also with its
        server)."""
        return self._hooks.register("image_deleted", callback)

    def remove_hook(self, callback: Callback) -> None:
        for event in HookDispatcher.EVENTS:
            self._hooks.unregister(event, callback)

    def wait_for_hooks(self, timeout: float = 5.0) -> bool:
        """Block until every hook emitted so far has run; False on timeout."""
        return self._hooks.wait_idle(timeout)

    # -- Hetzner's side of the pipeline ----------------------------------------------
    def endpoint_key(self, method: str, path: str) -> str:
        return endpoint_key(method, path)

    def authenticate(self, authorization: str | None) -> str:
        token = known_token(bearer_token(authorization), tuple(self._projects))
        if token is None:
            raise ApiError(401, "unauthorized", "unable to authenticate")
        return token

    def rate_headers(self, state: RateLimitState) -> dict[str, str]:
        return {"RateLimit-Limit": str(state.limit),
                "RateLimit-Remaining": str(state.remaining),
                "RateLimit-Reset": str(state.reset_unix)}

    def rate_limited(self, state: RateLimitState) -> Reply:
        return Reply(429, error_body("rate_limit_exceeded",
                                     f"limit of {state.limit} requests per hour reached"))

    def fault_reply(self, rule: FaultRule, token: str | None) -> Reply:
        status = rule.status or 500
        headers = self.rate_headers(self.rate_limiter.peek(token or ""))
        if not rule.json_body:  # a gateway's non-JSON error page
            return Reply(status, rule.message or "upstream error", headers, "text/plain")
        code = rule.code or STATUS_CODES.get(status, "server_error")
        return Reply(status, error_body(code, rule.message or f"injected fault {status}"),
                     headers)

    def no_route(self, path: str) -> ApiError:
        return ApiError(404, "not_found", "not found")

    def method_not_allowed(self, method: str) -> ApiError:
        return ApiError(405, "method_not_allowed",
                        f"the request method {method} is not allowed for this path")

    def internal_error(self) -> ApiError:
        return ApiError(500, "server_error", "internal error in the emulator")

    def call(self, match: Match, request: Request) -> Reply:
        api = self._projects.get(request.token or "", self.api)
        if api is not self.api:  # the same route, bound to that project's handlers
            match = api.routes.match(request.method, request.path)
        status, payload = api.call(match, request.method, request.query, request.body)
        return Reply(status, payload)

    def extra_headers(self) -> dict[str, str]:
        return {"X-Correlation-Id": secrets.token_hex(8)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Hetzner Cloud API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    parser.add_argument("--boot-seconds", type=float, default=1.0)
    parser.add_argument("--rate-limit", type=int, default=3600)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    emulator = HetznerEmulator(args.token, host=args.host, port=args.port,
                               boot_seconds=args.boot_seconds, rate_limit=args.rate_limit)
    with emulator:
        print(f"Hetzner Cloud API emulator at {emulator.url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
