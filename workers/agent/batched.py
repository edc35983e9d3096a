"""`BatchedEngine`: the `Engine` interface over a batcher, for concurrent callers.

The batcher is the `StepBatcher` (`workers.llm.batching`, the CPU default) or the
`PagedBatcher` (`workers.llm.paged`: transformers' continuous batching over a paged
cache, the CUDA default); both take a `BatchRequest` and feed its token queue.

Each Celery task thread calls `generate` as it would on `TransformersEngine`; the
calls meet in the batcher, which decodes them together. The caller's own thread
decodes its tokens (UTF-8 safe, `IncrementalDecoder`), calls `on_text`, and checks
`should_stop` after every token, exactly in the order `generate_stream` does. Once
`should_stop` says so (a cancel, a complete tool call, a stop string) the row is
cancelled and leaves the batch at the next step boundary, freeing its cache; tokens
the batcher decoded for it meanwhile are dropped, so the outcome is the same as
stopping after that token. A tool call's continuation is a new `generate` call with
the longer conversation: it joins the batch again (the step batcher prefills its
prompt afresh; the paged one reuses the cached blocks of the prefix it shares).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol

from workers.agent.engine import EngineFinish, EngineOutcome, Messages, TransformersEngine

if TYPE_CHECKING:
    from workers.llm import LoadedModel, SamplingParams
    from workers.llm.batching import BatchRequest

BatcherKind = Literal["step", "paged"]

# How often a caller whose row waits for admission (or for a token) re-checks should_stop.
POLL_S = 0.05


class Batcher(Protocol):
    """What `BatchedEngine` needs of a batcher (`StepBatcher`, `PagedBatcher`)."""

    def submit(self, request: BatchRequest) -> BatchRequest: ...

    def close(self) -> None: ...

    @property
    def in_flight(self) -> int: ...


class BatchedEngine(TransformersEngine):
    """A loaded model whose `generate` calls from several threads are decoded together.

    `kind` "step": `cache_tokens` bounds the padded cache (rows x longest row).
    `kind` "paged": `cache_tokens` is the paged cache's size (0: transformers sizes it
    from free accelerator memory), `page_size` its block size, `max_batch_tokens` the
    tokens of one forward (prefill chunks plus decoding rows; 0: transformers' 8192).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch: int,
        cache_tokens: int,
        kind: BatcherKind = "step",
        page_size: int = 32,
        max_batch_tokens: int = 0,
    ) -> None:
        super().__init__(loaded)
        self.kind = kind
        self.batcher: Batcher
        if kind == "paged":
            from workers.llm.paged import PagedBatcher, PagedOptions

            options = PagedOptions(max_batch, cache_tokens, page_size, max_batch_tokens)
            self.batcher = PagedBatcher(loaded, options)
        else:
            from workers.llm.batching import StepBatcher

            self.batcher = StepBatcher(loaded, max_batch=max_batch, cache_tokens=cache_tokens)

    def close(self) -> None:
        self.batcher.close()

    def generate(
        self,
        messages: Messages,
        params: SamplingParams,
        *,
        on_text: Callable[[str], None],
        should_stop: Callable[[], bool],
    ) -> EngineOutcome:
        from workers.llm import IncrementalDecoder
        from workers.llm.batching import BatchRequest, RowEnd, wait_for
        from workers.llm.streaming import _room_for_completion

        started = time.perf_counter()
        tokenizer = self.loaded.tokenizer
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
            "input_ids"
        ]
        prompt_tokens = len(ids)
        limit = _room_for_completion(self.loaded, prompt_tokens, params.max_new_tokens)
        if should_stop():  # cancelled while queued or while the prompt was prepared
            return EngineOutcome("", "cancelled", prompt_tokens, 0, None, _ms(started))

        request = self.batcher.submit(BatchRequest(list(ids), params, limit))
        decoder = IncrementalDecoder(tokenizer)
        pieces: list[str] = []
        completion, first_at = 0, None
        reason: EngineFinish = "stop"
        try:
            while True:
                item = wait_for(request.tokens, POLL_S)
                if item is None:
                    if should_stop():
                        reason = "cancelled"
                        break
                    continue
                if isinstance(item, RowEnd):
                    if item.error is not None:
                        raise item.error
                    reason = item.reason
                    break
                completion += 1
                first_at = first_at or time.perf_counter()
                piece = decoder.push(item)
                if piece:
                    pieces.append(piece)
                    on_text(piece)
                if should_stop():
                    reason = "cancelled"
                    break
        finally:
            request.cancel()  # a no-op for a row that ended; frees it otherwise
        tail = decoder.flush()
        if tail:
            pieces.append(tail)
            on_text(tail)
        return EngineOutcome(
            text="".join(pieces),
            finish_reason=reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            first_token_ms=None if first_at is None else (first_at - started) * 1000,
            total_ms=_ms(started),
        )


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
