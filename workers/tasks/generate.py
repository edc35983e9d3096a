"""Generation jobs (queue `generate`): the agent runs each one on this process's engine.

The model is loaded once per worker process (`load_engine_once`, called from
`worker_process_init` under prefork, from `celeryd_after_setup` under the threads pool
that batching uses), never per task. torch and transformers are imported lazily so
that other workers, which import this module to know the task name, never load them.
What a generation does, step by step, is `workers.agent.orchestrator`'s business.

With batching on (`GENERATE_BATCHING`), the engine is a `BatchedEngine`: every task
thread's generation joins one batch (`workers.llm.batching`'s step batcher, or
`workers.llm.paged`'s continuous batching over a paged cache). Celery enforces no
time limits in a threads pool, so a generation there cancels itself at the soft limit
and fails with `time_limit`, as `SoftTimeLimitExceeded` makes it fail under prefork.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from app.core import names
from app.core.config import get_settings
from workers.jobrun import JobContext, JobFailed, job_task

if TYPE_CHECKING:
    from workers.agent.engine import Engine
    from workers.llm import LoadedModel

log = logging.getLogger(__name__)
_settings = get_settings()
_loaded: LoadedModel | None = None
_engine: Engine | None = None
_load_lock = threading.Lock()  # threads-pool tasks may ask for the engine at once

SCRIPTED_PREFIX = "scripted:"


def load_engine_once() -> Engine:
    """The process's engine: the configured model, or a script (`scripted:/path.json`)."""
    global _engine
    with _load_lock:
        if _engine is None:
            _engine = _build_engine()
    return _engine


def close_engine() -> None:
    """Stop the engine's batcher at shutdown: the paged one runs transformers' generation
    loop in a non-daemon thread, and a process with that thread alive never exits (a
    warm shutdown hung until it was killed)."""
    global _engine
    with _load_lock:
        engine, _engine = _engine, None
    close = getattr(engine, "close", None)
    if close is not None:
        close()


def _build_engine() -> Engine:
    settings = get_settings()
    if settings.model_id.startswith(SCRIPTED_PREFIX):
        from workers.agent.scripted import ScriptedEngine

        return ScriptedEngine.from_file(settings.model_id.removeprefix(SCRIPTED_PREFIX))
    loaded = load_model_once()
    if settings.generate_batching == "off":
        from workers.agent.engine import TransformersEngine

        return TransformersEngine(loaded)
    from workers.agent.batched import BatchedEngine

    cuda = loaded.device.startswith("cuda")
    max_batch, cache_tokens = batch_limits(cuda=cuda)
    kind = settings.generate_batching
    # One device for the whole model: accelerate's offloading splits it, the paged cache can't.
    whole = len(set(getattr(loaded.model, "hf_device_map", {"": 0}).values())) == 1
    if kind == "paged" or (kind == "auto" and cuda and whole):  # auto: what measured best
        page_size, max_batch_tokens, paged_cache = paged_limits(cuda=cuda)
        log.info(
            "paged batching up to %d sequences, %s cache tokens, pages of %d",
            max_batch, paged_cache or "auto", page_size,
        )  # fmt: skip
        try:
            return BatchedEngine(
                loaded,
                max_batch=max_batch,
                cache_tokens=paged_cache,
                kind="paged",
                page_size=page_size,
                max_batch_tokens=max_batch_tokens,
            )
        except (ImportError, RuntimeError, ValueError) as exc:  # an older transformers, say
            if kind == "paged":
                raise
            log.warning("paged batching unavailable (%s); using the step batcher", exc)
    log.info("step batching up to %d sequences, %d cache tokens", max_batch, cache_tokens)
    return BatchedEngine(loaded, max_batch=max_batch, cache_tokens=cache_tokens)


def batch_limits(*, cuda: bool) -> tuple[int, int]:
    """(sequences in flight, padded cache tokens) from the settings; 0 means sized here."""
    settings = get_settings()
    max_batch = settings.generate_max_batch or (32 if cuda else 8)
    return max_batch, settings.generate_cache_tokens or max_batch * 2048


def paged_limits(*, cuda: bool) -> tuple[int, int, int]:
    """(page size, tokens per forward, cache tokens) of the paged batcher; 0 cache tokens
    on CUDA lets transformers size the cache from free GPU memory."""
    settings = get_settings()
    page_size = settings.generate_page_size or (256 if cuda else 32)
    max_batch_tokens = settings.generate_max_batch_tokens or (8192 if cuda else 512)
    cache_tokens = settings.generate_cache_tokens or (0 if cuda else batch_limits(cuda=cuda)[1])
    return page_size, max_batch_tokens, cache_tokens


def load_model_once() -> LoadedModel:
    global _loaded
    if _loaded is None:
        import torch

        from workers.llm import load_model_with_gpu, resolve_model_id

        settings = get_settings()
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        model_id = resolve_model_id(settings.model_id, cuda_available=torch.cuda.is_available())
        started = time.perf_counter()
        _loaded = load_model_with_gpu(
            model_id,
            device=settings.model_device,
            dtype=settings.model_dtype,
            data_dir=settings.data_dir,
        )
        log.info(
            "model %s ready on %s in %.1fs", model_id, _loaded.device, time.perf_counter() - started
        )
    return _loaded


def run_generation(ctx: JobContext) -> dict[str, Any]:
    from workers.agent.orchestrator import run_generation as run_agent
    from workers.llm import PromptTooLongError

    expired = threading.Event()
    timer = None
    if threading.current_thread() is not threading.main_thread():  # a threads pool

        def expire() -> None:
            expired.set()
            ctx.cancelled.set()

        timer = threading.Timer(get_settings().generate_soft_time_limit_s, expire)
        timer.daemon = True
        timer.start()
    try:
        result = run_agent(ctx, load_engine_once())
    except PromptTooLongError as exc:
        raise JobFailed("prompt_too_long", str(exc)) from exc
    finally:
        if timer is not None:
            timer.cancel()
    if expired.is_set():
        raise JobFailed("time_limit", "the job ran past its time limit")
    generation_id = result["generation_id"]
    ctx.defer(lambda: _index(generation_id))
    return result


def _index(generation_id: str) -> None:
    """Embed the new generation so the next search can find it (after `done`: the client
    does not wait for it). If it fails, any retriever replica catches up from SQL."""
    from workers.retrieval import service

    service.index_generation(generation_id)


generate = job_task(
    names.TASK_GENERATE,
    run_generation,
    soft_time_limit=_settings.generate_soft_time_limit_s,
    time_limit=_settings.generate_time_limit_s,
)
