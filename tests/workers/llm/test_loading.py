"""load_model_with_gpu on CPU (the only device here) and model id resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from workers.llm import (
    BUNDLED_MODEL_ID,
    GPU_MODEL_ID,
    ModelLoadError,
    build_tiny_model,
    load_model_with_gpu,
    resolve_model_id,
)
from workers.llm.loading import FALLBACK_CHAT_TEMPLATE


def test_resolve_auto_depends_on_cuda() -> None:
    assert resolve_model_id("auto", cuda_available=True) == GPU_MODEL_ID
    assert resolve_model_id("auto", cuda_available=False) == BUNDLED_MODEL_ID == "bundled"
    assert GPU_MODEL_ID == "deepseek-ai/deepseek-coder-6.7b-instruct"


@pytest.mark.parametrize("model_id", ["bundled", "org/some-model", "/models/local"])
def test_resolve_leaves_explicit_ids_alone(model_id: str) -> None:
    assert resolve_model_id(model_id, cuda_available=True) == model_id
    assert resolve_model_id(model_id, cuda_available=False) == model_id


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_explicit_dtype_on_cpu(tiny_dir: Path, tmp_path: Path, dtype: str) -> None:
    loaded = load_model_with_gpu(str(tiny_dir), device="cpu", dtype=dtype, data_dir=tmp_path)
    assert loaded.dtype == dtype
    assert next(loaded.model.parameters()).dtype == getattr(torch, dtype)


def test_auto_device_without_cuda_lands_on_cpu_and_says_why(
    tiny_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with caplog.at_level(logging.INFO, logger="workers.llm.loading"):
        loaded = load_model_with_gpu(str(tiny_dir), data_dir=tmp_path)
    assert (loaded.device, loaded.placement, loaded.dtype) == ("cpu", "cpu", "float32")
    messages = [r.getMessage() for r in caplog.records]
    assert any("no CUDA device" in m for m in messages)
    assert any("loaded via cpu" in m for m in messages)


def test_cuda_requested_without_cuda_fails_loudly(tiny_dir: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load_model_with_gpu(str(tiny_dir), device="cuda", data_dir=tmp_path)


@pytest.mark.parametrize(("device", "dtype"), [("tpu", "auto"), ("cpu", "float8")])
def test_bad_settings_are_refused(tmp_path: Path, device: str, dtype: str) -> None:
    with pytest.raises(ModelLoadError, match="unknown"):
        load_model_with_gpu("whatever", device=device, dtype=dtype, data_dir=tmp_path)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load tokenizer"):
        load_model_with_gpu(str(tmp_path / "nope"), device="cpu", data_dir=tmp_path)


def test_model_without_chat_template_gets_the_fallback(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m")
    (path / "chat_template.jinja").unlink()
    loaded = load_model_with_gpu(str(path), device="cpu", data_dir=tmp_path)
    assert loaded.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "### User:\nhi\n\n### Assistant:\n"
