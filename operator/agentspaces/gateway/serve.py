"""`agentspaces gateway`: run the wake gateway beside its Caddy (docs/wake-gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from agentspaces.dashboard.security import is_loopback
from agentspaces.gateway.policy import WakeOn
from agentspaces.gateway.service import GatewaySettings, start_gateway


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gateway", help="run the wake gateway (docs/wake-gateway.md)")
    p.add_argument("--caddy-admin", default="127.0.0.1:2019",
                   help="Caddy's admin API, on loopback (default 127.0.0.1:2019)")
    p.add_argument("--listen", default="127.0.0.1:8099",
                   help="the gateway app, on loopback: only Caddy talks to it")
    p.add_argument("--bind", default="",
                   help="address Caddy listens on for users (default: every interface)")
    p.add_argument("--http-port", type=int, default=80)
    p.add_argument("--https-port", type=int, default=443)
    p.add_argument("--wake-on", choices=[w.value for w in WakeOn], default="navigation",
                   help="navigation: a signed-in browser navigation wakes a stopped "
                        "workspace; never: sign-in and state only")
    p.add_argument("--margin", type=float, default=30.0,
                   help="seconds beyond the class's DNS TTL to keep proxying to a woken "
                        "server (default 30)")
    p.add_argument("--health", help="host:port serving only /healthz (for probes)")
    p.add_argument("--upstream-ca", action="append", default=[],
                   help="a PEM CA file to trust, besides the system's, when proxying to "
                        "tls-mode acme servers (repeatable; tests)")
    p.add_argument("--trusted-proxy", action="append", default=[],
                   help="a CIDR whose X-Forwarded-For names the client, e.g. "
                        "Cloudflare's ranges with proxied records (repeatable)")
    p.add_argument("--kubeconfig", help="kubeconfig (default: KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--in-cluster", action="store_true",
                   help="find the apiserver through the pod's ServiceAccount")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    return GatewaySettings(
        caddy_admin=args.caddy_admin, listen=args.listen, bind=args.bind,
        http_port=args.http_port, https_port=args.https_port, wake_on=WakeOn(args.wake_on),
        margin_seconds=args.margin, health_listen=args.health,
        upstream_ca_files=tuple(args.upstream_ca), trusted_proxies=tuple(args.trusted_proxy))


async def _main(args: argparse.Namespace) -> None:
    gateway = await start_gateway(settings_from(args), kubeconfig=args.kubeconfig,
                                  context=args.context, in_cluster=args.in_cluster)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"gateway: app on http://{args.listen}/, caddy admin at {args.caddy_admin}",
          flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.aclose()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("urllib3", "kubernetes", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name, address in (("--caddy-admin", args.caddy_admin), ("--listen", args.listen)):
        if not is_loopback(address.rpartition(":")[0].strip("[]")):
            print(f"{name} must be a loopback address: nothing but the gateway and its "
                  "Caddy may talk there", file=sys.stderr)
            return 2
    asyncio.run(_main(args))
    return 0
