"""OpenAI's chat-completions wire shapes: the request we accept, the bodies we send.

Unknown request fields are ignored, as OpenAI-compatible servers do (clients send
vendor fields freely). Fields we know but cannot honour are refused with a 400 that
names them (`InvalidRequest`), never silently dropped: `n > 1`, `logprobs`,
`response_format` other than text, `tool_choice` that forces a call, non-text content.
`language` is our extension (`extra_body={"language": "typescript"}`).

Values are read as their JSON Schema says (no `"3"` for 3). The schema also states what
is refused (n at most 1, text parts only, a user message with some text): those
refusals are 400s like any invalid value, so a schema-valid request is one we serve.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic.json_schema import JsonDict

from app.api.schemas import JSON_INTEGER, MAX_SEED, CallbackUrl, Language
from app.core.fields import NOT_BLANK_PATTERN

STOP_MAX, STOP_CHARS = 4, 64
_TEXT_FORMAT: JsonDict = {
    "anyOf": [
        {"type": "object", "properties": {"type": {"enum": ["text", None]}}},
        {"type": "null"},
    ]
}
_Stop = Annotated[str, Field(min_length=1, max_length=STOP_CHARS)]
_STOPS: JsonDict = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": STOP_CHARS},
        {
            "type": "array",
            "maxItems": STOP_MAX,
            "items": {"type": "string", "minLength": 1, "maxLength": STOP_CHARS},
        },
        {"type": "null"},
    ]
}


class InvalidRequest(Exception):
    """A request we cannot serve as asked: a 400 naming `param` (OpenAI's error shape)."""

    def __init__(self, param: str | None, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


def _unsupported(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(param, message, "unsupported_parameter")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Lenient):
    type: str = Field(json_schema_extra={"const": "text"})  # others: 400 (`text()`)
    text: str | None = None


_TEXT: JsonDict = {"type": "string", "pattern": NOT_BLANK_PATTERN}
_TEXT_PART: JsonDict = {"type": "object", "required": ["text"], "properties": {"text": _TEXT}}
# What `job_request` requires of a user message: some text.
_USER_HAS_TEXT: JsonDict = {
    "if": {"required": ["role"], "properties": {"role": {"const": "user"}}},
    "then": {
        "required": ["content"],
        "properties": {"content": {"anyOf": [_TEXT, {"type": "array", "contains": _TEXT_PART}]}},
    },
}


class FunctionCall(_Lenient):
    name: str
    arguments: str = ""


class ToolCall(_Lenient):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    model_config = ConfigDict(json_schema_extra=_USER_HAS_TEXT)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The message's text; parts other than text are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text":
                raise _unsupported("messages", f"content parts of type {part.type!r}: text only")
        return "".join(part.text or "" for part in self.content)


class FunctionDef(_Lenient):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class ChatCompletionRequest(_Lenient):
    model: str = Field(min_length=1, examples=["codeloop"])
    messages: list[ChatMessage] = Field(
        min_length=1,
        json_schema_extra={
            "contains": {"required": ["role"], "properties": {"role": {"const": "user"}}}
        },
    )
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] | None = None
    stop: _Stop | list[_Stop] | None = Field(default=None, json_schema_extra=_STOPS)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), JSON_INTEGER] | None = None
    # What `refuse_unsupported` lets through, said in the schema (`json_schema_extra`).
    n: Annotated[int, Field(ge=1, json_schema_extra={"maximum": 1}), JSON_INTEGER] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = Field(
        default=None, json_schema_extra={"anyOf": [{"enum": ["none", "auto"]}, {"type": "null"}]}
    )
    logprobs: Annotated[bool, Field(json_schema_extra={"const": False})] | None = None
    response_format: dict[str, Any] | None = Field(default=None, json_schema_extra=_TEXT_FORMAT)
    language: Language = "python"
    callback_url: CallbackUrl | None = None  # ours too: the job's webhook

    @field_validator("stop")
    @classmethod
    def _stop_limits(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is None:
            return None
        if len(stops) > STOP_MAX:
            raise ValueError(f"at most {STOP_MAX} stop sequences")
        if any(not s or len(s) > STOP_CHARS for s in stops):
            raise ValueError(f"each stop sequence must be 1-{STOP_CHARS} characters")
        return stops

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise _unsupported("n", "only n=1 is supported")
        if self.logprobs:
            raise _unsupported("logprobs", "logprobs are not supported")
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            raise _unsupported("response_format", "only response_format type 'text' is supported")
        if self.tool_choice not in (None, "none", "auto"):
            raise _unsupported(
                "tool_choice", "tool_choice may be 'auto' or 'none': a call cannot be forced"
            )
        for message in self.messages:
            message.text()

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --- bodies we send ----------------------------------------------------------------


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape (what `error_body` builds)."""

    error: OpenAIErrorBody


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_card(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "codeloop"}


def openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Client tool calls of a job result as OpenAI `tool_calls` (arguments as JSON text)."""
    return [
        {
            "id": call["call_id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": arguments_text(call["arguments"])},
        }
        for call in calls
        if call.get("origin") == "client"
    ]


def arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def completion_body(
    completion_id: str, model: str, created: int, result: dict[str, Any], finish_reason: str
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.get("text") or ""}
    tool_calls = openai_tool_calls(result.get("tool_calls") or [])
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
        ],
        "usage": usage_body(result.get("usage") or {}),
    }


def usage_body(usage: dict[str, Any]) -> dict[str, int]:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class ChunkWriter:
    """`chat.completion.chunk` SSE lines for one completion: one id, the role in the first
    delta, `finish_reason` only in the last choice chunk. Content chunks are built from a
    preformatted head (they are most of a stream; per-chunk cost is what a fast model
    pays for)."""

    def __init__(self, completion_id: str, model: str, created: int, include_usage: bool) -> None:
        self.include_usage = include_usage
        self._head = (
            f'data: {{"id":{json.dumps(completion_id)},"object":"chat.completion.chunk",'
            f'"created":{created},"model":{json.dumps(model)},"choices":['
        )
        self._tail = ',"usage":null}\n\n' if include_usage else "}\n\n"

    def _choice(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return (self._head + json.dumps(choice, separators=(",", ":")) + "]" + self._tail).encode()

    def role(self) -> bytes:
        return self._choice({"role": "assistant", "content": ""})

    def content(self, text: str) -> bytes:
        return (
            self._head
            + '{"index":0,"delta":{"content":'
            + json.dumps(text)
            + '},"logprobs":null,"finish_reason":null}]'
            + self._tail
        ).encode()

    def tool_call(self, index: int, call_id: str, name: str, arguments: Any) -> bytes:
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        rest = {"index": index, "function": {"arguments": arguments_text(arguments)}}
        return self._choice({"tool_calls": [first]}) + self._choice({"tool_calls": [rest]})

    def finish(self, finish_reason: str, usage: dict[str, Any] | None) -> bytes:
        out = self._choice({}, finish_reason)
        if self.include_usage:
            body = self._head + '],"usage":' + json.dumps(usage_body(usage or {})) + "}\n\n"
            out += body.encode()
        return out + DONE

    @staticmethod
    def error(body: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(body).encode() + b"\n\n" + DONE


DONE = b"data: [DONE]\n\n"
