"""The retriever study over plain arrays: what to build, how to measure, when to promote.

Kept apart from SQL and Celery so `bench/tuning.py` runs exactly this code.

- Ground truth is exact: brute-force cosine top-10 of every evaluation query.
- A trial picks `M` and `ef_construction`, builds that graph once, then sweeps the
  query-time `ef` upwards and keeps the smallest `ef` whose recall@10 on the *tuning*
  half reaches the target; its value is the p95 latency there (single-threaded queries,
  the way a retriever asks). A trial that never reaches the target is worth a penalty
  that ranks it below every one that does.
- The configuration in force and a few known-good ones are enqueued first, so the best
  trial is never worse than where the study started.
- Promotion is decided on the *held-out* half, measured side by side with the
  configuration in force (interleaved, best of two rounds, to damp other processes'
  noise on a shared CPU).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import hnswlib
import numpy as np

from workers.retrieval.vector_index import HnswParams

log = logging.getLogger(__name__)

K = 10
M_CHOICES = (8, 12, 16, 24, 32, 48)
EFC_CHOICES = (64, 100, 128, 200, 256, 400)
EF_SWEEP = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)
KNOWN_GOOD = (HnswParams(16, 128, 32), HnswParams(32, 128, 32), HnswParams(16, 128, 128))
# The tuning half must clear the target by this much: with 1,000 queries (10,000 neighbours)
# recall's sampling noise is ~0.0014, so a pair that barely makes it there would fail the
# held-out check about half the time.
SWEEP_MARGIN = 0.003
INFEASIBLE = 1e6  # ms; an infeasible trial is worth this minus its recall shortfall's credit

Progress = Callable[[int, int, dict[str, Any] | None], None]


@dataclass(frozen=True)
class Measured:
    recall_at_10: float
    p50_ms: float
    p95_ms: float
    qps: float

    def to_json(self) -> dict[str, float]:
        return {
            "recall_at_10": round(self.recall_at_10, 4),
            "p50_ms": round(self.p50_ms, 4),
            "p95_ms": round(self.p95_ms, 4),
            "qps": round(self.qps, 1),
        }


@dataclass(frozen=True)
class StudySettings:
    n_trials: int = 30
    timeout_s: float = 600.0
    recall_target: float = 0.98
    promote_margin: float = 0.05
    build_threads: int = 1
    seed: int = 0


@dataclass
class TuningReport:
    trials: int
    best_params: HnswParams | None
    before: Measured
    after: Measured | None
    promoted: bool
    reason: str
    wall_s: float
    trial_log: list[dict[str, Any]] = field(default_factory=list)


def normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of each query's k most cosine-similar corpus rows (brute force, chunked)."""
    corpus, queries = normalised(corpus), normalised(queries)
    k = min(k, len(corpus))
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        sims = queries[start : start + 256] @ corpus.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[start : start + 256] = np.take_along_axis(top, order, axis=1)
    return out


def build_index(corpus: np.ndarray, M: int, ef_construction: int, threads: int = 1) -> Any:
    index = hnswlib.Index(space="cosine", dim=corpus.shape[1])
    index.init_index(max_elements=max(len(corpus), 16), M=M, ef_construction=ef_construction)
    index.add_items(corpus, np.arange(len(corpus), dtype=np.int64), num_threads=threads)
    return index


def recall(index: Any, queries: np.ndarray, truth: np.ndarray, ef: int, threads: int = 1) -> float:
    k = truth.shape[1]
    index.set_ef(max(ef, k))
    found, _ = index.knn_query(queries, k=k, num_threads=threads)
    hits = sum(len(set(f) & set(t)) for f, t in zip(found.tolist(), truth.tolist(), strict=True))
    return hits / truth.size


def measure(index: Any, queries: np.ndarray, truth: np.ndarray, ef: int) -> Measured:
    """Recall@10 and per-query latency with one thread, as a retriever replica asks."""
    k = truth.shape[1]
    index.set_ef(max(ef, k))
    for q in queries[: min(20, len(queries))]:  # warm caches
        index.knn_query(q, k=k, num_threads=1)
    times = np.empty(len(queries))
    hits = 0
    started = time.perf_counter()
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        labels, _ = index.knn_query(q, k=k, num_threads=1)
        times[i] = time.perf_counter() - t0
        hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
    total = time.perf_counter() - started
    return Measured(
        recall_at_10=hits / truth.size,
        p50_ms=float(np.percentile(times, 50) * 1000),
        p95_ms=float(np.percentile(times, 95) * 1000),
        qps=len(queries) / total if total > 0 else 0.0,
    )


