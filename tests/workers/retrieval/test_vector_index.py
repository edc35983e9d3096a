"""VectorIndex on its own: growth, removal, filtered search (graph walk and exact scan)."""

from __future__ import annotations

import numpy as np

from workers.retrieval.vector_index import (
    EXACT_SCAN_MAX,
    SUBSET_CACHE_MAX,
    HnswParams,
    LabelInfo,
    VectorIndex,
)

DIM = 32


def _data(n: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _infos(n: int) -> list[LabelInfo]:
    # two thirds python, one third java; every fifth item is a knowledge snippet
    return [
        LabelInfo("knowledge" if i % 5 == 0 else "generation", f"id{i}",
                  "java" if i % 3 == 0 else "python")
        for i in range(n)
    ]  # fmt: skip


def test_grows_past_its_capacity_and_forgets_removed_items():
    index = VectorIndex(DIM, HnswParams(M=8, ef_construction=50, ef=50), capacity=16)
    vectors = _data(100)
    index.add(list(range(1, 101)), vectors, _infos(100))
    assert len(index) == 100
    assert index.search(vectors[41], 1)[0][0] == 42
    index.remove([42])
    assert 42 not in index and all(seq != 42 for seq, _ in index.search(vectors[41], 5))
    index.add([42], vectors[41:42], [LabelInfo("generation", "again", "python")])
    assert index.search(vectors[41], 1) == [(42, index.search(vectors[41], 1)[0][1])]
    assert index.labels[42].item_id == "again"


def test_filtered_search_matches_exact_results():
    n = 3 * EXACT_SCAN_MAX  # big enough that the python subset uses the graph walk
    vectors = _data(n, seed=1)
    infos = _infos(n)
    index = VectorIndex(DIM, HnswParams(M=16, ef_construction=100, ef=100), capacity=n)
    index.add(list(range(n)), vectors, infos)
    queries = _data(20, seed=2)
    recall = []
    for query in queries:
        for language, types in (("python", None), ("java", {"knowledge"})):
            allowed = [
                i for i, info in enumerate(infos)
                if info.language == language and (types is None or info.item_type in types)
            ]  # fmt: skip
            exact = {allowed[i] for i in np.argsort(-(vectors[allowed] @ query))[:10]}
            got = index.search(query, 10, language=language, item_types=types)
            assert len(got) == 10
            assert all(infos[seq].language == language for seq, _ in got)
            assert types is None or all(infos[seq].item_type in types for seq, _ in got)
            sims = [sim for _, sim in got]
            assert sims == sorted(sims, reverse=True)
            recall.append(len(exact & {seq for seq, _ in got}) / 10)
    assert np.mean(recall) >= 0.95


def test_asking_for_more_than_there_is_returns_what_there_is():
    index = VectorIndex(DIM, HnswParams())
    vectors = _data(5)
    index.add([1, 2, 3, 4, 5], vectors, _infos(5))
    assert len(index.search(vectors[0], 50)) == 5
    assert index.search(vectors[0], 5, language="rust") == []
    assert VectorIndex(DIM, HnswParams()).search(vectors[0], 3) == []


def test_a_workspace_search_sees_its_own_and_global_items_only():
    """Graph walk and exact scan alike: another workspace's items never come back, even
    when they are the nearest by far (they cannot crowd the workspace's own out)."""
    for n in (300, 3 * EXACT_SCAN_MAX):  # exact scan, then hnswlib's filter callback
        vectors = _data(n, seed=3)
        # a third global, a third in ws-a, a third in ws-b
        infos = [LabelInfo("generation", f"id{i}", "python", (None, "ws-a", "ws-b")[i % 3])
                 for i in range(n)]  # fmt: skip
        index = VectorIndex(DIM, HnswParams(M=16, ef_construction=100, ef=100), capacity=n)
        index.add(list(range(n)), vectors, infos)
        assert index.count(workspace="ws-a") == len([i for i in infos if i.workspace != "ws-b"])
        for seq in range(2, 60, 3):  # query with ws-b's own vectors: their nearest is ws-b
            got = index.search(vectors[seq], 10, workspace="ws-a")
            assert len(got) == 10
            assert all(infos[s].workspace in (None, "ws-a") for s, _ in got)
            assert index.search(vectors[seq], 1, workspace="ws-b")[0][0] == seq
        # no workspace: everything (for callers that serve no user)
        everything = {infos[s].workspace for s, _ in index.search(vectors[2], 30)}
        assert everything == {None, "ws-a", "ws-b"}


def test_many_workspaces_keep_a_bounded_number_of_exact_scan_copies():
    n = 400
    vectors = _data(n, seed=4)
    infos = [LabelInfo("generation", f"id{i}", "python", f"ws-{i % 100}") for i in range(n)]
    index = VectorIndex(DIM, HnswParams(), capacity=n)
    index.add(list(range(n)), vectors, infos)
    for i in range(100):
        got = index.search(vectors[i], 3, workspace=f"ws-{i}")
        assert got[0][0] == i and {infos[s].workspace for s, _ in got} == {f"ws-{i}"}
        assert len(index._subsets) <= SUBSET_CACHE_MAX
