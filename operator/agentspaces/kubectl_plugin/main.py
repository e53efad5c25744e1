"""`kubectl ws COMMAND`: the arguments, and what each command prints.

kubectl hands a plugin every argument after its name unchanged, so `-n`, `--context`
and `--kubeconfig` are accepted before or after the command, as kubectl users type them.
Errors go to stderr and exit 1 (2 for a bad command line, as argparse does).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import webbrowser
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from agentspaces import share_link_cli
from agentspaces.api.share_links import MAX_LIFETIME, REVOKE_ANNOTATION
from agentspaces.kubectl_plugin import commands
from agentspaces.share_link_cli import CliError

PROG = "kubectl ws"
Exec = Callable[[str, list[str]], object]


def _globals(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given before the command is not reset by the command's parser.
    parser.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                        help="default: the kubeconfig context's")
    parser.add_argument("--context", default=argparse.SUPPRESS,
                        help="default: the current context")
    parser.add_argument("--kubeconfig", default=argparse.SUPPRESS,
                        help="default: $KUBECONFIG or ~/.kube/config")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _globals(common)
    named = argparse.ArgumentParser(add_help=False, parents=[common])
    named.add_argument("name", help="the Workspace's name")
    port = argparse.ArgumentParser(add_help=False)
    port.add_argument("--port", type=int, help="a port's URL instead of the IDE's")
    user = argparse.ArgumentParser(add_help=False)
    user.add_argument("-l", "--user", help=f"login user (default {commands.DEFAULT_SSH_USER})")

    parser = argparse.ArgumentParser(prog=PROG, parents=[common], description=(
        "Workspaces (agentspaces.dev) from kubectl: list, open, stop, start, wake, "
        "logs, ssh and share links, with your kubeconfig and its RBAC."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", parents=[common], help="the workspaces, like "
                             "`kubectl get ws`")
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    sub.add_parser("url", parents=[named, port], help="print the workspace's URL")
    sub.add_parser("password", parents=[named], help="print the workspace's password")
    opener = sub.add_parser("open", parents=[named, port], help="print the URL and open "
                            "it in a browser")
    opener.add_argument("--print", action="store_true", help="print it only")
    sub.add_parser("stop", parents=[named], help="stop it (spec.running=false)")
    sub.add_parser("start", parents=[named], help="start it (spec.running=true)")
    sub.add_parser("wake", parents=[named], help="wake it after an idle or lifetime stop")
    logs = sub.add_parser("logs", parents=[named, user], help="its status, conditions and "
                          "events; --vm: the VM's bootstrap and agent logs over SSH")
    logs.add_argument("--vm", action="store_true", help="read the VM's logs over SSH")
    logs.add_argument("--tail", type=int, default=100, help="lines of each VM log (--vm)")
    sub.add_parser("ssh", parents=[named, user], help="ssh to its VM (needs spec.sshKeys); "
                   "arguments after -- go to ssh")

    share = sub.add_parser("share-link", help="make a share link for a port, or revoke all")
    actions = share.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", parents=[named], help="print a link that opens "
                                "one port (visibility link) without the password")
    create.add_argument("--port", type=int, required=True)
    create.add_argument("--for", dest="lifetime", default="24h", help="how long it works, "
                        f"e.g. 90m, 24h, 7d (default 24h, at most {MAX_LIFETIME.days}d)")
    create.add_argument("--may-wake", action="store_true",
                        help="its holder may wake the stopped workspace")
    actions.add_parser("revoke", parents=[named], help="revoke every share link (a new key)")
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The arguments; for ssh, those after `--` go to ssh untouched (ssh_args)."""
    argv = list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    args.ssh_args = argv[cut + 1:]
    if args.ssh_args and args.command != "ssh":
        parser.error(f"arguments after -- are for ssh only: {' '.join(args.ssh_args)}")
    for option in ("kubeconfig", "context"):
        if not hasattr(args, option):
            setattr(args, option, None)
    return args


def _namespace(args: argparse.Namespace) -> str:
    """-n, else the context's namespace, else default (share_link_cli's rule)."""
    return share_link_cli._namespace(argparse.Namespace(
        namespace=getattr(args, "namespace", None), kubeconfig=args.kubeconfig,
        context=args.context))


def _share_link(cluster: commands.Cluster, args: argparse.Namespace, namespace: str) -> None:
    commands.get(cluster, namespace, args.name)  # a wrong name gets the close ones
    if args.action == "create":
        link = share_link_cli.create(cluster, namespace, args.name, args.port, args.lifetime,
                                     args.may_wake, time.time())
        until = datetime.fromtimestamp(link.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(link.url)
        print(f"valid until {until}; "
              f"{'may wake the workspace' if link.may_wake else 'cannot wake it'}; revoke "
              f"every link: {PROG} share-link revoke {args.name} -n {namespace}",
              file=sys.stderr)
    else:
        value = share_link_cli.revoke(cluster, namespace, args.name, time.time())
        print(f"{args.name}: every share link revoked ({REVOKE_ANNOTATION}={value}); they "
              "stop working once the operator has rotated the key (event ShareLinksRevoked)")


def _exec(argv: list[str], exec_: Exec) -> None:
    try:
        exec_(argv[0], argv)
    except FileNotFoundError:
        raise CliError(f"{argv[0]} not found on PATH") from None


def run(args: argparse.Namespace, cluster: commands.Cluster, namespace: str | None,
        exec_: Exec = os.execvp, open_url: Callable[[str], bool] = webbrowser.open) -> None:
    """One command; `namespace` is None only for `list -A`."""
    if args.command == "list":
        print(commands.list_text(cluster, namespace, commands.now_utc()))
        return
    assert namespace is not None
    name = args.name
    if args.command in ("url", "open"):
        found = commands.url(commands.get(cluster, namespace, name), args.port)
        print(found.url)
        if found.note:
            print(found.note, file=sys.stderr)
        if args.command == "open" and not args.print:
            print(f"sign in with the password from `{PROG} password {name}`", file=sys.stderr)
            if not open_url(found.url):
                print("no browser to open it in; open the URL above yourself",
                      file=sys.stderr)
    elif args.command == "password":
        print(commands.password(cluster, namespace, name))
    elif args.command == "stop":
        print(commands.stop(cluster, namespace, name))
    elif args.command == "start":
        print(commands.start(cluster, namespace, name))
    elif args.command == "wake":
        print(commands.wake(cluster, namespace, name, time.time()))
    elif args.command == "logs":
        ws = commands.get(cluster, namespace, name)
        if args.vm:
            sys.stdout.flush()
            _exec(commands.vm_log_argv(ws, args.user, args.tail), exec_)
        else:
            print(commands.logs_text(cluster, namespace, name))
    elif args.command == "ssh":
        argv = commands.ssh_argv(commands.get(cluster, namespace, name), args.user,
                                 args.ssh_args)
        sys.stdout.flush()
        _exec(argv, exec_)
    elif args.command == "share-link":
        _share_link(cluster, args, namespace)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        from agentspaces.kubectl_plugin.cluster import PluginCluster

        all_namespaces = args.command == "list" and args.all_namespaces
        namespace = None if all_namespaces else _namespace(args)
        run(args, PluginCluster(args.kubeconfig, args.context), namespace)
    except CliError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
