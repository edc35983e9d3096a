"""Paged continuous batching: transformers' `ContinuousBatchingManager` as a batcher.

`PagedBatcher` has the `StepBatcher` interface (`submit(BatchRequest)`, `close`,
`in_flight`), so `workers.agent.batched.BatchedEngine` drives either. The manager owns
one generation thread, a paged KV cache (blocks of `page_size` tokens, allocated as a
sequence grows, freed when it ends) and a scheduler that mixes prefill chunks (up to
`max_batch_tokens` per forward) with the decoding rows at every step. We add:

- **Per-request sampling** (`RowSampling`). The manager's own per-request knobs are
  temperature, top_k and top_p; greedy vs sampling is one flag for the whole manager,
  it has no per-request seed, and its repetition penalty is refused for continuous
  batching (it would only see each row's last token). So the manager samples with
  no warpers of its own and `RowSampling`, a continuous-batching logits processor,
  applies each request's rule first: `suppress_tokens`, the repetition penalty over
  the request's own completion (or prompt too, `penalize_prompt`), then a greedy row
  becomes one-hot at its argmax, a seeded row is drawn here with its own
  `torch.Generator` and becomes one-hot at the draw, and any other row gets its
  temperature and nucleus (`keep_top_p`, the step batcher's rule) before the manager
  draws from it. Every parameter of `SamplingParams` is honoured; none is dropped.
  Its state lives in per-request "slots" (rows of small device tensors); the row ->
  slot map of a step rides the manager's own per-request tensor argument.
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

Two of the manager's speed-ups are off here on purpose: CUDA graphs (they freeze the
host-side per-row decisions above into one recorded graph) and async batching (it
schedules step n+1 before step n's token is known, so a penalty would lag one
token). `bench/batching_gpu.py` measures what is left.

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
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from workers.llm.batching import BatchRequest, RowEnd, keep_top_p
from workers.llm.errors import PromptTooLongError
from workers.llm.loading import LoadedModel

log = logging.getLogger(__name__)

NEUTRAL_SLOT = 0  # never assigned: padding rows and unknown requests read neutral values
WARMUP_PREFIX = "__warmup"  # the manager's own warm-up requests


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
class _Slot:
    index: int
    penalty: float
    sampled: bool  # temperature > 0
    generator: torch.Generator | None
    recorded: int = 0  # completion tokens already written into its penalty row


class RowSampling(ContinuousBatchingLogitsProcessor):
    """Each row's own sampling rule, inside the manager's step (see module docstring).

    Runs in the manager's generation thread only: `prepare_tensor_args` (host side,
    just before the forward) assigns slots and records new completion tokens;
    `__call__` (just after it) rewrites the logits. `release` is the one method other
    threads call.
    """

    supported_kwargs: dict[str, type] = {
        "temperature": float,
        "top_p": float,
        "repetition_penalty": float,
        "penalize_prompt": bool,
        "seed": int,
    }
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self, *, slots: int, vocab_size: int, device: torch.device, suppress: list[int]):
        self._device = device
        self._vocab = vocab_size
        self._suppress = torch.tensor(suppress, dtype=torch.long, device=device)
        size = slots + 1  # slot 0 is NEUTRAL_SLOT
        self._factors = torch.ones(size, vocab_size, device=device)  # penalty per seen token
        self._temperature = torch.ones(size, device=device)
        self._top_p = torch.ones(size, device=device)
        self._free = list(range(size - 1, NEUTRAL_SLOT, -1))  # pop() takes the lowest
        self._slots: dict[str, _Slot] = {}
        self._ended: set[str] = set()
        self._ended_lock = threading.Lock()
        self._rows: list[_Slot | None] = []  # this step's rows, in logits order

    def _grow(self) -> None:
        """Double the slots (more requests alive than expected: never refuse one)."""
        old = self._factors.shape[0]
        self._factors = torch.cat([self._factors, torch.ones_like(self._factors)])
        self._temperature = torch.cat([self._temperature, torch.ones_like(self._temperature)])
        self._top_p = torch.cat([self._top_p, torch.ones_like(self._top_p)])
        self._free += range(2 * old - 1, old - 1, -1)

    # ---- any thread -------------------------------------------------------------------

    def release(self, request_id: str) -> None:
        """The request ended (finished, failed or cancelled): free its slot once it is out
        of the batch (a cancel takes effect at the manager's next step)."""
        with self._ended_lock:
            self._ended.add(request_id)

    # ---- the generation thread --------------------------------------------------------

    def reset(self) -> None:
        """Forget every request (the manager was restarted)."""
        for request_id in list(self._slots):
            self._free_slot(request_id)
        with self._ended_lock:
            self._ended.clear()

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(NEUTRAL_SLOT)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        states = [future.state for future in requests_with_new_token]
        in_batch = {state.request_id for state in states}
        with self._ended_lock:
            done = {rid for rid in self._ended if rid not in in_batch}
            self._ended -= done
        for request_id in done:
            self._free_slot(request_id)
        rows: list[_Slot | None] = []
        for state in states:
            if state.request_id.startswith(WARMUP_PREFIX):
                rows.append(None)
                continue
            slot = self._slots.get(state.request_id) or self._assign(state)
            self._record(slot, state)
            rows.append(slot)
        self._rows = rows
        indices = [NEUTRAL_SLOT if slot is None else slot.index for slot in rows]
        return torch.tensor(indices, dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        """The manager takes each row's argmax next: a greedy row is left at its (suppressed,
        penalised) logits; a sampled row gets +inf at the token drawn here."""
        rows = self._rows[: scores.shape[0]]
        if not rows:
            return scores
        device = scores.device
        if self._suppress.numel():
            scores = scores.index_fill(1, self._suppress, float("-inf"))
        penalised = [i for i, slot in enumerate(rows) if slot is not None and slot.penalty != 1.0]
        if penalised:
            at = torch.tensor(penalised, device=device)
            factors = self._factors.index_select(0, self._slot_indices(rows, penalised))
            picked = scores.index_select(0, at)
            picked = torch.where(picked < 0, picked * factors, picked / factors)
            scores = scores.index_copy(0, at, picked)
        sampled = [i for i, slot in enumerate(rows) if slot is not None and slot.sampled]
        if not sampled:
            return scores
        slots = self._slot_indices(rows, sampled)
        at = torch.tensor(sampled, device=device)
        temperature = self._temperature.index_select(0, slots).unsqueeze(1)
        probs = torch.softmax(scores.index_select(0, at) / temperature, dim=-1)
        if any(cast_slot(rows[i]).top_p < 1.0 for i in sampled):
            probs = keep_top_p(probs, self._top_p.index_select(0, slots).unsqueeze(1))
        tokens = [0] * len(sampled)
        unseeded = [j for j, i in enumerate(sampled) if cast_slot(rows[i]).generator is None]
        if unseeded:  # one draw for them all, from the global generator
            drawn = torch.multinomial(probs[unseeded], 1).view(-1).tolist()
            for j, token in zip(unseeded, drawn, strict=True):
                tokens[j] = int(token)
        for j, i in enumerate(sampled):
            generator = cast_slot(rows[i]).generator
            if generator is not None:
                tokens[j] = int(torch.multinomial(probs[j], 1, generator=generator))
        chosen = torch.tensor(tokens, device=device)
        return scores.index_put((at, chosen), torch.tensor(float("inf"), device=device))

    @staticmethod
    def _slot_indices(rows: list[_Slot | None], which: list[int]) -> torch.Tensor:
        device = None
        indices = [cast_slot(rows[i]).index for i in which]
        return torch.tensor(indices, dtype=torch.long, device=device)

    def _assign(self, state: Any) -> _Slot:
        kwargs = state.logit_processor_kwargs
        if not self._free:
            self._grow()
        index = self._free.pop()
        temperature = float(kwargs.get("temperature", 0.0))
        penalty = float(kwargs.get("repetition_penalty", 1.0))
        seed = kwargs.get("seed")
        generator = None
        if temperature > 0 and seed is not None:
            generator = torch.Generator(device=self._device).manual_seed(int(seed))
        self._temperature[index] = temperature if temperature > 0 else 1.0
        self._top_p[index] = float(kwargs.get("top_p", 1.0))
        self._factors[index] = 1.0
        slot = _Slot(index, penalty, temperature > 0, generator)
        if penalty != 1.0 and kwargs.get("penalize_prompt"):
            prompt = _prompt(state)
            if prompt:
                self._factors[index, torch.tensor(prompt, device=self._device)] = penalty
        self._slots[state.request_id] = slot
        return slot

    def _record(self, slot: _Slot, state: Any) -> None:
        """Write the completion tokens sampled since the last step into the penalty row."""
        if slot.penalty == 1.0:
            return
        completion = _completion(state)
        new = completion[slot.recorded :]
        if new:
            self._factors[slot.index, torch.tensor(new, device=self._device)] = slot.penalty
            slot.recorded = len(completion)

    def _free_slot(self, request_id: str) -> None:
        slot = self._slots.pop(request_id, None)
        if slot is not None:
            self._free.append(slot.index)


def _prompt(state: Any) -> list[int]:
    """The request's own prompt (a preempted request carries its completion in its prompt)."""
    true = state._true_initial_tokens
    return list(state.initial_tokens[:true] if true else state.initial_tokens)


def _completion(state: Any) -> list[int]:
    true = state._true_initial_tokens
    if not true:
        return list(state.generated_tokens)
    return list(state.initial_tokens[true:]) + list(state.generated_tokens)


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
        # do_sample with temperature 1, top_k 0, top_p 1: the manager draws from
        # softmax(scores) and adds no warper of its own; RowSampling decides the rest.
        generation = GenerationConfig(
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
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
        self._dispatcher.join(timeout=5)

    @property
    def in_flight(self) -> int:
        """Sequences the manager holds in its batch (prefilling or decoding)."""
        return len(self._scheduler.active_requests)

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
