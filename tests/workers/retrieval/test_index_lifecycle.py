"""Index replicas: built from SQL, saved, loaded, caught up, rebuilt when damaged or stale."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.core.db import make_engine, migrate
from app.core.history import store_generation
from app.core.models import Embedding
from tests.workers.retrieval.helpers import add_generation, add_knowledge
from workers.retrieval.embedding_store import PendingItem, store_vectors
from workers.retrieval.retriever import FeedbackAwareRetriever
from workers.retrieval.vector_index import HnswParams

SNIPPETS = [
    ("python", "Read a file", "open(path).read()"),
    ("python", "Sort a dict by value", "sorted(d.items(), key=lambda kv: kv[1])"),
    ("javascript", "Debounce", "let t; clearTimeout(t); t = setTimeout(fn, ms)"),
    ("java", "Read lines", "Files.readAllLines(path)"),
]


def _seed(sessions) -> list[str]:
    return [add_knowledge(sessions, lang, title, body) for lang, title, body in SNIPPETS]


def _vector(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    return vector / np.linalg.norm(vector)


def test_two_replicas_catch_up_from_sql_to_the_same_content(sessions, make_retriever):
    _seed(sessions)
    a, b = make_retriever("machine-a"), make_retriever("machine-b")
    assert a.open() == "built" and b.open() == "built"
    assert a.labels() == b.labels() and a.size == len(SNIPPETS)

    gen = add_generation(sessions, "merge two sorted lists", "def merge(a, b): ...")
    assert a.index_generation(gen)  # machine a embeds it and writes the SQL row
    assert not a.index_generation("no-such-generation")
    hits = b.search("merge two sorted lists", language="python", k=1)  # b catches up
    assert [hit.item_id for hit in hits] == [gen]
    assert b.labels() == a.labels() and b.high_water_mark == a.high_water_mark


def test_a_replica_embeds_items_added_without_an_embedding(sessions, make_retriever):
    retriever = make_retriever()
    retriever.open()
    item = add_knowledge(sessions, "python", "Flatten a list", "[x for xs in xss for x in xs]")
    retriever.sync(force=True)  # e.g. knowledge posted through the API (which has no model)
    assert retriever.search("flatten nested lists", k=1)[0].item_id == item


def test_rows_that_become_visible_below_the_high_water_mark_are_not_skipped(
    sessions, make_retriever
):
    _seed(sessions)
    retriever = make_retriever()
    retriever.open()
    top = retriever.high_water_mark
    gen_late, gen_early = (add_generation(sessions, f"task {i}", "pass") for i in range(2))

    def write(seq: int, item_id: str, vector: np.ndarray) -> None:
        with sessions.begin() as session:
            session.execute(
                insert(Embedding).values(
                    seq=seq, item_type="generation", item_id=item_id, language="python",
                    model=retriever.model, dim=384, vector=vector.tobytes(),
                )
            )  # fmt: skip

    # seq top+2 is visible first (as when top+1's transaction commits later)
    write(top + 2, gen_early, _vector(1))
    retriever.sync()
    assert retriever.high_water_mark == top + 2 and top + 1 in retriever.watched_gaps()
    write(top + 1, gen_late, _vector(2))
    retriever.sync()
    assert gen_late in {info.item_id for info in retriever.labels().values()}
    assert top + 1 not in retriever.watched_gaps()


def test_late_commit_on_postgres_is_caught_up(postgres_url, embedder, tmp_path):
    """A real out-of-order commit: seq n commits after seq n+1 was seen."""
    engine = make_engine(postgres_url)
    settings = Settings(database_url=postgres_url, data_dir=tmp_path)
    retriever = FeedbackAwareRetriever(engine=engine, settings=settings, embedder=embedder)
    retriever.open()
    with Session(engine) as session, session.begin():
        ids = [
            store_generation(
                session=session, task=f"task {i}", language="python", text="", code="", model="m"
            ).id
            for i in range(2)
        ]
    with Session(engine) as slow:
        slow.begin()
        store_vectors(slow, retriever.model, [_pending(ids[0])], _vector(3)[None])
        slow.flush()  # seq n is taken, not committed
        with Session(engine) as fast, fast.begin():
            store_vectors(fast, retriever.model, [_pending(ids[1])], _vector(4)[None])  # n+1
        retriever.sync()
        seen = {info.item_id for info in retriever.labels().values()}
        assert ids[1] in seen and ids[0] not in seen
        slow.commit()
    retriever.sync()
    assert ids[0] in {info.item_id for info in retriever.labels().values()}
    engine.dispose()


def _pending(item_id: str) -> PendingItem:
    return PendingItem("generation", item_id, "python", "x")


def test_saved_index_is_loaded_and_caught_up(sessions, make_retriever):
    _seed(sessions)
    first = make_retriever("m")
    assert first.open() == "built"
    assert first.index_path.exists()
    first.close()
    gen = add_generation(sessions, "binary search", "import bisect")
    again = make_retriever("m")  # same machine, same data dir
    assert again.open() == "loaded"
    assert gen in {info.item_id for info in again.labels().values()}
    assert again.search("binary search", k=1)[0].item_id == gen


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupt_index_file_is_rebuilt_not_trusted(sessions, make_retriever, damage):
    ids = _seed(sessions)
    original = make_retriever("m")
    original.open()
    path = original.index_path
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "garbage":
        data = bytearray(b"not an index" * 100)
    else:
        data = bytearray()
    path.write_bytes(bytes(data))

    replica = make_retriever("m")
    how = replica.open()
    assert how.startswith("rebuilt"), how
    assert replica.labels() == original.labels()
    assert replica.search("read a file", language="python", k=1)[0].item_id == ids[0]
    assert make_retriever("m").open() == "loaded"  # the rebuilt file was saved and verifies


def test_index_file_from_another_database_is_rebuilt(tmp_path, sessions, make_retriever):
    _seed(sessions)
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    migrate(other_url)
    other = make_engine(other_url)
    other_sessions = sessionmaker(other, expire_on_commit=False)
    for lang, title, body in reversed(SNIPPETS):
        add_knowledge(other_sessions, lang, title + " (other)", body)
    make_retriever("shared", db=other).open()

    replica = make_retriever("shared")  # the same file, this test's database
    assert replica.open().startswith("rebuilt (stale")
    titles = {hit.title for hit in replica.search("read", k=10)}
    assert titles and not any("(other)" in title for title in titles if title)
    other.dispose()


def test_new_hnsw_graph_parameters_rebuild_the_index(sessions, make_retriever):
    _seed(sessions)
    assert make_retriever("m", params=HnswParams(M=16, ef_construction=100, ef=50)).open()
    same_graph = make_retriever("m", params=HnswParams(M=16, ef_construction=100, ef=80))
    assert same_graph.open() == "loaded"  # ef is a search-time knob
    changed = make_retriever("m", params=HnswParams(M=8, ef_construction=100, ef=50))
    assert changed.open().startswith("rebuilt (stale: built with")


def test_concurrent_searches_and_writes_converge(sessions, make_retriever):
    _seed(sessions)
    a, b = make_retriever("a"), make_retriever("b")
    a.open()
    b.open()
    gens = [add_generation(sessions, f"utility function number {i}", "pass") for i in range(6)]
    errors: list[BaseException] = []

    def index(ids):
        try:
            for gen in ids:
                a.index_generation(gen)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def search():
        try:
            for _ in range(6):
                b.search("utility function", k=3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=index, args=(gens[:3],)),
               threading.Thread(target=index, args=(gens[3:],)),
               threading.Thread(target=search)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    b.sync()
    assert a.labels() == b.labels()
    assert set(gens) <= {info.item_id for info in b.labels().values()}


def test_labels_keep_their_workspace_through_save_and_load(sessions, make_retriever):
    mine = add_generation(sessions, "parse a csv file", "import csv", workspace="ws-a")
    theirs = add_generation(sessions, "parse a csv file quickly", "import csv", workspace="ws-b")
    common = add_knowledge(sessions, "python", "CSV reader", "csv.reader(f)", workspace=None)
    first = make_retriever("m")
    assert first.open() == "built"
    first.save()
    again = make_retriever("m")
    assert again.open() == "loaded"
    workspaces = {info.item_id: info.workspace for info in again.labels().values()}
    assert workspaces == {mine: "ws-a", theirs: "ws-b", common: None}
    seen = {hit.item_id for hit in again.search("parse a csv file", k=10, workspace="ws-a")}
    assert seen == {mine, common}


def test_an_index_file_without_workspaces_is_rebuilt(sessions, make_retriever):
    """Format 1 (before workspaces) has no workspace per label: rebuilt from SQL, never
    trusted, so a pre-workspace replica cannot answer for a workspace."""
    import json
    import struct

    from workers.retrieval import index_file

    add_generation(sessions, "parse a csv file", "import csv", workspace="ws-a")
    first = make_retriever("m")
    first.open()
    path = first.save()
    header, graph = index_file.read_header(path)
    old = header.to_json()
    old["format"] = 1
    old["labels"] = [label[:4] for label in old["labels"]]
    body = json.dumps(old).encode()
    body = struct.pack("<I", len(body)) + body + graph
    digest = __import__("hashlib").sha256(body).digest()
    path.write_bytes(index_file.MAGIC + digest + body)
    assert make_retriever("m").open().startswith("rebuilt (unsupported index format 1")
