"""Token streaming and cancellation around `model.generate`.

`generate_stream` runs `generate` in the calling thread. A `BaseStreamer` subclass
decodes each new token as it arrives and calls `on_text(increment)` synchronously, so
the caller (the Celery task) publishes events without a queue or a second thread. A
`StoppingCriteria` polls `should_stop()` after every token, so a cancel flag stops
generation within one token and the partial text is kept.

Increments never split a character (see `decoding.IncrementalDecoder`), and their
concatenation is exactly `GenerationOutcome.text`.

This path is benchmarked against plain `generate`: keep per-token work small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from workers.llm.decoding import IncrementalDecoder
from workers.llm.errors import PromptTooLongError
from workers.llm.loading import LoadedModel

FinishReason = Literal["stop", "length", "cancelled"]
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding knobs of one request; `temperature == 0` means greedy (as in the OpenAI API)."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None
    # False: the penalty applies to the completion's own tokens only (see
    # `CompletionRepetitionPenalty`); True: transformers' own, over the prompt as well.
    penalize_prompt: bool = False

    def __post_init__(self) -> None:
        # The API validates requests too; this guards direct callers against values
        # that transformers would reject mid-job or silently misread.
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, repetition_penalty > 0")

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`.

        Greedy passes no sampling flags at all, which is what keeps transformers from
        warning about flags that would be ignored. Sampling sets top_k=0 so only the
        knobs the API exposes apply (transformers would otherwise add top_k=50).
        """
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.penalize_prompt:
            kwargs["repetition_penalty"] = self.repetition_penalty
        if self.temperature <= 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        return kwargs


@dataclass
class GenerationOutcome:
    """What one generation produced; `text` is exactly the concatenation of the increments."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_ms: float | None
    total_ms: float


class CompletionRepetitionPenalty(LogitsProcessor):
    """The CTRL repetition penalty over the tokens generated so far, not the prompt.

    transformers' `repetition_penalty` penalises every token in `input_ids`, the prompt
    included, so a model shown a reference solution in its context is pushed away from
    the very tokens it should copy (and from the task's own identifiers). This applies
    the same rule (divide a positive logit, multiply a negative one) to completion
    tokens only: it still breaks loops, and leaves the context usable.
    """

    def __init__(self, penalty: float, prompt_tokens: int) -> None:
        self.penalty = penalty
        self.prompt_tokens = prompt_tokens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_tokens :]
        if generated.shape[1] == 0 or self.penalty == 1.0:
            return scores
        picked = torch.gather(scores, 1, generated)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, generated, picked)  # type: ignore[return-value]


class _CallbackStreamer(BaseStreamer):
    """Skips the prompt, then hands every completed text increment to `on_text`."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        self._decoder = IncrementalDecoder(tokenizer)
        self._on_text = on_text
        self._prompt_seen = False
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the whole prompt
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        for token_id in value.view(-1).tolist():
            piece = self._decoder.push(token_id)
            if piece:
                self._on_text(piece)

    def end(self) -> None:
        piece = self._decoder.flush()
        if piece:
            self._on_text(piece)


class _CancelCriteria(StoppingCriteria):
    """Stops every sequence once `should_stop()` has returned True (checked once per token)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self._should_stop = should_stop
        self.cancelled = False
        self._keep_going: torch.Tensor | None = None  # reused: generate() only reads it

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        if not self.cancelled and not self._should_stop():
            if self._keep_going is None:
                self._keep_going = input_ids.new_zeros(input_ids.shape[0], dtype=torch.bool)
            return self._keep_going
        self.cancelled = True
        return input_ids.new_ones(input_ids.shape[0], dtype=torch.bool)


def _never() -> bool:
    return False


def generate_stream(
    loaded: LoadedModel,
    messages: Messages,
    params: SamplingParams,
    *,
    on_text: Callable[[str], None],
    should_stop: Callable[[], bool] = _never,
) -> GenerationOutcome:
    """Generate a reply to `messages`, calling `on_text` with each increment as it forms."""
    started = time.perf_counter()
    tokenizer, model = loaded.tokenizer, loaded.model
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(loaded.device)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    limit = _room_for_completion(loaded, prompt_tokens, params.max_new_tokens)
    if should_stop():  # cancelled while queued or while the prompt was prepared
        return GenerationOutcome("", "cancelled", prompt_tokens, 0, None, _ms_since(started))

    pieces: list[str] = []

    def collect(piece: str) -> None:
        pieces.append(piece)
        on_text(piece)

    streamer = _CallbackStreamer(tokenizer, collect)
    cancel = _CancelCriteria(should_stop)
    devices = [torch.cuda.current_device()] if loaded.device.startswith("cuda") else []
    with (
        torch.random.fork_rng(devices=devices, enabled=params.seed is not None),
        torch.inference_mode(),
    ):
        if params.seed is not None:
            torch.manual_seed(params.seed)
        output = model.generate(
            **inputs,
            **{**params.generate_kwargs(), "max_new_tokens": limit},
            eos_token_id=loaded.eos_token_ids or None,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([cancel]),
            logits_processor=penalty_processors(params, prompt_tokens),
        )
    completion = output[0, prompt_tokens:].tolist()
    if cancel.cancelled:
        reason: FinishReason = "cancelled"
    elif completion and completion[-1] in loaded.eos_token_ids:
        reason = "stop"
    elif len(completion) >= limit:
        reason = "length"
    else:
        reason = "stop"
    first_at = streamer.first_token_at
    first_ms = None if first_at is None else (first_at - started) * 1000
    return GenerationOutcome(
        text="".join(pieces),
        finish_reason=reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(completion),
        first_token_ms=first_ms,
        total_ms=_ms_since(started),
    )


def penalty_processors(params: SamplingParams, prompt_tokens: int) -> LogitsProcessorList:
    """The logits processors that carry `repetition_penalty` (none when transformers does)."""
    if params.penalize_prompt or params.repetition_penalty == 1.0:
        return LogitsProcessorList()
    return LogitsProcessorList(
        [CompletionRepetitionPenalty(params.repetition_penalty, prompt_tokens)]
    )


def generate_text(
    loaded: LoadedModel,
    messages: Messages,
    params: SamplingParams,
    *,
    should_stop: Callable[[], bool] = _never,
) -> GenerationOutcome:
    """`generate_stream` for callers that only want the final text."""
    return generate_stream(loaded, messages, params, on_text=_ignore, should_stop=should_stop)


def _room_for_completion(loaded: LoadedModel, prompt_tokens: int, wanted: int) -> int:
    """Clamp max_new_tokens to the context window (past it, models crash or babble)."""
    context = getattr(loaded.model.config, "max_position_embeddings", None)
    if not context:
        return wanted
    if prompt_tokens >= context:
        raise PromptTooLongError(
            f"the prompt is {prompt_tokens} tokens; {loaded.model_id} reads at most {context}"
        )
    return min(wanted, context - prompt_tokens)


def _ignore(_: str) -> None:
    return None


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
