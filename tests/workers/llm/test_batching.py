"""The step batcher behind `BatchedEngine`, on the tiny Llama that never emits EOS.

Callers are real threads calling `generate` at once, as the threads pool's tasks do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import wait_until
from workers.agent.batched import BatchedEngine
from workers.agent.engine import EngineOutcome, TransformersEngine
from workers.llm import LoadedModel, PromptTooLongError, SamplingParams, load_model_with_gpu

GREEDY = SamplingParams(max_new_tokens=24, temperature=0)


def messages(i: int) -> list[dict[str, str]]:
    # Prompts of different lengths, so rows are padded differently.
    return [{"role": "user", "content": f"task {i}: " + "write a small function " * (i + 1)}]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model_with_gpu(
        str(tiny_model_dir), device="cpu", data_dir=tmp_path_factory.mktemp("data")
    )


@pytest.fixture
def engine(loaded: LoadedModel) -> Iterator[BatchedEngine]:
    engine = BatchedEngine(loaded, max_batch=8, cache_tokens=100_000)
    yield engine
    engine.close()


@dataclass
class Call:
    """One `generate` call in its own thread, recording what it streamed and when."""

    engine: BatchedEngine
    msgs: list[dict[str, str]]
    params: SamplingParams = GREEDY
    stop_when: Callable[[Call], bool] = lambda call: False
    fail_after: int | None = None
    pieces: list[str] = field(default_factory=list)
    piece_times: list[float] = field(default_factory=list)
    outcome: EngineOutcome | None = None
    error: BaseException | None = None

    def on_text(self, piece: str) -> None:
        if self.fail_after is not None and len(self.pieces) >= self.fail_after:
            raise RuntimeError("this caller broke")
        self.pieces.append(piece)
        self.piece_times.append(time.perf_counter())

    def run(self) -> None:
        try:
            self.outcome = self.engine.generate(
                self.msgs,
                self.params,
                on_text=self.on_text,
                should_stop=lambda: self.stop_when(self),
            )
        except BaseException as exc:  # recorded for the test to assert on
            self.error = exc

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run)
        thread.start()
        return thread


def run_together(calls: list[Call], stagger_s: float = 0.0) -> list[Call]:
    threads = []
    for call in calls:
        threads.append(call.start())
        time.sleep(stagger_s)  # later calls join a batch that is already decoding
    for thread in threads:
        thread.join(60)
    return calls


def alone(engine: BatchedEngine, msgs, params: SamplingParams = GREEDY) -> EngineOutcome:
    return engine.generate(msgs, params, on_text=lambda _: None, should_stop=lambda: False)


def test_greedy_batched_equals_each_request_alone_and_the_unbatched_engine(engine, loaded):
    plain = TransformersEngine(loaded)
    single = [alone(engine, messages(i)) for i in range(6)]
    reference = [alone(plain, messages(i)) for i in range(6)]  # type: ignore[arg-type]
    assert [s.text for s in single] == [r.text for r in reference]

    calls = run_together([Call(engine, messages(i)) for i in range(6)], stagger_s=0.02)
    for call, expected in zip(calls, single, strict=True):
        assert call.error is None and call.outcome is not None
        assert call.outcome.text == expected.text
        assert "".join(call.pieces) == call.outcome.text  # every increment, once, in order
        assert call.outcome.finish_reason == "length"
        assert call.outcome.completion_tokens == GREEDY.max_new_tokens
        assert call.outcome.first_token_ms is not None
    assert engine.batcher.in_flight == 0


def test_rows_really_decode_together(engine):
    """While the first call streams, the last one has started streaming too."""
    long = SamplingParams(max_new_tokens=120, temperature=0)
    calls = run_together([Call(engine, messages(i), long) for i in range(4)], stagger_s=0.01)
    first_end = min(c.piece_times[-1] for c in calls)
    last_start = max(c.piece_times[0] for c in calls)
    assert last_start < first_end


def test_cancel_one_mid_batch_frees_its_row_while_the_others_finish(engine):
    # Long enough that the other rows still decode when row 1 is cancelled (150 tokens
    # could all be done first on a quiet machine).
    long = SamplingParams(max_new_tokens=600, temperature=0)
    expected = [alone(engine, messages(i), long).text for i in range(3)]
    cancel = threading.Event()
    calls = [Call(engine, messages(i), long) for i in range(3)]
    calls[1].stop_when = lambda call: cancel.is_set()
    threads = [c.start() for c in calls]
    wait_until(lambda: len(calls[1].pieces) >= 5, 30, what="row 1 streaming")
    cancel.set()
    wait_until(lambda: calls[1].outcome is not None, 10, what="row 1 cancelled")
    # Its row left the batch (its cache with it) while the other two still decode.
    wait_until(lambda: engine.batcher.in_flight == 2, 5, what="row 1 dropped")
    assert calls[0].outcome is None and calls[2].outcome is None
    for thread in threads:
        thread.join(60)
    assert calls[1].outcome is not None and calls[1].outcome.finish_reason == "cancelled"
    assert calls[1].outcome.completion_tokens < long.max_new_tokens
    assert expected[1].startswith(calls[1].outcome.text)
    first, last = calls[0].outcome, calls[2].outcome
    assert first is not None and last is not None
    assert [first.text, last.text] == [expected[0], expected[2]]


def test_a_tool_call_pauses_one_sequence_and_its_continuation_rejoins(engine):
    """`should_stop` fires for one row (as a complete tool call does); the others keep
    streaming meanwhile; the agent's second `generate` for it joins the batch again."""
    long = SamplingParams(max_new_tokens=150, temperature=0)
    expected_others = [alone(engine, messages(i), long).text for i in (0, 2)]
    tool = Call(engine, messages(1), long, stop_when=lambda call: len(call.pieces) >= 6)
    others = [Call(engine, messages(i), long) for i in (0, 2)]
    threads = [c.start() for c in others]
    wait_until(lambda: all(c.pieces for c in others), 30, what="others streaming")
    tool.run()  # this thread plays the agent: the turn ends at the "tool call"
    assert tool.outcome is not None and tool.outcome.finish_reason == "cancelled"
    paused_at = time.perf_counter()
    time.sleep(0.2)  # the tool runs; the batch goes on without this row
    assert all(any(t > paused_at for t in c.piece_times) for c in others)
    conversation = [
        *messages(1),
        {"role": "assistant", "content": tool.outcome.text},
        {"role": "user", "content": "tool result: 42"},
    ]
    resumed = Call(engine, conversation, SamplingParams(max_new_tokens=20, temperature=0))
    resumed.run()
    assert resumed.outcome is not None and resumed.outcome.finish_reason == "length"
    assert resumed.outcome.text == alone(engine, conversation, resumed.params).text
    for thread in threads:
        thread.join(60)
    assert [c.outcome.text for c in others] == expected_others  # type: ignore[union-attr]


