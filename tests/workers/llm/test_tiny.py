"""The tiny test model: fast, deterministic, loadable through the production path."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.llm import LoadedModel, build_tiny_model


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_builds_identical_files(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a", seed=3)
    second = build_tiny_model(tmp_path / "b", seed=3)
    assert _files(first) == _files(second)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(_files(first))


def test_different_seed_gives_different_weights(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", seed=0)
    b = build_tiny_model(tmp_path / "b", seed=1)
    assert (a / "model.safetensors").read_bytes() != (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_loads_on_cpu_with_normalised_tokenizer(tiny: LoadedModel) -> None:
    assert tiny.device == "cpu"
    assert tiny.placement == "cpu"
    assert tiny.dtype == "float32"
    assert not tiny.model.training
    tok = tiny.tokenizer
    assert tok.pad_token is not None
    assert tok.eos_token_id in tiny.eos_token_ids
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.endswith("<|im_start|>assistant\n")


def test_gpt2_variant_loads(tiny_gpt2: LoadedModel) -> None:
    assert tiny_gpt2.model.config.model_type == "gpt2"
    assert tiny_gpt2.tokenizer.chat_template


def test_multibyte_characters_span_several_tokens(tiny: LoadedModel) -> None:
    # The streaming tests rely on this: an emoji decoded token by token is broken.
    ids = tiny.tokenizer.encode("🚀", add_special_tokens=False)
    assert len(ids) > 1
    assert "\ufffd" in tiny.tokenizer.decode(ids[:1])


def test_unknown_arch_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        build_tiny_model(tmp_path, arch="mamba")  # type: ignore[arg-type]