def _better(a: Measured, b: Measured) -> Measured:
    return a if a.p95_ms <= b.p95_ms else b


def measure_side_by_side(
    corpus: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    configs: Sequence[HnswParams],
    threads: int = 1,
    rounds: int = 2,
    built: dict[tuple[int, int], Any] | None = None,
) -> list[Measured]:
    """Each config measured on the same queries, interleaved, best p95 of `rounds`.

    `built` holds graphs the study already built, by (M, ef_construction).
    """
    built = built or {}
    indexes = [
        built.get((p.M, p.ef_construction)) or build_index(corpus, p.M, p.ef_construction, threads)
        for p in configs
    ]
    best: list[Measured | None] = [None] * len(configs)
    for _ in range(rounds):
        for i, (p, index) in enumerate(zip(configs, indexes, strict=True)):
            m = measure(index, queries, truth, p.ef)
            prev = best[i]
            best[i] = m if prev is None else _better(prev, m)
    return [m for m in best if m is not None]


def decide(
    current: HnswParams,
    best: HnswParams | None,
    before: Measured,
    after: Measured | None,
    target: float,
    margin: float,
) -> tuple[bool, str]:
    """Promote `best` only if the held-out half agrees it beats the configuration in force."""
    if best is None or after is None:
        return False, f"no trial reached recall@10 >= {target} on the tuning half"
    if best == current:
        return False, "the best configuration is the one in force"
    if after.recall_at_10 < target:
        return False, (
            f"held-out recall@10 {after.recall_at_10:.4f} is below the target {target} "
            "(the tuning half disagrees with the held-out half)"
        )
    if before.recall_at_10 < target:
        return True, (
            f"held-out recall@10 rises from {before.recall_at_10:.4f} (below the target) "
            f"to {after.recall_at_10:.4f}"
        )
    if after.p95_ms <= before.p95_ms * (1 - margin):
        return True, (
            f"held-out p95 {before.p95_ms:.3f} -> {after.p95_ms:.3f} ms at recall@10 "
            f"{after.recall_at_10:.4f}"
        )
    return False, (
        f"held-out p95 {after.p95_ms:.3f} ms is not {margin:.0%} better than "
        f"{before.p95_ms:.3f} ms in force"
    )


class _Objective:
    """One trial: build (M, ef_construction) once, sweep ef, value = p95 at the target."""

    def __init__(
        self,
        corpus: np.ndarray,
        queries: np.ndarray,
        truth: np.ndarray,
        settings: StudySettings,
        m_choices: Sequence[int],
        efc_choices: Sequence[int],
        ef_sweep: Sequence[int],
        deadline: float,
        keep: tuple[int, int],
    ) -> None:
        self.corpus, self.queries, self.truth = corpus, queries, truth
        self.settings = settings
        self.m_choices, self.efc_choices, self.ef_sweep = m_choices, efc_choices, ef_sweep
        self.deadline = deadline
        self.done: dict[tuple[int, int], tuple[float, dict[str, Any]]] = {}
        # Graphs the held-out check will need again: the one in force and the best so far
        # (rebuilding a 100k graph costs more than a trial's whole ef sweep).
        self.keep = keep
        self.built: dict[tuple[int, int], Any] = {}
        self.best_value = float("inf")

    def __call__(self, trial: Any) -> float:
        import optuna

        M = int(trial.suggest_categorical("M", list(self.m_choices)))
        efc = int(trial.suggest_categorical("ef_construction", list(self.efc_choices)))
        if (M, efc) in self.done:  # the sampler came back to a graph already measured
            cached_value, cached_attrs = self.done[(M, efc)]
            for key, item in cached_attrs.items():
                trial.set_user_attr(key, item)
            return cached_value
        if time.monotonic() >= self.deadline:
            raise optuna.TrialPruned("study timeout")
        started = time.perf_counter()
        index = build_index(self.corpus, M, efc, self.settings.build_threads)
        build_s = time.perf_counter() - started
        target = min(self.settings.recall_target + SWEEP_MARGIN, 1.0)
        chosen, best_recall = None, 0.0
        for ef in self.ef_sweep:
            r = recall(index, self.queries, self.truth, ef, self.settings.build_threads)
            best_recall = max(best_recall, r)
            if r >= target:
                chosen = ef
                break
        attrs: dict[str, Any] = {"build_s": round(build_s, 3)}
        if chosen is None:
            value = INFEASIBLE - best_recall * 1000
            attrs.update(feasible=False, recall_at_10=round(best_recall, 4))
        else:
            m = measure(index, self.queries, self.truth, chosen)
            value = m.p95_ms
            attrs.update(feasible=True, ef=chosen, **m.to_json())
        if (M, efc) == self.keep:
            self.built[(M, efc)] = index
        elif chosen is not None and value < self.best_value:
            self.built = {g: i for g, i in self.built.items() if g == self.keep}
            self.built[(M, efc)] = index
        if chosen is not None:
            self.best_value = min(self.best_value, value)
        del index
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        self.done[(M, efc)] = (value, attrs)
        return value


