"""Chat completions served as ordinary generate jobs.

A request becomes a `generate` job (listed in /jobs, memory and feedback apply) whose
request carries the OpenAI conversation (`messages`), sampling, `stop`, `seed` and the
caller's tools (`client_tools`). The answer is read from the job's event stream with
the same exactly-once relay as `/jobs/{id}/events`: token events become content deltas
(all tokens of one batch in one delta), a client `tool_call` event becomes a
`tool_calls` delta, `done` the last chunk. A client that goes away, streaming or not,
cancels its job (the worker stops within a token).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from celery import Celery
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.api.cancel import cancel_job
from app.api.event_hub import Batch, EventHub
from app.api.openai.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChunkWriter,
    InvalidRequest,
    completion_body,
    error_body,
)
from app.api.sse import follow_batches, stored_final_event
from app.api.submit import submit_job
from app.core.auth import Caller
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.errors import Conflict, NotFound
from app.core.models import Job

log = logging.getLogger(__name__)
MODEL_ALIAS = "codeloop"  # always served, whatever model the workers hold


def served_models() -> list[str]:
    """`codeloop`, and the configured model id when it names one (not "auto")."""
    model_id = get_settings().model_id
    return [MODEL_ALIAS] if model_id in ("auto", MODEL_ALIAS) else [MODEL_ALIAS, model_id]


def job_request(body: ChatCompletionRequest) -> dict[str, Any]:
    """The generate job's request for a chat completion (see `workers/agent/options.py`)."""
    settings = get_settings()
    body.refuse_unsupported()
    messages = [_job_message(m) for m in body.messages]
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users or not all(text.strip() for text in users):  # as the schema says
        raise InvalidRequest("messages", "the conversation needs user messages with text")
    task = users[-1]
    if len(task) > settings.max_task_chars:
        raise InvalidRequest(
            "messages",
            f"the last user message is {len(task)} characters; the limit is "
            f"{settings.max_task_chars}",
            "context_length_exceeded",
        )
    max_new = body.max_new_tokens
    if max_new is not None and max_new > settings.max_new_tokens_cap:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise InvalidRequest(param, f"{param} must be at most {settings.max_new_tokens_cap}")
    tools = [] if body.tool_choice == "none" else body.tools or []
    return {
        "task": task,
        "language": body.language,
        "project_id": None,
        "max_new_tokens": max_new or settings.max_new_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "repetition_penalty": None,
        "seed": body.seed,
        "stop": body.stop,
        "use_tools": True,
        "use_memory": True,
        "reuse": False,
        "callback_url": body.callback_url,
        "messages": messages,
        "client_tools": [
            {
                "name": t.function.name,
                "description": t.function.description or "",
                "parameters": t.function.parameters or {"type": "object", "properties": {}},
            }
            for t in tools
        ],
    }


def _job_message(message: ChatMessage) -> dict[str, Any]:
    """One turn as the agent reads it: `{"role", "content"}`; a replayed assistant tool
    call is written back in the agent's call markup, a tool result keeps its call id."""
    role = "system" if message.role == "developer" else message.role
    content = message.text()
    out: dict[str, Any] = {"role": role, "content": content}
    if message.role == "assistant" and message.tool_calls:
        calls = "".join(
            f"<function>{c.function.name}</function>{c.function.arguments or '{}'}"
            for c in message.tool_calls
        )
        out["content"] = content + calls
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id or ""
    return out


async def submit(request: Request, caller: Caller, job_body: dict[str, Any]) -> str:
    def run() -> str:
        with session_scope() as session:
            job, _created = submit_job(
                request, session, kind="generate", owner=caller.owner,
                workspace=caller.workspace, body=job_body,
            )  # fmt: skip
            return job.id

    return await run_in_threadpool(run)


