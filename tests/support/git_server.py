"""A git server for tests: Git's smart HTTP protocol over HTTPS on loopback, answered by
the real `git http-backend` (as a CGI program), with optional basic auth.

With credentials set, every request without them gets 401 and `WWW-Authenticate:
Basic`, so git asks its askpass helper (the agent's answers `x-access-token` and the
delivered repository token): a clone that succeeds proves the token reached git. Pushes
are accepted (http-backend enables receive-pack for an authenticated REMOTE_USER).
Every request is recorded (method, path, the user it authenticated as).
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from tests.support.tls_servers import LoopbackServer, ServerPki, basic_auth_ok

BACKEND_TIMEOUT = 120.0


@dataclass(frozen=True)
class GitRequest:
    method: str
    path: str
    user: str | None  # None: refused or anonymous


def make_repository(root: Path, name: str, files: dict[str, str],
                    message: str = "initial commit", branch: str = "main") -> Path:
    """A bare repository `root/<name>.git` holding one commit of `files`."""
    bare = root / f"{name}.git"
    work = root / f".{name}.work"
    env = {**os.environ, "GIT_AUTHOR_NAME": "agentspaces test", "GIT_AUTHOR_EMAIL":
           "test@example.test", "GIT_COMMITTER_NAME": "agentspaces test",
           "GIT_COMMITTER_EMAIL": "test@example.test", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": os.devnull}

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                       timeout=60)

    work.mkdir(parents=True)
    git("init", "-q", "-b", branch, ".", cwd=work)
    for rel, text in files.items():
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    subprocess.run(["rm", "-rf", str(work)], check=True, timeout=60)
    return bare


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        server: GitServer = self.server.owner  # type: ignore[attr-defined]
        body = self._body()
        user = server.authenticate(self.headers.get("Authorization"))
        server.record(GitRequest(self.command, self.path, user))
        if user is None:
            payload = b"authentication required\n"
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="agentspaces test git"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        status, headers, payload = server.backend(self.command, self.path, self.headers,
                                                  body, user)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_HEAD = _serve


class GitServer(LoopbackServer):
    """Serves the bare repositories under `root` at https://HOST:PORT/<name>.git."""

    def __init__(self, root: Path, pki: ServerPki, *,
                 credentials: tuple[str, str] | None = None) -> None:
        super().__init__(_Handler, pki=pki)
        self.root = root
        self.credentials = credentials
        self.requests: list[GitRequest] = []
        self._lock = threading.Lock()

    def repository_url(self, name: str, *, guest: bool = True) -> str:
        return f"{self.guest_url if guest else self.url}/{name}.git"

    def record(self, request: GitRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def authenticate(self, header: str | None) -> str | None:
        """The user a request authenticates as; "anonymous" without credentials set."""
        if self.credentials is None:
            return "anonymous"
        username, _ = self.credentials
        return username if basic_auth_ok(header, *self.credentials) else None

    def backend(self, method: str, path: str, headers: object, body: bytes,
                user: str) -> tuple[int, list[tuple[str, str]], bytes]:
        """Run `git http-backend` for one request; (status, headers, body)."""
        parts = urlsplit(path)
        get = getattr(headers, "get")  # noqa: B009 - http.client.HTTPMessage
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "REQUEST_METHOD": method, "PATH_INFO": parts.path, "QUERY_STRING": parts.query,
            "CONTENT_TYPE": get("Content-Type") or "", "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user, "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": get("Git-Protocol") or "",
            "HTTP_CONTENT_ENCODING": get("Content-Encoding") or "",
        }
        result = subprocess.run(["git", "http-backend"], input=body, env=env,
                                capture_output=True, timeout=BACKEND_TIMEOUT, check=False)
        head, sep, payload = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = result.stdout.partition(b"\n\n")
        status = 200 if result.returncode == 0 else 500
        out: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                out.append((name.strip(), value.strip()))
        if not sep:
            return 500, [("Content-Type", "text/plain")], result.stderr[-2000:]
        return status, out, payload
