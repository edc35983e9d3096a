"""Fixtures for the tuning tests: settings on the suite's databases, a seeded corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from workers.retrieval.embedding_store import PendingItem, store_vectors
from workers.tuning import storage

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def settings(engine: Engine, tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    storage.reset()
    yield Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        tune_eval_queries=300,
    )
    storage.reset()


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).standard_normal((30, dim))
    x = centres[rng.integers(0, 30, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def seed_corpus(sessions: sessionmaker[Session], n: int, dim: int = 32, seed: int = 0) -> None:
    """`n` embedding rows (knowledge items that need not exist: the tuner reads vectors)."""
    vectors = clustered(n, dim, seed)
    items = [PendingItem("knowledge", f"k{seed}-{i}", "python", "") for i in range(n)]
    with sessions.begin() as session:
        store_vectors(session, MODEL, items, vectors)
