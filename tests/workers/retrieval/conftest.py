"""Fixtures for the retriever tests: the real MiniLM embedder (loaded once per session)
and retriever replicas on the suite's SQLite / PostgreSQL databases.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.core.config import Settings
from workers.retrieval.embedder import Embedder, get_embedder
from workers.retrieval.retriever import FeedbackAwareRetriever
from workers.retrieval.vector_index import HnswParams

MakeRetriever = Callable[..., FeedbackAwareRetriever]


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    model = get_embedder("all-MiniLM-L6-v2")
    model.encode(["warm up"])
    return model


@pytest.fixture
def make_retriever(engine: Engine, embedder: Embedder, tmp_path: Path) -> MakeRetriever:
    """A replica with its own data dir ("another machine") unless `machine` repeats."""

    def make(
        machine: str = "a", *, params: HnswParams | None = None, db: Engine | None = None
    ) -> FeedbackAwareRetriever:
        settings = Settings(
            database_url=(db or engine).url.render_as_string(hide_password=False),
            data_dir=tmp_path / machine,
        )
        return FeedbackAwareRetriever(
            engine=db or engine, settings=settings, embedder=embedder, params=params
        )

    return make
