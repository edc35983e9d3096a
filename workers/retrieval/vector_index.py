"""An hnswlib cosine index whose labels are `embeddings.seq`, plus what each label is.

The index only answers "which stored embeddings are nearest"; what an item is worth
(feedback, usage) is looked up in SQL afterwards. Not thread-safe: the retriever holds
its lock around every call.

Filtered searches (a language, an item type, a workspace) use hnswlib's filter callback,
so a search for one workspace walks the graph over that workspace's items (and the
global ones) only: another workspace's items can neither appear nor crowd out the k
best. When the matching subset is small, an exact scan is both faster and complete (a filtered graph
walk over a huge graph to find a handful of items visits most of it); its vectors are
copied out of hnswlib once (`get_items` is slow) and kept until the index changes.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import hnswlib
import numpy as np

SPACE = "cosine"
# Filtered subsets up to this many vectors are scanned exactly (at most ~3 MB each).
EXACT_SCAN_MAX = 2048
# Filters (language, item types, workspace) whose subsets are kept copied out: bounded,
# since with many workspaces the filters are many; the oldest copy is dropped first.
SUBSET_CACHE_MAX = 32


@dataclass(frozen=True)
class HnswParams:
    M: int = 16
    ef_construction: int = 200
    ef: int = 100

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> HnswParams:
        data = data or {}
        default = cls()
        return cls(
            M=int(data.get("M", default.M)),
            ef_construction=int(data.get("ef_construction", default.ef_construction)),
            ef=int(data.get("ef", default.ef)),
        )

    def to_dict(self) -> dict[str, int]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef": self.ef}

    def same_graph(self, other: HnswParams) -> bool:
        """Whether an index built with `other` is the graph these params would build."""
        return (self.M, self.ef_construction) == (other.M, other.ef_construction)


class LabelInfo(NamedTuple):
    item_type: str
    item_id: str
    language: str
    workspace: str | None = None  # None: a global item, seen from every workspace


_Filter = tuple[str | None, frozenset[str] | None, str | None]
_CountKey = tuple[str, str, str | None]  # (item_type, language, workspace)


def _matches(
    info: LabelInfo, language: str | None, types: frozenset[str] | None, workspace: str | None
) -> bool:
    """Whether a search with these filters may return the item (None: no filter; an item
    of no workspace is global and matches every workspace)."""
    return (
        (language is None or info.language == language)
        and (types is None or info.item_type in types)
        and (workspace is None or info.workspace is None or info.workspace == workspace)
    )


class VectorIndex:
    def __init__(self, dim: int, params: HnswParams, *, capacity: int = 1024) -> None:
        self.dim = dim
        self.params = params
        self.labels: dict[int, LabelInfo] = {}
        self._counts: Counter[_CountKey] = Counter()
        self._subsets: dict[_Filter, tuple[list[int], np.ndarray]] = {}
        self._index = hnswlib.Index(space=SPACE, dim=dim)
        self._index.init_index(
            max_elements=max(capacity, 16), M=params.M, ef_construction=params.ef_construction
        )
        self._ef = params.ef
        self._index.set_ef(params.ef)

    # --- contents --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __contains__(self, seq: int) -> bool:
        return seq in self.labels

    def add(self, seqs: Sequence[int], vectors: np.ndarray, infos: Sequence[LabelInfo]) -> None:
        """Add or replace vectors under their labels."""
        if not len(seqs):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(seqs), self.dim)
        needed = self._index.get_current_count() + len(seqs)  # deleted slots count too
        capacity = self._index.get_max_elements()
        if needed > capacity:
            self._index.resize_index(max(needed, capacity * 2))
        self._index.add_items(vectors, np.asarray(seqs, dtype=np.int64), num_threads=1)
        self._subsets.clear()
        for seq, info in zip(seqs, infos, strict=True):
            self._forget(seq)
            self.labels[seq] = info
            self._counts[_count_key(info)] += 1

    def remove(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            if seq in self.labels:
                self._index.mark_deleted(seq)
                self._forget(seq)
                self._subsets.clear()

    def _forget(self, seq: int) -> None:
        old = self.labels.pop(seq, None)
        if old is not None:
            self._counts[_count_key(old)] -= 1

    def set_ef(self, ef: int) -> None:
        self.params = HnswParams(self.params.M, self.params.ef_construction, ef)
        self._use_ef(ef)

    def _use_ef(self, ef: int) -> None:
        if ef != self._ef:
            self._index.set_ef(ef)
            self._ef = ef

    # --- search ----------------------------------------------------------------------------
    def count(
        self,
        *,
        language: str | None = None,
        item_types: Iterable[str] | None = None,
        workspace: str | None = None,
    ) -> int:
        types = None if item_types is None else frozenset(item_types)
        return sum(
            n
            for (item_type, lang, ws), n in self._counts.items()
            if _matches(LabelInfo(item_type, "", lang, ws), language, types, workspace)
        )

    def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        language: str | None = None,
        item_types: Iterable[str] | None = None,
        workspace: str | None = None,
    ) -> list[tuple[int, float]]:
        """Up to k `(seq, cosine similarity)` pairs, most similar first.

        `workspace`: only that workspace's items and the global ones (None: any item)."""
        types = None if item_types is None else frozenset(item_types)
        available = self.count(language=language, item_types=types, workspace=workspace)
        k = min(k, available)
        if k <= 0:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, self.dim)
        filtered = language is not None or types is not None or workspace is not None
        if filtered and available <= EXACT_SCAN_MAX:
            return self._exact(query[0], k, (language, types, workspace))

        def allowed(seq: int) -> bool:
            info = self.labels.get(seq)
            return info is not None and _matches(info, language, types, workspace)

        self._use_ef(max(self.params.ef, k))  # hnswlib needs ef >= k
        while True:
            try:
                labels, distances = self._index.knn_query(
                    query, k=k, num_threads=1, filter=allowed if filtered else None
                )
                break
            except RuntimeError:  # the graph walk found fewer than k: ask for fewer
                if k == 1:
                    return []
                k = max(1, k // 2)
        return [(int(s), 1.0 - float(d)) for s, d in zip(labels[0], distances[0], strict=True)]

    def _exact(self, query: np.ndarray, k: int, key: _Filter) -> list[tuple[int, float]]:
        if key not in self._subsets:
            while len(self._subsets) >= SUBSET_CACHE_MAX:
                del self._subsets[next(iter(self._subsets))]
            seqs = [seq for seq, info in self.labels.items() if _matches(info, *key)]
            vectors = np.asarray(self._index.get_items(seqs, return_type="numpy"), np.float32)
            self._subsets[key] = (seqs, vectors.reshape(len(seqs), self.dim))
        seqs, vectors = self._subsets[key]
        sims = vectors @ (query / max(float(np.linalg.norm(query)), 1e-12))
        top = np.argsort(-sims, kind="stable")[:k]
        return [(seqs[i], float(sims[i])) for i in top]

    # --- persistence (see index_file.py) ---------------------------------------------------
    def save_graph(self, path: str) -> None:
        self._index.save_index(path)

    @classmethod
    def load_graph(
        cls, path: str, dim: int, params: HnswParams, labels: dict[int, LabelInfo]
    ) -> VectorIndex:
        index = cls.__new__(cls)
        index.dim = dim
        index.params = params
        index.labels = {}
        index._counts = Counter()
        index._subsets = {}
        index._index = hnswlib.Index(space=SPACE, dim=dim)
        index._index.load_index(path, max_elements=max(2 * len(labels), 1024))
        index._ef = params.ef
        index._index.set_ef(params.ef)
        stored = set(index._index.get_ids_list())
        if not set(labels) <= stored:
            raise ValueError("index graph lacks labels its header lists")
        for seq in stored - set(labels):
            with contextlib.suppress(RuntimeError):  # already marked deleted
                index._index.mark_deleted(seq)
        for seq, info in labels.items():
            index.labels[seq] = info
            index._counts[_count_key(info)] += 1
        return index


def _count_key(info: LabelInfo) -> _CountKey:
    return (info.item_type, info.language, info.workspace)
