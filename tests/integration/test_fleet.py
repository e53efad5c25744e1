"""The fleet simulator (many VMs' agent endpoints in one process, for benchmarks/
scale_bench.py) stands in for a VM well enough for the real operator: a workspace
reaches Ready over the pinned certificate and token from its server's user-data, its
secrets are delivered, and deleting it stops serving that VM's address."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from agentspaces.sandbox.fleet import FleetSimulator
from agentspaces.sandbox.vmsim_ips import LoopbackPool
from agentspaces_vm.contracts import BootStage
from tests.conftest import Kubectl
from tests.support.stack import (
    condition,
    install_class,
    running_clouds,
    start_operator,
    workspace,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
CLASS = "fleet"


def _listening(ip: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((ip, port)) == 0


def test_a_workspace_is_ready_against_the_fleet(control_plane, kubectl: Kubectl,  # type: ignore[no-untyped-def]
                                                namespace: str, tmp_path: Path) -> None:
    with running_clouds() as clouds, \
            FleetSimulator(tmp_path, ip_pool=LoopbackPool("127.0.97.10", "127.0.97.50")) \
            as fleet:
        fleet.attach(clouds.hetzner)
        install_class(kubectl, clouds, CLASS, extra={"tls": {"mode": "none",
                                                             "httpPort": 18197}})
        op = start_operator(control_plane.admin_kubeconfig, tmp_path)
        try:
            kubectl.apply(workspace("f1", namespace, CLASS))
            ws = wait_for(lambda: (w := kubectl.get_json("workspace", "f1", "-n", namespace))
                          and condition(w, "Ready").get("status") == "True" and w, 60,
                          "f1 Ready")
            server = int(ws["status"]["server"]["id"])
            vm = fleet.vm(server)
            assert vm is not None and not vm.errors
            assert vm.stage is BootStage.READY
            assert vm.secrets_version == ws["status"]["secretsVersion"]
            assert condition(ws, "AgentReady")["reason"] == "Simulated"
            assert vm.ip is not None and vm.port == 9443 and _listening(vm.ip, vm.port)

            kubectl("delete", "workspace", "f1", "-n", namespace, "--wait=false")
            wait_for(lambda: fleet.vm(server) is None, 60, "the fleet VM removed")
            assert not _listening(vm.ip, vm.port)
        finally:
            op.stop()
