"""What the Hetzner and Cloudflare emulators share: HTTP serving, the request pipeline,
a route table, bearer-token authentication, one rate limiter, one fault injector and
call counters. Each emulator adds its provider's routes, state and error shapes."""

from .base import ApiFailure, EmulatorBase, Request
from .calls import RequestRecord
from .faults import FaultInjector, FaultRule
from .ratelimit import RateLimiter, RateLimitState
from .routes import Match, RouteTable, ascii_int
from .server import Reply

__all__ = ["ApiFailure", "EmulatorBase", "FaultInjector", "FaultRule", "Match",
           "RateLimitState", "RateLimiter", "Reply", "Request", "RequestRecord", "RouteTable",
           "ascii_int"]
