"""Request bodies of the job endpoints, and the job JSON they answer. Server caps are
checked here, so a request over a cap is a 422 (or 413) that says which cap, never a
silent clamp.

The schemas in /openapi.json are exact: what a body's schema allows is accepted and
anything else is refused (tests/fuzz holds the API to that). So bodies are strict (no
`"3"` for 3, no `0` for false, no unknown field) and each model writes the caps of the
settings in force into its schema (`caps`). Byte caps show as `maxLength` in
characters: longer is always over, but a shorter text of wide characters can still be.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)

from app.core.config import Settings, get_settings
from app.core.errors import PayloadTooLarge
from app.core.project_files import PROJECT_ID_PATTERN
from app.core.webhooks import CALLBACK_URL_MAX, CALLBACK_URL_PATTERN, check_callback_url

# The largest integer every JSON client holds exactly (a double's 53 bits).
MAX_SEED = 2**53 - 1

Language = Literal[
    "python", "javascript", "typescript", "java", "react", "tailwind", "vite", "nestjs"
]


def _json_integer(value: Any) -> Any:
    """JSON Schema's `integer` is any number without a fraction: 3.0 as well as 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer field of a strict body (never `true` or `"3"`). Constraints go before it
# (`Annotated[int, Field(ge=1), JSON_INTEGER]`), or the schema shows `ge` instead of
# `minimum`.
JSON_INTEGER = BeforeValidator(_json_integer)
JsonInt = Annotated[int, JSON_INTEGER]


def _advertise_caps(schema: dict[str, Any], cls: type[Any]) -> None:
    """Write `cls.caps(settings)` into the fields' schemas (the non-null branch of each)."""
    for name, keywords in cls.caps(get_settings()).items():
        field = schema["properties"][name]
        for branch in field.get("anyOf", [field]):
            if branch.get("type") != "null":
                branch.update(keywords)


class StrictBody(BaseModel):
    """A JSON body read as its schema says: no coercion, no unknown field."""

    model_config = ConfigDict(
        extra="forbid", strict=True, str_strip_whitespace=False, json_schema_extra=_advertise_caps
    )

    @classmethod
    def caps(cls, settings: Settings) -> dict[str, dict[str, Any]]:
        """JSON Schema keywords per field that come from settings (`maximum`, `maxLength`)."""
        return {}


# Any job POST may name one (SPEC §6); `submit_job` moves it from the request to the job.
CallbackUrl = Annotated[
    str,
    Field(
        max_length=CALLBACK_URL_MAX,
        json_schema_extra={"pattern": CALLBACK_URL_PATTERN},
        description="POSTed the job JSON once the job is final, signed with HMAC-SHA256 "
        "(header X-Codeloop-Signature; see README, Webhooks)",
    ),
    AfterValidator(check_callback_url),
]


class GenerateRequest(StrictBody):
    task: str = Field(min_length=1, description="What the code should do, in plain words.")
    language: Language = "python"
    project_id: str | None = Field(default=None, pattern=PROJECT_ID_PATTERN)
    max_new_tokens: Annotated[int, Field(ge=1), JSON_INTEGER] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=2.0)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), JSON_INTEGER] | None = None
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=4, description="end the answer before any of these strings"
    )
    use_tools: StrictBool = Field(default=True, description="let the model call tools")
    use_memory: StrictBool = Field(
        default=True, description="put knowledge, past generations and project files in the prompt"
    )
    reuse: StrictBool = Field(
        default=True, description="with tests: try verified solutions from memory first"
    )
    tests: str | None = Field(
        default=None,
        min_length=1,
        description="code that exercises the answer (assertions run after it); enables "
        "verify-and-repair",
    )
    max_repair_rounds: Annotated[int, Field(ge=0, le=5), JSON_INTEGER] | None = Field(
        default=None, description="repair rounds after failed tests (default 2)"
    )
    max_tool_calls: Annotated[int, Field(ge=0, le=16), JSON_INTEGER] | None = None
    context_budget_tokens: Annotated[int, Field(ge=0, le=131_072), JSON_INTEGER] | None = None
    stream: StrictBool = False
    callback_url: CallbackUrl | None = None

    @classmethod
    def caps(cls, settings: Settings) -> dict[str, dict[str, Any]]:
        return {
            "task": {"maxLength": settings.max_task_chars},
            "max_new_tokens": {"maximum": settings.max_new_tokens_cap},
            "tests": {"maxLength": settings.exec_max_code_bytes},
        }

    @model_validator(mode="after")
    def _within_caps(self) -> GenerateRequest:
        settings = get_settings()
        if len(self.task) > settings.max_task_chars:
            raise PayloadTooLarge(
                f"task is {len(self.task)} characters; the limit is {settings.max_task_chars}",
                detail={"field": "task", "limit": settings.max_task_chars},
            )
        if self.max_new_tokens is not None and self.max_new_tokens > settings.max_new_tokens_cap:
            raise ValueError(f"max_new_tokens must be at most {settings.max_new_tokens_cap}")
        if self.tests is not None:
            _check_size("tests", self.tests, settings.exec_max_code_bytes)
        return self

    def job_request(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"stream"})
        data["max_new_tokens"] = self.max_new_tokens or get_settings().max_new_tokens
        return data


