"""`agentspaces dashboard`: serve the web app."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from agentspaces.dashboard import assets, security
from agentspaces.dashboard.app import MODES, Settings, create_app
from agentspaces.dashboard.kubeapi import Cluster

DEFAULT_PORT = 8090


def add_parser(sub: Any) -> None:
    p = sub.add_parser("dashboard", help="serve the web dashboard (docs/dashboard.md)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; kubeconfig mode only "
                        "ever on loopback)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--auth", choices=MODES, default="kubeconfig",
                   help="kubeconfig: act with your kubeconfig (local); token: users sign "
                        "in with a Kubernetes bearer token; proxy: impersonate the user an "
                        "authenticating proxy names in X-Forwarded-User/-Groups")
    p.add_argument("--kubeconfig", help="kubeconfig (default: KUBECONFIG or ~/.kube/config); "
                                        "in token mode only its server and CA are used")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--in-cluster", action="store_true",
                   help="find the apiserver through the pod's ServiceAccount")
    p.add_argument("--public-url", help="the address users open, e.g. "
                   "https://dashboard.example.com, when a proxy terminates TLS in front: "
                   "POSTs must come from its origin, and cookies are Secure")
    p.add_argument("-n", "--namespace", help="namespace shown first (default: the "
                                             "context's, else default)")
    p.set_defaults(func=run)


def _context_namespace(path: str | None, context: str | None) -> str | None:
    from kubernetes import config

    try:
        contexts, active = config.list_kube_config_contexts(config_file=path)
    except (config.ConfigException, OSError):
        return None
    chosen = next((c for c in contexts if c["name"] == context), active) if context else active
    return ((chosen or {}).get("context") or {}).get("namespace")


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiohttp's access log names paths, never bodies; the client libraries stay quiet.
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    loopback = security.is_loopback(args.host)
    if args.auth == "kubeconfig" and not loopback:
        print("kubeconfig mode acts with your own credentials: it listens on loopback only "
              "(use --auth token or proxy to serve others)", file=sys.stderr)
        return 2
    try:
        static = assets.check(assets.assets_dir())
    except assets.AssetsMissing as err:
        print(err, file=sys.stderr)
        return 2
    cluster = Cluster.in_cluster() if args.in_cluster else Cluster.from_kubeconfig(
        args.kubeconfig, args.context)
    if args.auth == "token":
        cluster = cluster.without_own_credentials()
    namespace = args.namespace or (None if args.in_cluster else _context_namespace(
        args.kubeconfig, args.context)) or "default"
    origin = args.public_url.rstrip("/") if args.public_url else None
    settings = Settings(mode=args.auth, assets=static,
                        secure_cookies=not loopback or bool(origin and origin.startswith(
                            "https://")), default_namespace=namespace, origin=origin)
    app = create_app(settings, cluster)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"dashboard: http://{host}:{args.port}/ ({args.auth} mode)", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None,
                access_log_format='%a "%r" %s %b %Tfs')
    return 0
