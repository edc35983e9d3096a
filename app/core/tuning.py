"""What the tuners have done, read from SQL for the API (no Optuna, no workers import).

The Optuna studies themselves live in Optuna's storage (see `workers/tuning/storage.py`);
everything an operator asks the API about is mirrored in SQL: `tuning_studies` (one row
per retriever run), `retriever_configs` (promoted configs), `generation_trials` and
`generation_defaults` (the per-language sampling studies).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core import names
from app.core.config import Settings
from app.core.fields import iso_utc
from app.core.models import (
    GenerationDefault,
    GenerationTrial,
    Job,
    RetrieverConfig,
    TuningStudy,
)

OPEN_JOB_STATUSES = (names.QUEUED, names.RUNNING, names.RETRYING)
DEFAULT_HNSW = {"M": 16, "ef_construction": 200, "ef": 100}  # vector_index.HnswParams()


def search_space(settings: Settings) -> dict[str, tuple[float, float]]:
    """Generation trials stay near the seed's defaults: temperature ±0.4, top_p -0.15."""
    t, p = settings.temperature, settings.top_p
    return {
        "temperature": (round(max(0.05, t - 0.4), 3), round(t + 0.4, 3)),
        "top_p": (round(max(0.5, p - 0.15), 3), round(min(1.0, max(p, 0.95)), 3)),
    }


def open_optimize_job(session: Session) -> Job | None:
    """The oldest `optimize` job not finished yet, of any owner."""
    return session.scalar(
        select(Job)
        .where(Job.kind == "optimize", Job.status.in_(OPEN_JOB_STATUSES))
        .order_by(Job.created_at)
        .limit(1)
    )


def study_to_json(row: TuningStudy) -> dict[str, Any]:
    return {
        "study": row.id,
        "optuna_study": row.optuna_study,
        "trigger": row.trigger,
        "job_id": row.job_id,
        "status": row.status,
        "n_trials": row.n_trials,
        "trials": row.trials_run,
        "timeout_s": row.timeout_s,
        "recall_target": row.recall_target,
        "corpus_size": row.corpus_size,
        "eval_queries": row.eval_queries,
        "eval_source": row.eval_source,
        "params_before": row.params_before,
        "best_params": row.best_params,
        "before": row.before,
        "after": row.after,
        "promoted": row.promoted,
        "reason": row.reason,
        "config_version": row.config_id,
        "wall_s": row.wall_s,
        "started_at": iso_utc(row.started_at),
        "finished_at": iso_utc(row.finished_at),
    }


def retriever_overview(session: Session, *, limit: int) -> dict[str, Any]:
    """The configuration in force (version, params, since, study) and the recent studies."""
    config = session.scalar(
        select(RetrieverConfig)
        .where(RetrieverConfig.active.is_(True))
        .order_by(RetrieverConfig.created_at.desc(), RetrieverConfig.id.desc())
        .limit(1)
    )
    if config is None:
        in_force: dict[str, Any] = {"version": 0, "params": DEFAULT_HNSW, "since": None,
                                    "study": None, "metrics": None}  # fmt: skip
    else:
        promoted_by = session.scalar(
            select(TuningStudy.id).where(TuningStudy.config_id == config.id).limit(1)
        )
        in_force = {
            "version": config.id,
            "params": {**DEFAULT_HNSW, **config.params},
            "since": iso_utc(config.created_at),
            "study": promoted_by if promoted_by is not None else config.metrics.get("study"),
            "metrics": config.metrics,
        }
    studies = session.scalars(
        select(TuningStudy)
        .where(TuningStudy.kind == "retriever")
        .order_by(TuningStudy.started_at.desc(), TuningStudy.id.desc())
        .limit(limit)
    )
    job = open_optimize_job(session)
    return {
        "config": in_force,
        "running_job": None if job is None else {"id": job.id, "status": job.status},
        "studies": [study_to_json(row) for row in studies],
    }


def trial_to_json(row: GenerationTrial) -> dict[str, Any]:
    return {
        "id": row.id,
        "trial": row.trial_number,
        "temperature": round(row.temperature, 4),
        "top_p": round(row.top_p, 4),
        "status": row.status,
        "served": row.served,
        "budget": row.budget,
        "outcomes": row.outcomes,
        "value": row.value,
        "created_at": iso_utc(row.created_at),
        "finished_at": iso_utc(row.finished_at),
    }


def generation_overview(session: Session, settings: Settings, *, recent: int) -> dict[str, Any]:
    """Each language's study: trial counts, the default in force, its best and recent trials."""
    defaults = {row.language: row for row in session.scalars(select(GenerationDefault))}
    languages = []
    for language in names.LANGUAGES:
        trials = list(
            session.scalars(
                select(GenerationTrial)
                .where(GenerationTrial.language == language)
                .order_by(GenerationTrial.id.desc())
            )
        )
        counts = Counter(t.status for t in trials)
        complete = [t for t in trials if t.status == "complete"]
        best = max(complete, key=lambda t: (t.value or 0.0, -t.id), default=None)
        tuned = defaults.get(language) if settings.tune_generation else None
        default: dict[str, Any] = (
            {"temperature": tuned.temperature, "top_p": tuned.top_p, "source": "tuned",
             "trial_id": tuned.trial_id, "value": tuned.value,
             "since": iso_utc(tuned.updated_at)}
            if tuned is not None
            else {"temperature": settings.temperature, "top_p": settings.top_p,
                  "source": "default"}
        )  # fmt: skip
        languages.append({
            "language": language,
            "study": f"generation-{language}",
            "trials": {s: counts.get(s, 0) for s in ("open", "waiting", "complete", "failed")},
            "default": default,
            "best": None if best is None else trial_to_json(best),
            "recent": [trial_to_json(t) for t in trials[:recent]],
        })  # fmt: skip
    return {
        "enabled": settings.tune_generation,
        "share": settings.tune_generation_share,
        "per_trial": settings.tune_generation_per_trial,
        "min_outcomes": settings.tune_generation_min_outcomes,
        "min_trials": settings.tune_generation_min_trials,
        "deadline_s": settings.tune_generation_deadline_s,
        "search_space": search_space(settings),
        "languages": languages,
    }