class ExecuteRequest(StrictBody):
    language: Language
    code: str = Field(min_length=1)
    stdin: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    memory_mb: Annotated[int, Field(ge=16), JSON_INTEGER] | None = None
    lint: bool = False
    generation_id: str | None = Field(default=None, max_length=36)
    callback_url: CallbackUrl | None = None

    @classmethod
    def caps(cls, settings: Settings) -> dict[str, dict[str, Any]]:
        return {
            "code": {"maxLength": settings.exec_max_code_bytes},
            "stdin": {"maxLength": settings.exec_max_stdin_bytes},
            "timeout_s": {"maximum": settings.exec_timeout_cap_s},
            "memory_mb": {"maximum": settings.exec_memory_cap_mb},
        }

    @model_validator(mode="after")
    def _within_caps(self) -> ExecuteRequest:
        settings = get_settings()
        _check_size("code", self.code, settings.exec_max_code_bytes)
        _check_size("stdin", self.stdin or "", settings.exec_max_stdin_bytes)
        if self.timeout_s is not None and self.timeout_s > settings.exec_timeout_cap_s:
            raise ValueError(f"timeout_s must be at most {settings.exec_timeout_cap_s}")
        if self.memory_mb is not None and self.memory_mb > settings.exec_memory_cap_mb:
            raise ValueError(f"memory_mb must be at most {settings.exec_memory_cap_mb}")
        return self

    def job_request(self) -> dict[str, Any]:
        settings = get_settings()
        data = self.model_dump()
        data["timeout_s"] = self.timeout_s or settings.exec_timeout_s
        data["memory_mb"] = self.memory_mb or settings.exec_memory_mb
        return data


class LintRequest(StrictBody):
    language: Language
    code: str = Field(min_length=1)
    callback_url: CallbackUrl | None = None

    @classmethod
    def caps(cls, settings: Settings) -> dict[str, dict[str, Any]]:
        return {"code": {"maxLength": settings.exec_max_code_bytes}}

    @model_validator(mode="after")
    def _within_caps(self) -> LintRequest:
        _check_size("code", self.code, get_settings().exec_max_code_bytes)
        return self

    def job_request(self) -> dict[str, Any]:
        return self.model_dump()


class SearchRequest(StrictBody):
    query: str = Field(min_length=1, max_length=4000)
    language: Language | None = None
    k: JsonInt = Field(default=5, ge=1, le=50)
    callback_url: CallbackUrl | None = None

    def job_request(self) -> dict[str, Any]:
        return self.model_dump()


def _check_size(field: str, value: str, limit: int) -> None:
    size = len(value.encode())
    if size > limit:
        raise PayloadTooLarge(
            f"{field} is {size} bytes; the limit is {limit}",
            detail={"field": field, "limit": limit},
        )


# --- what job endpoints answer (SPEC §6) --------------------------------------------

JobKind = Literal["generate", "execute", "lint", "search", "optimize"]
JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]


class JobProgress(BaseModel):
    tokens: int | None
    max_tokens: int | None


class JobError(BaseModel):
    type: str
    message: str


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str


class JobOut(BaseModel):
    """The job JSON every job endpoint answers (documentation: routes send the dict)."""

    id: str
    kind: JobKind
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    queue_position: int | None
    progress: JobProgress | None
    request: dict[str, Any]
    result: dict[str, Any] | None
    error: JobError | None
    webhook: dict[str, Any] | None = None
    links: JobLinks


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
