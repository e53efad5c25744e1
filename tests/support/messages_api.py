"""A scripted, loopback-only stand-in for the Anthropic Messages API.

Point the real Claude Code CLI at it with `ANTHROPIC_BASE_URL=api.url`. Each
`POST /v1/messages` of the conversation (a request that offers tools) is answered with
the next scripted turn, streamed as server-sent events exactly as the real API does:
`message_start`, then per content block `content_block_start`, `content_block_delta`
(`text_delta`, or `input_json_delta` for a tool call) and `content_block_stop`, then
`message_delta` (stop reason, usage) and `message_stop`, each as `event: NAME` and
`data: JSON`. Requests without tools (Claude's side questions: titles, quota checks)
get a short plain answer and do not use up the script. When the script is exhausted
every further turn answers "done".

Every request is recorded (method, path, headers, parsed body), so tests can assert on
what Claude sent (the credential headers, the model); any other endpoint gets a harmless
empty JSON answer and is recorded too. With a `prefix` the API answers under that path,
as an LLM gateway does (`ANTHROPIC_BASE_URL=api.url + prefix`). Start and stop it as a
context manager: the server thread ends on exit.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

MODEL = "claude-scripted-1"


@dataclass(frozen=True)
class Usage:
    """The token counts a turn reports in `usage`, instead of the server's estimate
    (input from the request's size, output from the answer's)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    """The part of cache_creation_input_tokens written with the one-hour lifetime."""

    def start(self) -> dict[str, Any]:
        """`usage` of `message_start` (output so far: one token, as the real API says)."""
        return {"input_tokens": self.input_tokens, "output_tokens": 1,
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": self.cache_creation_input_tokens
                    - self.cache_creation_1h_input_tokens,
                    "ephemeral_1h_input_tokens": self.cache_creation_1h_input_tokens}}

    def final(self) -> dict[str, Any]:
        return {**self.start(), "output_tokens": self.output_tokens}


@dataclass(frozen=True)
class Text:
    """A plain answer that ends the turn (`stop_reason: end_turn`)."""

    text: str
    usage: Usage | None = None


@dataclass(frozen=True)
class ToolUse:
    """A tool call (`stop_reason: tool_use`), optionally after some text."""

    name: str
    input: dict[str, Any]
    text: str = ""
    usage: Usage | None = None


def bash(command: str, description: str = "scripted command") -> ToolUse:
    """A call of Claude Code's Bash tool."""
    return ToolUse("Bash", {"command": command, "description": description})


