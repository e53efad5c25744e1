"""Stand-ins for the programs a simulated VM cannot run for real (standard library only,
run as a script by the VM simulator, one process each):

- `cloudcli`: answers every GET with a small page titled "CloudCLI (simulated)" where
  the real CloudCLI would serve its UI (uiPort);
- `devserver`: the user's dev server, serving the simulated /workspaces directory, so
  port discovery, Caddy routes and files written into the workspace are all real.

    python vmsim_standin.py cloudcli --bind 127.0.0.10 --port 3001 --name demo
    python vmsim_standin.py devserver --bind 127.0.0.10 --port 3000 --directory DIR
"""

from __future__ import annotations

import argparse
import functools
import html
import signal
import sys
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CLOUDCLI_TITLE = "CloudCLI (simulated)"


class CloudCliHandler(BaseHTTPRequestHandler):
    server_version = "cloudcli-simulated"
    sys_version = ""
    workspace = "workspace"

    def _page(self) -> bytes:
        name = html.escape(self.workspace)
        return (f"<!doctype html>\n<html><head><title>{CLOUDCLI_TITLE}</title></head>"
                f"<body><h1>{CLOUDCLI_TITLE}</h1><p>Workspace {name}: this sandbox VM runs "
                "no real CloudCLI.</p></body></html>\n").encode()

    def do_GET(self) -> None:
        body = self._page()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET


def _serve(server: ThreadingHTTPServer, what: str) -> int:
    print(f"vmsim-standin: {what} on {server.server_address!r}", flush=True)
    # SIGTERM ends serve_forever through KeyboardInterrupt, so the socket is closed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmsim-standin")
    parser.add_argument("role", choices=["cloudcli", "devserver"])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--name", default="workspace", help="cloudcli: the workspace name")
    parser.add_argument("--directory", help="devserver: the directory to serve")
    args = parser.parse_args(argv)
    handler: Any
    if args.role == "cloudcli":
        handler = type("Handler", (CloudCliHandler,), {"workspace": args.name})
    else:
        if not args.directory:
            parser.error("devserver needs --directory")
        handler = functools.partial(SimpleHTTPRequestHandler, directory=args.directory)
    try:
        server = ThreadingHTTPServer((args.bind, args.port), handler)
    except OSError as exc:
        print(f"vmsim-standin: cannot listen on {args.bind}:{args.port}: {exc.strerror}",
              file=sys.stderr, flush=True)
        return 1
    return _serve(server, args.role)


if __name__ == "__main__":
    sys.exit(main())
