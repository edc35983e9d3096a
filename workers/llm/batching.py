"""Step-boundary batching: many generations decoded together on one model.

`StepBatcher` owns one thread that decodes every sequence in flight as one left-padded
batch, one token per step. Between two steps it drops the rows that finished or were
cancelled (their cache goes with them) and admits waiting requests: each is prefilled
alone and its cache joined to the batch, padded on the left to the batch's length. So
a request joins and leaves at a token boundary and never waits for a whole batch.

Everything that is per request stays per request: sampling (greedy, temperature,
top_p, seed through its own `torch.Generator`), the repetition penalty over the
request's own completion (`CompletionRepetitionPenalty`'s rule, row by row), the token
limit, EOS. Tokens go to the requester through its queue; the requester decodes them
and runs its callbacks in its own thread, so a slow or failing caller never stalls
the batch (see `workers.agent.batched.BatchedEngine`).

Admission is honest: at most `max_batch` rows, and the padded cache (rows x longest
row's prompt + token limit) stays within `cache_tokens`; a request that does not fit
waits for rows to leave (a lone request is always admitted).

Measured on CPU (bench/batching.py): faster than transformers' own continuous batching
there, which is why this exists. The cache must be a plain `DynamicCache` (full
attention); a model with sliding-window layers fails its requests with a clear error.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import DynamicCache

from workers.llm.loading import LoadedModel
from workers.llm.streaming import SamplingParams

log = logging.getLogger(__name__)

EndReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class RowEnd:
    """The last item a request's queue receives."""

    reason: EndReason
    error: BaseException | None = None


