"""A real Kubernetes API on loopback: etcd + kube-apiserver as local processes.

This is how the test suite and the local sandbox get Kubernetes without Docker, in the
manner of controller-runtime's envtest: the binaries come from `KUBEBUILDER_ASSETS`
(or `TEST_ASSET_KUBE_APISERVER` / `TEST_ASSET_ETCD` / `TEST_ASSET_KUBECTL`), or are
built once by `scripts/build-envtest.sh`; authentication is by client certificate and
authorization is RBAC, so identities other than the admin are really restricted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agentspaces.lifeline import die_with_parent

BINARIES = ("kube-apiserver", "etcd", "kubectl")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-envtest.sh"


class ControlPlaneError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _asset_dir_from_env() -> Path | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and all((Path(assets) / b).exists() for b in BINARIES):
        return Path(assets)
    return None


def find_binaries(build: bool = True, progress: bool = True) -> dict[str, Path]:
    """Locate kube-apiserver, etcd and kubectl; build them once when missing."""
    found: dict[str, Path] = {}
    for name in BINARIES:
        override = os.environ.get("TEST_ASSET_" + name.upper().replace("-", "_"))
        if override:
            found[name] = Path(override)
    assets = _asset_dir_from_env()
    if assets is None and len(found) < len(BINARIES):
        if not build:
            raise ControlPlaneError(
                "kube-apiserver/etcd/kubectl not found: set KUBEBUILDER_ASSETS or run "
                f"{BUILD_SCRIPT}")
        if not BUILD_SCRIPT.exists():
            raise ControlPlaneError(f"build script missing: {BUILD_SCRIPT}")
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE,
            stderr=None if progress else subprocess.DEVNULL, text=True, check=False)
        if result.returncode != 0:
            raise ControlPlaneError("building the control-plane binaries failed "
                                    f"(exit {result.returncode}); see the output above")
        assets = Path(result.stdout.strip().splitlines()[-1])
    for name in BINARIES:
        if name not in found and assets is not None:
            found[name] = assets / name
    missing = [n for n, p in found.items() if not p.exists()]
    if missing:
        raise ControlPlaneError(f"missing control-plane binaries: {missing}")
    return found


# --- a tiny PKI ----------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


@dataclass
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, organizations: list[str] | None = None, *,
              server_names: list[str] | None = None, server_ips: list[str] | None = None
              ) -> tuple[bytes, bytes]:
        """Issue a leaf certificate; returns (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations or []]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names or server_ips:
            sans: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names or []]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in server_ips or []]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            usage = x509.ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


# --- the control plane -----------------------------------------------------------------

@dataclass
class ControlPlane:
    """etcd + kube-apiserver on free loopback ports under one directory."""

    workdir: Path | None = None
    binaries: dict[str, Path] = field(default_factory=dict)
    start_timeout: float = 60.0
    log_to: Path | None = None

    def __post_init__(self) -> None:
        self._own_dir = self.workdir is None
        self.dir = Path(self.workdir or tempfile.mkdtemp(prefix="agentspaces-cp-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self.api_port = 0
        self.ca: CertificateAuthority | None = None

    # public API --------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubectl(self) -> Path:
        return self.binaries["kubectl"]

    @property
    def admin_kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    def start(self) -> ControlPlane:
        if not self.binaries:
            self.binaries = find_binaries()
        self.dir.mkdir(parents=True, exist_ok=True)
        pki = self.dir / "pki"
        pki.mkdir(exist_ok=True)
        self.ca = CertificateAuthority.create("agentspaces-controlplane-ca")
        (pki / "ca.crt").write_bytes(self.ca.cert_pem)
        serving_cert, serving_key = self.ca.issue(
            "kube-apiserver", server_names=["localhost", "kubernetes", "kubernetes.default"],
            server_ips=["127.0.0.1"])
        (pki / "apiserver.crt").write_bytes(serving_cert)
        (pki / "apiserver.key").write_bytes(serving_key)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(_pem_key(sa_key))
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        try:
            self._start_etcd()
            self._start_apiserver(pki)
            self.admin_kubeconfig.write_text(
                self.kubeconfig_for_user("admin", ["system:masters"]))
            self._wait_default_namespace()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # One at a time, apiserver first: stopped while etcd is already gone, the
        # apiserver spends seconds retrying before it exits.
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs]

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig_for_user(self, user: str, groups: list[str] | None = None) -> str:
        """A kubeconfig authenticating as `user` (client certificate) in `groups`."""
        assert self.ca is not None
        cert, key = self.ca.issue(user, groups or [])
        return self._kubeconfig({"client-certificate-data": _b64(cert),
                                 "client-key-data": _b64(key)})

    def kubeconfig_for_token(self, token: str) -> str:
        return self._kubeconfig({"token": token})

    def write_kubeconfig(self, name: str, content: str) -> Path:
        path = self.dir / f"{name}.kubeconfig"
        path.write_text(content)
        path.chmod(0o600)
        return path

    def kubectl_run(self, *args: str, kubeconfig: Path | None = None, input: str | None = None,
                    check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.kubectl), "--kubeconfig", str(kubeconfig or self.admin_kubeconfig),
               *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    # internals -----------------------------------------------------------------------

    def _kubeconfig(self, user: dict[str, str]) -> str:
        assert self.ca is not None
        config = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "agentspaces", "cluster": {
                "server": self.url, "certificate-authority-data": _b64(self.ca.cert_pem)}}],
            "users": [{"name": "agentspaces", "user": user}],
            "contexts": [{"name": "agentspaces",
                          "context": {"cluster": "agentspaces", "user": "agentspaces"}}],
            "current-context": "agentspaces",
        }
        return yaml.safe_dump(config, sort_keys=False)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_to or (self.dir / f"{name}.log"), "ab")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)
        log.close()
        self._procs.append(proc)
        return proc

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        proc = self._spawn("etcd", [
            str(self.binaries["etcd"]), "--data-dir", str(self.dir / "etcd"),
            "--name", "agentspaces",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=agentspaces=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        self._wait("etcd", proc, lambda: _http_ok(f"{self.etcd_url}/health"))

    def _start_apiserver(self, pki: Path) -> None:
        self.api_port = free_port()
        proc = self._spawn("kube-apiserver", [
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.api_port}", "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            # no controller-manager here, so no "default" ServiceAccount to admit against
            "--disable-admission-plugins=ServiceAccount",
            f"--service-account-issuer=https://127.0.0.1:{self.api_port}/",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # one apiserver, nobody to share the kubernetes Service endpoints with
            "--endpoint-reconciler-type=none",
            "--v=0",
        ])
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._wait("kube-apiserver", proc,
                   lambda: _http_ok(f"{self.url}/readyz", ctx=ctx))

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready: object) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}; "
                                        f"log: {self.dir / (name + '.log')}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} not ready after {self.start_timeout}s")

    def _wait_default_namespace(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.kubectl_run("get", "namespace", "default", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise ControlPlaneError("the default namespace never appeared")


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def _http_ok(url: str, ctx: ssl.SSLContext | None = None, allow_401: bool = False) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as err:
        # /readyz answers 401/403 to anonymous callers once it serves at all
        return allow_401 and err.code in (401, 403)
    except OSError:
        return False


@contextmanager
def running_control_plane(workdir: Path | None = None) -> Iterator[ControlPlane]:
    plane = ControlPlane(workdir=workdir)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


if __name__ == "__main__":  # pragma: no cover - manual smoke run
    with running_control_plane() as cp:
        print(cp.admin_kubeconfig, file=sys.stderr)
        print(cp.kubectl_run("get", "ns").stdout)
