"""What a generation job does, step by step. The one place that decides it.

1. Options: the request with the server's defaults (`options.AgentOptions`).
2. Verified reuse: with `tests` (and memory and reuse on), the best solutions memory
   holds for a similar task are run against the tests first; a passing one is the
   answer, no token spent (`result.source: "memory"`).
3. Context: knowledge, well-rated past generations and the project's files that fit
   the token budget, rendered into the prompt as reference material; each item used
   has its usage counted (`result.context`).
4. Answer: the model decodes, calling tools mid-stream (`turns.answer`).
5. Verify and repair: with `tests`, code plus tests run in the sandbox; a failure is
   shown to the model, which answers again, until the tests pass or the rounds run out.
6. Record: one `code_history` row with the last code, every round, the context, the
   verification; its tool calls are already audited in `function_calls`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.history import store_generation
from app.core.models import as_utc, new_id
from workers.agent.calls import ToolRunner
from workers.agent.context import AgentMemory, context_budget
from workers.agent.engine import Engine, Messages
from workers.agent.options import AgentOptions
from workers.agent.prompts import chat_messages, repair_request, task_messages
from workers.agent.reuse import ReuseCandidate
from workers.agent.tools import TOOLS
from workers.agent.turns import Answer, TokenStream, answer
from workers.agent.verify import Verification, verify
from workers.jobrun import JobContext, JobFailed
from workers.llm import extract_code, language_profile
from workers.retrieval.memory import ContextWindow


def run_generation(ctx: JobContext, engine: Engine) -> dict[str, Any]:
    settings = get_settings()
    started = time.perf_counter()
    opts = AgentOptions.from_request(ctx.request, settings)
    generation_id = new_id()
    runner = ToolRunner(
        ctx,
        generation_id=generation_id,
        max_calls=opts.max_tool_calls,
        timeout_s=settings.agent_tool_timeout_s,
        output_chars=settings.agent_tool_output_chars,
        server_tools=frozenset(TOOLS) if opts.use_tools else frozenset(),
        client_tools=frozenset(str(t.get("name")) for t in opts.client_tools),
    )
    tokens = TokenStream(ctx)
    run = _Run(ctx, engine, opts, runner, tokens, generation_id, started)

    memory = AgentMemory(engine) if opts.use_memory else None
    query = memory.embed(opts.task) if memory is not None else None
    failed: list[ReuseCandidate] = []
    if memory is not None and query is not None and opts.tests and opts.reuse:
        for candidate in memory.reuse_candidates(
            query,
            opts.language,
            workspace=ctx.workspace,
            min_similarity=settings.agent_reuse_min_similarity,
            limit=settings.agent_reuse_candidates,
        ):
            checked = verify(
                runner, opts.language, candidate.code, opts.tests, generation_id=generation_id
            )
            if checked.passed:
                return run.from_memory(candidate, checked)
            failed.append(candidate)
            if ctx.cancelled.is_set():
                break

    tools = [TOOLS[name].describe() for name in sorted(runner.server_tools)]
    tools += [_describe_client_tool(tool) for tool in opts.client_tools]

    def render(context: str | None) -> Messages:
        return _messages(opts, context, tools)

    base = render(None)
    window = engine.context_window
    if window is not None and (needed := engine.prompt_tokens(base)) >= window:
        raise JobFailed(
            "prompt_too_long",
            f"the request is {needed} tokens; {engine.model_id} reads at most {window}",
        )
    context = ContextWindow(opts.task, opts.language, 0)
    if memory is not None and query is not None:
        budget = context_budget(
            engine, render, opts.context_budget_tokens, opts.sampling.max_new_tokens
        )
        context = memory.context_window(
            opts.task, opts.language, opts.project_id, budget=budget,
            workspace=ctx.workspace, query=query,
        )  # fmt: skip
        memory.add_candidates(context, failed)
        used = context
        ctx.defer(lambda: memory.record_usage(used))
    messages = render(context.render()) if context.items else base
    return run.from_model(messages, context)


class _Run:
    """The state one job's steps share, and how its result is put together."""

    def __init__(
        self,
        ctx: JobContext,
        engine: Engine,
        opts: AgentOptions,
        runner: ToolRunner,
        tokens: TokenStream,
        generation_id: str,
        started: float,
    ) -> None:
        self.ctx, self.engine, self.opts, self.runner = ctx, engine, opts, runner
        self.tokens, self.generation_id, self.started = tokens, generation_id, started
        self.first_token_ms: float | None = None

    def from_model(self, messages: Messages, context: ContextWindow) -> dict[str, Any]:
        opts = self.opts
        rounds: list[dict[str, Any]] = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        checked: Verification | None = None
        reply = Answer()
        code = ""
        for round_no in range(opts.max_repair_rounds + 1):
            reply = answer(
                engine=self.engine,
                ctx=self.ctx,
                messages=messages,
                sampling=opts.sampling,
                runner=self.runner,
                tools_on=bool(self.runner.server_tools or self.runner.client_tools),
                stop=opts.stop,
                tokens=self.tokens,
                round_no=round_no,
            )
            self._note_first_token()
            usage["prompt_tokens"] += reply.prompt_tokens
            usage["completion_tokens"] += reply.completion_tokens
            code = extract_code(reply.text, opts.language)
            round_record: dict[str, Any] = {"round": round_no, "text": reply.text, "code": code}
            rounds.append(round_record)
            if not opts.tests or reply.finish_reason in ("cancelled", "tool_calls"):
                break
            checked = verify(
                self.runner, opts.language, code, opts.tests, generation_id=self.generation_id
            )
            round_record["verification"] = checked.status
            if checked.execution is not None:
                round_record["execution_status"] = checked.execution.get("status")
            if checked.passed or self.ctx.cancelled.is_set():
                break
            if round_no < opts.max_repair_rounds:
                messages = repair_request(messages, reply.text, checked.execution)
        finish = "cancelled" if self.ctx.cancelled.is_set() else reply.finish_reason
        verification = {
            "status": checked.status if checked is not None else "not_run",
            "rounds": max(len(rounds) - 1, 0),
            "last": checked.execution if checked is not None else None,
        }
        return self._record(
            text=reply.text,
            code=code,
            finish_reason=finish,
            usage=usage,
            context=[item.to_result() for item in context.items],
            rounds=rounds,
            verification=verification,
            source="model",
            reused_from=None,
        )

    def from_memory(self, candidate: ReuseCandidate, checked: Verification) -> dict[str, Any]:
        """A solution from memory passed the tests: it is the answer, shown as one token."""
        fence = language_profile(self.opts.language).fence
        text = f"```{fence}\n{candidate.code.strip()}\n```"
        self.tokens.emit(text, 0)
        self._note_first_token()
        code = candidate.code.strip()
        verification = {"status": "passed", "rounds": 0, "last": checked.execution}
        reused = {
            "round": 0,
            "code": code,
            "verification": "passed",
            "reused_from": candidate.reused_from(),
        }
        return self._record(
            text=text,
            code=code,
            finish_reason="stop",
            usage={"prompt_tokens": 0, "completion_tokens": 0},
            context=[],
            rounds=[reused],
            verification=verification,
            source="memory",
            reused_from=candidate.reused_from(),
        )

    def _record(
        self,
        *,
        text: str,
        code: str,
        finish_reason: str,
        usage: dict[str, int],
        context: list[dict[str, Any]],
        rounds: list[dict[str, Any]],
        verification: dict[str, Any],
        source: str,
        reused_from: dict[str, str] | None,
    ) -> dict[str, Any]:
        opts = self.opts
        last = verification.get("last") or {}
        params = opts.params_json()
        with session_scope() as session:
            store_generation(
                session=session,
                generation_id=self.generation_id,
                job_id=self.ctx.job_id,
                owner=self.ctx.owner,
                workspace=self.ctx.workspace,
                project_id=opts.project_id,
                task=opts.task,
                language=opts.language,
                text=text,
                code=code,
                model=self.engine.model_id,
                params=params,
                finish_reason=finish_reason,
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                context=context,
                rounds=rounds,
                verification_status=verification["status"],
                last_execution_status=last.get("status"),
                source=source,
            )
        return {
            "generation_id": self.generation_id,
            "text": text,
            "code": code,
            "language": opts.language,
            "model": self.engine.model_id,
            "finish_reason": finish_reason,
            "usage": usage,
            "timings": {
                "queue_ms": round(_ms_since(self.ctx.queued_at), 1),
                "first_token_ms": _round(self.first_token_ms),
                "total_ms": round(self._elapsed_ms(), 1),
            },
            "params": params,
            "context": context,
            "tool_calls": [record.to_json() for record in self.runner.records],
            "verification": verification,
            "source": source,
            "reused_from": reused_from,
        }

    def _note_first_token(self) -> None:
        if self.first_token_ms is None and self.tokens.first_at is not None:
            self.first_token_ms = (self.tokens.first_at - self.started) * 1000

    def _elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


def _messages(opts: AgentOptions, context: str | None, tools: list[str]) -> Messages:
    if opts.conversation:
        return chat_messages(opts.conversation, opts.language, context=context, tools=tools)
    return task_messages(opts.task, opts.language, context=context, tools=tools)


def _describe_client_tool(tool: dict[str, Any]) -> str:
    schema = json.dumps(tool.get("parameters") or {"type": "object"}, separators=(",", ":"))
    description = str(tool.get("description") or "").strip()
    return f"- {tool.get('name')}: {description} Arguments: {schema}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms_since(moment: datetime) -> float:
    return max(0.0, (datetime.now(UTC) - as_utc(moment)).total_seconds() * 1000)
