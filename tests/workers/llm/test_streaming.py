"""generate_stream on the tiny model: increments, UTF-8 safety, finish reasons, cancel."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import cast

import pytest
import torch
import transformers

from workers.llm import (
    GenerationOutcome,
    LoadedModel,
    PromptTooLongError,
    SamplingParams,
    code_messages,
    generate_stream,
    generate_text,
    load_model_with_gpu,
)
from workers.llm.streaming import CompletionRepetitionPenalty, penalty_processors

MESSAGES = code_messages("Write a function that reverses a string.", "python")
GREEDY = SamplingParams(max_new_tokens=48, temperature=0)


def stream(
    loaded: LoadedModel, params: SamplingParams = GREEDY, **kwargs
) -> tuple[GenerationOutcome, list[str]]:
    pieces: list[str] = []
    outcome = generate_stream(loaded, MESSAGES, params, on_text=pieces.append, **kwargs)
    return outcome, pieces


def plain_completion_ids(loaded: LoadedModel, params: SamplingParams) -> list[int]:
    """The same request through bare `model.generate` (no streamer, no criteria)."""
    inputs = loaded.tokenizer.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = loaded.model.generate(
        **inputs, **params.generate_kwargs(), eos_token_id=loaded.eos_token_ids,
        pad_token_id=loaded.tokenizer.pad_token_id,
        logits_processor=penalty_processors(params, inputs["input_ids"].shape[1]),
    )  # fmt: skip
    return output[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.fixture
def transformers_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture transformers' own log warnings (its logger does not propagate to root)."""
    logger = transformers.utils.logging.get_logger("transformers")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="transformers")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize("arch", ["tiny", "tiny_gpt2"])
def test_increments_concatenate_to_the_plain_generate_text(
    arch: str, request: pytest.FixtureRequest
) -> None:
    loaded: LoadedModel = request.getfixturevalue(arch)
    outcome, pieces = stream(loaded)
    assert pieces and all(pieces)
    assert "".join(pieces) == outcome.text
    ids = plain_completion_ids(loaded, GREEDY)
    assert outcome.completion_tokens == len(ids)
    assert outcome.text == loaded.tokenizer.decode(
        ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


def test_on_text_runs_synchronously_in_the_calling_thread(tiny: LoadedModel) -> None:
    threads: set[int] = set()
    generate_stream(tiny, MESSAGES, GREEDY, on_text=lambda _: threads.add(threading.get_ident()))
    assert threads == {threading.get_ident()}


def test_sampled_stream_holds_back_partial_characters(tiny: LoadedModel) -> None:
    # Random sampling over byte tokens produces lots of split (and invalid) sequences.
    params = SamplingParams(max_new_tokens=200, temperature=1.5, top_p=1.0, seed=7)
    outcome, pieces = stream(tiny, params)
    assert "".join(pieces) == outcome.text
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])


def test_greedy_is_deterministic(tiny: LoadedModel) -> None:
    assert stream(tiny)[0].text == stream(tiny)[0].text


def test_seeded_sampling_repeats_and_leaves_global_rng_alone(tiny: LoadedModel) -> None:
    params = SamplingParams(max_new_tokens=32, temperature=0.9, seed=123)
    state = torch.get_rng_state()
    first, second = stream(tiny, params)[0], stream(tiny, params)[0]
    assert torch.equal(state, torch.get_rng_state())
    assert first.text == second.text
    other = stream(tiny, dataclasses.replace(params, seed=124))[0]
    assert other.text != first.text


def test_max_new_tokens_gives_length(tiny: LoadedModel) -> None:
    outcome, _ = stream(tiny, SamplingParams(max_new_tokens=7, temperature=0))
    assert outcome.finish_reason == "length"
    assert outcome.completion_tokens == 7
    prompt = tiny.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert outcome.prompt_tokens == len(prompt["input_ids"])
    assert outcome.first_token_ms is not None
    assert 0 < outcome.first_token_ms <= outcome.total_ms


