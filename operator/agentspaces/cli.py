"""The `agentspaces` command."""

from __future__ import annotations

import argparse
import sys

import yaml


def _cmd_crds(args: argparse.Namespace) -> int:
    from agentspaces.api.schema import all_crds

    sys.stdout.write(yaml.safe_dump_all(all_crds(), sort_keys=False, width=100))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentspaces", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.set_defaults(func=_cmd_crds)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
