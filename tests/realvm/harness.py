"""What the real-VM scenario uses to look at a guest and its workspace from the host:
ssh into the guest (the workspace's own sshKeys), HTTPS to Caddy with the workspace
host as SNI, and a timeline of what the Workspace's status said when."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

TIMELINES_ENV = "AGENTSPACES_REALVM_TIMELINES"
SSH_USER = "debian"  # the default user of Debian's cloud images (cloud-init)


def make_ssh_key(directory: Path) -> tuple[Path, str]:
    """An ed25519 key pair: (private key file for ssh -i, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = directory / "id_ed25519"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} realvm-test"


@dataclass(frozen=True)
class Guest:
    """One VM as ssh reaches it: the server's address and the forwarded ssh port."""

    ip: str
    port: int
    key: Path
    user: str = SSH_USER

    def run(self, command: str, *, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """`command` through the login user's shell on the guest (prefix sudo for root)."""
        argv = ["ssh", "-i", str(self.key), "-p", str(self.port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes",
                f"{self.user}@{self.ip}", command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {command!r} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result

    def reachable(self) -> bool:
        try:
            return self.run("true", timeout=30, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def container(self) -> str:
        """The id of the one running container (the devcontainer)."""
        ids = self.run("sudo docker ps -q --no-trunc").stdout.split()
        assert len(ids) == 1, f"expected one running container, got {ids}"
        return ids[0]

    def in_container(self, container: str, command: str, *, env: dict[str, str] | None = None,
                     workdir: str | None = None, detach: bool = False, timeout: float = 120,
                     check: bool = True) -> subprocess.CompletedProcess[str]:
        flags = ["--detach"] if detach else []
        flags += [f"--env={k}={v}" for k, v in (env or {}).items()]
        if workdir:
            flags.append(f"--workdir={workdir}")
        inner = " ".join(shlex.quote(f) for f in flags)
        return self.run(f"sudo docker exec {inner} {container} sh -c {shlex.quote(command)}",
                        timeout=timeout, check=check)


@dataclass(frozen=True)
class Front:
    """Caddy on the VM as a browser reaches it: the workspace host (and `<port>.` hosts)
    resolved to the server's address, TLS with the host as SNI (tls.mode internal: Caddy's
    own CA, so the certificate is not verified here)."""

    ip: str
    port: int
    host: str

    def get(self, host: str | None = None, path: str = "/",
            password: str | None = None) -> httpx.Response:
        name = host or self.host
        auth = ("agent", password) if password is not None else None
        with httpx.Client(verify=False, timeout=15, trust_env=False) as client:
            return client.get(f"https://{self.ip}:{self.port}{path}",
                              headers={"Host": f"{name}:{self.port}"}, auth=auth,
                              extensions={"sni_hostname": name})

    def port_host(self, port: int) -> str:
        return f"{port}.{self.host}"


@dataclass
class Timeline:
    """First time each figure was reached, in seconds from `start`, and every distinct
    AgentReady reason/message seen (what the operator learned from the agent, when)."""

    start: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    agent_states: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, name: str) -> float:
        self.marks.setdefault(name, time.monotonic() - self.start)
        return self.marks[name]

    def observe(self, ws: dict[str, Any] | None) -> None:
        for cond in ((ws or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") != "AgentReady":
                continue
            text = f"{cond.get('status')} {cond.get('reason')}: {cond.get('message')}"
            if not self.agent_states or self.agent_states[-1][1] != text:
                self.agent_states.append((time.monotonic() - self.start, text))

    def report(self, title: str) -> str:
        """The timeline as text; also a JSON line in the file AGENTSPACES_REALVM_TIMELINES
        names, when set (benchmarks/realvm_starts.py reads them)."""
        if path := os.environ.get(TIMELINES_ENV):
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"title": title, "marks": self.marks}) + "\n")
        lines = [f"{title}:"]
        lines += [f"  {name}: {seconds:.1f}s" for name, seconds in self.marks.items()]
        lines += [f"    [{at:7.1f}s] AgentReady {text}" for at, text in self.agent_states]
        return "\n".join(lines)


def bootstrap_steps(guest: Guest) -> str:
    """The bootstrap's own record, with the journal's timestamps: the kernel's start and
    each `agentspaces-bootstrap: <step>` line cloud-init's runcmd printed."""
    out = guest.run("sudo journalctl -b -o short-monotonic --no-pager "
                    "| grep -E 'agentspaces-bootstrap|Linux version|Cloud-init v.* finished'",
                    check=False)
    return out.stdout.strip()


def as_json(text: str) -> Any:
    return json.loads(text) if text.strip() else None