@dataclass
class Completion:
    """One chat completion's job and how to reach it."""

    job_id: str
    owner: str
    model: str
    hub: EventHub
    client: aioredis.Redis
    celery: Celery
    redis_sync: redis.Redis
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())

    @property
    def id(self) -> str:
        return f"chatcmpl-{self.job_id}"

    def batches(self) -> AsyncIterator[Batch]:
        return follow_batches(
            self.hub, self.client, self.job_id, 0, stored_final_event(self.job_id)
        )

    async def cancel(self) -> None:
        """Stop the job (the caller went away); finishing anyway is not an error here."""

        def run() -> None:
            with session_scope() as session:
                try:
                    cancel_job(session, self.celery, self.redis_sync, self.job_id, self.owner)
                except (Conflict, NotFound):
                    return

        with anyio.CancelScope(shield=True):
            await run_in_threadpool(run)

    async def stream(self, include_usage: bool) -> AsyncIterator[bytes]:
        """The completion as `chat.completion.chunk` SSE lines, then `data: [DONE]`."""
        chunks = ChunkWriter(self.id, self.model, self.created, include_usage)
        finished = False
        tool_index = 0
        try:
            yield chunks.role()
            async for batch in self.batches():
                out: list[bytes] = []
                text: list[str] = []
                for event, _sse in batch:
                    if event.type == "token":
                        text.append(json.loads(event.data_json)["text"])
                        continue
                    if text:
                        out.append(chunks.content("".join(text)))
                        text = []
                    if event.type == "tool_call":
                        call = event.data
                        if call.get("origin") == "client":
                            out.append(
                                chunks.tool_call(
                                    tool_index, call["call_id"], call["name"], call["arguments"]
                                )
                            )
                            tool_index += 1
                    elif event.is_terminal:
                        finished = True
                        outcome = await self._outcome(event.type, event.data)
                        if outcome.error is not None:
                            out.append(chunks.error(outcome.error))
                        else:
                            out.append(chunks.finish(outcome.finish_reason, outcome.usage))
                if text:
                    out.append(chunks.content("".join(text)))
                if out:
                    yield b"".join(out)
        except (RedisError, OSError, TimeoutError, SQLAlchemyError) as exc:  # say so in-band
            log.warning("chat completion %s lost its events: %s", self.job_id, exc)
            yield chunks.error(
                error_body(
                    "the job's events are unavailable; it goes on, see its job",
                    "server_error",
                    code="service_unavailable",
                )
            )
        finally:
            if not finished:
                await self.cancel()

    async def _outcome(self, type_: str, data: dict[str, Any]) -> _Outcome:
        if type_ == "status" and data.get("status") == "cancelled":
            # Cancelled from elsewhere (POST /jobs/{id}/cancel): the partial answer is in
            # the job's result; it ends like a stop.
            result = await run_in_threadpool(self._stored_result)
            return _Outcome("stop", result.get("usage"), result)
        return _outcome(type_, data)

    def _stored_result(self) -> dict[str, Any]:
        with session_scope() as session:
            job = session.get(Job, self.job_id)
            return dict(job.result or {}) if job is not None else {}

    async def wait(self, request: Request) -> tuple[int, dict[str, Any]]:
        """The finished completion as (status, body); cancels the job if the client leaves."""
        terminal: tuple[str, dict[str, Any]] | None = None
        left = False
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                nonlocal left
                while (await request.receive())["type"] != "http.disconnect":
                    continue
                left = True
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            async for batch in self.batches():
                event = batch[-1][0]
                if event.is_terminal:
                    terminal = (event.type, event.data)
            group.cancel_scope.cancel()
        if terminal is None:
            if left:
                await self.cancel()
            return 499, error_body("the client closed the request", "invalid_request_error")
        outcome = await self._outcome(*terminal)
        if outcome.error is not None:
            return outcome.status, outcome.error
        result = outcome.result or {}
        return 200, completion_body(
            self.id, self.model, self.created, result, outcome.finish_reason
        )


@dataclass
class _Outcome:
    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    status: int = 200


def _outcome(type_: str, data: dict[str, Any]) -> _Outcome:
    """What a job's terminal event means for the completion."""
    if type_ == "done":
        reason = data.get("finish_reason") or "stop"
        if any(c.get("origin") == "client" for c in data.get("tool_calls") or []):
            reason = "tool_calls"
        reason = reason if reason in ("stop", "length", "tool_calls") else "stop"
        return _Outcome(reason, data.get("usage"), data)
    if type_ == "error":
        if data.get("type") == "prompt_too_long":
            return _Outcome(
                error=error_body(
                    str(data.get("message")),
                    "invalid_request_error",
                    param="messages",
                    code="context_length_exceeded",
                ),
                status=400,
            )
        return _Outcome(
            error=error_body(
                str(data.get("message") or "generation failed"),
                "server_error",
                code=str(data.get("type") or "failed"),
            ),
            status=500,
        )
    status = data.get("status")  # a terminal status without `done`: the job failed
    return _Outcome(
        error=error_body(f"the job ended {status}", "server_error", code=str(status)),
        status=500,
    )
