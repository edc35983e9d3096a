"""A tuning run against SQL: evaluation set, promotion, records; beat's growth rule; the lock."""

from __future__ import annotations

import numpy as np
import redis
from sqlalchemy import select

from app.core import names
from app.core.models import RetrieverConfig, TuningStudy
from app.core.tuning import retriever_overview
from tests.workers.tuning.conftest import MODEL, clustered, seed_corpus
from workers.tasks.tuning import growth_check
from workers.tuning.evalset import record_served
from workers.tuning.lock import TuningLock, lock_ttl_s
from workers.tuning.retriever_tuner import TuningRequest, run_tuning


def test_a_run_promotes_a_better_config_and_records_everything(settings, sessions):
    seed_corpus(sessions, 2000)
    with sessions.begin() as session:  # a poor configuration in force: recall far too low
        session.add(RetrieverConfig(params={"M": 4, "ef_construction": 16, "ef": 10}))
    with sessions() as session:
        old_id = session.scalar(select(RetrieverConfig.id))
    seen: list[int] = []
    result = run_tuning(sessions, settings, TuningRequest(5, 60, 0.95),
                        lambda trial, n, best: seen.append(trial))  # fmt: skip
    assert seen == [1, 2, 3, 4, 5]
    assert result["promoted"] is True, result
    assert result["before"]["recall_at_10"] < 0.95 <= result["after"]["recall_at_10"]
    assert result["corpus_size"] == 2000 and result["eval_source"] == "items"
    assert set(result["best_params"]) == {"M", "ef_construction", "ef"}
    with sessions() as session:
        active = session.scalars(select(RetrieverConfig).where(RetrieverConfig.active)).all()
        assert len(active) == 1 and active[0].id == result["config_version"] != old_id
        assert active[0].params == result["best_params"]
        study = session.get(TuningStudy, result["study"])
        assert study is not None and study.status == "finished" and study.config_id == active[0].id
        assert study.params_before == {"version": old_id, "M": 4, "ef_construction": 16, "ef": 10}
        overview = retriever_overview(session, limit=5)
    assert overview["config"]["version"] == active[0].id
    assert overview["config"]["study"] == result["study"]
    assert overview["studies"][0]["reason"] == result["reason"]

    # Served queries take over the evaluation set once there are enough of them.
    queries = clustered(300, 32, seed=3)
    with sessions.begin() as session:
        record_served(session, MODEL, list(queries), ["python"] * 300, keep=1000)
    second = run_tuning(sessions, settings, TuningRequest(3, 60, 0.95))
    assert second["eval_source"] == "served" and second["eval_queries"] == 300
    with sessions() as session:
        row = session.get(TuningStudy, second["study"])
        assert row is not None and row.params_before["version"] == active[0].id


def test_served_queries_stay_capped(sessions):
    vectors = list(np.eye(8, dtype=np.float32))
    with sessions.begin() as session:
        for _ in range(5):
            record_served(session, MODEL, vectors, [None] * 8, keep=20)
    with sessions() as session:
        from app.core.models import ServedQuery

        assert session.query(ServedQuery).count() == 20


def test_beat_skips_unless_the_corpus_grew(settings, sessions):
    small = settings.model_copy(update={"tune_min_corpus": 100, "tune_min_growth": 0.1})
    seed_corpus(sessions, 50, seed=1)
    assert "below TUNE_MIN_CORPUS" in (growth_check(small, sessions) or "")
    seed_corpus(sessions, 150, seed=2)
    assert growth_check(small, sessions) is None  # 200 embeddings, never tuned
    with sessions.begin() as session:
        session.add(TuningStudy(kind="retriever", status="finished", corpus_size=200))
    seed_corpus(sessions, 10, seed=3)  # +5 %
    assert "less than TUNE_MIN_GROWTH" in (growth_check(small, sessions) or "")
    seed_corpus(sessions, 10, seed=4)  # +10 %
    assert growth_check(small, sessions) is None


def test_the_lock_refuses_an_overlapping_run_and_outlives_the_hard_limit(
    redis_client: redis.Redis, settings
):
    ttl = lock_ttl_s(settings)
    assert ttl > settings.tune_time_limit_s
    first = TuningLock(redis_client, names.TUNE_RETRIEVER_LOCK, "job:a", ttl)
    second = TuningLock(redis_client, names.TUNE_RETRIEVER_LOCK, "beat:b", ttl)
    assert first.acquire() and not second.acquire()
    assert second.holder_now() == "job:a"
    assert redis_client.ttl(names.TUNE_RETRIEVER_LOCK) > settings.tune_time_limit_s
    second.release()  # not the holder: nothing happens
    assert first.holder_now() == "job:a"
    first.release()
    assert second.acquire()
    second.release()
