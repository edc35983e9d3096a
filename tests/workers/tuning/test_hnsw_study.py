"""The retriever study on real hnswlib indexes: ground truth, trials, promotion decisions."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from workers.retrieval.vector_index import HnswParams
from workers.tuning import hnsw_study as hs

DIM = 32


def clustered(n: int, seed: int, centres: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(99).standard_normal((centres, DIM))
    return hs.normalised(c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, DIM)))


@pytest.fixture
def study() -> optuna.Study:
    return hs.new_study(optuna.storages.InMemoryStorage(), "t")


def test_exact_top_k_matches_a_naive_scan():
    corpus, queries = clustered(500, 1), clustered(20, 2)
    truth = hs.exact_top_k(corpus, queries)
    for q, row in zip(queries, truth, strict=True):
        sims = corpus @ q
        assert list(row) == list(np.argsort(-sims, kind="stable")[:10])


def test_study_enqueues_the_config_in_force_and_known_good_ones(study):
    corpus = clustered(3000, 3)
    queries = clustered(400, 4)
    tune, held = hs.split_half(queries)
    current = HnswParams(8, 64, 10)  # poor: low recall
    progress: list[tuple[int, int, dict | None]] = []
    report = hs.run_study(study, corpus, tune, held, current,
                          hs.StudySettings(n_trials=5, timeout_s=60, recall_target=0.95),
                          lambda *a: progress.append(a))  # fmt: skip
    first = [(t.params["M"], t.params["ef_construction"]) for t in study.trials[:3]]
    assert first == [(8, 64), (16, 128), (32, 128)]  # in force, then the known-good graphs
    assert [p[0] for p in progress] == [1, 2, 3, 4, 5] and all(p[1] == 5 for p in progress)
    assert progress[-1][2] is not None and progress[-1][2]["recall_at_10"] >= 0.95
    assert report.trials == 5 and report.best_params is not None
    assert report.before.recall_at_10 < 0.95 <= report.after.recall_at_10  # type: ignore[union-attr]
    assert report.promoted and "rises" in report.reason


def test_promotion_refused_when_the_held_out_half_disagrees(study):
    corpus = clustered(3000, 5)
    easy = corpus[:200] + 0.01  # the tuning half: points of the corpus itself
    hard = hs.normalised(np.random.default_rng(6).standard_normal((200, DIM)))  # off-cluster
    current = HnswParams(48, 400, 768)  # near exact everywhere, slow
    settings = hs.StudySettings(n_trials=4, timeout_s=60, recall_target=0.99)
    report = hs.run_study(study, corpus, easy, hard, current, settings)
    assert report.best_params is not None and report.best_params != current
    assert report.after is not None and report.after.recall_at_10 < 0.99
    assert not report.promoted
    assert "held-out" in report.reason and "below the target" in report.reason


def test_decide_needs_a_clear_latency_win_when_both_meet_the_target():
    a, b = HnswParams(16, 200, 100), HnswParams(16, 128, 32)
    before = hs.Measured(0.99, 0.2, 0.40, 5000)
    assert hs.decide(a, b, before, hs.Measured(0.985, 0.1, 0.39, 9000), 0.98, 0.05)[0] is False
    assert hs.decide(a, b, before, hs.Measured(0.985, 0.1, 0.20, 9000), 0.98, 0.05)[0] is True
    assert hs.decide(a, a, before, before, 0.98, 0.05) == (
        False, "the best configuration is the one in force")  # fmt: skip
    assert hs.decide(a, None, before, None, 0.98, 0.05)[0] is False
