"""One retriever tuning run against SQL: measure, study, promote, record.

Callers hold the retriever tuning lock (`lock.py`), so at most one run is live and any
`tuning_studies` row still `running` when a run starts belongs to a killed one: it is
marked failed and its RUNNING Optuna trials are failed too.

A promotion is one transaction: every older `retriever_configs` row goes inactive, the
new one (with the study's figures) becomes active, and the study row names it. Replicas
notice within `RETRIEVAL_CONFIG_CHECK_S` and swap in a rebuilt index (retriever.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.models import RetrieverConfig, TuningStudy, utcnow
from workers.retrieval.vector_index import HnswParams
from workers.tuning import evalset, hnsw_study
from workers.tuning.storage import optuna_storage

log = logging.getLogger(__name__)

MIN_CORPUS = 2


class TuningRefused(Exception):
    """The run cannot start (an empty corpus, nothing to evaluate)."""


@dataclass(frozen=True)
class TuningRequest:
    n_trials: int
    timeout_s: float
    recall_target: float
    trigger: str = "api"
    job_id: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any], settings: Settings, **kw: Any) -> TuningRequest:
        def pick(name: str, default: Any) -> Any:
            value = data.get(name)
            return default if value is None else value

        return cls(
            n_trials=int(pick("n_trials", settings.tune_n_trials)),
            timeout_s=float(pick("timeout_s", settings.tune_timeout_s)),
            recall_target=float(pick("recall_target", settings.tune_recall_target)),
            **kw,
        )


def config_in_force(session: Session) -> tuple[int, HnswParams, RetrieverConfig | None]:
    """(version, params, row) of the newest active config; version 0 is the defaults."""
    row = session.scalar(
        select(RetrieverConfig)
        .where(RetrieverConfig.active.is_(True))
        .order_by(RetrieverConfig.created_at.desc(), RetrieverConfig.id.desc())
        .limit(1)
    )
    if row is None:
        return 0, HnswParams(), None
    return row.id, HnswParams.from_dict(row.params), row


def fail_interrupted(sessions: sessionmaker[Session], settings: Settings) -> list[int]:
    """Mark studies left `running` by a killed run as failed, and their running trials."""
    from optuna.trial import TrialState

    with sessions.begin() as session:
        stale = list(
            session.scalars(
                select(TuningStudy).where(
                    TuningStudy.kind == "retriever", TuningStudy.status == "running"
                )
            )
        )
        for row in stale:
            row.status, row.finished_at = "failed", utcnow()
            row.reason = "interrupted: its run ended without finishing (worker lost?)"
        names = [(row.id, row.optuna_study) for row in stale]
    if not names:
        return []
    storage = optuna_storage(settings)
    for _, name in names:
        try:
            study_id = storage.get_study_id_from_name(name)
        except KeyError:
            continue
        for trial in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            log.warning("failed stale trial %d of %s", trial.number, name)
    return [study_id for study_id, _ in names]


def run_tuning(
    sessions: sessionmaker[Session],
    settings: Settings,
    request: TuningRequest,
    progress: hnsw_study.Progress | None = None,
) -> dict[str, Any]:
    """Tune, maybe promote, record; returns the job result described in the README."""
    fail_interrupted(sessions, settings)
    with sessions() as session:
        corpus = evalset.load_corpus(session, settings.embedding_model)
        if len(corpus.vectors) < MIN_CORPUS:
            raise TuningRefused(
                f"the corpus has {len(corpus.vectors)} embeddings; at least {MIN_CORPUS} needed"
            )
        evaluation = evalset.evaluation_set(session, corpus, settings.tune_eval_queries)
        version, current, _ = config_in_force(session)
    tune_q, held_q = hnsw_study.split_half(evaluation.queries)
    if not len(tune_q) or not len(held_q):
        raise TuningRefused("not enough evaluation queries for two halves")
    with sessions.begin() as session:
        row = TuningStudy(
            kind="retriever",
            trigger=request.trigger,
            job_id=request.job_id,
            n_trials=request.n_trials,
            timeout_s=request.timeout_s,
            recall_target=request.recall_target,
            corpus_size=len(corpus.vectors),
            eval_queries=len(evaluation.queries),
            eval_source=evaluation.source,
            params_before={"version": version, **current.to_dict()},
        )
        session.add(row)
        session.flush()
        study_id = row.id
        # The id alone could repeat after a database reset; Optuna's storage would not.
        row.optuna_study = name = f"retriever-{study_id}-{utcnow():%Y%m%dT%H%M%S}"
    try:
        study = hnsw_study.new_study(optuna_storage(settings), name)
        study.set_user_attr("corpus_size", len(corpus.vectors))
        study.set_user_attr("codeloop_study_id", study_id)
        report = hnsw_study.run_study(
            study,
            corpus.vectors,
            tune_q,
            held_q,
            current,
            hnsw_study.StudySettings(
                n_trials=request.n_trials,
                timeout_s=request.timeout_s,
                recall_target=request.recall_target,
                promote_margin=settings.tune_promote_margin,
                build_threads=settings.tune_build_threads,
            ),
            progress,
        )
    except BaseException as exc:
        with sessions.begin() as session:
            failed = session.get(TuningStudy, study_id)
            if failed is not None:
                failed.status, failed.finished_at = "failed", utcnow()
                failed.reason = f"{type(exc).__name__}: {exc}"[:2000]
        raise
    return _record(sessions, study_id, name, report, corpus, evaluation)


def _record(
    sessions: sessionmaker[Session],
    study_id: int,
    name: str,
    report: hnsw_study.TuningReport,
    corpus: evalset.Corpus,
    evaluation: evalset.EvalSet,
) -> dict[str, Any]:
    before = report.before.to_json()
    after = None if report.after is None else report.after.to_json()
    best = None if report.best_params is None else report.best_params.to_dict()
    config_id = None
    with sessions.begin() as session:
        if report.promoted and report.best_params is not None:
            session.execute(
                update(RetrieverConfig)
                .where(RetrieverConfig.active.is_(True))
                .values(active=False)
                .execution_options(synchronize_session=False)
            )
            config = RetrieverConfig(
                params=best,
                metrics={"study": study_id, "before": before, "after": after},
                active=True,
            )
            session.add(config)
            session.flush()
            config_id = config.id
        row = session.get(TuningStudy, study_id)
        assert row is not None
        row.status, row.finished_at = "finished", utcnow()
        row.trials_run, row.best_params = report.trials, best
        row.before, row.after = before, after
        row.promoted, row.reason, row.config_id = report.promoted, report.reason, config_id
        row.wall_s = round(report.wall_s, 3)
    log.info("retriever study %s: %s (%s)", name,
             "promoted" if report.promoted else "kept", report.reason)  # fmt: skip
    return {
        "study": study_id,
        "optuna_study": name,
        "trials": report.trials,
        "best_params": best,
        "before": before,
        "after": after,
        "promoted": report.promoted,
        "reason": report.reason,
        "corpus_size": len(corpus.vectors),
        "eval_queries": len(evaluation.queries),
        "eval_source": evaluation.source,
        "config_version": config_id,
        "wall_s": round(report.wall_s, 3),
    }
