"""The bundled SmolLM2: one-off GGUF conversion, then fast reloads from safetensors."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock

from workers.llm import (
    IncrementalDecoder,
    SamplingParams,
    bundled_model_dir,
    code_messages,
    ensure_bundled_model,
    extract_code,
    generate_stream,
    load_model_with_gpu,
)
from workers.llm.bundled import FOLDER_NAME, GGUF_FILE, MARKER

from .conftest import BundledCopy

slow = pytest.mark.slow


def test_a_process_that_waited_for_the_lock_reuses_the_winners_copy(tmp_path: Path) -> None:
    target = bundled_model_dir(tmp_path)
    target.parent.mkdir(parents=True)
    found: list[Path] = []
    with FileLock(str(target.parent / f".{FOLDER_NAME}.lock")):  # another worker converting
        waiter = threading.Thread(target=lambda: found.append(ensure_bundled_model(tmp_path)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "ensure_bundled_model should wait for the lock holder"
        target.mkdir()
        (target / MARKER).write_text("{}")  # ... which finishes its copy
    waiter.join(10)
    assert found == [target]
    assert sorted(p.name for p in target.iterdir()) == [MARKER]  # nothing was converted


@slow
def test_conversion_writes_a_complete_safetensors_copy(bundled_copy: BundledCopy) -> None:
    folder = bundled_copy.model_dir
    assert folder == bundled_copy.data_dir / "models" / "smollm2-135m-instruct"
    assert json.loads((folder / MARKER).read_text())["gguf"] == GGUF_FILE
    assert (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    # No staging folders or half-written copies left beside it.
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.endswith(".lock")) == [
        folder.name
    ]


@slow
def test_second_call_reuses_the_copy(bundled_copy: BundledCopy) -> None:
    mtime = (bundled_copy.model_dir / MARKER).stat().st_mtime_ns
    started = time.perf_counter()
    assert ensure_bundled_model(bundled_copy.data_dir) == bundled_copy.model_dir
    assert time.perf_counter() - started < 1.0
    assert (bundled_copy.model_dir / MARKER).stat().st_mtime_ns == mtime


@slow
def test_reload_and_generate(bundled_copy: BundledCopy) -> None:
    started = time.perf_counter()
    loaded = load_model_with_gpu("bundled", device="cpu", data_dir=bundled_copy.data_dir)
    reload_s = time.perf_counter() - started
    assert reload_s < bundled_copy.convert_s
    assert loaded.model_id == "bundled"
    assert loaded.dtype == "float32"
    assert loaded.tokenizer.chat_template
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.eos_token_ids[0]) == "<|im_end|>"
    text = "héllo 🚀 世界\ndef f():\n    return '✓'\n"
    decoder = IncrementalDecoder(loaded.tokenizer)
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) + decoder.flush() == text
    assert not any("\ufffd" in p for p in pieces)

    pieces = []
    params = SamplingParams(max_new_tokens=48, temperature=0)
    messages = code_messages("Write a function add(a, b) that returns a + b.", "python")
    outcome = generate_stream(loaded, messages, params, on_text=pieces.append)
    assert outcome.text.strip()
    assert "".join(pieces) == outcome.text
    assert outcome.finish_reason in ("stop", "length")
    assert extract_code(outcome.text, "python")
    print(
        f"\nbundled: convert {bundled_copy.convert_s:.1f} s, reload {reload_s:.1f} s, "
        f"{outcome.completion_tokens / (outcome.total_ms / 1000):.1f} tokens/s, "
        f"finish={outcome.finish_reason}, text={outcome.text!r}"
    )