def test_eos_gives_stop(tiny: LoadedModel) -> None:
    first_token = plain_completion_ids(tiny, SamplingParams(max_new_tokens=1, temperature=0))[0]
    stops_at_once = dataclasses.replace(tiny, eos_token_ids=[first_token])
    outcome, _ = stream(stops_at_once)
    assert (outcome.finish_reason, outcome.completion_tokens) == ("stop", 1)


@pytest.mark.parametrize("after", [1, 5])
def test_should_stop_cancels_within_one_token_and_keeps_partial_text(
    tiny: LoadedModel, after: int
) -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1  # call 1 is before generation; call k + 1 follows token k
        return calls > after

    outcome, pieces = stream(
        tiny, SamplingParams(max_new_tokens=40, temperature=0), should_stop=should_stop
    )
    assert outcome.finish_reason == "cancelled"
    assert outcome.completion_tokens == after
    full = stream(tiny, SamplingParams(max_new_tokens=after, temperature=0))[0]
    assert outcome.text == "".join(pieces) == full.text


def test_cancelled_before_start(tiny: LoadedModel) -> None:
    outcome, pieces = stream(tiny, should_stop=lambda: True)
    assert (outcome.finish_reason, outcome.completion_tokens, outcome.text) == ("cancelled", 0, "")
    assert pieces == [] and outcome.first_token_ms is None
    assert outcome.prompt_tokens > 0


@pytest.mark.parametrize("temperature", [0, 0.7])
def test_no_transformers_warnings(
    tiny: LoadedModel, transformers_warnings: pytest.LogCaptureFixture, temperature: float
) -> None:
    generate_text(tiny, MESSAGES, SamplingParams(max_new_tokens=4, temperature=temperature))
    assert [r.getMessage() for r in transformers_warnings.records] == []


def test_repetition_penalty_spares_the_prompt() -> None:
    """transformers' penalty would push the model off the context it should reuse."""
    penalty = CompletionRepetitionPenalty(2.0, prompt_tokens=3)
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0, -4.0, 1.0]])

    def scores_copy() -> torch.FloatTensor:  # LogitsProcessor's declared argument types
        return cast(torch.FloatTensor, scores.clone())

    prompt_only = cast(torch.LongTensor, torch.tensor([[5, 6, 7]]))
    assert torch.equal(penalty(prompt_only, scores_copy()), scores)  # nothing generated yet
    after = penalty(cast(torch.LongTensor, torch.tensor([[5, 6, 7, 7, 8]])), scores_copy())
    assert after[0, 5] == 4.0 and after[0, 6] == 4.0  # prompt tokens untouched
    assert after[0, 7] == -8.0 and after[0, 8] == 0.5  # generated ones penalised
    assert "repetition_penalty" not in SamplingParams().generate_kwargs()
    assert SamplingParams(penalize_prompt=True).generate_kwargs()["repetition_penalty"] == 1.1


def test_greedy_passes_no_sampling_flags() -> None:
    kwargs = SamplingParams(temperature=0).generate_kwargs()
    assert kwargs["do_sample"] is False
    assert not {"temperature", "top_p", "top_k"} & set(kwargs)


def test_max_new_tokens_is_clamped_to_the_context_window(tiny_dir, tmp_path) -> None:
    loaded = load_model_with_gpu(str(tiny_dir), device="cpu", data_dir=tmp_path)
    prompt = len(
        loaded.tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True)["input_ids"]
    )
    loaded.model.config.max_position_embeddings = prompt + 5
    outcome, _ = stream(loaded, SamplingParams(max_new_tokens=40, temperature=0))
    assert (outcome.finish_reason, outcome.completion_tokens) == ("length", 5)
    loaded.model.config.max_position_embeddings = prompt
    with pytest.raises(PromptTooLongError, match=f"the prompt is {prompt} tokens"):
        stream(loaded)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_new_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"repetition_penalty": 0},
    ],
)
def test_sampling_params_refuse_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**bad)
