"""The tuners end to end: API, a real maintenance worker, a real beat, real Optuna storage.

One stack for the module (its own SQLite, Redis database 6, a journal file for Optuna):
`POST /optimize/retriever` with its `progress` events and 409; beat firing the tuner on
a short interval, skipping while the lock is held and when the corpus has not grown;
the generation study told by ratings that arrive through `POST /feedback`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import redis
from optuna.trial import TrialState
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from app.core import db, names
from app.core.celery_config import make_producer
from app.core.config import Settings, reset_settings_cache
from app.core.history import store_generation
from app.core.models import Embedding, GenerationTrial, TuningStudy
from tests.conftest import Platform, free_port, platform_env, wait_until
from tests.support import ApiServer, Beat, Worker, read_events
from workers.retrieval.embedding_store import PendingItem, store_vectors
from workers.tuning import generation, storage

MODEL = "all-MiniLM-L6-v2"
TUNING_ENV = {
    "CODELOOP_TUNE_INTERVAL_S": "2",
    "CODELOOP_TUNE_MIN_CORPUS": "100",
    "CODELOOP_TUNE_N_TRIALS": "3",
    "CODELOOP_TUNE_TIMEOUT_S": "60",
    "CODELOOP_TUNE_EVAL_QUERIES": "200",
    "CODELOOP_TUNE_GENERATION_SHARE": "1.0",
    "CODELOOP_TUNE_GENERATION_PER_TRIAL": "2",
    "CODELOOP_TUNE_GENERATION_MIN_OUTCOMES": "2",
    "CODELOOP_TUNE_GENERATION_MIN_TRIALS": "1",
    "CODELOOP_TUNE_GENERATION_INTERVAL_S": "3600",
}


def seed(url: str, n: int, start: int) -> None:
    rng = np.random.default_rng(start)
    centres = np.random.default_rng(1).standard_normal((40, 384))
    x = centres[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    engine = create_engine(url)
    with sessionmaker(engine).begin() as session:
        items = [PendingItem("knowledge", f"v{start + i}", "python", "") for i in range(n)]
        store_vectors(session, MODEL, items, x)
    engine.dispose()


@pytest.fixture(scope="module")
def stack(redis_server: str, tiny_model_dir: Path, tmp_path_factory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("tuning-stack")
    env = {**platform_env(redis_server, root, tiny_model_dir, 6), **TUNING_ENV}
    redis.Redis.from_url(env["CODELOOP_REDIS_URL"]).flushdb()
    seed(env["CODELOOP_DATABASE_URL"], 1500, 0)
    worker = Worker(env, "maintenance", 1, root / "worker-maintenance.log", name="tune@%h")
    api = ApiServer(env, free_port(), root / "api.log")
    try:
        api.wait_ready()
        worker.wait_ready()
        yield Platform(env, api, [worker])
    finally:
        api.stop()
        worker.stop()


def _studies(stack: Platform, trigger: str) -> list[TuningStudy]:
    engine = stack.sql()
    with sessionmaker(engine)() as session:
        rows = list(session.scalars(select(TuningStudy).where(TuningStudy.trigger == trigger)))
    engine.dispose()
    return rows


def test_optimize_retriever_end_to_end_with_progress_events(stack):
    with stack.client() as http:
        for bad in ({"n_trials": 0}, {"recall_target": 2}, {"bogus": 1}, {"timeout_s": 10**6}):
            refused = http.post("/optimize/retriever", json=bad)
            assert refused.status_code == 422, refused.text
            assert set(refused.json()["error"]) == {"type", "message", "detail"}
        before = http.get("/optimize/retriever").json()
        assert before["config"]["version"] == 0 and before["studies"] == []

        body, key = {"n_trials": 4, "timeout_s": 60}, {"Idempotency-Key": "tune-1"}
        response = http.post("/optimize/retriever", json=body, headers=key)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["kind"] == "optimize" and response.headers["location"] == f"/jobs/{job['id']}"
        repeat = http.post("/optimize/retriever", json=body, headers=key)
        assert repeat.status_code == 200 and repeat.json()["id"] == job["id"]  # not a 409
        again = http.post("/optimize/retriever", json={})
        assert again.status_code == 409, again.text
        assert job["id"] in again.json()["error"]["message"]
        assert again.json()["error"]["detail"]["job_id"] == job["id"]

        events = read_events(http, f"/jobs/{job['id']}/events", timeout=180)
        progress = [e.data for e in events if e.event == "progress"]
        assert [p["trial"] for p in progress] == [1, 2, 3, 4]
        assert all(p["n_trials"] == 4 for p in progress)
        assert progress[-1]["best"] is not None and progress[-1]["best"]["recall_at_10"] >= 0.98
        done = events[-1]
        assert done.event == "done", events[-3:]
        result = done.data
        assert {"study", "trials", "best_params", "before", "after", "promoted", "reason",
                "corpus_size"} <= set(result)  # fmt: skip
        assert result["trials"] == 4 and result["corpus_size"] == 1500
        assert set(result["before"]) == {"recall_at_10", "p50_ms", "p95_ms", "qps"}
        assert http.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"

        overview = http.get("/optimize/retriever").json()
        assert overview["studies"][0]["study"] == result["study"]
        assert overview["studies"][0]["trigger"] == "api"
        assert overview["studies"][0]["job_id"] == job["id"]
        if result["promoted"]:
            assert overview["config"]["version"] == result["config_version"]
            assert overview["config"]["params"] == result["best_params"]
            assert overview["config"]["study"] == result["study"]
        else:
            assert overview["config"]["version"] == 0
        assert overview["running_job"] is None and overview["running_lock"] is None


@pytest.mark.slow
def test_beat_fires_the_tuner_skips_while_locked_and_when_the_corpus_did_not_grow(stack, tmp_path):
    client = stack.redis()
    client.delete(names.TUNE_LAST_BEAT_RUN)
    client.set(names.TUNE_RETRIEVER_LOCK, "job:held-by-the-test", ex=600)
    with stack.client() as http:
        refused = http.post("/optimize/retriever", json={})
        assert refused.status_code == 409 and "job:held-by-the-test" in refused.text
    engine = stack.sql()
    with sessionmaker(engine)() as session:
        size = session.scalar(select(func.count()).select_from(Embedding))
    engine.dispose()
    assert size is not None
    seed(stack.env["CODELOOP_DATABASE_URL"], size // 5 + 1, 10_000)  # +20 %: worth a study

    def last_run() -> dict | None:
        raw = client.get(names.TUNE_LAST_BEAT_RUN)
        return json.loads(raw) if raw else None

    beat = Beat(stack.env, tmp_path)
    try:
        locked = wait_until(lambda: (r := last_run()) and "already running" in r.get("skipped", "")
                            and r, 60, what="beat skipping while the lock is held")  # fmt: skip
        assert "job:held-by-the-test" in locked["skipped"]
        client.delete(names.TUNE_RETRIEVER_LOCK)
        wait_until(lambda: _studies(stack, "beat"), 120, what="a study started by beat")
        wait_until(lambda: all(s.status == "finished" for s in _studies(stack, "beat")), 120,
                   what="beat's study to finish")  # fmt: skip
        ran = wait_until(lambda: (r := last_run()) and r.get("study") and r, 30, what="report")
        assert ran["outcome"] in ("promoted", "kept")
        skipped = wait_until(lambda: (r := last_run()) and "TUNE_MIN_GROWTH" in
                             r.get("skipped", "") and r, 60, what="a skip: no growth")  # fmt: skip
        assert skipped["outcome"] == "skipped"
    finally:
        beat.stop()
    assert len(_studies(stack, "beat")) == 1  # the later beats skipped
    with stack.client() as http:
        overview = http.get("/optimize/retriever").json()
    assert overview["last_beat_run"]["outcome"] == "skipped"
    assert {s["trigger"] for s in overview["studies"]} == {"api", "beat"}


@pytest.fixture
def in_stack_env(stack, monkeypatch) -> Iterator[Settings]:
    """This process sees the stack's SQL and data dir (sampling_for reads settings)."""
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    db.reset_engine()
    storage.reset()
    generation.forget_cached_defaults()
    yield Settings()
    reset_settings_cache()
    db.reset_engine()
    storage.reset()
    generation.forget_cached_defaults()


