"""Tuning tasks (queue `maintenance`): the `optimize` job, beat's tuner, the trial teller.

- `codeloop.optimize` runs a retriever study for `POST /optimize/retriever` and emits a
  `progress` event per trial.
- `codeloop.tune_retriever` is beat's run: it skips unless the corpus grew by
  `TUNE_MIN_GROWTH` since the last study.
- `codeloop.tell_generation_trials` tells Optuna how the generation trials did.

Both retriever paths take the same Redis lock, so a beat run and a manual one never
overlap; the loser is refused (the job fails with `conflict`, beat logs and skips).
Optuna and hnswlib are imported inside the tasks: this module is imported by every worker.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.core import names
from app.core.config import get_settings
from app.core.db import get_engine
from app.core.models import TuningStudy
from workers.celery_app import celery_app
from workers.jobrun import JobContext, JobFailed, job_task
from workers.runtime import get_redis
from workers.tuning.lock import TuningLock, lock_ttl_s

log = logging.getLogger(__name__)

_settings = get_settings()


def _sessions() -> sessionmaker[Any]:
    return sessionmaker(get_engine(), expire_on_commit=False)


def _lock(holder: str, key: str = names.TUNE_RETRIEVER_LOCK) -> TuningLock:
    return TuningLock(get_redis(), key, holder, lock_ttl_s(get_settings()))


def run_optimize(ctx: JobContext) -> dict[str, Any]:
    from workers.tuning.retriever_tuner import TuningRefused, TuningRequest, run_tuning

    settings = get_settings()
    request = TuningRequest.from_json(ctx.request, settings, trigger="api", job_id=ctx.job_id)
    lock = _lock(f"job:{ctx.job_id}")
    if not lock.acquire():
        raise JobFailed(
            "conflict", f"a retriever study is already running ({lock.holder_now() or 'unknown'})"
        )
    try:

        def progress(trial: int, n_trials: int, best: dict[str, Any] | None) -> None:
            ctx.emit("progress", {"trial": trial, "n_trials": n_trials, "best": best})

        try:
            return run_tuning(_sessions(), settings, request, progress)
        except TuningRefused as exc:
            raise JobFailed("invalid_input", str(exc)) from None
    finally:
        lock.release()


optimize = job_task(
    names.TASK_OPTIMIZE,
    run_optimize,
    soft_time_limit=_settings.tune_soft_time_limit_s,
    time_limit=_settings.tune_time_limit_s,
)


def growth_check(settings: Any, sessions: sessionmaker[Any]) -> str | None:
    """Why beat should skip this time, or None to tune."""
    from workers.tuning.evalset import corpus_size

    with sessions() as session:
        size = corpus_size(session, settings.embedding_model)
        last = session.scalar(
            select(TuningStudy.corpus_size)
            .where(TuningStudy.kind == "retriever", TuningStudy.status == "finished")
            .order_by(TuningStudy.started_at.desc(), TuningStudy.id.desc())
            .limit(1)
        )
    if size < settings.tune_min_corpus:
        return f"corpus of {size} is below TUNE_MIN_CORPUS={settings.tune_min_corpus}"
    if last is not None and size - last < last * settings.tune_min_growth - 1e-9:
        return (
            f"corpus grew from {last} to {size}, less than TUNE_MIN_GROWTH="
            f"{settings.tune_min_growth:.0%} since the last study"
        )
    return None


@celery_app.task(
    name=names.TASK_TUNE_RETRIEVER,
    bind=True,
    ignore_result=True,
    soft_time_limit=_settings.tune_soft_time_limit_s,
    time_limit=_settings.tune_time_limit_s,
)
def tune_retriever(self: Any) -> dict[str, Any]:
    settings = get_settings()
    outcome = _tune_from_beat(settings, f"beat:{self.request.id}")
    report = {"at": time.time(), **outcome}
    ttl = max(int(settings.tune_interval_s * 4), 3600)
    get_redis().set(names.TUNE_LAST_BEAT_RUN, json.dumps(report), ex=ttl)
    return report


def _tune_from_beat(settings: Any, holder: str) -> dict[str, Any]:
    from workers.tuning.retriever_tuner import TuningRefused, TuningRequest, run_tuning

    sessions = _sessions()
    skip = growth_check(settings, sessions)
    if skip is not None:
        log.info("retriever tuner skipped: %s", skip)
        return {"outcome": "skipped", "skipped": skip}
    lock = _lock(holder)
    if not lock.acquire():
        reason = f"a study is already running ({lock.holder_now()})"
        log.info("retriever tuner skipped: %s", reason)
        return {"outcome": "skipped", "skipped": reason}
    try:
        request = TuningRequest.from_json({}, settings, trigger="beat")
        result = run_tuning(sessions, settings, request)
        return {"outcome": "promoted" if result["promoted"] else "kept",
                "study": result["study"], "reason": result["reason"]}  # fmt: skip
    except TuningRefused as exc:
        log.info("retriever tuner skipped: %s", exc)
        return {"outcome": "skipped", "skipped": str(exc)}
    finally:
        lock.release()


@celery_app.task(name=names.TASK_TELL_GENERATION, bind=True, ignore_result=True,
                 soft_time_limit=120, time_limit=150)  # fmt: skip
def tell_generation_trials(self: Any) -> dict[str, Any]:
    from workers.tuning.generation import tell_trials

    settings = get_settings()
    if not settings.tune_generation:
        return {"skipped": "TUNE_GENERATION is off"}
    lock = TuningLock(get_redis(), names.TUNE_GENERATION_LOCK, f"beat:{self.request.id}", 300)
    if not lock.acquire():
        return {"skipped": "another teller is running"}
    try:
        return tell_trials(_sessions(), settings)
    finally:
        lock.release()
