"""Request bodies of the job endpoints. Server caps are checked here, so a request over a
cap is a 422 that says which cap, never a silent clamp.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from app.core.config import get_settings
from app.core.errors import PayloadTooLarge

Language = Literal[
    "python", "javascript", "typescript", "java", "react", "tailwind", "vite", "nestjs"
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class GenerateRequest(_Strict):
    task: str = Field(min_length=1, description="What the code should do, in plain words.")
    language: Language = "python"
    project_id: str | None = Field(default=None, max_length=200)
    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=2.0)
    seed: StrictInt | None = Field(default=None, ge=0, le=2**63 - 1)
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
    max_repair_rounds: StrictInt | None = Field(
        default=None, ge=0, le=5, description="repair rounds after failed tests (default 2)"
    )
    max_tool_calls: StrictInt | None = Field(default=None, ge=0, le=16)
    context_budget_tokens: StrictInt | None = Field(default=None, ge=0, le=131_072)
    stream: StrictBool = False

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


class ExecuteRequest(_Strict):
    language: Language
    code: str = Field(min_length=1)
    stdin: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    memory_mb: int | None = Field(default=None, ge=16)
    lint: bool = False
    generation_id: str | None = Field(default=None, max_length=36)

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


class LintRequest(_Strict):
    language: Language
    code: str = Field(min_length=1)

    @model_validator(mode="after")
    def _within_caps(self) -> LintRequest:
        _check_size("code", self.code, get_settings().exec_max_code_bytes)
        return self

    def job_request(self) -> dict[str, Any]:
        return self.model_dump()


class SearchRequest(_Strict):
    query: str = Field(min_length=1, max_length=4000)
    language: Language | None = None
    k: int = Field(default=5, ge=1, le=50)

    def job_request(self) -> dict[str, Any]:
        return self.model_dump()


def _check_size(field: str, value: str, limit: int) -> None:
    size = len(value.encode())
    if size > limit:
        raise PayloadTooLarge(
            f"{field} is {size} bytes; the limit is {limit}",
            detail={"field": field, "limit": limit},
        )
