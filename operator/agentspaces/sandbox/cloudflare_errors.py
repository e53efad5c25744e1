"""API errors of the Cloudflare emulator in the v4 envelope (`success: false`, `errors`
with the code and, where Cloudflare gives one, an `error_chain`)."""

from __future__ import annotations

from typing import Any

from .emulator import ApiFailure, Reply

Json = dict[str, Any]


def envelope(result: Any, info: Json | None = None) -> Json:
    body: Json = {"success": True, "errors": [], "messages": [], "result": result}
    if info is not None:
        body["result_info"] = info
    return body


def failed(errors: list[Json]) -> Json:
    return {"success": False, "errors": errors, "messages": [], "result": None}


class ApiError(ApiFailure):
    """An error response: HTTP status plus the envelope's error list."""

    def __init__(self, status: int, code: int, message: str,
                 chain: list[tuple[int, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        error: Json = {"code": code, "message": message}
        if chain:
            error["error_chain"] = [{"code": c, "message": m} for c, m in chain]
        self.errors = [error]
        self.headers = headers or {}

    def reply(self) -> Reply:
        return Reply(self.status, failed(self.errors), dict(self.headers))


def validation(detail: str) -> ApiError:
    """Where the public docs give no code: 400, 1004 "DNS Validation Error"."""
    return ApiError(400, 1004, "DNS Validation Error", [(1004, detail)])


def no_route() -> ApiError:
    return ApiError(404, 7000, "No route for that URI")


def no_method(method: str) -> ApiError:
    return ApiError(405, 10405, f"Method {method} not available for that URI.")
