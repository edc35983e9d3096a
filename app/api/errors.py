"""One error shape for every failure: `{"error": {"type", "message", "detail"}}`.

`error_responses(...)` is how a route declares the errors it can answer, in that shape,
for /openapi.json: the fuzz test (tests/fuzz) fails on any status a route answers but
does not declare, and on any error body that does not match `ErrorResponse`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import ApiError

log = logging.getLogger(__name__)

# A dependency that cannot be reached (SQL down, pool exhausted, Redis gone): 503, so
# clients retry, rather than the 500 that would say the request itself broke us.
DEPENDENCY_DOWN = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeout,
    RedisConnectionError,
    RedisTimeoutError,
)


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="a stable machine-readable name, e.g. `invalid_input`")
    message: str = Field(description="what went wrong, for people")
    detail: Any = Field(description="structured facts (the field, the limit), or null")


class ErrorResponse(BaseModel):
    """SPEC's error shape (every status, 422 included), exactly: nothing else."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorBody


_RETRY_AFTER = {
    "description": "seconds to wait before trying again",
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}
# What each status means on this API; a route names the ones it can answer.
_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "the body is not JSON, or a header or cursor is malformed"},
    401: {"description": "missing or invalid API key (`Authorization: Bearer <key>`)"},
    404: {"description": "no such resource, or not the caller's"},
    409: {"description": "the resource's state does not allow this"},
    413: {"description": "the body, or one of its fields, is over a server limit"},
    422: {"description": "the request does not match its schema"},
    429: {
        "description": "a quota of the key is spent",
        "headers": {"Retry-After": {**_RETRY_AFTER, "required": True}},
    },
    503: {
        "description": "a dependency is down or the queue is full; try again",
        "headers": {"Retry-After": _RETRY_AFTER},
    },
}


def error_responses(
    *statuses: int,
    model: type[BaseModel] = ErrorResponse,
    notes: dict[int, str] | None = None,
) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer these error statuses (in `model`'s
    shape); `notes` says what a status means on that route, where the usual words don't."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        declared[status] = {**_ERRORS[status], "model": model}
        if notes and status in notes:
            declared[status]["description"] = notes[status]
    return declared


def allowed_methods(request: Request) -> set[str]:
    """Every method the documented routes serve at this path (what a 405's `Allow` lists).

    Starlette's 405 lists only the first route that matched the path, so a path served by
    two routes (`GET` and `POST /optimize/retriever`) advertised half its methods.
    Undocumented routes (the OpenAI surface's catch-all) do not count.
    """
    methods: set[str] = set()
    path = request.scope["path"]
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if getattr(route, "include_in_schema", False) and regex and regex.match(path):
            methods |= set(route.methods or ())
    return methods


_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(
    status: int,
    type_: str,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "detail": detail}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
        for err in exc.errors()
    ]


def _document_errors(app: FastAPI) -> None:
    """Serve /openapi.json without FastAPI's own 422 (`HTTPValidationError`, a shape this
    API never sends): routes declare theirs with `error_responses`, and a route that
    answers no 422 (the OpenAI surface answers 400) must not advertise one."""
    build = app.openapi
    default_422 = {"$ref": "#/components/schemas/HTTPValidationError"}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    content = responses.get("422", {}).get("content", {})
                    if content.get("application/json", {}).get("schema") == default_422:
                        del responses["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    _document_errors(app)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.type, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = _validation_detail(exc)
        if any(d["type"] == "json_invalid" for d in detail):
            return error_response(400, "bad_request", "request body is not valid JSON", detail)
        first = detail[0] if detail else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg", "invalid"))
        return error_response(422, "invalid_input", message, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        allowed = allowed_methods(request) if exc.status_code == 405 else set()
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
        return error_response(exc.status_code, type_, str(exc.detail), None, headers)

    async def _dependency_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
        return error_response(
            503,
            "unavailable",
            "a service this request needs is unreachable; retry shortly",
            None,
            {"Retry-After": "5"},
        )

    for exc_type in DEPENDENCY_DOWN:
        app.add_exception_handler(exc_type, _dependency_down)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal_error", "internal server error")
