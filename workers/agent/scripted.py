"""An engine that plays back given text, token by token, for tests of the agent.

It behaves like a model as far as the agent can tell: increments arrive one "token"
at a time, `should_stop` is checked after each (so a tool call or a cancel stops it
mid-turn), `max_new_tokens` cuts a turn short with finish reason "length", and every
turn reports prompt and completion token counts.

A script is JSON (`MODEL_ID=scripted:/path/to/script.json` makes a generate worker use
it):

    {"token_chars": 3, "token_delay_s": 0, "context_window": 8192,
     "rules": [{"match": "regex on the task", "turns": ["turn 1", ["turn", " 2"]],
                "repeat_last": false}],
     "default": ["a reply when no rule matches"]}

Which turn is played is decided by the conversation alone: the number of assistant
messages already in it (a tool call's continuation, a repair round). A turn is a
string cut into `token_chars`-character tokens, or an explicit list of tokens (to pin
exactly where a tag splits). With `repeat_last`, the last turn repeats forever (a
model that never stops calling tools).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.agent.engine import EngineOutcome, Messages

if TYPE_CHECKING:
    from workers.llm import SamplingParams

Turn = str | list[str]


@dataclass
class ScriptRule:
    match: re.Pattern[str]
    turns: list[Turn]
    repeat_last: bool = False


@dataclass
class ScriptedEngine:
    rules: list[ScriptRule] = field(default_factory=list)
    default: list[Turn] = field(default_factory=list)
    token_chars: int = 3
    token_delay_s: float = 0.0
    window: int | None = 8192
    model_id: str = "scripted"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, model_id: str = "scripted") -> ScriptedEngine:
        rules = [
            ScriptRule(re.compile(r["match"], re.S), list(r["turns"]), bool(r.get("repeat_last")))
            for r in data.get("rules", [])
        ]
        return cls(
            rules=rules,
            default=list(data.get("default", [])),
            token_chars=int(data.get("token_chars", 3)),
            token_delay_s=float(data.get("token_delay_s", 0.0)),
            window=data.get("context_window", 8192),
            model_id=model_id,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedEngine:
        return cls.from_dict(json.loads(Path(path).read_text()), model_id=f"scripted:{path}")

    @property
    def context_window(self) -> int | None:
        return self.window

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.token_chars)

    def prompt_tokens(self, messages: Messages) -> int:
        return sum(self.count_tokens(m["content"]) + 4 for m in messages) + 2

    def generate(
        self,
        messages: Messages,
        params: SamplingParams,
        *,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> EngineOutcome:
        started = time.perf_counter()
        prompt_tokens = self.prompt_tokens(messages)
        tokens = self._tokens(self._turn(messages))
        pieces: list[str] = []
        first_ms: float | None = None
        finish = "stop"
        if should_stop():
            return EngineOutcome("", "cancelled", prompt_tokens, 0, None, _ms(started))
        for token in tokens:
            if len(pieces) >= params.max_new_tokens:
                finish = "length"
                break
            if self.token_delay_s:
                time.sleep(self.token_delay_s)
            if first_ms is None:
                first_ms = _ms(started)
            pieces.append(token)
            on_text(token)
            if should_stop():
                finish = "cancelled"
                break
        return EngineOutcome(
            text="".join(pieces),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=prompt_tokens,
            completion_tokens=len(pieces),
            first_token_ms=first_ms,
            total_ms=_ms(started),
        )

    def _turn(self, messages: Messages) -> Turn:
        task = next((m["content"] for m in messages if m["role"] == "user"), "")
        turn_index = sum(m["role"] == "assistant" for m in messages)
        rule = next((r for r in self.rules if r.match.search(task)), None)
        turns, repeat = (rule.turns, rule.repeat_last) if rule else (self.default, False)
        if not turns:
            return ""
        if turn_index < len(turns):
            return turns[turn_index]
        return turns[-1] if repeat else ""

    def _tokens(self, turn: Turn) -> list[str]:
        if isinstance(turn, list):
            return [t for t in turn if t]
        size = self.token_chars
        return [turn[i : i + size] for i in range(0, len(turn), size)]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