def best_feasible(study: Any) -> tuple[HnswParams | None, dict[str, Any] | None]:
    from optuna.trial import TrialState

    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("feasible")
    ]
    if not trials:
        return None, None
    top = min(trials, key=lambda t: (t.value, t.number))
    params = HnswParams(int(top.params["M"]), int(top.params["ef_construction"]),
                        int(top.user_attrs["ef"]))  # fmt: skip
    summary = {"trial": top.number, **params.to_dict(),
               "p95_ms": top.user_attrs.get("p95_ms"),
               "recall_at_10": top.user_attrs.get("recall_at_10")}  # fmt: skip
    return params, summary


def run_study(
    study: Any,
    corpus: np.ndarray,
    tune_queries: np.ndarray,
    held_out_queries: np.ndarray,
    current: HnswParams,
    settings: StudySettings,
    progress: Progress | None = None,
) -> TuningReport:
    """Tune on one half, decide on the other; `study` is a fresh Optuna study (minimise)."""
    started = time.monotonic()
    corpus = normalised(corpus)
    tune_queries, held_out_queries = normalised(tune_queries), normalised(held_out_queries)
    tune_truth = exact_top_k(corpus, tune_queries)
    held_truth = exact_top_k(corpus, held_out_queries)
    seeds = [current, *(p for p in KNOWN_GOOD if p != current)]
    m_choices = sorted({*M_CHOICES, *(p.M for p in seeds)})
    efc_choices = sorted({*EFC_CHOICES, *(p.ef_construction for p in seeds)})
    ef_sweep = sorted({*EF_SWEEP, *(p.ef for p in seeds)})
    graphs = list(dict.fromkeys((p.M, p.ef_construction) for p in seeds))  # ef is swept anyway
    for M, efc in graphs:
        study.enqueue_trial({"M": M, "ef_construction": efc})
    objective = _Objective(corpus, tune_queries, tune_truth, settings, m_choices, efc_choices,
                           ef_sweep, started + settings.timeout_s,
                           (current.M, current.ef_construction))  # fmt: skip
    n_trials = settings.n_trials

    def callback(st: Any, trial: Any) -> None:
        if progress is not None:
            progress(trial.number + 1, n_trials, best_feasible(st)[1])

    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=settings.timeout_s,
        callbacks=[callback],
        catch=(MemoryError,),
        gc_after_trial=True,
    )
    best, _ = best_feasible(study)
    configs = [current] if best is None or best == current else [current, best]
    measured = measure_side_by_side(corpus, held_out_queries, held_truth, configs,
                                    settings.build_threads, built=objective.built)  # fmt: skip
    objective.built.clear()
    before = measured[0]
    after = measured[1] if len(measured) > 1 else (before if best == current else None)
    promoted, reason = decide(current, best, before, after, settings.recall_target,
                              settings.promote_margin)  # fmt: skip
    trial_log = [
        {"number": t.number, "state": t.state.name, "params": t.params, "value": t.value,
         **t.user_attrs}
        for t in study.get_trials(deepcopy=False)
    ]  # fmt: skip
    return TuningReport(
        trials=len(trial_log),
        best_params=best,
        before=before,
        after=after,
        promoted=promoted,
        reason=reason,
        wall_s=time.monotonic() - started,
        trial_log=trial_log,
    )


def split_half(vectors: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A shuffled split into a tuning half and a held-out half."""
    order = np.random.default_rng(seed).permutation(len(vectors))
    half = len(vectors) // 2
    return vectors[order[:half]], vectors[order[half:]]


def new_study(storage: Any, name: str, seed: int = 0) -> Any:
    import optuna

    return optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4),
    )
