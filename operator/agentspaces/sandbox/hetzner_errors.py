"""API errors of the Hetzner emulator, in the body shape and statuses of the real API."""

from __future__ import annotations

from typing import Any

from .emulator import ApiFailure, Reply

# Error code the real API puts in the JSON body for each status.
STATUS_CODES = {400: "json_error", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 412: "resource_unavailable",
                422: "invalid_input", 423: "locked", 429: "rate_limit_exceeded",
                500: "server_error", 502: "bad_gateway", 503: "unavailable", 504: "timeout"}


class ApiError(ApiFailure):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details if details is not None else {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message,
                          "details": self.details}}

    def reply(self) -> Reply:
        return Reply(self.status, self.body())


def error_body(code: str, message: str, details: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    return {"error": {"code": code, "message": message,
                      "details": details if details is not None else {}}}


def invalid_input(fields: dict[str, list[str]]) -> ApiError:
    """422 invalid_input naming each bad field, like the API's details.fields."""
    names = ", ".join(f"'{name}'" for name in fields)
    plural = "fields" if len(fields) > 1 else "field"
    return ApiError(422, "invalid_input", f"invalid input in {plural} {names}",
                    {"fields": [{"name": n, "messages": m} for n, m in fields.items()]})


def not_found(kind: str, ident: object) -> ApiError:
    return ApiError(404, "not_found", f"{kind} with ID '{ident}' not found")


def locked(kind: str, ident: object) -> ApiError:
    return ApiError(423, "locked", f"{kind} {ident} is locked: an action is running")
