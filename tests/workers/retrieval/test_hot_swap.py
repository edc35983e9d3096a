"""A promoted retriever config reaches a running replica without a restart.

Searches keep running on the old index while the new graph is built in the background;
none fails, none waits for the build, and afterwards the replica answers from the new
version, whose file (written, then renamed) a replica starting later loads.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from sqlalchemy import update

from app.core.config import Settings
from app.core.knowledge import create_knowledge
from app.core.models import RetrieverConfig
from tests.conftest import wait_until
from workers.retrieval.embedding_store import PendingItem, store_vectors
from workers.retrieval.retriever import FeedbackAwareRetriever
from workers.retrieval.vector_index import HnswParams

N = 2000


def _seed(sessions, model: str) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with sessions.begin() as session:
        ids = [create_knowledge(session=session, language="python", title=f"snippet {i}",
                                content=f"body {i}").id for i in range(N)]  # fmt: skip
        items = [PendingItem("knowledge", item_id, "python", "") for item_id in ids]
        store_vectors(session, model, items, vectors)


def _promote(sessions, params: dict[str, int]) -> int:
    with sessions.begin() as session:
        session.execute(update(RetrieverConfig).values(active=False))
        row = RetrieverConfig(params=params, active=True)
        session.add(row)
        session.flush()
        return row.id


@pytest.mark.slow
def test_a_promoted_config_is_hot_swapped_while_searches_run(engine, sessions, embedder, tmp_path):
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path / "machine",
        retrieval_config_check_s=0.05,
        tune_record_queries=False,
    )
    _seed(sessions, settings.embedding_model)
    replica = FeedbackAwareRetriever(engine=engine, settings=settings, embedder=embedder)
    assert replica.open() == "built"
    old_file = replica.index_path
    assert replica.version == 0 and old_file.name.endswith(".v0.clidx") and old_file.exists()

    stop = threading.Event()
    errors: list[BaseException] = []
    timings: list[tuple[float, bool]] = []  # (seconds, while rebuilding)

    def search(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            query = rng.standard_normal(384).astype(np.float32)
            started = time.perf_counter()
            rebuilding = replica.rebuilding
            try:
                hits = replica.search_vector(query, k=5)
                assert len(hits) == 5
            except BaseException as exc:
                errors.append(exc)
                return
            timings.append((time.perf_counter() - started, rebuilding or replica.rebuilding))

    threads = [threading.Thread(target=search, args=(s,)) for s in (1, 2)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        version = _promote(sessions, {"M": 32, "ef_construction": 300, "ef": 64})
        started = time.monotonic()
        wait_until(lambda: replica.version == version, 180, what="the hot swap")
        swap_s = time.monotonic() - started
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    during = [t for t, rebuilding in timings if rebuilding]
    assert during, "no search ran during the rebuild"
    assert max(during) < swap_s / 2, (max(during), swap_s)  # nobody waited for the build
    assert replica.params == HnswParams(32, 300, 64) and replica.swaps == 1
    assert replica.index_path.name.endswith(f".v{version}.clidx") and replica.index_path.exists()
    assert not old_file.exists()  # the older version is pruned once the new one is saved

    later = FeedbackAwareRetriever(engine=engine, settings=settings, embedder=embedder)
    assert later.open() == "loaded" and later.version == version  # no rebuild at start

    ef_only = _promote(sessions, {"M": 32, "ef_construction": 300, "ef": 128})
    time.sleep(0.1)
    replica.sync()
    assert replica.version == ef_only and replica.params == HnswParams(32, 300, 128)
    assert replica.swaps == 1 and not replica.rebuilding  # a search-time knob: no rebuild
