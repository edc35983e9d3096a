"""Optuna's storage: RDB in its own PostgreSQL schema, or a journal; never our SQLite file."""

from __future__ import annotations

import optuna
from alembic.script import ScriptDirectory
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy import inspect, text

from app.core.db import alembic_config, migrate
from app.core.models import TuningStudy
from workers.tuning import storage
from workers.tuning.retriever_tuner import fail_interrupted


def test_studies_are_shared_by_separate_storage_handles(settings, engine):
    first = storage.optuna_storage(settings)
    study = optuna.create_study(storage=first, study_name="shared", direction="minimize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    storage.reset()  # another process: a fresh handle on the same storage
    second = storage.optuna_storage(settings)
    assert second is not first
    again = optuna.load_study(storage=second, study_name="shared")
    assert len(again.trials) == 3 and again.best_value == study.best_value

    if engine.dialect.name == "postgresql":
        assert isinstance(first, RDBStorage)
        with engine.connect() as conn:
            scripts = ScriptDirectory.from_config(alembic_config(settings.database_url))
            head = scripts.get_current_head()
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
            optuna_tables = conn.scalars(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'optuna'"
            )).all()  # fmt: skip
        assert "trials" in optuna_tables and "studies" in optuna_tables
        assert "trials" not in inspect(engine).get_table_names()  # nothing in our schema
        migrate(settings.database_url)  # our migrations still see their own revision
    else:
        assert isinstance(first, JournalStorage)
        assert storage.journal_path(settings).stat().st_size > 0
        assert "trials" not in inspect(engine).get_table_names()


def test_redis_journal(settings):
    redis_settings = settings.model_copy(update={"tune_journal": "redis"})
    if redis_settings.database_url.startswith("postgresql"):
        return  # PostgreSQL always uses its RDB storage; the journal case runs on SQLite
    handle = storage.optuna_storage(redis_settings)
    assert isinstance(handle, JournalStorage)
    optuna.create_study(storage=handle, study_name="on-redis").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    storage.reset()
    loaded = optuna.load_study(storage=storage.optuna_storage(redis_settings),
                               study_name="on-redis")  # fmt: skip
    assert len(loaded.trials) == 2
    assert "redis" in storage.describe(redis_settings).lower()


def test_a_killed_study_is_failed_with_its_running_trials_on_the_next_start(settings, sessions):
    name = "retriever-killed"
    study = optuna.create_study(storage=storage.optuna_storage(settings), study_name=name)
    study.tell(study.ask(), 1.0)
    running = study.ask()  # the process died in this trial
    with sessions.begin() as session:
        session.add(TuningStudy(kind="retriever", optuna_study=name, status="running"))
    assert fail_interrupted(sessions, settings)
    states = [t.state for t in optuna.load_study(
        storage=storage.optuna_storage(settings), study_name=name).trials]  # fmt: skip
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert running.number == 1
    with sessions() as session:
        row = session.query(TuningStudy).one()
        assert row.status == "failed" and "interrupted" in row.reason
    assert fail_interrupted(sessions, settings) == []  # nothing left to fail
