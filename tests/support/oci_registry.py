"""A minimal, read-only container registry for tests (the pull side of the OCI
distribution API) over HTTPS on loopback, with basic auth.

Enough for `docker pull`: `GET /v2/` answers 401 with `WWW-Authenticate: Basic` until
the client sends the credentials (then 200 `{}`); manifests by tag or by digest (HEAD
and GET) come with their media type as Content-Type and `Docker-Content-Digest`; blobs
(the config and the layers) are streamed from their files, with single `bytes=N-`
ranges for resumed downloads. Anything else is 404 with the registry's JSON error
shape. Every request is recorded (method, path, whether it was authorized).

`single_layer_image` makes the one image the real-VM tier serves: an OCI image manifest
over a config and one gzip layer (scripts/build-container-image.sh).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.support.tls_servers import LoopbackServer, ServerPki, basic_auth_ok

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
REALM = "agentspaces test registry"
_PATH = re.compile(r"^/v2/(?P<name>[a-z0-9]+(?:[._/-][a-z0-9]+)*)/"
                   r"(?P<kind>manifests|blobs)/(?P<ref>[A-Za-z0-9_.:+-]+)$")


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class Image:
    repository: str
    tag: str
    manifest: bytes
    blobs: dict[str, Blob]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def reference(self, registry: str) -> str:
        return f"{registry}/{self.repository}:{self.tag}"


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def single_layer_image(repository: str, tag: str, layer: Path, diff_id: str, *,
                       cmd: list[str] | None = None,
                       env: list[str] | None = None) -> Image:
    """An image of one gzip layer (`diff_id`: sha256 of the uncompressed tar)."""
    layer_digest, layer_size = _file_digest(layer)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                                  "/usr/bin:/sbin:/bin"],
                   "Cmd": cmd or ["/bin/bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "scripts/build-container-image.sh"}],
    }, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest, "size": layer_size}],
    }, sort_keys=True).encode()
    return Image(repository, tag, manifest, {
        config_digest: Blob(config_digest, len(config), data=config),
        layer_digest: Blob(layer_digest, layer_size, path=layer)})


@dataclass(frozen=True)
class RegistryRequest:
    method: str
    path: str
    authorized: bool
    status: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        headers = {"Docker-Distribution-API-Version": "registry/2.0", **headers}
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str,
               extra: dict[str, str] | None = None) -> None:
        body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._send(status, {"Content-Type": "application/json", **(extra or {})}, body)

    def _serve(self) -> None:
        registry: OciRegistry = self.server.owner  # type: ignore[attr-defined]
        authorized = registry.authorized(self.headers.get("Authorization"))
        status = self._answer(registry, authorized)
        registry.record(RegistryRequest(self.command, self.path, authorized, status))

    def _answer(self, registry: OciRegistry, authorized: bool) -> int:
        if not authorized:
            self._error(401, "UNAUTHORIZED", "authentication required",
                        {"WWW-Authenticate": f'Basic realm="{REALM}"'})
            return 401
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            self._send(200, {"Content-Type": "application/json"}, b"{}")
            return 200
        match = _PATH.match(path)
        image = registry.images.get(match["name"]) if match else None
        if match is None or image is None:
            self._error(404, "NAME_UNKNOWN", "repository name not known to registry")
            return 404
        ref = match["ref"]
        if match["kind"] == "manifests":
            if ref not in (image.tag, image.digest):
                self._error(404, "MANIFEST_UNKNOWN", "manifest unknown")
                return 404
            self._send(200, {"Content-Type": MANIFEST_TYPE,
                             "Docker-Content-Digest": image.digest}, image.manifest)
            return 200
        blob = image.blobs.get(ref)
        if blob is None:
            self._error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return 404
        return self._blob(blob)

    def _blob(self, blob: Blob) -> int:
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if ranged:
            start = min(int(ranged[1]), blob.size)
        headers = {"Content-Type": "application/octet-stream",
                   "Docker-Content-Digest": blob.digest, "Accept-Ranges": "bytes",
                   "Content-Length": str(blob.size - start)}
        status = 200
        if ranged:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{blob.size - 1}/{blob.size}"
        if blob.data is not None:
            self._send(status, headers, blob.data[start:])
            return status
        self._send(status, headers)
        if self.command == "HEAD":
            return status
        assert blob.path is not None
        with blob.path.open("rb") as fh:
            fh.seek(start)
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                self.wfile.write(chunk)
        return status

    do_GET = do_HEAD = _serve


class OciRegistry(LoopbackServer):
    """Serves `images` (by repository name) to clients with `username`/`password`."""

    def __init__(self, pki: ServerPki, username: str, password: str,
                 images: list[Image]) -> None:
        super().__init__(_Handler, pki=pki)
        self.username = username
        self.password = password
        self.images = {image.repository: image for image in images}
        self.requests: list[RegistryRequest] = []
        self._lock = threading.Lock()

    def authorized(self, header: str | None) -> bool:
        return basic_auth_ok(header, self.username, self.password)

    def record(self, request: RegistryRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def docker_config(self, *, guest: bool = True) -> dict[str, Any]:
        """A Docker config.json (`kubernetes.io/dockerconfigjson`) for this registry."""
        auth = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"auths": {self.guest_address if guest else f"127.0.0.1:{self.port}":
                          {"username": self.username, "password": self.password,
                           "auth": auth}}}

    def pulled(self, image: Image) -> bool:
        """Whether a client fetched the image's layers with credentials."""
        layer_paths = {f"/v2/{image.repository}/blobs/{d}" for d, b in image.blobs.items()
                       if b.path is not None}
        with self._lock:
            return bool(layer_paths) and layer_paths <= {
                r.path for r in self.requests
                if r.method == "GET" and r.authorized and r.status in (200, 206)}
