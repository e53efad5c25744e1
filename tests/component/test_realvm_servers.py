"""The host-side servers of the real-VM tier, checked from the host with real clients:
git clones and pushes over HTTPS with the test CA and a token (refused without it); the
registry follows the distribution API's pull side (401 + Basic challenge, manifests by
tag and digest with their digest header, blobs whose bytes match their digests, ranged
reads); the metadata stand-in answers through the relay QEMU runs per connection."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from agentspaces.sandbox.vmqemu import RELAY
from tests.support.git_server import GitServer, make_repository
from tests.support.metadata_service import MetadataService
from tests.support.oci_registry import MANIFEST_TYPE, OciRegistry, single_layer_image
from tests.support.tls_servers import GUEST_HOST, ServerPki, make_pki

pytestmark = pytest.mark.timeout(120)

TOKEN = "git-token-" + "x" * 20


@pytest.fixture
def pki(tmp_path: Path) -> ServerPki:
    return make_pki(tmp_path / "pki")


def _git(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_server_certificate_names_the_host_as_guests_see_it(pki: ServerPki) -> None:
    cert = x509.load_pem_x509_certificate(pki.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        GUEST_HOST, "127.0.0.1"}
    assert cert.issuer == x509.load_pem_x509_certificate(pki.ca_pem.encode()).subject


def test_git_over_https_with_a_token(tmp_path: Path, pki: ServerPki) -> None:
    repos = tmp_path / "repos"
    repos.mkdir()
    make_repository(repos, "demo", {"README.md": "hello\n", "app/main.py": "print(1)\n"})
    askpass = tmp_path / "askpass"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    # The agent's helper: a username, then the token from a file.
    askpass.write_text('#!/bin/sh\ncase "$1" in\n  [Uu]sername*) echo x-access-token ;;\n'
                       f'  *) cat {token_file} ;;\nesac\n')
    askpass.chmod(0o700)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_SSL_CAINFO": str(pki.ca_file), "GIT_TERMINAL_PROMPT": "0",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.test"}
    with GitServer(repos, pki, credentials=("x-access-token", TOKEN)) as server:
        url = server.repository_url("demo", guest=False)
        refused = _git("clone", url, "refused", cwd=tmp_path, env=env)
        assert refused.returncode != 0 and not (tmp_path / "refused" / "README.md").exists()
        cloned = _git("clone", url, "clone", cwd=tmp_path, env={**env, "GIT_ASKPASS":
                                                              str(askpass)})
        assert cloned.returncode == 0, cloned.stderr
        work = tmp_path / "clone"
        assert (work / "README.md").read_text() == "hello\n"
        assert (work / "app" / "main.py").read_text() == "print(1)\n"
        assert any(r.user == "x-access-token" for r in server.requests)
        assert any(r.user is None for r in server.requests)  # the first ask was refused
        (work / "notes.txt").write_text("pushed\n")
        _git("add", "notes.txt", cwd=work, env=env)
        _git("commit", "-m", "notes", cwd=work, env=env)
        pushed = _git("push", "origin", "HEAD:wip", cwd=work, env={**env, "GIT_ASKPASS":
                                                                 str(askpass)})
        assert pushed.returncode == 0, pushed.stderr
    shown = subprocess.run(["git", "--git-dir", str(repos / "demo.git"), "show",
                            "wip:notes.txt"], capture_output=True, text=True, check=True)
    assert shown.stdout == "pushed\n"
    # Trusted only through the CA: without it git refuses the certificate.
    with GitServer(repos, pki) as server:
        untrusted = _git("ls-remote", server.repository_url("demo", guest=False),
                         cwd=tmp_path, env={k: v for k, v in env.items()
                                            if k != "GIT_SSL_CAINFO"})
        assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()


def _layer(tmp_path: Path) -> tuple[Path, str]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b"#!/bin/sh\necho hi\n"
        info = tarfile.TarInfo("bin/hello")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "layer.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path, "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()


def test_registry_serves_an_image_to_authorized_clients(tmp_path: Path, pki: ServerPki) -> None:
    layer, diff_id = _layer(tmp_path)
    image = single_layer_image("team/dev", "1", layer, diff_id)
    with OciRegistry(pki, "puller", "s3cret", [image]) as registry, \
            httpx.Client(base_url=registry.url, verify=pki.client_context(),
                         trust_env=False, timeout=10) as client:
        challenge = client.get("/v2/")
        assert challenge.status_code == 401
        assert challenge.headers["WWW-Authenticate"].startswith("Basic realm=")
        assert client.get("/v2/team/dev/manifests/1").status_code == 401
        assert client.get("/v2/", auth=("puller", "wrong")).status_code == 401
        auth = ("puller", "s3cret")
        assert client.get("/v2/", auth=auth).json() == {}
        by_tag = client.get("/v2/team/dev/manifests/1", auth=auth)
        assert by_tag.status_code == 200
        assert by_tag.headers["Content-Type"] == MANIFEST_TYPE
        digest = "sha256:" + hashlib.sha256(by_tag.content).hexdigest()
        assert by_tag.headers["Docker-Content-Digest"] == digest == image.digest
        head = client.head(f"/v2/team/dev/manifests/{digest}", auth=auth)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(
            len(by_tag.content))
        assert client.get(f"/v2/team/dev/manifests/{digest}", auth=auth).content == \
            by_tag.content
        manifest = by_tag.json()
        assert manifest["schemaVersion"] == 2 and len(manifest["layers"]) == 1
        config = client.get(f"/v2/team/dev/blobs/{manifest['config']['digest']}", auth=auth)
        assert "sha256:" + hashlib.sha256(config.content).hexdigest() == \
            manifest["config"]["digest"]
        assert json.loads(config.content)["rootfs"]["diff_ids"] == [diff_id]
        blob = client.get(f"/v2/team/dev/blobs/{manifest['layers'][0]['digest']}", auth=auth)
        assert blob.status_code == 200 and blob.content == layer.read_bytes()
        ranged = client.get(f"/v2/team/dev/blobs/{manifest['layers'][0]['digest']}",
                            auth=auth, headers={"Range": "bytes=10-"})
        assert ranged.status_code == 206 and ranged.content == layer.read_bytes()[10:]
        unknown = client.get("/v2/team/dev/manifests/2", auth=auth)
        assert unknown.status_code == 404
        assert unknown.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
        assert client.get("/v2/other/manifests/1", auth=auth).status_code == 404
        assert registry.pulled(image)
        config_json = registry.docker_config()
        entry = config_json["auths"][f"{GUEST_HOST}:{registry.port}"]
        assert base64.b64decode(entry["auth"]).decode() == "puller:s3cret"


def test_metadata_stand_in_through_the_relay() -> None:
    """What QEMU does per guest connection to 169.254.169.254:80: run the relay with the
    connection as its stdin/stdout."""
    with MetadataService("canary-user-data") as service:
        guest, relay_end = socket.socketpair()
        proc = subprocess.Popen([sys.executable, str(RELAY), "127.0.0.1", str(service.port)],
                                stdin=relay_end.fileno(), stdout=relay_end.fileno(),
                                stderr=relay_end.fileno())
        relay_end.close()
        try:
            guest.sendall(b"GET /hetzner/v1/userdata HTTP/1.1\r\nHost: 169.254.169.254\r\n"
                          b"Connection: close\r\n\r\n")
            guest.shutdown(socket.SHUT_WR)
            guest.settimeout(10)
            answer = b""
            while chunk := guest.recv(65536):
                answer += chunk
            assert proc.wait(timeout=10) == 0
        finally:
            guest.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert answer.startswith(b"HTTP/1.") and answer.endswith(b"canary-user-data")
        assert [r.path for r in service.requests] == ["/hetzner/v1/userdata"]
