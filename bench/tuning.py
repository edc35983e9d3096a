"""Retriever tuning benchmark: the default HNSW configuration vs the one the study picks.

Runs `workers.tuning.hnsw_study.run_study` (the code the maintenance worker runs) on:
- `synthetic`: 100k clustered vectors, 384 dims (bench.retrieval's mixture: 1,000
  centres, sigma 0.6), 2,000 queries from the same mixture, never indexed;
- `code`: ~10k real all-MiniLM-L6-v2 embeddings of code (HumanEval prompts and
  solutions cut into 2-8-line windows, padded with renamed variants), 2,000 held-out
  chunks as queries (embeddings cached under the data dir).
Queries are split into a tuning half and a held-out half; the study sees only the first.
Reported on the held-out half, side by side in this run: recall@10, p50/p95 latency
(one thread, one query at a time, as a replica asks) and QPS of the default
(M=16, ef_construction=200, ef=100) and of the tuned configuration, the QPS ratio,
trials run and the study's wall time (ground truth, trials and the held-out check).

Also `sampling`: what `workers.tuning.generation.sampling_for` costs the generate worker
per call on SQLite (a pinned request; a trial's serving, one conditional UPDATE; the
tuned default, cached), with the teller having asked a real journal-backed study.

Usage: python -m bench.tuning [--sizes synthetic=100000,code=10000] [--trials 40]
       [--timeout 420] [--threads 2] [--target 0.98]
Prints its figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from bench.retrieval import humaneval_texts, synthetic
from workers.retrieval.vector_index import HnswParams
from workers.tuning import hnsw_study


def code_vectors(n: int, queries: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    texts, held_out = humaneval_texts(n, queries)
    key = hashlib.sha256("\x00".join(texts + held_out).encode()).hexdigest()[:16]
    path = cache / f"tuning-code-minilm-{key}.npy"
    if path.exists():
        vectors = np.load(path)
    else:
        from workers.retrieval.embedder import get_embedder

        started = time.perf_counter()
        vectors = get_embedder("all-MiniLM-L6-v2").encode(texts + held_out, batch_size=64)
        print(f"  embedded {len(vectors)} texts in {time.perf_counter() - started:.0f} s")
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors[: len(texts)], vectors[len(texts) :]


def run(name: str, corpus: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tune_q, held_q = hnsw_study.split_half(queries)
    study = hnsw_study.new_study(optuna.storages.InMemoryStorage(), f"bench-{name}")
    settings = hnsw_study.StudySettings(
        n_trials=args.trials,
        timeout_s=args.timeout,
        recall_target=args.target,
        build_threads=args.threads,
    )

    def progress(trial: int, n: int, best: dict[str, Any] | None) -> None:
        print(f"  [{name}] trial {trial}/{n} best {best}", flush=True)

    load_before = os.getloadavg()[0]
    report = hnsw_study.run_study(study, corpus, tune_q, held_q, HnswParams(), settings, progress)
    before, after = report.before, report.after or report.before
    figures = {
        "corpus": len(corpus),
        "queries_tuning": len(tune_q),
        "queries_held_out": len(held_q),
        "default": {**HnswParams().to_dict(), **before.to_json()},
        "tuned": {**(report.best_params or HnswParams()).to_dict(), **after.to_json()},
        "qps_ratio": round(after.qps / before.qps, 3) if before.qps else None,
        "p95_ratio": round(after.p95_ms / before.p95_ms, 3) if before.p95_ms else None,
        "meets_target": after.recall_at_10 >= args.target,
        "promoted": report.promoted,
        "reason": report.reason,
        "trials": report.trials,
        "complete_trials": sum(t["state"] == "COMPLETE" for t in report.trial_log),
        "study_wall_s": round(report.wall_s, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    d, t = figures["default"], figures["tuned"]
    print(f"{name}: {len(corpus)} vectors, {len(held_q)} held-out queries")
    print(f"  default M={d['M']} efc={d['ef_construction']} ef={d['ef']}: recall@10 "
          f"{d['recall_at_10']:.4f} p50 {d['p50_ms']:.3f} ms p95 {d['p95_ms']:.3f} ms "
          f"{d['qps']:.0f} QPS")  # fmt: skip
    print(f"  tuned   M={t['M']} efc={t['ef_construction']} ef={t['ef']}: recall@10 "
          f"{t['recall_at_10']:.4f} p50 {t['p50_ms']:.3f} ms p95 {t['p95_ms']:.3f} ms "
          f"{t['qps']:.0f} QPS")  # fmt: skip
    print(f"  QPS x{figures['qps_ratio']}, {report.trials} trials, study {report.wall_s:.0f} s; "
          f"{report.reason}")  # fmt: skip
    return figures


def sampling_cost(calls: int = 400) -> dict[str, float]:
    """Mean µs per `sampling_for` call, three paths, on a scratch SQLite database."""
    import tempfile

    from sqlalchemy.orm import sessionmaker

    from app.core import db
    from app.core.config import get_settings, reset_settings_cache
    from workers.tuning import generation

    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update({
            "CODELOOP_DATABASE_URL": f"sqlite:///{tmp}/bench.db",
            "CODELOOP_DATA_DIR": tmp,
            "CODELOOP_TUNE_GENERATION_PER_TRIAL": str(calls * 2),
            "CODELOOP_TUNE_GENERATION_MIN_TRIALS": "1",
        })  # fmt: skip
        reset_settings_cache()
        db.reset_engine()
        db.migrate()
        generation.tell_trials(sessionmaker(db.get_engine()), get_settings())

        def timed(name: str, share: str, request: dict[str, Any]) -> None:
            os.environ["CODELOOP_TUNE_GENERATION_SHARE"] = share
            reset_settings_cache()
            generation.sampling_for("python", request)  # warm: engine, cache
            started = time.perf_counter()
            for _ in range(calls):
                generation.sampling_for("python", request)
            figures[name] = round((time.perf_counter() - started) / calls * 1e6, 1)

        timed("pinned_us", "1.0", {"temperature": 0.2, "top_p": 0.9})
        timed("trial_us", "1.0", {})
        timed("default_us", "0", {})
        db.reset_engine()
    print(f"sampling_for: pinned {figures['pinned_us']} µs, trial serving "
          f"{figures['trial_us']} µs, default {figures['default_us']} µs per call")  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="synthetic=100000,code=10000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=420.0, help="trial budget (s)")
    parser.add_argument("--threads", type=int, default=2, help="hnswlib build/recall threads")
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--data-dir", type=Path, default=Path("data/bench"))
    parser.add_argument("--skip-sampling", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "threads": args.threads,
                               "target": args.target}  # fmt: skip
    for item in args.sizes.split(","):
        name, _, size = item.partition("=")
        n = int(size)
        if name == "synthetic":
            corpus, queries = synthetic(n, args.queries)
        elif name == "code":
            corpus, queries = code_vectors(n, args.queries, args.data_dir)
        else:
            raise SystemExit(f"unknown dataset {name!r}")
        results[name] = run(name, corpus, queries, args)
    if not args.skip_sampling:
        results["sampling"] = sampling_cost()
    print(json.dumps({"bench": "tuning", **results}))


if __name__ == "__main__":
    main()
