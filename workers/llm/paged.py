"""Paged continuous batching: transformers' `ContinuousBatchingManager` as a batcher.

`PagedBatcher` has the `StepBatcher` interface (`submit(BatchRequest)`, `close`,
`in_flight`), so `workers.agent.batched.BatchedEngine` drives either. The manager owns
one generation thread, a paged KV cache (blocks of `page_size` tokens, allocated as a
sequence grows, freed when it ends) and a scheduler that mixes prefill chunks (up to
`max_batch_tokens` per forward) with the decoding rows at every step. We add:

- **Per-request sampling**: `workers.llm.row_sampling.RowSampling`, installed as the
  manager's one logits processor, applies each request's `SamplingParams` (greedy or
  not, temperature, top_p, seed, repetition penalty, suppressed tokens) inside the
  step; the manager itself runs greedy. Every parameter is honoured; none is dropped.
- **Streaming and cancel per request.** One dispatcher thread reads the manager's
  output queue and puts each request's new token ids on its `tokens` queue (then one
  `RowEnd`), exactly as the step batcher does; `BatchRequest.cancel` calls
  `cancel_request` at once, and the manager frees the sequence's blocks before its
  next step.
- **Limits.** `max_requests_per_batch` is `max_batch`; a prompt that the cache could
  never hold is refused (`PromptTooLongError`) and a token limit is clamped to what one
  sequence can hold, so no request can wedge the scheduler.

What the manager gives for free, and why it is the CUDA default: admission is by
free blocks (a new sequence is not prefilled while fewer than 15% of blocks are free,
and a starved sequence is preempted and later recomputed, never an out-of-memory), and
prefix sharing: complete blocks stay cached after a sequence ends, so a tool call's
continuation, whose prompt starts with the earlier prompt and completion, reuses their
blocks instead of prefilling them again.

Two of the manager's speed-ups are off here on purpose: CUDA graphs (they would freeze
RowSampling's host-side per-row decisions into one recorded graph) and async batching
(it schedules step n+1 before step n's token is known, so a penalty would lag one
token). Flash attention, when installed, is still switched on by the manager (its
block-table decode path reads the cache in place). `bench/batching_gpu.py` measures
what is left.

This reaches into transformers 5.24's continuous-batching internals (the logits
processor list of the manager, its batch processor's cache and scheduler); `require`
refuses an older transformers with a clear message, and `auto` then keeps the step
batcher.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from workers.llm.batching import BatchRequest, RowEnd
from workers.llm.errors import PromptTooLongError
from workers.llm.loading import LoadedModel
from workers.llm.row_sampling import RowSampling

log = logging.getLogger(__name__)


def require() -> None:
    """Raise `RuntimeError` unless this transformers has the continuous batching we drive
    (importing this module already needs its continuous-batching logits processors)."""
    import transformers
    from transformers.generation.continuous_batching import model_runner
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessorList,
    )

    needs = [
        (model_runner, "infer_max_single_request_tokens"),
        (ContinuousBatchingLogitsProcessorList, "check_kwargs"),
    ]
    missing = [name for owner, name in needs if not hasattr(owner, name)]
    if missing:
        raise RuntimeError(
            f"paged batching needs transformers >= 5.24 (found {transformers.__version__}; "
            f"missing {', '.join(missing)})"
        )


@dataclass
class PagedOptions:
    """The paged cache's shape. `cache_tokens` 0: sized by transformers from free memory."""

    max_batch: int
    cache_tokens: int
    page_size: int
    max_batch_tokens: int


@dataclass
class _Live:
    request: BatchRequest
    sent: int = 0


