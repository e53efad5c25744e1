"""An operator stack for integration tests: the cloud emulators, a class pointing at
them with its Secrets, and the real operator process."""

from __future__ import annotations

import base64
import itertools
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import yaml

from agentspaces.controlplane import ControlPlane, free_port, running_control_plane
from agentspaces.sandbox.cloudflare import CloudflareEmulator
from agentspaces.sandbox.hetzner import HetznerEmulator
from tests.conftest import CRDS, Kubectl
from tests.support.operator import OperatorProcess

OPERATOR_NAMESPACE = "agentspaces-system"
ZONE = "example.test"


@dataclass
class Clouds:
    hetzner: HetznerEmulator
    cloudflare: CloudflareEmulator
    hetzner_token: str
    cloudflare_token: str


@dataclass
class S3:
    url: str
    bucket: str
    access_key: str
    secret_key: str

    def storage(self, keep: int = 3) -> dict[str, Any]:
        return {"endpoint": self.url, "bucket": self.bucket, "accessKeyId": self.access_key,
                "secretAccessKey": self.secret_key, "keep": keep}

    def object_keys(self, prefix: str = "") -> list[str]:
        client = boto3.client("s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="auto")
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def running_s3() -> Iterator[S3]:
    """A real S3 endpoint (moto's server) on loopback with one bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3(f"http://127.0.0.1:{port}", "backups", "test-access", "test-secret")
        boto3.client("s3", endpoint_url=s3.url, aws_access_key_id=s3.access_key,
                     aws_secret_access_key=s3.secret_key,
                     region_name="us-east-1").create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()


@contextmanager
def running_clouds(boot_seconds: float = 0.3, dead_end_block: int | None = None
                   ) -> Iterator[Clouds]:
    """The emulators. With `dead_end_block`, servers get addresses 127.0.<block>.10 and
    up, where nothing listens: agent polls fail fast (connection refused)."""
    hetzner_token = "hz-" + uuid.uuid4().hex
    cloudflare_token = "cf-" + uuid.uuid4().hex
    hetzner = HetznerEmulator(hetzner_token, boot_seconds=boot_seconds, delete_seconds=0.2,
                              action_seconds=0.1).start()
    if dead_end_block is not None:
        hetzner.ip_allocator = _allocator(f"127.0.{dead_end_block}.{n}"
                                          for n in itertools.count(10))
    cloudflare = CloudflareEmulator(zones=(ZONE,), tokens={cloudflare_token: None}).start()
    try:
        yield Clouds(hetzner, cloudflare, hetzner_token, cloudflare_token)
    finally:
        hetzner.stop()
        cloudflare.stop()


def _allocator(addresses: Iterator[str]) -> Callable[[], str]:
    lock = threading.Lock()  # the emulator allocates from its request threads

    def allocate() -> str:
        with lock:
            return next(addresses)

    return allocate


def secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}, "type": "Opaque",
            "stringData": data}


def install_class(kubectl: Kubectl, clouds: Clouds, name: str, *,
                  storage: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                  class_key: bytes | None = None) -> None:
    """Secrets in the operator namespace and a WorkspaceClass using the emulators."""
    kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    docs: list[dict[str, Any]] = [
        secret(f"{name}-hetzner", OPERATOR_NAMESPACE, {"token": clouds.hetzner_token}),
        secret(f"{name}-cloudflare", OPERATOR_NAMESPACE, {"token": clouds.cloudflare_token}),
    ]
    spec: dict[str, Any] = {
        "hetzner": {"tokenSecretRef": {"name": f"{name}-hetzner"},
                    "endpoint": clouds.hetzner.url},
        "server": {"type": "cx23", "location": "fsn1", "image": "ubuntu-24.04"},
        "dns": {"zoneName": ZONE, "tokenSecretRef": {"name": f"{name}-cloudflare"},
                "endpoint": clouds.cloudflare.url},
        "agent": {"port": 9443},
    }
    if storage is not None:
        key = class_key or os.urandom(32)
        docs.append(secret(f"{name}-r2", OPERATOR_NAMESPACE, {
            "accessKeyId": storage["accessKeyId"],
            "secretAccessKey": storage["secretAccessKey"]}))
        docs.append(secret(f"{name}-key", OPERATOR_NAMESPACE,
                           {"key": base64.b64encode(key).decode()}))
        spec["storage"] = {"endpoint": storage["endpoint"], "bucket": storage["bucket"],
                           "credentialsSecretRef": {"name": f"{name}-r2"},
                           "keep": storage.get("keep", 3)}
        spec["encryption"] = {"keySecretRef": {"name": f"{name}-key"}}
    spec.update(extra or {})
    docs.append({"apiVersion": "agentspaces.dev/v1alpha1", "kind": "WorkspaceClass",
                 "metadata": {"name": name}, "spec": spec})
    kubectl.apply(yaml.safe_dump_all(docs))


def install_namespaced_class(kubectl: Kubectl, namespace: str, name: str, *,
                             hetzner: tuple[str, str], cloudflare: tuple[str, str],
                             zone: str = ZONE, storage: dict[str, Any] | None = None,
                             class_key: bytes | None = None,
                             extra: dict[str, Any] | None = None) -> None:
    """A tenant's own NamespacedWorkspaceClass in `namespace`, with its Secrets there:
    `hetzner` and `cloudflare` are (endpoint, token)."""
    docs: list[dict[str, Any]] = [
        secret(f"{name}-hetzner", namespace, {"token": hetzner[1]}),
        secret(f"{name}-cloudflare", namespace, {"token": cloudflare[1]})]
    spec: dict[str, Any] = {
        "hetzner": {"tokenSecretRef": {"name": f"{name}-hetzner"}, "endpoint": hetzner[0]},
        "dns": {"zoneName": zone, "tokenSecretRef": {"name": f"{name}-cloudflare"},
                "endpoint": cloudflare[0]},
    }
    if storage is not None:
        docs.append(secret(f"{name}-r2", namespace, {
            "accessKeyId": storage["accessKeyId"],
            "secretAccessKey": storage["secretAccessKey"]}))
        docs.append(secret(f"{name}-key", namespace, {
            "key": base64.b64encode(class_key or os.urandom(32)).decode()}))
        spec["storage"] = {"endpoint": storage["endpoint"], "bucket": storage["bucket"],
                           "credentialsSecretRef": {"name": f"{name}-r2"},
                           "prefix": storage.get("prefix", "agentspaces/"),
                           "keep": storage.get("keep", 3)}
        spec["encryption"] = {"keySecretRef": {"name": f"{name}-key"}}
    spec.update(extra or {})
    docs.append({"apiVersion": "agentspaces.dev/v1alpha1", "kind": "NamespacedWorkspaceClass",
                 "metadata": {"name": name, "namespace": namespace}, "spec": spec})
    kubectl.apply(yaml.safe_dump_all(docs))


def workspace(name: str, namespace: str, class_name: str, **spec: Any) -> str:
    body = {"className": class_name,
            "repository": {"url": "https://github.com/example/app"}, **spec}
    return yaml.safe_dump({"apiVersion": "agentspaces.dev/v1alpha1", "kind": "Workspace",
                           "metadata": {"name": name, "namespace": namespace},
                           "spec": body})


def condition(ws: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((ws or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def start_operator(kubeconfig: Path, log_dir: Path, name: str = "operator",
                   extra_env: dict[str, str] | None = None) -> OperatorProcess:
    return OperatorProcess(kubeconfig, log_dir / f"{name}.log", OPERATOR_NAMESPACE,
                           extra_env).start()


def start_operator_as_deployed(control_plane: Any, kubectl: Kubectl, log_dir: Path,
                               name: str = "operator") -> OperatorProcess:
    """The operator as the shipped RBAC lets it act: with its ServiceAccount's token
    (the RBAC manifests applied beforehand)."""
    token = kubectl("create", "token", "agentspaces-operator", "-n", OPERATOR_NAMESPACE,
                    "--duration=1h").strip()
    kubeconfig = control_plane.write_kubeconfig(f"sa-{log_dir.name}-{name}",
                                                control_plane.kubeconfig_for_token(token))
    return start_operator(kubeconfig, log_dir, name)


@contextmanager
def benchmark_cluster(workdir: Path, namespace: str) -> Iterator[tuple[ControlPlane, Kubectl]]:
    """For benchmarks (tests get the session's plane from conftest): a control plane of
    their own with the CRDs established and one namespace."""
    with running_control_plane(workdir) as plane:
        plane.kubectl_run("apply", "--server-side", "-f", str(CRDS))
        plane.kubectl_run("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/workspaces.agentspaces.dev",
                          "crd/workspaceclasses.agentspaces.dev")
        kubectl = Kubectl(plane)
        kubectl("create", "namespace", namespace)
        yield plane, kubectl


@dataclass
class VmStack:
    """Clouds, simulated VMs (real agent + Caddy per server), optional S3, operator."""

    clouds: Clouds
    vms: Any
    s3: S3 | None
    operator: OperatorProcess


@contextmanager
def vm_stack(plane: Any, kubectl: Kubectl, state: Path, class_name: str, ip_block: int,
             http_port: int, *, storage: bool = False, keep: int = 3,
             class_key: bytes | None = None, env: dict[str, str] | None = None
             ) -> Iterator[VmStack]:
    """Everything a lifecycle test needs. `ip_block` picks 127.0.<block>.x for the VMs,
    so test modules and a developer's running sandbox never answer for each other."""
    from agentspaces.sandbox.vmsim import VmSimulator
    from agentspaces.sandbox.vmsim_ips import LoopbackPool

    with running_clouds() as clouds, ExitStack() as stack:
        s3 = stack.enter_context(running_s3()) if storage else None
        vms = VmSimulator(state, ip_pool=LoopbackPool(f"127.0.{ip_block}.10",
                                                      f"127.0.{ip_block}.250"))
        vms.attach(clouds.hetzner)
        install_class(kubectl, clouds, class_name, class_key=class_key,
                      storage=s3.storage(keep=keep) if s3 else None,
                      extra={"tls": {"mode": "none", "httpPort": http_port}})
        op = start_operator(plane.admin_kubeconfig, state,
                            extra_env={"AGENTSPACES_BACKUP_PART_MIB": "5", **(env or {})})
        try:
            yield VmStack(clouds, vms, s3, op)
        finally:
            op.stop()
            vms.stop_all()
