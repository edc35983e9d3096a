"""Per-request sampling inside transformers' continuous-batching step (`RowSampling`).

`ContinuousBatchingManager` samples the same way for every row: greedy or sampling is
one flag for the manager, it has no per-request seed, and its repetition penalty is
refused for continuous batching (it would see only each row's last token). The paged
batcher (`workers.llm.paged`) therefore runs the manager greedy, with no processor of
its own, and installs `RowSampling`, a continuous-batching logits processor that
applies each request's `SamplingParams` within the step, in the step batcher's order:
`suppress_tokens`, the CTRL repetition penalty over the request's own completion (the
prompt too with `penalize_prompt`), then a greedy row is left for the manager's
argmax and a sampled row is drawn here (temperature, the nucleus by `keep_top_p`, from
its own `torch.Generator` when it has a seed) and its draw set to +inf, which the
argmax takes. A seeded request draws the same tokens inside a batch as alone, and the
same as in the step batcher when the logits agree.

Per-request state lives in "slots": rows of small device tensors (penalty factor per
vocabulary token, temperature, top_p), assigned when a request first reaches a step
and freed once it has ended and left the batch. Only the completion tokens sampled
since the last step are written, so a step costs O(rows), not O(tokens so far).
Everything runs in the manager's generation thread, host side, between the scheduler
and the forward (`prepare_tensor_args`) and right after the forward (`__call__`): this
needs the manager's synchronous mode without CUDA graphs, which the paged batcher sets.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
)

from workers.llm.batching import keep_top_p

NEUTRAL_SLOT = 0  # never assigned: padding rows and unknown requests read neutral values
WARMUP_PREFIX = "__warmup"  # the manager's own warm-up requests


@dataclass
class _Slot:
    index: int
    penalty: float
    sampled: bool  # temperature > 0
    top_p: float
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
        penalised) logits; a sampled row gets +inf at the token drawn here. The rows' slots
        are known on the host (`prepare_tensor_args`); `tensor_arg` carries them too."""
        rows = self._rows[: scores.shape[0]]
        if not rows:
            return scores
        if self._suppress.numel():
            scores = scores.index_fill(1, self._suppress, float("-inf"))
        penalised = [(i, slot) for i, slot in enumerate(rows) if slot and slot.penalty != 1.0]
        if penalised:
            at, slots = self._indices(penalised)
            factors = self._factors.index_select(0, slots)
            picked = scores.index_select(0, at)
            picked = torch.where(picked < 0, picked * factors, picked / factors)
            scores = scores.index_copy(0, at, picked)
        sampled = [(i, slot) for i, slot in enumerate(rows) if slot and slot.sampled]
        if not sampled:
            return scores
        at, slots = self._indices(sampled)
        temperature = self._temperature.index_select(0, slots).unsqueeze(1)
        probs = torch.softmax(scores.index_select(0, at) / temperature, dim=-1)
        if any(slot.top_p < 1.0 for _, slot in sampled):
            probs = keep_top_p(probs, self._top_p.index_select(0, slots).unsqueeze(1))
        tokens = [0] * len(sampled)
        unseeded = [j for j, (_, slot) in enumerate(sampled) if slot.generator is None]
        if unseeded:  # one draw for them all, from the global generator
            drawn = torch.multinomial(probs[unseeded], 1).view(-1).tolist()
            for j, token in zip(unseeded, drawn, strict=True):
                tokens[j] = int(token)
        for j, (_, slot) in enumerate(sampled):
            if slot.generator is not None:  # its own sequence of draws, batch or not
                tokens[j] = int(torch.multinomial(probs[j], 1, generator=slot.generator))
        chosen = torch.tensor(tokens, device=self._device)
        return scores.index_put((at, chosen), torch.tensor(float("inf"), device=self._device))

    def _indices(self, rows: list[tuple[int, _Slot]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(row positions, slot indices) as device tensors."""
        device = self._device
        at = torch.tensor([i for i, _ in rows], dtype=torch.long, device=device)
        slots = torch.tensor([slot.index for _, slot in rows], dtype=torch.long, device=device)
        return at, slots

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
        top_p = float(kwargs.get("top_p", 1.0))
        self._temperature[index] = temperature if temperature > 0 else 1.0
        self._top_p[index] = top_p
        self._factors[index] = 1.0
        slot = _Slot(index, penalty, temperature > 0, top_p, generator)
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
