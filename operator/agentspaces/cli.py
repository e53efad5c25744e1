"""The `agentspaces` command."""

from __future__ import annotations

import argparse
import logging
import sys

import yaml


def _cmd_crds(args: argparse.Namespace) -> int:
    from agentspaces.api.crd import all_crds

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: object) -> bool:
            return True

    sys.stdout.write("# Generated from operator/agentspaces/api/model.py and api/status.py (and"
                     " api/crd.py: Kopf's peering) by `agentspaces crds`; do not edit.\n")
    sys.stdout.write(yaml.dump_all(all_crds(), Dumper=NoAliases, sort_keys=False, width=100))
    return 0


class _WaitingIsNotAnError(logging.Filter):
    """Kopf logs every requeue (TemporaryError) as an error; ours mean "waiting"."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from agentspaces import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=args.verbose, debug=args.debug)
    logging.getLogger("kopf.objects").addFilter(_WaitingIsNotAnError())
    # Client libraries log request details (presigned URLs, signatures) at DEBUG; the
    # operator's log must never carry credentials, so they stay at WARNING.
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "httpcore", "httpx",
                  "hcloud", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(kopf.operator(
        # Unless AGENTSPACES_PEERING is set: then the startup handler joins that peering.
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
    ))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentspaces", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument("-n", "--namespace", action="append",
                     help="watch only this namespace (repeatable); default: all")
    run.add_argument("--liveness", help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("-v", "--verbose", action="store_true")
    run.add_argument("--debug", action="store_true")
    run.set_defaults(func=_cmd_run)
    from agentspaces.sandbox.cli import add_parser as add_sandbox

    add_sandbox(sub)
    from agentspaces.dashboard.serve import add_parser as add_dashboard

    add_dashboard(sub)
    from agentspaces.gateway.serve import add_parser as add_gateway

    add_gateway(sub)
    from agentspaces.share_link_cli import add_parser as add_share_link

    add_share_link(sub)
    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.set_defaults(func=_cmd_crds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