Turn = Text | ToolUse


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any
    at: float = field(default_factory=time.monotonic)
    prefix: str = ""
    """The path the API lives under (a gateway's), "" for the API's own."""

    @property
    def is_messages(self) -> bool:
        return self.method == "POST" and \
            urlsplit(self.path).path == f"{self.prefix}/v1/messages"

    @property
    def model(self) -> str | None:
        """The model the request asked for."""
        model = self.body.get("model") if isinstance(self.body, dict) else None
        return model if isinstance(model, str) else None

    @property
    def is_turn(self) -> bool:
        """A request of the conversation itself (it offers Claude's tools)."""
        return self.is_messages and isinstance(self.body, dict) and bool(self.body.get("tools"))

    def text(self) -> str:
        """All text of the system prompt and the messages, joined (for assertions)."""
        if not isinstance(self.body, dict):
            return ""
        parts: list[str] = []

        def collect(value: Any) -> None:
            if isinstance(value, str):
                parts.append(value)
            elif isinstance(value, list):
                for item in value:
                    collect(item)
            elif isinstance(value, dict):
                for key in ("text", "content"):
                    if key in value:
                        collect(value[key])

        collect(self.body.get("system"))
        for message in self.body.get("messages") or []:
            collect(message)
        return "\n".join(parts)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def stream_events(turn: Turn, *, message_id: str, tool_id: str, model: str,
                  input_tokens: int) -> Iterator[bytes]:
    """The SSE frames of one streamed answer."""
    blocks: list[tuple[str, Any]] = []
    text = turn.text
    if text:
        blocks.append(("text", text))
    if isinstance(turn, ToolUse):
        blocks.append(("tool_use", turn))
    stop_reason = "tool_use" if isinstance(turn, ToolUse) else "end_turn"
    yield _sse("message_start", {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": turn.usage.start() if turn.usage else _usage(input_tokens, 1)}})
    output_tokens = 0
    for index, (kind, value) in enumerate(blocks):
        if kind == "text":
            yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "text", "text": ""}})
            for start in range(0, len(value), 16):
                yield _sse("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": value[start:start + 16]}})
            output_tokens += max(1, len(value) // 4)
        else:
            yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                               "content_block": {"type": "tool_use",
                                                                 "id": tool_id,
                                                                 "name": value.name,
                                                                 "input": {}}})
            encoded = json.dumps(value.input)
            for start in range(0, len(encoded), 16):
                yield _sse("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta",
                              "partial_json": encoded[start:start + 16]}})
            output_tokens += max(1, len(encoded) // 4)
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    if turn.usage is not None:
        output_tokens = turn.usage.output_tokens
    yield _sse("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                 "usage": {"output_tokens": output_tokens}})
    yield _sse("message_stop", {"type": "message_stop"})


class MessagesAPI:
    """The scripted API on http://HOST:PORT (HOST must be a loopback address)."""

    def __init__(self, turns: list[Turn], *, host: str = "127.0.0.1", port: int = 0,
                 model: str = MODEL, side_answer: str = "Scripted session",
                 prefix: str = "") -> None:
        if not host.startswith("127."):
            raise ValueError(f"the scripted API listens on loopback only, not {host}")
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError(f"prefix: expected /path without a trailing slash, not {prefix}")
        self.prefix = prefix
        self._turns = list(turns)
        self._model = model
        self._side_answer = side_answer
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[Request] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _read_body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    return json.loads(raw) if raw else None
                except ValueError:
                    return raw.decode("utf-8", "replace")

            def _handle(self) -> None:
                request = Request(self.command, self.path,
                                  {k.lower(): v for k, v in self.headers.items()},
                                  self._read_body(), prefix=api.prefix)
                with api._lock:
                    api.requests.append(request)
                if request.is_messages:
                    api._answer_messages(self, request)
                else:
                    log.info("scripted API: %s %s answered with {}", self.command, self.path)
                    self._json(200, {})

            def _json(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("scripted API: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name="scripted-messages-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _next_turn(self, request: Request) -> Turn:
        with self._lock:
            if not request.is_turn:
                return Text(self._side_answer)
            return self._turns.pop(0) if self._turns else Text("done")

    def _answer_messages(self, handler: BaseHTTPRequestHandler, request: Request) -> None:
        turn = self._next_turn(request)
        number = next(self._ids)
        body = request.body if isinstance(request.body, dict) else {}
        input_tokens = max(1, len(json.dumps(body)) // 4)
        if not body.get("stream"):
            content: list[dict[str, Any]] = []
            if turn.text:
                content.append({"type": "text", "text": turn.text})
            if isinstance(turn, ToolUse):
                content.append({"type": "tool_use", "id": f"toolu_{number:04d}",
                                "name": turn.name, "input": turn.input})
            doc = {"id": f"msg_{number:04d}", "type": "message", "role": "assistant",
                   "model": body.get("model") or self._model, "content": content,
                   "stop_reason": "tool_use" if isinstance(turn, ToolUse) else "end_turn",
                   "stop_sequence": None,
                   "usage": turn.usage.final() if turn.usage else _usage(input_tokens, 10)}
            encoded = json.dumps(doc).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(encoded)))
            handler.end_headers()
            handler.wfile.write(encoded)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for frame in stream_events(turn, message_id=f"msg_{number:04d}",
                                   tool_id=f"toolu_{number:04d}",
                                   model=body.get("model") or self._model,
                                   input_tokens=input_tokens):
            handler.wfile.write(frame)
            handler.wfile.flush()

    def turns_left(self) -> int:
        with self._lock:
            return len(self._turns)

    def conversation(self) -> list[Request]:
        """The recorded requests of the conversation (the ones that used the script)."""
        with self._lock:
            return [r for r in self.requests if r.is_turn]

    def __enter__(self) -> MessagesAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()
