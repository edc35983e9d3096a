"""The tuner's data, from SQL: the corpus every replica indexes, and evaluation queries.

Evaluation queries are the embeddings of queries the retriever actually served
(`served_queries`, written by the replicas as they answer). Until there are enough,
stored item vectors stand in for the missing ones: an item is a query whose nearest
neighbour is itself, which still asks the graph for its nine next neighbours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core.models import Embedding, ServedQuery


@dataclass(frozen=True)
class Corpus:
    model: str
    dim: int
    vectors: np.ndarray  # (n, dim) float32


@dataclass(frozen=True)
class EvalSet:
    queries: np.ndarray
    source: str  # served | mixed | items
    served: int


def corpus_size(session: Session, model: str) -> int:
    return int(session.scalar(select(func.count()).where(Embedding.model == model)) or 0)


def load_corpus(session: Session, model: str) -> Corpus:
    """Every embedding of the model (the dimension most rows have), in seq order."""
    counted = session.execute(
        select(Embedding.dim, func.count()).where(Embedding.model == model).group_by(Embedding.dim)
    )
    dims = Counter({int(dim): int(n) for dim, n in counted})
    if not dims:
        return Corpus(model, 0, np.zeros((0, 0), np.float32))
    dim = dims.most_common(1)[0][0]
    blobs = session.scalars(
        select(Embedding.vector)
        .where(Embedding.model == model, Embedding.dim == dim)
        .order_by(Embedding.seq)
    ).all()
    vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim)
    return Corpus(model, dim, np.ascontiguousarray(vectors, dtype=np.float32))


def served_queries(session: Session, model: str, dim: int, limit: int) -> np.ndarray:
    blobs = session.scalars(
        select(ServedQuery.vector)
        .where(ServedQuery.model == model, ServedQuery.dim == dim)
        .order_by(ServedQuery.id.desc())
        .limit(limit)
    ).all()
    if not blobs:
        return np.zeros((0, dim), np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), dim).copy()


def evaluation_set(session: Session, corpus: Corpus, size: int, seed: int = 0) -> EvalSet:
    """Up to `size` queries: served ones first, topped up with sampled item vectors."""
    served = served_queries(session, corpus.model, corpus.dim, size)
    missing = max(0, min(size, len(served) + len(corpus.vectors)) - len(served))
    if missing:
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(corpus.vectors), size=min(missing, len(corpus.vectors)),
                           replace=False)  # fmt: skip
        stand_ins = corpus.vectors[np.sort(picks)]
        queries = np.concatenate([served, stand_ins]) if len(served) else stand_ins
    else:
        queries = served
    source = "served" if not missing else ("mixed" if len(served) else "items")
    return EvalSet(np.ascontiguousarray(queries, np.float32), source, len(served))


def record_served(
    session: Session,
    model: str,
    vectors: Sequence[np.ndarray],
    languages: Sequence[str | None],
    keep: int,
) -> None:
    """Store served query embeddings and drop the oldest beyond `keep` for the model."""
    for vector, language in zip(vectors, languages, strict=True):
        session.add(
            ServedQuery(
                model=model,
                dim=int(vector.shape[0]),
                language=language,
                vector=np.ascontiguousarray(vector, dtype="<f4").tobytes(),
            )
        )
    session.flush()
    newest = session.scalar(select(func.max(ServedQuery.id)).where(ServedQuery.model == model))
    if newest is not None and newest > keep:
        session.execute(
            delete(ServedQuery).where(ServedQuery.model == model, ServedQuery.id <= newest - keep)
        )
