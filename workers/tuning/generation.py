"""Generation tuning: an ask-and-tell Optuna study per language over temperature and top_p.

Two halves that never wait on each other:

- `sampling_for(language, request)` runs in the generate worker, once per generation.
  It never touches Optuna: a trial to serve is a `generation_trials` row that the teller
  asked for in advance, claimed with one conditional UPDATE (`served < budget`). So it
  costs a SQL round trip for a share of requests, a cached read otherwise, and a tuning
  store that is down can only make it fall back to the defaults (logged), never raise.
- `tell_trials()` runs on the maintenance queue (beat, every
  `TUNE_GENERATION_INTERVAL_S`). For each trial it reads the outcomes of the generations
  tagged with it (`code_history.params["tuning"]["trial_id"]`): every rating counts once
  (the running mean times the count is their sum) and so does the last execution
  (`ok` = 1, a runtime/compile/limit failure = 0). With `TUNE_GENERATION_MIN_OUTCOMES`
  of them the trial is told their mean; one older than `TUNE_GENERATION_DEADLINE_S`
  without is failed. It then asks for a fresh trial where none is open, and after
  `TUNE_GENERATION_MIN_TRIALS` complete ones makes the best pair the language's default.

Precedence per value: the request's own, else a trial's (share `TUNE_GENERATION_SHARE`
of requests that fix neither value), else the language's tuned default, else settings.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.models import CodeHistory, GenerationDefault, GenerationTrial, as_utc, utcnow
from app.core.names import LANGUAGES
from app.core.tuning import search_space
from app.core.upsert import insert_for

log = logging.getLogger(__name__)

PASSED = frozenset({"ok"})
FAILED = frozenset({
    "runtime_error", "compilation_error", "time_limit_exceeded",
    "memory_limit_exceeded", "output_limit_exceeded",
})  # fmt: skip
DEFAULTS_CACHE_S = 30.0
WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class SamplingChoice:
    temperature: float
    top_p: float
    sources: dict[str, str]  # "temperature"/"top_p" -> "request" | "tuned" | "default"
    tag: dict[str, Any] | None  # the trial that served it; store in params["tuning"]

    def to_json(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "sources": dict(self.sources), "tuning": self.tag}  # fmt: skip


def study_name(language: str) -> str:
    return f"generation-{language}"


# --- serving (generate worker) ------------------------------------------------------------
_defaults: dict[str, tuple[float, tuple[float, float] | None]] = {}
_defaults_lock = threading.Lock()
_last_warning = 0.0


def _warn(message: str, exc: BaseException) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= WARN_EVERY_S:
        _last_warning = now
        log.warning("%s: %s: %s (using defaults)", message, type(exc).__name__, exc)


def _session() -> Session:
    from app.core.db import get_engine

    return Session(get_engine(), expire_on_commit=False)


def _tuned_default(language: str) -> tuple[float, float] | None:
    now = time.monotonic()
    with _defaults_lock:
        cached = _defaults.get(language)
    if cached is not None and now - cached[0] < DEFAULTS_CACHE_S:
        return cached[1]
    with _session() as session:
        row = session.get(GenerationDefault, language)
        value = None if row is None else (float(row.temperature), float(row.top_p))
    with _defaults_lock:
        _defaults[language] = (now, value)
    return value


def forget_cached_defaults() -> None:
    with _defaults_lock:
        _defaults.clear()


def _claim_trial(language: str) -> GenerationTrial | None:
    """One serving of the oldest open trial of the language, or None (none / lost race)."""
    with _session() as session, session.begin():
        trial = session.scalar(
            select(GenerationTrial)
            .where(
                GenerationTrial.language == language,
                GenerationTrial.status == "open",
                GenerationTrial.served < GenerationTrial.budget,
            )
            .order_by(GenerationTrial.id)
            .limit(1)
        )
        if trial is None:
            return None
        served = GenerationTrial.served + 1
        won = session.execute(
            update(GenerationTrial)
            .where(
                GenerationTrial.id == trial.id,
                GenerationTrial.status == "open",
                GenerationTrial.served < GenerationTrial.budget,
            )
            .values(
                served=served,
                status=case((served >= GenerationTrial.budget, "waiting"), else_="open"),
            )
            .execution_options(synchronize_session=False)
        )
        return trial if getattr(won, "rowcount", 0) else None


def sampling_for(language: str, request: dict[str, Any]) -> SamplingChoice:
    """Temperature and top_p for one generation, where each came from, and the trial tag."""
    settings = get_settings()
    asked_t, asked_p = request.get("temperature"), request.get("top_p")
    sources: dict[str, str] = {}
    if asked_t is not None and asked_p is not None:
        return SamplingChoice(float(asked_t), float(asked_p),
                              {"temperature": "request", "top_p": "request"}, None)  # fmt: skip
    tuned: tuple[float, float] | None = None
    if settings.tune_generation:
        try:
            unpinned = asked_t is None and asked_p is None
            if unpinned and random.random() < settings.tune_generation_share:
                trial = _claim_trial(language)
                if trial is not None:
                    tag = {"study": trial.optuna_study, "trial": trial.trial_number,
                           "trial_id": trial.id, "language": language}  # fmt: skip
                    both = {"temperature": "tuned", "top_p": "tuned"}
                    return SamplingChoice(trial.temperature, trial.top_p, both, tag)
            tuned = _tuned_default(language)
        except Exception as exc:  # tuning storage down or not migrated: never fail a generation
            _warn("generation tuning unavailable", exc)
    values: dict[str, float] = {}
    for i, (name, asked, default) in enumerate(
        (("temperature", asked_t, settings.temperature), ("top_p", asked_p, settings.top_p))
    ):
        if asked is not None:
            values[name], sources[name] = float(asked), "request"
        elif tuned is not None:
            values[name], sources[name] = tuned[i], "tuned"
        else:
            values[name], sources[name] = float(default), "default"
    return SamplingChoice(values["temperature"], values["top_p"], sources, None)


# --- telling (maintenance worker) -----------------------------------------------------------
_studies: dict[tuple[int, str], Any] = {}


def _study(settings: Settings, language: str) -> Any:
    import optuna

    from workers.tuning.storage import optuna_storage

    storage = optuna_storage(settings)
    key = (id(storage), language)
    if key not in _studies:
        _studies[key] = optuna.create_study(
            storage=storage,
            study_name=study_name(language),
            direction="maximize",
            sampler=optuna.samplers.TPESampler(n_startup_trials=5),
            load_if_exists=True,
        )
    return _studies[key]


def trial_outcomes(session: Session, trials: list[GenerationTrial]) -> dict[int, tuple[float, int]]:
    """trial id -> (sum of outcomes, number of outcomes) from the tagged generations."""
    if not trials:
        return {}
    ids = {t.id for t in trials}
    language = trials[0].language
    since = min(t.created_at for t in trials)
    rows = session.execute(
        select(CodeHistory.params, CodeHistory.feedback_score, CodeHistory.feedback_count,
               CodeHistory.last_execution_status)
        .where(CodeHistory.language == language, CodeHistory.created_at >= since)
    )  # fmt: skip
    totals: dict[int, tuple[float, int]] = {i: (0.0, 0) for i in ids}
    for params, score, count, status in rows:
        tag = (params or {}).get("tuning") if isinstance(params, dict) else None
        trial_id = tag.get("trial_id") if isinstance(tag, dict) else None
        if trial_id not in ids:
            continue
        total, n = totals[trial_id]
        if count and score is not None:
            total, n = total + float(score) * int(count), n + int(count)
        if status in PASSED:
            total, n = total + 1.0, n + 1
        elif status in FAILED:
            n += 1
        totals[trial_id] = (total, n)
    return totals


def tell_trials(sessions: sessionmaker[Session], settings: Settings) -> dict[str, Any]:
    """Tell finished trials, fail overdue ones, ask fresh ones, update tuned defaults."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    summary: dict[str, Any] = {"told": 0, "failed": 0, "asked": 0, "defaults": []}
    deadline = timedelta(seconds=settings.tune_generation_deadline_s)
    space = {name: FloatDistribution(lo, hi) for name, (lo, hi) in search_space(settings).items()}
    for language in LANGUAGES:
        study = _study(settings, language)
        with sessions.begin() as session:
            pending = list(session.scalars(
                select(GenerationTrial).where(
                    GenerationTrial.language == language,
                    GenerationTrial.status.in_(("open", "waiting")),
                )
            ))  # fmt: skip
            outcomes = trial_outcomes(session, pending)
            now = utcnow()
            for trial in pending:
                total, n = outcomes.get(trial.id, (0.0, 0))
                trial.outcomes = n
                if n >= settings.tune_generation_min_outcomes:
                    value = total / n
                    study.tell(trial.trial_number, value, skip_if_finished=True)
                    trial.status, trial.value, trial.finished_at = "complete", value, now
                    summary["told"] += 1
                elif now - as_utc(trial.created_at) > deadline:
                    study.tell(trial.trial_number, state=TrialState.FAIL, skip_if_finished=True)
                    trial.status, trial.finished_at = "failed", now
                    summary["failed"] += 1
            has_open = any(t.status == "open" for t in pending)
            if not has_open:
                asked = study.ask(space)
                session.add(GenerationTrial(
                    language=language, optuna_study=study_name(language),
                    trial_number=asked.number, temperature=float(asked.params["temperature"]),
                    top_p=float(asked.params["top_p"]),
                    budget=settings.tune_generation_per_trial,
                ))  # fmt: skip
                summary["asked"] += 1
            if _update_default(session, language, settings.tune_generation_min_trials):
                summary["defaults"].append(language)
    return summary


def _update_default(session: Session, language: str, min_trials: int) -> bool:
    complete = list(session.scalars(
        select(GenerationTrial).where(
            GenerationTrial.language == language, GenerationTrial.status == "complete"
        )
    ))  # fmt: skip
    if len(complete) < min_trials:
        return False
    best = max(complete, key=lambda t: (t.value or 0.0, -t.id))
    current = session.get(GenerationDefault, language)
    unchanged = current is not None and (current.trial_id, current.complete_trials) == (
        best.id,
        len(complete),
    )
    if unchanged:
        return False
    values = {"temperature": best.temperature, "top_p": best.top_p, "trial_id": best.id,
              "value": float(best.value or 0.0), "complete_trials": len(complete),
              "updated_at": utcnow()}  # fmt: skip
    session.execute(
        insert_for(session, GenerationDefault)
        .values(language=language, **values)
        .on_conflict_do_update(index_elements=["language"], set_=values)
    )
    return current is None or current.trial_id != best.id
