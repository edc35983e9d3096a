"""The one interface between the agent and a model (as vLLM's engine client).

An `Engine` turns a conversation into streamed text. It knows nothing of tools,
memory or jobs: the agent decides what to ask; the engine only decodes, calls
`on_text` with every increment (never half a character), and stops as soon as
`should_stop()` returns True (checked after every token: cancellation, a complete
tool call, a stop string). Keep it this narrow: batching goes behind it.

Implementations: `TransformersEngine` (the real model, `workers.llm`), and
`workers.agent.scripted.ScriptedEngine` (plays back given text, for tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from workers.llm import LoadedModel, SamplingParams

Messages = list[dict[str, str]]
EngineFinish = Literal["stop", "length", "cancelled"]


@dataclass
class EngineOutcome:
    """One decoding turn. `finish_reason` is "cancelled" whenever `should_stop` ended it."""

    text: str
    finish_reason: EngineFinish
    prompt_tokens: int
    completion_tokens: int
    first_token_ms: float | None
    total_ms: float


class Engine(Protocol):
    model_id: str

    @property
    def context_window(self) -> int | None:
        """Tokens the model reads at most (prompt + completion); None: unknown."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` with the model's own tokenizer (no special tokens)."""

    def prompt_tokens(self, messages: Messages) -> int:
        """Tokens of `messages` rendered through the chat template, ready to answer."""

    def generate(
        self,
        messages: Messages,
        params: SamplingParams,
        *,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> EngineOutcome:
        """Answer `messages`, streaming increments to `on_text`."""


class TransformersEngine:
    """A Hugging Face causal LM loaded by `workers.llm.load_model_with_gpu`."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id

    @property
    def context_window(self) -> int | None:
        value = getattr(self.loaded.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def count_tokens(self, text: str) -> int:
        return len(self.loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: Messages) -> int:
        rendered = self.loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True
        )
        return len(rendered["input_ids"])

    def generate(
        self,
        messages: Messages,
        params: SamplingParams,
        *,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> EngineOutcome:
        from workers.llm import generate_stream

        outcome = generate_stream(
            self.loaded, messages, params, on_text=on_text, should_stop=should_stop
        )
        return EngineOutcome(
            text=outcome.text,
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            first_token_ms=outcome.first_token_ms,
            total_ms=outcome.total_ms,
        )
