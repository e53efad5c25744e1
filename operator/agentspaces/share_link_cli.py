"""`agentspaces share-link`: make a link that opens one port of a workspace without its
password, or revoke every link, acting as the user (their kubeconfig).

`create` reads the Workspace (the port must have visibility link; status.urls says
where it answers) and its `<name>-access` Secret's `shareLinkKey`, signs a link here and
prints it: nothing is written, and the link works until it expires or the key is
rotated. `revoke` sets `agentspaces.dev/revoke-share-links`; the operator rotates the key.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from agentspaces.api.model import GROUP, VERSION
from agentspaces.api.share_links import (
    KEY_FIELD,
    MAX_LIFETIME,
    REVOKE_ANNOTATION,
    mint_link,
    parse_lifetime,
)

ACCESS_SUFFIX = "-access"  # reconcile.owned_secrets names it so


class CliError(Exception):
    """What went wrong, said to the user; the command exits 1."""


class KubeError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Cluster(Protocol):
    """The three calls the command makes, as the user."""

    def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any]: ...

    def read_secret(self, namespace: str, name: str) -> Mapping[str, str]: ...

    def annotate_workspace(self, namespace: str, name: str,
                           annotations: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class Link:
    url: str
    expires: int
    may_wake: bool


def _explain(err: KubeError, what: str, verb: str, namespace: str) -> CliError:
    if err.status == 404:
        return CliError(f"{what} not found in namespace {namespace}")
    if err.status == 403:
        return CliError(f"you may not {verb} {what} in namespace {namespace} (check with "
                        f"`kubectl auth can-i {verb} {what.split()[0].lower()}s "
                        f"-n {namespace}`)")
    if err.status == 401:
        return CliError("the cluster refused your credentials (kubeconfig)")
    return CliError(f"reading {what} failed: {err}")


def create(cluster: Cluster, namespace: str, name: str, port: int, lifetime_text: str,
           may_wake: bool, now: float) -> Link:
    try:
        lifetime = parse_lifetime(lifetime_text)
    except ValueError as err:
        raise CliError(f"--for: {err}") from None
    try:
        ws = cluster.get_workspace(namespace, name)
    except KubeError as err:
        raise _explain(err, f"Workspace {name}", "get", namespace) from None
    ports = {p.get("port"): p.get("visibility", "private")
             for p in ((ws.get("spec") or {}).get("access") or {}).get("ports") or []}
    visibility = ports.get(port, "private")
    if visibility != "link":
        raise CliError(
            f"port {port} of {name} is {visibility}; share links open only ports with "
            f"visibility link (spec.access.ports: kubectl edit workspace {name} "
            f"-n {namespace})")
    urls = (ws.get("status") or {}).get("urls") or {}
    host = urlsplit(urls.get("workspace") or "").hostname
    if not host or not urls.get("ports"):
        raise CliError(f"{name} has no URL yet (status.urls): wait until the operator "
                       "has reconciled it")
    secret = f"{name}{ACCESS_SUFFIX}"
    try:
        data = cluster.read_secret(namespace, secret)
    except KubeError as err:
        raise _explain(err, f"Secret {secret}", "get", namespace) from None
    key = data.get(KEY_FIELD)
    if not key:
        raise CliError(f"Secret {secret} has no {KEY_FIELD} yet: the operator adds it when "
                       "it next reconciles the workspace")
    expires = int(now + lifetime.total_seconds())
    try:
        url = mint_link(key, host, urls["ports"], port, expires, may_wake=may_wake)
    except ValueError as err:
        raise CliError(f"Secret {secret}: {err}") from None
    return Link(url, expires, may_wake)


def revoke(cluster: Cluster, namespace: str, name: str, now: float) -> str:
    value = str(int(now))
    try:
        cluster.annotate_workspace(namespace, name, {REVOKE_ANNOTATION: value})
    except KubeError as err:
        raise _explain(err, f"Workspace {name}", "patch", namespace) from None
    return value


class KubeconfigCluster:
    """`Cluster` over the official client and the user's kubeconfig."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client, config

        try:
            api = config.new_client_from_config(config_file=kubeconfig, context=context)
        except (config.ConfigException, OSError) as err:
            raise CliError(f"no usable kubeconfig: {err}") from None
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    @staticmethod
    def _call(fn: Any, *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, _request_timeout=30)
        except ApiException as err:
            raise KubeError(err.status or 0, err.reason or "error") from None
        except HTTPError as err:
            raise CliError(f"the cluster is unreachable: {err}") from None

    def get_workspace(self, namespace: str, name: str) -> Mapping[str, Any]:
        doc: Mapping[str, Any] = self._call(self._custom.get_namespaced_custom_object, GROUP,
                                            VERSION, namespace, "workspaces", name)
        return doc

    def read_secret(self, namespace: str, name: str) -> Mapping[str, str]:
        secret = self._call(self._core.read_namespaced_secret, name, namespace)
        out: dict[str, str] = {}
        for key, value in (secret.data or {}).items():
            try:
                out[key] = base64.b64decode(value).decode()
            except (ValueError, UnicodeDecodeError):
                continue
        return out

    def annotate_workspace(self, namespace: str, name: str,
                           annotations: Mapping[str, str]) -> None:
        self._call(self._custom.patch_namespaced_custom_object, GROUP, VERSION, namespace,
                   "workspaces", name, {"metadata": {"annotations": dict(annotations)}})


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return str(args.namespace)
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=args.kubeconfig)
    except (config.ConfigException, OSError) as err:
        raise CliError(f"no usable kubeconfig: {err}") from None
    if args.context:
        contexts, _ = config.list_kube_config_contexts(config_file=args.kubeconfig)
        active = next((c for c in contexts if c.get("name") == args.context), active)
    return str((active.get("context") or {}).get("namespace") or "default")


