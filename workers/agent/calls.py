"""Running one tool call: validate, bound, run, cap, audit, announce.

Everything a call can do wrong becomes an error *result* the model reads (malformed
JSON, an unknown tool, bad arguments, a repeat of an identical call, the per-job cap,
a timeout, a failing tool): a tool call never fails the job and its markup never
reaches the user. Every call, good or bad, is one `function_calls` row, one
`tool_call` + `tool_result` event pair, and one entry of `result.tool_calls`.

`cap_output` is the one choke point for tool output: whatever a tool returns, the
model and the events get at most `agent_tool_output_chars` characters of it (head and
tail kept, with a "truncated N bytes" marker in between).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app.core.db import session_scope
from app.core.models import FunctionCall
from workers.agent.markup import ParsedCall
from workers.agent.tools import TOOLS, ToolContext, ToolError
from workers.jobrun import JobContext

log = logging.getLogger(__name__)
SUMMARY_CHARS = 2000  # what the audit row keeps of a result


def cap_output(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its head and tail around a marker."""
    if len(text) <= limit:
        return text
    marker_room = 40
    keep = max(limit - marker_room, 0)
    head, tail = text[: keep // 2], text[len(text) - (keep - keep // 2) :] if keep else ""
    dropped = len(text.encode()) - len(head.encode()) - len(tail.encode())
    return f"{head}\n…[truncated {dropped} bytes]…\n{tail}"


@dataclass
class CallRecord:
    call_id: str
    name: str
    arguments: dict[str, Any]
    ok: bool | None  # None: a client tool, answered by the caller, not by us
    origin: str  # "model" | "agent" | "client"
    duration_ms: float
    output: dict[str, Any]  # what the model is told (capped)
    raw: dict[str, Any] | None = None  # the tool's own result, uncapped (for the agent)

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
            "ok": self.ok,
            "origin": self.origin,
            "duration_ms": round(self.duration_ms, 1),
        }

    def message(self) -> str:
        """The call's result as the conversation carries it (see `prompts.tool_result`)."""
        body = json.dumps(self.output, ensure_ascii=False)
        head = f'<function_result name="{self.name}" call_id="{self.call_id}">'
        return f"{head}\n{body}\n</function_result>"


