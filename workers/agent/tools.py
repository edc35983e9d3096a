"""The tools the model may call mid-stream, each with a JSON schema.

Arguments are pydantic models: their JSON schema is what the system prompt shows, and
validating against them is what turns a bad call into a clear error result. A tool
returns a JSON-able dict or raises `ToolError`; either way the model is told and the
job goes on. `execute_code` and `lint_code` are child jobs on the execute queue (the
generate worker never runs untrusted code); the others read memory (retriever, SQL),
always the job's workspace's (and the global knowledge), never another workspace's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.history import best_history
from app.core.knowledge import list_knowledge
from workers.agent.children import ChildOutcome, run_child


class ToolError(Exception):
    """A tool could not do what was asked; the message goes back to the model."""


@dataclass(frozen=True)
class ToolContext:
    """What a tool may use: whose job this is (key and workspace), a cancel flag for
    child jobs."""

    job_id: str
    owner: str
    workspace: str
    cancelled: threading.Event
    timeout_s: float


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecuteArgs(_Args):
    language: StrictStr
    code: StrictStr = Field(min_length=1, description="the complete program")
    stdin: StrictStr | None = None


class LintArgs(_Args):
    language: StrictStr
    code: StrictStr = Field(min_length=1)


class SearchArgs(_Args):
    query: StrictStr = Field(min_length=1, max_length=4000)
    language: StrictStr | None = None
    k: StrictInt = Field(default=5, ge=1, le=10)


class KnowledgeArgs(_Args):
    language: StrictStr
    query: StrictStr | None = Field(default=None, max_length=4000)
    limit: StrictInt = Field(default=5, ge=1, le=10)


class HistoryArgs(_Args):
    language: StrictStr
    limit: StrictInt = Field(default=5, ge=1, le=10)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    arguments: type[_Args]
    run: Callable[[ToolContext, Any], dict[str, Any]]

    def schema(self) -> dict[str, Any]:
        """The arguments' JSON schema, trimmed to what a model needs to write a call.

        Every word here is prompt tokens on every generation, so pydantic's titles,
        `anyOf [T, null]` for optional fields and length limits are left out (the
        validation still applies them)."""
        full = self.arguments.model_json_schema()
        properties = {name: _compact(prop) for name, prop in full["properties"].items()}
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if full.get("required"):
            schema["required"] = full["required"]
        return schema

    def describe(self) -> str:
        schema = json.dumps(self.schema(), separators=(",", ":"))
        return f"- {self.name}: {self.description} Arguments: {schema}"


def _compact(prop: dict[str, Any]) -> dict[str, Any]:
    options = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    kept = {k: v for k, v in options[0].items() if k in ("type", "enum", "minimum", "maximum")}
    if prop.get("description"):
        kept["description"] = prop["description"]
    if prop.get("default") is not None:
        kept["default"] = prop["default"]
    return kept


def _check_language(language: str | None) -> None:
    if language is not None and language not in names.LANGUAGES:
        raise ToolError(f"unknown language {language!r}; use one of {', '.join(names.LANGUAGES)}")


def _child_result(outcome: ChildOutcome, what: str) -> dict[str, Any]:
    if outcome.status == names.SUCCEEDED and outcome.result is not None:
        return outcome.result
    if outcome.status == "timeout":
        raise ToolError(f"{what} timed out")
    if outcome.error:
        raise ToolError(f"{what} failed: {outcome.error.get('message', outcome.error)}")
    raise ToolError(f"{what} ended {outcome.status}")


def execute_code(ctx: ToolContext, args: ExecuteArgs) -> dict[str, Any]:
    _check_language(args.language)
    settings = get_settings()
    if len(args.code.encode()) > settings.exec_max_code_bytes:
        raise ToolError(f"code is over {settings.exec_max_code_bytes} bytes")
    request = execution_request(args.language, args.code, stdin=args.stdin)
    return run_execution(ctx, request)


def execution_request(
    language: str, code: str, *, stdin: str | None = None, generation_id: str | None = None
) -> dict[str, Any]:
    """An execute job's request with the server's default limits (as the API builds it)."""
    settings = get_settings()
    return {
        "language": language,
        "code": code,
        "stdin": stdin,
        "timeout_s": settings.exec_timeout_s,
        "memory_mb": settings.exec_memory_mb,
        "lint": False,
        "generation_id": generation_id,
    }


def run_execution(ctx: ToolContext, request: dict[str, Any]) -> dict[str, Any]:
    outcome = run_child(
        parent_id=ctx.job_id,
        owner=ctx.owner,
        workspace=ctx.workspace,
        kind="execute",
        request=request,
        timeout_s=ctx.timeout_s,
        cancelled=ctx.cancelled,
    )
    return {**_child_result(outcome, "the execution"), "job_id": outcome.job_id}


def lint_code(ctx: ToolContext, args: LintArgs) -> dict[str, Any]:
    _check_language(args.language)
    outcome = run_child(
        parent_id=ctx.job_id,
        owner=ctx.owner,
        workspace=ctx.workspace,
        kind="lint",
        request={"language": args.language, "code": args.code},
        timeout_s=ctx.timeout_s,
        cancelled=ctx.cancelled,
    )
    return {**_child_result(outcome, "linting"), "job_id": outcome.job_id}


def search_code(ctx: ToolContext, args: SearchArgs) -> dict[str, Any]:
    from workers.retrieval.service import get_retriever

    _check_language(args.language)
    hits = get_retriever().search(
        args.query, language=args.language, k=args.k, workspace=ctx.workspace
    )
    return {"items": [_brief(hit.to_json()) for hit in hits]}


def get_knowledge(ctx: ToolContext, args: KnowledgeArgs) -> dict[str, Any]:
    _check_language(args.language)
    if args.query:
        from workers.retrieval.service import get_retriever

        hits = get_retriever().search(
            args.query, language=args.language, k=args.limit, item_types=["knowledge"],
            workspace=ctx.workspace,
        )  # fmt: skip
        return {
            "items": [{"id": h.item_id, "title": h.title, "content": h.details.body} for h in hits]
        }
    with session_scope() as session:
        rows = list_knowledge(
            session=session, language=args.language, limit=args.limit, workspace=ctx.workspace
        )
        return {"items": [{"id": r.id, "title": r.title, "content": r.content} for r in rows]}


def get_history(ctx: ToolContext, args: HistoryArgs) -> dict[str, Any]:
    _check_language(args.language)
    with session_scope() as session:
        rows = best_history(
            session=session, language=args.language, limit=args.limit, workspace=ctx.workspace
        )
        return {
            "items": [
                {
                    "id": r.id,
                    "task": r.task,
                    "code": r.code,
                    "feedback_score": r.feedback_score,
                    "last_execution_status": r.last_execution_status,
                }
                for r in rows
                if not (r.feedback_count and (r.feedback_score or 0) < 0.5)
            ]
        }


def _brief(hit: dict[str, Any]) -> dict[str, Any]:
    keep = ("item_type", "item_id", "title", "snippet", "similarity", "feedback_score")
    return {k: hit[k] for k in keep}


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "execute_code",
            "Run a program in the sandbox (no network); returns status, exit_code, stdout, stderr.",
            ExecuteArgs,
            execute_code,
        ),
        Tool("lint_code", "Lint code; returns the linter's issues.", LintArgs, lint_code),
        Tool(
            "search_code",
            "Find past solutions and snippets similar to a query.",
            SearchArgs,
            search_code,
        ),
        Tool(
            "get_knowledge",
            "Curated snippets of a language, best first.",
            KnowledgeArgs,
            get_knowledge,
        ),
        Tool(
            "get_history",
            "The best-rated past generations of a language.",
            HistoryArgs,
            get_history,
        ),
    )
}