def test_a_failing_caller_fails_alone(engine):
    expected = [alone(engine, messages(i)).text for i in range(3)]
    calls = [Call(engine, messages(i)) for i in range(3)]
    calls[0].fail_after = 3
    run_together(calls)
    assert isinstance(calls[0].error, RuntimeError)
    assert [c.outcome.text for c in calls[1:]] == expected[1:]  # type: ignore[union-attr]
    wait_until(lambda: engine.batcher.in_flight == 0, 5, what="the failed row dropped")


def test_per_request_sampling_seeded_rows_reproduce_inside_a_batch(engine):
    seeded = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.9, seed=7)
    penalised = SamplingParams(max_new_tokens=24, temperature=0, repetition_penalty=1.5)
    want_seeded = alone(engine, messages(0), seeded).text
    want_penalised = alone(engine, messages(1), penalised).text
    assert want_penalised != alone(engine, messages(1)).text  # the penalty really applies
    calls = run_together([
        Call(engine, messages(0), seeded), Call(engine, messages(1), penalised),
        Call(engine, messages(2), SamplingParams(max_new_tokens=24, temperature=1.0)),
    ])  # fmt: skip
    assert calls[0].outcome.text == want_seeded  # type: ignore[union-attr]
    assert calls[1].outcome.text == want_penalised  # type: ignore[union-attr]
    assert calls[2].outcome.completion_tokens == 24  # type: ignore[union-attr]


def test_context_window_is_enforced_per_request(engine, loaded):
    window = engine.context_window
    assert window is not None
    huge = [{"role": "user", "content": "x " * window}]
    with pytest.raises(PromptTooLongError):
        alone(engine, huge)
    prompt = engine.prompt_tokens(messages(0))
    near = SamplingParams(max_new_tokens=window, temperature=0)
    outcome = alone(engine, messages(0), near)
    assert outcome.finish_reason == "length"
    assert outcome.completion_tokens == window - prompt


def test_a_full_cache_makes_new_sequences_wait(loaded):
    """Room for one row only: the second waits for the first to leave, then runs."""
    prompt = TransformersEngine(loaded).prompt_tokens(messages(0))
    engine = BatchedEngine(loaded, max_batch=8, cache_tokens=prompt + 40)
    try:
        peak: list[int] = []

        def sample() -> None:
            for _ in range(1500):
                peak.append(engine.batcher.in_flight)
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        calls = run_together([Call(engine, messages(0)), Call(engine, messages(0))])
        sampler.join()
        assert all(c.outcome is not None and c.outcome.completion_tokens == 24 for c in calls)
        assert max(peak) == 1
        assert calls[0].outcome.text == calls[1].outcome.text  # type: ignore[union-attr]
    finally:
        engine.close()


def test_cancelled_while_waiting_never_decodes(engine):
    outcome = engine.generate(messages(0), GREEDY, on_text=lambda _: None, should_stop=lambda: True)
    assert outcome.finish_reason == "cancelled" and outcome.completion_tokens == 0
