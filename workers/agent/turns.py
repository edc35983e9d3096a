"""One answer from the model: decoding turns joined by tool calls.

The model decodes until it stops, runs out of budget, or completes a tool call. A call
is run (or, for a client tool, handed back to the caller) and the conversation goes
on from its result, until the model answers without calling anything. All turns of
one answer share one token budget (`max_new_tokens`), and the prompt of every turn
must fit the model's context window.

Only visible text becomes `token` events: the parser holds back anything that could
be markup, and the stop strings are held back the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from workers.agent.calls import ToolRunner
from workers.agent.engine import Engine, Messages
from workers.agent.markup import StopSequences, ToolCallParser
from workers.agent.prompts import with_tool_result
from workers.jobrun import JobContext
from workers.llm import SamplingParams

FinishReason = str  # "stop" | "length" | "cancelled" | "tool_calls"


@dataclass
class Answer:
    text: str = ""
    finish_reason: FinishReason = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class TokenStream:
    """Numbers the job's token events across answers; `round` marks repair rounds."""

    ctx: JobContext
    sent: int = 0
    first_at: float | None = None  # perf_counter() of the first token event

    def emit(self, text: str, round_no: int) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()
        data: dict[str, Any] = {"index": self.sent, "text": text}
        if round_no:
            data["round"] = round_no
        self.sent += 1
        self.ctx.emit("token", data, progress_tokens=self.sent)


def answer(
    *,
    engine: Engine,
    ctx: JobContext,
    messages: Messages,
    sampling: SamplingParams,
    runner: ToolRunner,
    tools_on: bool,
    stop: list[str],
    tokens: TokenStream,
    round_no: int = 0,
) -> Answer:
    """Decode one answer to `messages`, running the model's tool calls along the way."""
    result = Answer()
    conversation = list(messages)
    budget = sampling.max_new_tokens
    stops = StopSequences(stop)
    parts: list[str] = []
    window = engine.context_window
    while True:
        parser = ToolCallParser(enabled=tools_on)
        turn: list[str] = []

        def show(piece: str, turn: list[str] = turn) -> None:
            if piece:
                turn.append(piece)
                tokens.emit(piece, round_no)

        def on_text(piece: str, parser: ToolCallParser = parser) -> None:
            show(stops.feed(parser.feed(piece)))

        def should_stop(parser: ToolCallParser = parser) -> bool:
            return ctx.cancelled.is_set() or parser.stop_requested or stops.stopped

        if parts and window is not None and engine.prompt_tokens(conversation) >= window:
            result.finish_reason = "length"  # tool results filled the window
            break
        outcome = engine.generate(
            conversation,
            replace(sampling, max_new_tokens=budget),
            on_text=on_text,
            should_stop=should_stop,
        )
        show(stops.feed(parser.finish()))
        result.prompt_tokens += outcome.prompt_tokens
        result.completion_tokens += outcome.completion_tokens
        budget -= outcome.completion_tokens
        parts.append("".join(turn))
        call = parser.call
        if ctx.cancelled.is_set():
            result.finish_reason = "cancelled"
            break
        if stops.stopped:
            result.finish_reason = "stop"
            break
        if call is None:
            result.finish_reason = "length" if outcome.finish_reason == "length" else "stop"
            break
        if runner.is_client_tool(call):
            runner.client_call(call)
            result.finish_reason = "tool_calls"
            break
        record = runner.model_call(call)
        if ctx.cancelled.is_set():
            result.finish_reason = "cancelled"
            break
        if budget <= 0:
            result.finish_reason = "length"
            break
        if runner.exhausted:  # the model ignored "no more calls": end the answer here
            result.finish_reason = "stop"
            break
        conversation = with_tool_result(conversation, parts[-1], call.markup, record.message())
    tail = stops.finish()
    if tail:
        tokens.emit(tail, round_no)
        parts.append(tail)
    result.text = "".join(parts)
    return result