@dataclass
class BatchRequest:
    """One generation handed to the batcher; `tokens` yields ids, then one `RowEnd`."""

    prompt_ids: list[int]
    params: SamplingParams
    limit: int
    tokens: queue.SimpleQueue[int | RowEnd] = field(default_factory=queue.SimpleQueue)
    # Set by a batcher that names its requests and must act on a cancel at once (the
    # paged one frees the sequence's blocks).
    request_id: str | None = None
    on_cancel: Callable[[], None] | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Drop this request at the next step boundary (idempotent; safe once finished)."""
        first = not self._cancelled.is_set()
        self._cancelled.set()
        if first and self.on_cancel is not None:
            self.on_cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt_ids) + self.limit


@dataclass
class _Row:
    request: BatchRequest
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)


class StepBatcher:
    """Decodes the requests in flight together, one token per step (see module docstring)."""

    def __init__(self, loaded: LoadedModel, *, max_batch: int, cache_tokens: int) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.loaded = loaded
        self.max_batch = max_batch
        self.cache_tokens = cache_tokens
        self._device = torch.device(loaded.device)
        self._eos = set(loaded.eos_token_ids)
        suppress = getattr(loaded.model.generation_config, "suppress_tokens", None) or []
        self._suppress = torch.tensor(list(suppress), dtype=torch.long, device=self._device)
        self._waiting: deque[BatchRequest] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cache length], 0 over left padding
        self._thread = threading.Thread(target=self._loop, name="step-batcher", daemon=True)
        self._thread.start()

    # ---- requester side -------------------------------------------------------------

    def submit(self, request: BatchRequest) -> BatchRequest:
        with self._wake:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    @property
    def in_flight(self) -> int:
        return len(self._rows)

    # ---- the decoding thread ----------------------------------------------------------

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self._waiting and not self._rows:
                        self._wake.wait()
                    if self._closed:
                        break
                self._drop(lambda row: row.request.cancelled, "cancelled")
                self._admit()
                if self._rows:
                    self._step()
        for row in self._rows:
            row.request.tokens.put(RowEnd("cancelled", RuntimeError("the batcher closed")))
        for request in self._waiting:
            request.tokens.put(RowEnd("cancelled", RuntimeError("the batcher closed")))

    def _admit(self) -> None:
        while len(self._rows) < self.max_batch:
            with self._wake:
                if not self._waiting:
                    return
                request = self._waiting[0]
                if request.cancelled:
                    self._waiting.popleft()
                    request.tokens.put(RowEnd("cancelled"))
                    continue
                if self._rows and not self._fits(request):
                    return  # first come, first served: it waits for rows to leave
                self._waiting.popleft()
            try:
                self._prefill(request)
            except Exception as exc:  # this request fails alone
                log.exception("prefill failed")
                request.tokens.put(RowEnd("stop", exc))

    def _fits(self, request: BatchRequest) -> bool:
        longest = max([request.reserved_tokens] + [r.request.reserved_tokens for r in self._rows])
        return (len(self._rows) + 1) * longest <= self.cache_tokens

    def _prefill(self, request: BatchRequest) -> None:
        ids = torch.tensor([request.prompt_ids], dtype=torch.long, device=self._device)
        cache = DynamicCache()
        out = self.loaded.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,  # the last position's logits only, not prompt x vocabulary
        )
        if any(type(layer).__name__ != "DynamicLayer" for layer in _layers(cache)):
            raise RuntimeError("step batching needs full-attention layers (a plain DynamicCache)")
        generator = None
        if request.params.seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(request.params.seed)
        row = _Row(request, generator)
        self._join(row, cache, torch.ones_like(ids))
        self._take(out.logits[:, -1, :].float(), [row])

    def _join(self, row: _Row, cache: DynamicCache, mask: torch.Tensor) -> None:
        if self._cache is None or self._mask is None or not self._rows:
            self._cache, self._mask, self._rows = cache, mask, [row]
            return
        width = max(self._mask.shape[1], mask.shape[1])
        old_pad, new_pad = width - self._mask.shape[1], width - mask.shape[1]
        for old, new in zip(_layers(self._cache), _layers(cache), strict=True):
            old.keys = torch.cat([_pad_left(old.keys, old_pad), _pad_left(new.keys, new_pad)])
            old.values = torch.cat([_pad_left(old.values, old_pad), _pad_left(new.values, new_pad)])
        self._mask = torch.cat([_pad_left(self._mask, old_pad), _pad_left(mask, new_pad)])
        self._rows.append(row)

    def _step(self) -> None:
        assert self._cache is not None and self._mask is not None
        rows = list(self._rows)
        last = torch.tensor([r.generated[-1] for r in rows], dtype=torch.long, device=self._device)
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(rows), 1)], dim=1)
        positions = self._mask.sum(dim=1, keepdim=True) - 1
        try:
            out = self.loaded.model(
                input_ids=last.view(-1, 1),
                attention_mask=self._mask,
                position_ids=positions,
                cache=self._cache,
                use_cache=True,
            )
        except Exception as exc:  # the step itself broke: its rows end with the error
            log.exception("decode step failed for %d rows", len(rows))
            for row in rows:
                row.request.tokens.put(RowEnd("stop", exc))
            self._rows, self._cache, self._mask = [], None, None
            return
        self._take(out.logits[:, -1, :].float(), rows)

    def _take(self, logits: torch.Tensor, rows: list[_Row]) -> None:
        """Pick each row's next token, hand it over, and retire the rows that are done."""
        if self._suppress.numel():
            logits[:, self._suppress] = float("-inf")
        picked = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            params = row.request.params
            if params.temperature > 0 or params.repetition_penalty != 1.0:
                picked[i] = _pick(logits[i], row, params)
            token = int(picked[i])
            row.generated.append(token)
            row.request.tokens.put(token)
        self._drop(lambda row: row.generated[-1] in self._eos, "stop")
        self._drop(lambda row: len(row.generated) >= row.request.limit, "length")

    def _drop(self, done: Any, reason: EndReason) -> None:
        keep = [i for i, row in enumerate(self._rows) if not done(row)]
        if len(keep) == len(self._rows):
            return
        for i, row in enumerate(self._rows):
            if i not in keep:
                row.request.tokens.put(RowEnd(reason))
        self._rows = [self._rows[i] for i in keep]
        if not self._rows or self._cache is None or self._mask is None:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        mask = self._mask.index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # columns that are padding for all
        self._mask = mask[:, start:]
        for layer in _layers(self._cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer key/value holders (`DynamicLayer`: `.keys`, `.values`)."""
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros before the sequence axis (dim 2 of a [B, H, T, D] cache, dim 1 of a mask)."""
    if width == 0:
        return tensor
    axis = 2 if tensor.dim() == 4 else 1
    shape = list(tensor.shape)
    shape[axis] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)


def _pick(scores: torch.Tensor, row: _Row, params: SamplingParams) -> int:
    """One row's next token under its own sampling parameters."""
    if params.repetition_penalty != 1.0:
        seen = row.generated
        if params.penalize_prompt:
            seen = row.request.prompt_ids + seen
        if seen:
            index = torch.tensor(seen, dtype=torch.long, device=scores.device)
            values = scores.gather(0, index)
            penalty = params.repetition_penalty
            scores = scores.scatter(
                0, index, torch.where(values < 0, values * penalty, values / penalty)
            )
    if params.temperature <= 0:
        return int(scores.argmax())
    probs = torch.softmax(scores / params.temperature, dim=-1)
    if params.top_p < 1.0:
        probs = keep_top_p(probs, params.top_p)
    return int(torch.multinomial(probs, 1, generator=row.generator))


def keep_top_p(probs: torch.Tensor, top_p: float | torch.Tensor) -> torch.Tensor:
    """`probs` ([..., vocab]) with the tokens outside the nucleus zeroed: a token stays
    while the mass ranked above it is at most `top_p` (a float, or one per row [..., 1]).
    The one rule of both batchers (`workers.llm.paged` applies it row by row too)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
    sorted_probs = sorted_probs.masked_fill(before > top_p, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def wait_for(tokens: queue.SimpleQueue[int | RowEnd], timeout: float) -> int | RowEnd | None:
    """The next item of a request's queue, or None after `timeout` seconds."""
    try:
        return tokens.get(timeout=timeout)
    except queue.Empty:
        return None
