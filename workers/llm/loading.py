"""Load the generate worker's causal LM once per process.

`load_model_with_gpu` keeps the seed's fallback chain, in this order:
`device_map="auto"` (accelerate places the weights, offloading if the GPU is small)
→ a plain load moved with `.to("cuda")` → CPU. Each failure is logged with its reason,
and the winner is logged too, so an operator can see why a GPU host ended up on CPU.
`device="cuda"` means "GPU or fail": it never lands on CPU silently.

The tokenizer is normalised here so the streaming code can rely on it: it always has
a pad token and a chat template (a plain one when a local model ships none).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.llm.errors import ModelLoadError

log = logging.getLogger(__name__)

GPU_MODEL_ID = "deepseek-ai/deepseek-coder-6.7b-instruct"
BUNDLED_MODEL_ID = "bundled"

# Used only when a (local/test) model ships no chat template of its own.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "### {{ message['role'] | capitalize }}:\n{{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model ready for `generate_stream`: weights in eval mode plus a normalised tokenizer."""

    model: Any
    tokenizer: Any
    model_id: str
    device: str  # where the inputs go: "cpu", "cuda", "cuda:0" …
    dtype: str  # "float32" | "float16" | "bfloat16"
    eos_token_ids: list[int] = field(default_factory=list)
    placement: str = "cpu"  # which step of the fallback chain won
    load_ms: float = 0.0


def resolve_model_id(model_id: str, *, cuda_available: bool) -> str:
    """Map the "auto" setting to a concrete model; anything else is returned unchanged."""
    if model_id == "auto":
        return GPU_MODEL_ID if cuda_available else BUNDLED_MODEL_ID
    return model_id


def load_model_with_gpu(
    model_id: str, *, device: str = "auto", dtype: str = "auto", data_dir: Path
) -> LoadedModel:
    """Load `model_id` (hub id, local folder, "bundled" or "auto") on the best device.

    `device` is "auto" | "cuda" | "cpu"; `dtype` is "auto" | "float32" | "float16" |
    "bfloat16" ("auto": bfloat16 on GPUs that support it, else float16; float32 on CPU).
    Raises `ModelLoadError` when nothing works, or when `device="cuda"` cannot be honoured.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ModelLoadError(f"unknown device {device!r} (expected auto, cuda or cpu)")
    if dtype != "auto" and dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (expected auto, {', '.join(_DTYPES)})")
    started = time.perf_counter()
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ModelLoadError("device='cuda' was requested but torch sees no CUDA device")

    model_id = resolve_model_id(model_id, cuda_available=cuda and device != "cpu")
    source = model_id
    if model_id == BUNDLED_MODEL_ID:
        from workers.llm.bundled import ensure_bundled_model

        source = str(ensure_bundled_model(data_dir))

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # any loader error becomes one clear message
        raise ModelLoadError(f"cannot load tokenizer for {model_id!r}: {exc}") from exc

    model, placement, model_device = _load_weights(source, device, dtype, cuda)
    model.eval()
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        device=model_device,
        dtype=str(model.dtype).removeprefix("torch."),
        placement=placement,
    )
    _normalise_tokenizer(loaded)
    loaded.load_ms = (time.perf_counter() - started) * 1000
    log.info(
        "model %s loaded via %s on %s (%s) in %.1f s",
        model_id,
        placement,
        model_device,
        loaded.dtype,
        loaded.load_ms / 1000,
    )
    return loaded


def _load_weights(source: str, device: str, dtype: str, cuda: bool) -> tuple[Any, str, str]:
    """Walk the fallback chain; return (model, placement, input device)."""
    attempts: list[tuple[str, Callable[[], tuple[Any, str]]]] = []
    if device != "cpu" and cuda:
        gpu_dtype = _DTYPES[dtype] if dtype != "auto" else _gpu_auto_dtype()

        def via_device_map() -> tuple[Any, str]:
            model = AutoModelForCausalLM.from_pretrained(source, device_map="auto", dtype=gpu_dtype)
            offloaded = set(getattr(model, "hf_device_map", {}).values()) & {"cpu", "disk"}
            if offloaded:
                log.warning("device_map=auto offloaded part of the model to %s", offloaded)
            return model, str(model.get_input_embeddings().weight.device)

        def via_to_cuda() -> tuple[Any, str]:
            model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=gpu_dtype)
            return model.to("cuda"), "cuda"

        attempts += [("device_map=auto", via_device_map), ("manual .to('cuda')", via_to_cuda)]
    elif device != "cpu":
        log.info("device_map=auto and .to('cuda') skipped: torch sees no CUDA device")
    if device != "cuda":
        cpu_dtype = _DTYPES[dtype] if dtype != "auto" else torch.float32

        def via_cpu() -> tuple[Any, str]:
            return AutoModelForCausalLM.from_pretrained(source, dtype=cpu_dtype), "cpu"

        attempts.append(("cpu", via_cpu))

    failures: list[str] = []
    for name, attempt in attempts:
        try:
            model, model_device = attempt()
        except Exception as exc:  # the chain exists to survive any of these
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            log.warning("loading %s with %s failed: %s", source, name, exc)
            _release_gpu_memory()
            continue
        if failures:
            log.info("loading %s with %s succeeded after: %s", source, name, "; ".join(failures))
        return model, name, model_device
    no_cpu = " (device=cuda: no CPU fallback)" if device == "cuda" else ""
    raise ModelLoadError(f"could not load {source!r}{no_cpu}: " + "; ".join(failures))


def _gpu_auto_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _release_gpu_memory() -> None:
    # A half-loaded model from a failed attempt would otherwise crowd out the next one.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _normalise_tokenizer(loaded: LoadedModel) -> None:
    """Give the tokenizer a pad token and a chat template; collect every EOS id."""
    tokenizer, gen_config = loaded.tokenizer, loaded.model.generation_config
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
            loaded.model.resize_token_embeddings(len(tokenizer))
    if gen_config.pad_token_id is None:
        # Otherwise generate() logs "Setting pad_token_id to eos_token_id" on every call.
        gen_config.pad_token_id = tokenizer.pad_token_id
    if not getattr(tokenizer, "chat_template", None):
        log.info("%s has no chat template; using a plain fallback", loaded.model_id)
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE

    eos: list[int] = []
    for value in (gen_config.eos_token_id, tokenizer.eos_token_id):
        for token_id in value if isinstance(value, list) else [value]:
            if token_id is not None and token_id not in eos:
                eos.append(int(token_id))
    loaded.eos_token_ids = eos