def _run(args: argparse.Namespace) -> int:
    try:
        namespace = _namespace(args)
        cluster = KubeconfigCluster(args.kubeconfig, args.context)
        if args.action == "create":
            link = create(cluster, namespace, args.workspace, args.port, args.lifetime,
                          args.may_wake, time.time())
            until = datetime.fromtimestamp(link.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
            print(link.url)
            print(f"valid until {until}; "
                  f"{'may wake the workspace' if link.may_wake else 'cannot wake it'}; "
                  f"revoke every link: agentspaces share-link revoke {args.workspace} "
                  f"-n {namespace}", file=sys.stderr)
        else:
            value = revoke(cluster, namespace, args.workspace, time.time())
            print(f"asked the operator to rotate {args.workspace}'s share-link key "
                  f"({REVOKE_ANNOTATION}={value}); every link stops working once it has "
                  "(event ShareLinksRevoked)", file=sys.stderr)
    except CliError as err:
        print(f"agentspaces share-link: {err}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """`agentspaces share-link create|revoke`."""
    top = sub.add_parser("share-link", help="make a share link for a port, or revoke all")
    actions = top.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("workspace", help="the Workspace's name")
    common.add_argument("-n", "--namespace", help="default: the kubeconfig context's")
    common.add_argument("--kubeconfig", help="default: $KUBECONFIG or ~/.kube/config")
    common.add_argument("--context", help="default: the current context")
    create_cmd = actions.add_parser(
        "create", parents=[common], help="print a link that opens one port (visibility "
        "link) without the password")
    create_cmd.add_argument("--port", type=int, required=True)
    create_cmd.add_argument("--for", dest="lifetime", default="24h",
                            help="how long it works, e.g. 90m, 24h, 7d (default 24h, at "
                            f"most {MAX_LIFETIME.days}d)")
    create_cmd.add_argument("--may-wake", action="store_true",
                            help="its holder may wake the stopped workspace (through the "
                            "wake gateway)")
    actions.add_parser("revoke", parents=[common],
                       help="revoke every share link of the workspace (a new key)")
    top.set_defaults(func=_run)
