"""Domain errors. The API maps each to an HTTP status and SPEC's error shape:
`{"error": {"type": ..., "message": ..., "detail": ...}}`.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status_code = 400
    type = "bad_request"

    def __init__(
        self, message: str, *, detail: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, "detail": self.detail}}


class BadRequest(ApiError):
    status_code, type = 400, "bad_request"


class Unauthorized(ApiError):
    status_code, type = 401, "unauthorized"


class Forbidden(ApiError):
    status_code, type = 403, "forbidden"


class NotFound(ApiError):
    status_code, type = 404, "not_found"


class Conflict(ApiError):
    status_code, type = 409, "conflict"


class PayloadTooLarge(ApiError):
    status_code, type = 413, "payload_too_large"


class InvalidInput(ApiError):
    status_code, type = 422, "invalid_input"


class TooManyRequests(ApiError):
    status_code, type = 429, "too_many_requests"


class Unavailable(ApiError):
    status_code, type = 503, "unavailable"
