"""Generation tuning: precedence of values, serving trials, telling them from SQL outcomes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.core import db
from app.core.config import get_settings, reset_settings_cache
from app.core.feedback import record_feedback
from app.core.history import record_execution_status, store_generation
from app.core.models import GenerationTrial
from app.core.tuning import generation_overview
from workers.tuning import generation, storage
from workers.tuning.generation import sampling_for, tell_trials


@pytest.fixture
def gen_env(any_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    env = {
        "CODELOOP_DATABASE_URL": any_db_url,
        "CODELOOP_DATA_DIR": str(tmp_path / "data"),
        "CODELOOP_TUNE_GENERATION_SHARE": "1.0",
        "CODELOOP_TUNE_GENERATION_PER_TRIAL": "2",
        "CODELOOP_TUNE_GENERATION_MIN_OUTCOMES": "3",
        "CODELOOP_TUNE_GENERATION_MIN_TRIALS": "1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _reset()
    yield
    _reset()


def _reset() -> None:
    reset_settings_cache()
    db.reset_engine()
    storage.reset()
    generation._studies.clear()
    generation.forget_cached_defaults()


def _set(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(f"CODELOOP_{key.upper()}", value)
    reset_settings_cache()
    generation.forget_cached_defaults()


def _sessions() -> sessionmaker[Session]:
    return sessionmaker(db.get_engine(), expire_on_commit=False)


def _generation(tag: dict | None, language: str = "python") -> str:
    with db.session_scope() as session:
        return store_generation(session=session, task="t", language=language, text="",
                                code="pass", model="m", params={"tuning": tag}).id  # fmt: skip


def test_request_values_win_then_defaults(gen_env, monkeypatch):
    both = sampling_for("python", {"temperature": 0.3, "top_p": 0.5})
    assert (both.temperature, both.top_p, both.tag) == (0.3, 0.5, None)
    assert both.sources == {"temperature": "request", "top_p": "request"}
    one = sampling_for("python", {"temperature": 0.0})  # never served a trial: one is pinned
    assert (one.temperature, one.top_p) == (0.0, get_settings().top_p)
    assert one.sources == {"temperature": "request", "top_p": "default"}
    none = sampling_for("python", {})  # no trial asked yet
    assert none.sources == {"temperature": "default", "top_p": "default"} and none.tag is None


def test_trials_are_served_told_by_ratings_and_runs_and_become_the_default(gen_env, monkeypatch):
    settings = get_settings()
    summary = tell_trials(_sessions(), settings)
    assert summary["asked"] == 8  # one open trial per language
    served = [sampling_for("python", {}) for _ in range(3)]
    assert served[0].tag is not None and served[0].tag == served[1].tag
    assert served[0].sources == {"temperature": "tuned", "top_p": "tuned"}
    lo, hi = generation.search_space(settings)["temperature"]
    assert lo <= served[0].temperature <= hi
    assert served[2].tag is None  # the trial's budget (2) is spent until the teller asks again
    tag = served[0].tag
    first, second = _generation(tag), _generation(tag)
    with db.session_scope() as session:
        record_feedback(session=session, generation_id=first, score=1.0, owner="alice")
        record_feedback(session=session, generation_id=first, score=0.5, owner="bob")
    assert tell_trials(_sessions(), settings)["told"] == 0  # 2 outcomes < 3
    with db.session_scope() as session:
        record_execution_status(session=session, generation_id=second, status="runtime_error")
    result = tell_trials(_sessions(), settings)
    assert result["told"] == 1 and result["defaults"] == ["python"]
    with db.session_scope() as session:
        trial = session.scalars(select(GenerationTrial).where(
            GenerationTrial.id == tag["trial_id"])).one()  # fmt: skip
        assert trial.status == "complete" and trial.outcomes == 3
        assert trial.value == pytest.approx((1.0 + 0.5 + 0.0) / 3)
        overview = generation_overview(session, settings, recent=5)
    study = optuna.load_study(storage=storage.optuna_storage(settings), study_name=tag["study"])
    told = study.trials[tag["trial"]]
    assert told.state == TrialState.COMPLETE and told.value == pytest.approx(0.5)
    python = next(lang for lang in overview["languages"] if lang["language"] == "python")
    assert python["trials"]["complete"] == 1 and python["trials"]["open"] == 1
    assert python["default"]["source"] == "tuned" and python["best"]["id"] == tag["trial_id"]

    _set(monkeypatch, tune_generation_share="0")
    tuned = sampling_for("python", {})
    assert tuned.sources == {"temperature": "tuned", "top_p": "tuned"} and tuned.tag is None
    assert (tuned.temperature, tuned.top_p) == (trial.temperature, trial.top_p)
    _set(monkeypatch, tune_generation="false")
    off = sampling_for("python", {})
    assert off.sources == {"temperature": "default", "top_p": "default"}


def test_a_trial_short_of_outcomes_past_its_deadline_fails(gen_env, monkeypatch):
    tell_trials(_sessions(), get_settings())
    tag = sampling_for("java", {}).tag
    assert tag is not None
    _generation(tag, "java")
    _set(monkeypatch, tune_generation_deadline_s="0")
    assert tell_trials(_sessions(), get_settings())["failed"] == 8  # every language's trial
    study = optuna.load_study(storage=storage.optuna_storage(get_settings()),
                              study_name=tag["study"])  # fmt: skip
    assert study.trials[tag["trial"]].state == TrialState.FAIL


def test_an_unavailable_tuning_store_falls_back_to_defaults(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CODELOOP_DATABASE_URL", f"sqlite:///{tmp_path / 'unmigrated.db'}")
    monkeypatch.setenv("CODELOOP_TUNE_GENERATION_SHARE", "1.0")
    _reset()
    generation._last_warning = 0.0
    try:
        with caplog.at_level(logging.WARNING, logger="workers.tuning.generation"):
            choice = sampling_for("python", {})
        assert choice.sources == {"temperature": "default", "top_p": "default"}
        assert (choice.temperature, choice.top_p) == (get_settings().temperature,
                                                      get_settings().top_p)  # fmt: skip
        assert "generation tuning unavailable" in caplog.text
    finally:
        _reset()
