"""`/v1`: the OpenAI-compatible endpoints (`GET /v1/models`, `POST /v1/chat/completions`).

Errors on this surface only are in OpenAI's shape, `{"error": {"message", "type",
"param", "code"}}`, so OpenAI clients raise their usual exceptions: `OpenAIRoute`
converts every error a handler or its dependencies raise (auth included). Keys are
the API's own Bearer keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import AsyncRedisDep, CallerDep, HubDep, OwnerDep
from app.api.errors import allowed_methods, error_responses
from app.api.openai.protocol import (
    ChatCompletionRequest,
    InvalidRequest,
    OpenAIErrorResponse,
    error_body,
    model_card,
)
from app.api.openai.serving import Completion, job_request, served_models, submit
from app.api.sse import sse_response
from app.core.errors import ApiError

log = logging.getLogger(__name__)

_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    409: "conflict",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


def openai_error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    type_ = "invalid_request_error" if status < 500 else "server_error"
    body = error_body(message, type_, param=param, code=code or _CODES.get(status))
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return openai_error(400, "We could not parse the JSON body of your request.")
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg", "invalid"))
    return openai_error(400, message, param=param, code="invalid_value")


class OpenAIRoute(APIRoute):
    """A route whose failures, raised anywhere in it, answer in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except InvalidRequest as exc:
                return openai_error(400, exc.message, param=exc.param, code=exc.code)
            except ApiError as exc:
                return openai_error(exc.status_code, exc.message, headers=exc.headers or None)
            except (RedisError, TimeoutError) as exc:
                log.warning("OpenAI surface: Redis unavailable: %s", exc)
                return openai_error(503, "the service is unavailable, try again shortly")
            except StarletteHTTPException as exc:
                headers = dict(exc.headers) if exc.headers else None
                return openai_error(exc.status_code, str(exc.detail), headers=headers)
            except Exception:
                log.exception("unhandled error on the OpenAI surface")
                return openai_error(500, "internal server error")

        return route


# One event of a streamed completion: `data: <chat.completion.chunk>`, last `data: [DONE]`.
_CHUNK_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"const": "message"}},
}

router = APIRouter(
    prefix="/v1",
    tags=["openai"],
    route_class=OpenAIRoute,
    responses=error_responses(401, 429, 503, model=OpenAIErrorResponse),
)


def _model_not_found(model: str) -> JSONResponse:
    return openai_error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


@router.get("/models")
def list_models(owner: OwnerDep) -> dict[str, Any]:
    return {"object": "list", "data": [model_card(m) for m in served_models()]}


@router.get(
    "/models/{model:path}",
    response_model=None,
    responses=error_responses(404, model=OpenAIErrorResponse),
)
def get_model(model: str, owner: OwnerDep) -> dict[str, Any] | JSONResponse:
    return model_card(model) if model in served_models() else _model_not_found(model)


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        200: {
            "description": "a chat.completion, or its chat.completion.chunk stream "
            "(`data: <chunk json>` lines, then `data: [DONE]`)",
            "content": {"text/event-stream": {"itemSchema": _CHUNK_EVENT}},
        },
        **error_responses(
            400,
            404,
            413,
            model=OpenAIErrorResponse,
            notes={400: "the request is invalid or asks for what is not supported"},
        ),
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    caller: CallerDep,
    hub: HubDep,
    client: AsyncRedisDep,
) -> Response:
    """A chat completion, run as a `generate` job (its id in `X-Job-Id`)."""
    if body.model not in served_models():
        return _model_not_found(body.model)
    job_id = await submit(request, caller, job_request(body))
    completion = Completion(
        job_id,
        caller.owner,
        body.model,
        hub,
        client,
        request.app.state.celery,
        request.app.state.redis_sync,
    )
    headers = {"X-Job-Id": job_id}
    if body.stream:
        return sse_response(completion.stream(body.include_usage), headers=headers)
    status, payload = await completion.wait(request)
    return JSONResponse(payload, status_code=status, headers=headers)


@router.api_route(
    "/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False
)
def unknown(path: str, request: Request) -> JSONResponse:
    allowed = allowed_methods(request)
    if allowed:  # a known URL, another method
        return openai_error(
            405,
            f"Method {request.method} is not allowed for /v1/{path}",
            code="method_not_allowed",
            headers={"Allow": ", ".join(sorted(allowed))},
        )
    return openai_error(404, f"Unknown request URL: /v1/{path}", code="unknown_url")
