"""Fixtures for the model runtime: the tiny random models (built once per session) and,
for `slow` tests, the bundled SmolLM2 converted once into a session temp data dir.

`workers.llm` is imported inside the fixtures, after HF_HUB_OFFLINE is set: the hub
client reads it when transformers is first imported.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from workers.llm import LoadedModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two cores shared by several processes: one intra-op thread each keeps runs steady.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.llm import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny Llama, loaded through the production path."""
    from workers.llm import load_model_with_gpu

    data_dir = tmp_path_factory.mktemp("data")
    return load_model_with_gpu(str(tiny_dir), device="cpu", data_dir=data_dir)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    from workers.llm import build_tiny_model, load_model_with_gpu

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2")
    return load_model_with_gpu(str(path), device="cpu", data_dir=path.parent)


@dataclass
class BundledCopy:
    data_dir: Path
    model_dir: Path
    convert_s: float


@pytest.fixture(scope="session")
def bundled_copy(tmp_path_factory: pytest.TempPathFactory) -> BundledCopy:
    """SmolLM2 dequantised once (~20-30 s) into a throwaway data dir."""
    from workers.llm import ensure_bundled_model

    data_dir = tmp_path_factory.mktemp("bundled-data")
    started = time.perf_counter()
    model_dir = ensure_bundled_model(data_dir)
    return BundledCopy(data_dir, model_dir, time.perf_counter() - started)
