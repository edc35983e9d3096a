"""Generation jobs (queue `generate`): the model streams tokens as job events.

The model is loaded once per worker process (`load_model_once`, called from
`worker_process_init`), never per task. torch and transformers are imported lazily so
that other workers, which import this module to know the task name, never load them.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.core import names
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.history import store_generation
from workers.jobrun import JobContext, JobFailed, job_task

if TYPE_CHECKING:
    from workers.llm import LoadedModel

log = logging.getLogger(__name__)
_settings = get_settings()
_loaded: LoadedModel | None = None


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
    from workers.llm import (
        PromptTooLongError,
        SamplingParams,
        code_messages,
        extract_code,
        generate_stream,
    )

    settings = get_settings()
    request = ctx.request
    queue_ms = _ms_since(ctx.queued_at)
    loaded = load_model_once()
    params = SamplingParams(
        max_new_tokens=request.get("max_new_tokens") or settings.max_new_tokens,
        temperature=_or(request.get("temperature"), settings.temperature),
        top_p=_or(request.get("top_p"), settings.top_p),
        repetition_penalty=_or(request.get("repetition_penalty"), settings.repetition_penalty),
    )
    messages = code_messages(request["task"], request["language"], None)
    sent = 0

    def on_text(text: str) -> None:
        nonlocal sent
        ctx.emit("token", {"index": sent, "text": text}, progress_tokens=sent + 1)
        sent += 1

    try:
        outcome = generate_stream(
            loaded, messages, params, on_text=on_text, should_stop=ctx.cancelled.is_set
        )
    except PromptTooLongError as exc:
        raise JobFailed("prompt_too_long", str(exc)) from exc
    code = extract_code(outcome.text, request["language"])
    generation_id = _store_generation(ctx, loaded.model_id, params.__dict__, outcome, code)
    ctx.defer(lambda: _index(generation_id))
    return {
        "generation_id": generation_id,
        "text": outcome.text,
        "code": code,
        "language": request["language"],
        "model": loaded.model_id,
        "finish_reason": outcome.finish_reason,
        "usage": {
            "prompt_tokens": outcome.prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
        },
        "timings": {
            "queue_ms": round(queue_ms, 1),
            "first_token_ms": _round(outcome.first_token_ms),
            "total_ms": round(outcome.total_ms, 1),
        },
        "tool_calls": [],
    }


def _store_generation(
    ctx: JobContext, model_id: str, params: dict[str, Any], outcome: Any, code: str
) -> str:
    request = ctx.request
    with session_scope() as session:
        row = store_generation(
            session=session,
            job_id=ctx.job_id,
            owner=ctx.owner,
            project_id=request.get("project_id"),
            task=request["task"],
            language=request["language"],
            text=outcome.text,
            code=code,
            model=model_id,
            params=params,
            finish_reason=outcome.finish_reason,
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
        )
        return row.id


def _index(generation_id: str) -> None:
    """Embed the new generation so the next search can find it (after `done`: the client
    does not wait for it). If it fails, any retriever replica catches up from SQL."""
    from workers.retrieval import service

    service.index_generation(generation_id)


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ms_since(moment: datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - moment).total_seconds() * 1000)


generate = job_task(
    names.TASK_GENERATE,
    run_generation,
    soft_time_limit=_settings.generate_soft_time_limit_s,
    time_limit=_settings.generate_time_limit_s,
)