def test_the_generation_study_is_told_by_real_feedback_through_the_api(stack, in_stack_env):
    producer = make_producer(in_stack_env)
    engine = stack.sql()
    sessions = sessionmaker(engine, expire_on_commit=False)

    def open_trial() -> GenerationTrial | None:
        wanted = (GenerationTrial.language == "python", GenerationTrial.status == "open")
        with sessions() as session:
            return session.scalar(select(GenerationTrial).where(*wanted))

    producer.send_task(names.TASK_TELL_GENERATION)  # the teller asks each language a trial
    wait_until(open_trial, 60, what="an open python trial")
    choice = generation.sampling_for("python", {})
    assert choice.tag is not None and choice.sources["temperature"] == "tuned"
    with sessions.begin() as session:  # what the agent stores, three times
        gen_ids = [store_generation(
            session=session, task="sum two numbers", language="python", text="", code="a+b",
            model="m", params={"temperature": choice.temperature, "top_p": choice.top_p,
                               "tuning": choice.tag},
        ).id for _ in range(3)]  # fmt: skip
    with stack.client() as http:
        # one rating per key and generation: the (anonymous) caller rates each once
        for gen_id, score in zip(gen_ids, (1.0, 0.0, 0.5), strict=True):
            rated = http.post("/feedback", json={"generation_id": gen_id, "score": score})
            assert rated.status_code == 201, rated.text
        producer.send_task(names.TASK_TELL_GENERATION)

        def told() -> dict | None:
            view = http.get("/optimize/generation").json()
            python = next(x for x in view["languages"] if x["language"] == "python")
            return python if python["trials"]["complete"] else None

        python = wait_until(told, 60, what="the trial to be told")
    assert python["best"]["id"] == choice.tag["trial_id"]
    assert python["best"]["value"] == pytest.approx(0.5) and python["best"]["outcomes"] == 3
    assert python["default"]["source"] == "tuned"  # TUNE_GENERATION_MIN_TRIALS=1
    assert python["default"]["temperature"] == pytest.approx(choice.temperature)
    study = optuna.load_study(storage=storage.optuna_storage(in_stack_env),
                              study_name=choice.tag["study"])  # fmt: skip
    trial = study.trials[choice.tag["trial"]]
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.5)
    engine.dispose()