class PagedBatcher:
    """`ContinuousBatchingManager` with per-request sampling, streaming and cancel."""

    def __init__(self, loaded: LoadedModel, options: PagedOptions) -> None:
        require()
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.utils import WorkloadHints

        if options.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.loaded = loaded
        self.options = options
        self._eos = set(loaded.eos_token_ids)
        model = loaded.model
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # Greedy for the manager: it adds no warper of its own and takes each row's argmax
        # of what RowSampling returns (where a sampled row's draw is already made).
        generation = GenerationConfig(
            do_sample=False,
            max_new_tokens=512,
            eos_token_id=loaded.eos_token_ids or -1,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
        num_blocks = None
        if options.cache_tokens:
            num_blocks = max(1, math.ceil(options.cache_tokens / options.page_size))
        self._cb_config = ContinuousBatchingConfig(
            page_size=options.page_size,
            num_blocks=num_blocks,
            max_batch_tokens=options.max_batch_tokens or None,
            max_requests_per_batch=options.max_batch,
            use_cuda_graph=False,
            use_async_batching=False,
        )
        hints = WorkloadHints(
            max_prompt_length=context, max_generated_length=0, num_requests=options.max_batch
        )
        self.manager: Any = model.init_continuous_batching(
            generation_config=generation,
            continuous_batching_config=self._cb_config,
            workload_hints=hints,
        )
        suppress = getattr(model.generation_config, "suppress_tokens", None) or []
        self.sampling = RowSampling(
            slots=2 * options.max_batch,
            vocab_size=int(model.get_output_embeddings().weight.shape[0]),
            device=torch.device(loaded.device),
            suppress=list(suppress),
        )
        _install(self.manager, self.sampling)
        self._live: dict[str, _Live] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._closed = False
        self._start()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="paged-dispatch", daemon=True
        )
        self._dispatcher.start()

    def _start(self) -> None:
        """Create the batch processor here (so its cache is known), then the loop thread."""
        from transformers.generation.continuous_batching.model_runner import (
            infer_max_single_request_tokens,
        )

        with torch.inference_mode():
            self.manager.warmup()  # builds the cache; captures nothing with graphs off
            self.manager.start()
        cache = self.manager.batch_processor.cache
        self.capacity_tokens = int(infer_max_single_request_tokens(cache))
        self._cache = cache
        self._scheduler = self.manager.batch_processor.scheduler
        log.info(
            "paged cache: %d blocks of %d tokens, %d tokens per forward, %d per sequence",
            cache.num_blocks,
            self.options.page_size,
            cache.max_batch_tokens,
            self.capacity_tokens,
        )

    # ---- requester side ---------------------------------------------------------------

    def submit(self, request: BatchRequest) -> BatchRequest:
        """Queue `request`; its tokens arrive on `request.tokens`, then one `RowEnd`."""
        prompt = len(request.prompt_ids)
        if prompt >= self.capacity_tokens:
            raise PromptTooLongError(
                f"the prompt is {prompt} tokens; the paged cache holds at most "
                f"{self.capacity_tokens} per sequence (GENERATE_CACHE_TOKENS)"
            )
        request.limit = min(request.limit, self.capacity_tokens - prompt)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._ensure_running()
            request.request_id = request_id = f"r{next(self._ids)}"
            self._live[request_id] = _Live(request)
        params = request.params
        kwargs: dict[str, Any] = {
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "repetition_penalty": float(params.repetition_penalty),
            "penalize_prompt": bool(params.penalize_prompt),
        }
        if params.seed is not None:
            kwargs["seed"] = int(params.seed)
        added = self.manager.add_request(
            list(request.prompt_ids),
            request_id=request_id,
            max_new_tokens=request.limit,
            streaming=True,
            eos_token_id=sorted(self._eos) or -1,
            **kwargs,
        )
        if added is None:  # the loop refused it (stopping or dead)
            self._end(request_id, RowEnd("stop", RuntimeError("the paged batcher is not running")))
            return request
        # Hooked once added, so a cancel always reaches the manager after the request.
        request.on_cancel = lambda: self._cancel(request_id)
        if request.cancelled:
            self._cancel(request_id)
        return request

    def close(self) -> None:
        with self._lock:
            self._closed = True
            live = list(self._live)
        for request_id in live:
            self.manager.cancel_request(request_id)
            self._end(request_id, RowEnd("cancelled", RuntimeError("the batcher closed")))
        self.manager.stop(block=True, timeout=30, hard_stop=True)
        self.manager.destroy()
        self._dispatcher.join(timeout=5)
        self._cache = self._scheduler = None  # the paged cache's memory goes with them

    @property
    def in_flight(self) -> int:
        """Sequences the manager holds in its batch (prefilling or decoding)."""
        return 0 if self._scheduler is None else len(self._scheduler.active_requests)

    @property
    def waiting(self) -> int:
        """Sequences held back for free blocks (new, or preempted to be recomputed)."""
        return len(self._scheduler.waiting_requests) + self.manager.input_queue.qsize()

    def holds_cache(self, request: BatchRequest) -> bool:
        """Whether any cache block is still allocated to `request` (for tests and probes)."""
        allocators = self._cache.cache_allocators.values()
        return any(request.request_id in allocator.block_table for allocator in allocators)

    def _cancel(self, request_id: str) -> None:
        with self._lock:
            live = request_id in self._live
        if live:  # a request that already ended has nothing left to free
            self.manager.cancel_request(request_id)
            self._end(request_id, RowEnd("cancelled"))

    def _end(self, request_id: str, end: RowEnd) -> None:
        with self._lock:
            live = self._live.pop(request_id, None)
        if live is None:
            return
        self.sampling.release(request_id)
        live.request.tokens.put(end)

    def _ensure_running(self) -> None:
        """Restart a generation loop that died (its requests were failed): a bad step must
        not leave the worker unable to generate. Called with `_lock` held."""
        status = self.manager.background_thread_status
        if self.manager.is_running() and status.fatal_error is None:
            return
        log.error("the paged generation loop stopped (%s); restarting it", status.fatal_error)
        if self.manager.batch_processor is not None:  # it died rather than being stopped
            self.manager.stop(block=True, timeout=30)
        self.sampling.reset()
        self.manager.switch_to_cb_friendly_attn(
            self.loaded.model, self._cb_config.auto_switch_to_flash
        )
        self._start()

    # ---- the dispatcher thread --------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._closed:
            output = self.manager.get_result(timeout=0.1)
            if output is None:
                if not self.manager.is_running():
                    time.sleep(0.05)  # get_result returns at once then
                continue
            with self._lock:
                live = self._live.get(output.request_id)
            if live is None:  # cancelled meanwhile, or a warm-up request
                continue
            tokens = output.generated_tokens
            for token in tokens[live.sent :]:
                live.request.tokens.put(int(token))
            live.sent = max(live.sent, len(tokens))
            if output.error is not None:
                self._end(output.request_id, RowEnd("stop", RuntimeError(output.error)))
            elif output.is_finished():
                eos = bool(tokens) and tokens[-1] in self._eos
                self._end(output.request_id, RowEnd("stop" if eos else "length"))


def _install(manager: Any, sampling: RowSampling) -> None:
    """Put `sampling` first in the manager's logits processors, before its batch
    processor (and the tensors sized by `tensors_required`) exists."""
    processors = manager.logit_processor
    if manager.batch_processor is not None or not hasattr(processors, "tensors_required"):
        raise RuntimeError("unexpected ContinuousBatchingManager layout for this transformers")
    if len(processors.logits_processor):
        raise RuntimeError(f"the manager built its own logits processors: {processors}")
    processors.logits_processor.insert(0, sampling)
    processors.tensors_required += 1
    processors.supported_keys.update(RowSampling.supported_kwargs)
    processors.do_processing = True
