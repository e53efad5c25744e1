"""API errors of the Hetzner emulator, in the body shape and statuses of the real API."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
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