class ToolRunner:
    """The tool calls of one generation job, bounded as the request says."""

    def __init__(
        self,
        job: JobContext,
        *,
        generation_id: str,
        max_calls: int,
        timeout_s: float,
        output_chars: int,
        server_tools: frozenset[str] = frozenset(TOOLS),
        client_tools: frozenset[str] = frozenset(),
    ) -> None:
        self.job = job
        self.generation_id = generation_id
        self.max_calls = max_calls
        self.timeout_s = timeout_s
        self.output_chars = output_chars
        self.server_tools = server_tools
        self.client_tools = client_tools
        self.records: list[CallRecord] = []
        self._seen: dict[str, str] = {}  # canonical (name, arguments) -> first call id
        self._model_calls = 0

    @property
    def calls_left(self) -> int:
        return max(self.max_calls - self._model_calls, 0)

    @property
    def exhausted(self) -> bool:
        """The model was told the cap is reached and called again anyway."""
        return self._model_calls > self.max_calls + 1

    def is_client_tool(self, call: ParsedCall) -> bool:
        return call.error is None and call.name in self.client_tools

    def client_call(self, call: ParsedCall) -> CallRecord:
        """A call of a tool the API caller defined: announced, not run (the caller runs it)."""
        record = CallRecord(
            _call_id(), call.name, _shown_arguments(call.arguments), None, "client", 0.0, {}
        )
        self.job.emit("tool_call", self._call_event(record))
        self._audit(record)
        self.records.append(record)
        return record

    def model_call(self, call: ParsedCall) -> CallRecord:
        """Run a call the model wrote; every failure becomes an error result."""
        self._model_calls += 1
        started = time.perf_counter()
        arguments = _parse_arguments(call.arguments)
        shown = arguments if arguments is not None else _shown_arguments(call.arguments)
        record = CallRecord(_call_id(), call.name or "?", shown, False, "model", 0.0, {})
        self.job.emit("tool_call", self._call_event(record))
        ok, output = self._run_model_call(call, arguments, record.call_id)
        record.ok = ok
        record.output = self._capped(output)
        record.duration_ms = (time.perf_counter() - started) * 1000
        self._finish(record)
        return record

    def agent_call(
        self, name: str, arguments: dict[str, Any], run: Callable[[ToolContext], dict[str, Any]]
    ) -> CallRecord:
        """A call the agent makes itself (verification): same events, audit and bounds."""
        started = time.perf_counter()
        record = CallRecord(_call_id(), name, arguments, False, "agent", 0.0, {})
        self.job.emit("tool_call", self._call_event(record))
        ok, output = self._run_with_timeout(name, run)
        record.ok, record.output = ok, self._capped(output)
        record.raw = output.get("result") if ok else None
        record.duration_ms = (time.perf_counter() - started) * 1000
        self._finish(record)
        return record

    # --- internals -----------------------------------------------------------------------
    def _run_model_call(
        self, call: ParsedCall, arguments: dict[str, Any] | None, call_id: str
    ) -> tuple[bool, dict[str, Any]]:
        if call.error is not None:
            return False, {"error": f"malformed tool call: {call.error}"}
        if arguments is None:
            return False, {"error": "the arguments are not a JSON object"}
        tool = TOOLS.get(call.name) if call.name in self.server_tools else None
        if tool is None:
            known = ", ".join(sorted(self.server_tools | self.client_tools)) or "none"
            return False, {"error": f"unknown tool {call.name!r}; the tools are: {known}"}
        if self._model_calls > self.max_calls:
            return False, {
                "error": f"the limit of {self.max_calls} tool calls is reached; "
                "give your final answer now"
            }
        key = json.dumps([call.name, arguments], sort_keys=True)
        if key in self._seen:
            return False, {
                "error": f"identical to call {self._seen[key]}; it was not run again, "
                "use that call's result"
            }
        self._seen[key] = call_id
        try:
            args = tool.arguments.model_validate(arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors()
            )
            return False, {"error": f"invalid arguments for {tool.name}: {problems}"}
        return self._run_with_timeout(tool.name, lambda ctx: tool.run(ctx, args))

    def _run_with_timeout(
        self, name: str, run: Callable[[ToolContext], dict[str, Any]]
    ) -> tuple[bool, dict[str, Any]]:
        stop = threading.Event()
        ctx = ToolContext(self.job.job_id, self.job.owner, self.job.workspace, stop, self.timeout_s)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = run(ctx)
            except ToolError as exc:
                box["error"] = str(exc)
            except Exception as exc:  # a broken tool must not take the job with it
                log.exception("job %s: tool %s failed", self.job.job_id, name)
                box["error"] = f"{name} failed: {type(exc).__name__}"

        thread = threading.Thread(target=target, name=f"tool-{name}", daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            if self.job.cancelled.is_set():
                stop.set()
            thread.join(timeout=0.05)
        if thread.is_alive():
            stop.set()  # child jobs see it and are cancelled
            return False, {"error": f"{name} timed out after {self.timeout_s:g} s"}
        if "error" in box:
            return False, {"error": box["error"]}
        return True, {"result": box.get("result", {})}

    def _capped(self, output: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(output, ensure_ascii=False)
        if len(text) <= self.output_chars:
            return output
        return {"truncated_output": cap_output(text, self.output_chars)}

    def _call_event(self, record: CallRecord) -> dict[str, Any]:
        return {
            "call_id": record.call_id,
            "name": record.name,
            "arguments": record.arguments,
            "origin": record.origin,
        }

    def _finish(self, record: CallRecord) -> None:
        self.job.emit(
            "tool_result",
            {
                "call_id": record.call_id,
                "name": record.name,
                "ok": record.ok,
                "result": record.output,
            },
        )
        self._audit(record)
        self.records.append(record)

    def _audit(self, record: CallRecord) -> None:
        summary = json.dumps(record.output, ensure_ascii=False)
        with session_scope() as session:
            session.add(
                FunctionCall(
                    job_id=self.job.job_id,
                    generation_id=self.generation_id,
                    call_id=record.call_id,
                    name=record.name[:64],
                    arguments=record.arguments,
                    ok=bool(record.ok),
                    origin=record.origin,
                    result={"summary": cap_output(summary, SUMMARY_CHARS)},
                    duration_ms=record.duration_ms,
                )
            )


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:16]}"


def _parse_arguments(text: str) -> dict[str, Any] | None:
    """The arguments as a dict, or None when the text is not a JSON object."""
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _shown_arguments(text: str) -> dict[str, Any]:
    """Arguments for events and the audit: parsed, or the raw text when unparseable."""
    parsed = _parse_arguments(text)
    return parsed if parsed is not None else {"_raw": text[:SUMMARY_CHARS]}
