"""Feedback-aware ranking with the real embedder, hnswlib and SQL (both engines)."""

from __future__ import annotations

from sqlalchemy import delete, func, select

from app.core.feedback import record_feedback
from app.core.models import Embedding, KnowledgeItem
from tests.workers.retrieval.helpers import add_generation, add_knowledge

REVERSE_SLICE = "def reverse(s: str) -> str:\n    return s[::-1]\n"
REVERSE_JOIN = "def reverse(s: str) -> str:\n    return ''.join(reversed(s))\n"
TASK = "reverse a string"


def _ids(hits):
    return [hit.item_id for hit in hits]


def test_feedback_changes_ranking_immediately_without_re_embedding(sessions, make_retriever):
    first = add_generation(sessions, TASK, REVERSE_SLICE)
    second = add_generation(sessions, TASK, REVERSE_JOIN)
    add_generation(sessions, "parse a csv file", "import csv\nrows = list(csv.reader(f))\n")
    retriever = make_retriever()
    retriever.open()
    before = retriever.search("reverse a string in python", language="python", k=3)
    top, runner_up = _ids(before)[:2]
    assert {top, runner_up} == {first, second}
    assert all(hit.feedback_score == 0.5 and hit.feedback_count == 0 for hit in before)
    with sessions() as session:
        embeddings_before = session.scalar(select(func.count()).select_from(Embedding))

    for rater in ("alice", "bob"):  # one rating per key: two keys, two ratings each
        with sessions.begin() as session:
            record_feedback(session=session, generation_id=top, score=0.0, owner=rater)
            record_feedback(session=session, generation_id=runner_up, score=1.0, owner=rater)

    after = retriever.search("reverse a string in python", language="python", k=3)
    assert _ids(after)[:2] == [runner_up, top]
    assert after[0].feedback_score == 1.0 and after[0].feedback_count == 2
    assert after[0].combined > after[1].combined
    with sessions() as session:  # no new embedding was written
        assert session.scalar(select(func.count()).select_from(Embedding)) == embeddings_before


def test_much_more_similar_item_beats_slightly_better_rated_unrelated_one(sessions, make_retriever):
    related = add_generation(sessions, TASK, REVERSE_SLICE)
    unrelated = add_generation(sessions, "connect to a postgres database", "import psycopg\n")
    with sessions.begin() as session:
        record_feedback(session=session, generation_id=related, score=0.5)
        record_feedback(session=session, generation_id=unrelated, score=0.7)
    retriever = make_retriever()
    hits = retriever.search("reverse a string", language="python", k=2)
    assert _ids(hits) == [related, unrelated]


def test_usage_raises_rank_of_equally_similar_items(sessions, make_retriever):
    first = add_generation(sessions, TASK, REVERSE_SLICE)
    second = add_generation(sessions, TASK, REVERSE_JOIN)
    retriever = make_retriever()
    hits = retriever.search("reverse a string", language="python", k=2)
    lower = [hit for hit in hits if hit.item_id == _ids(hits)[1]]
    for _ in range(20):
        retriever.record_use(lower)
    again = retriever.search("reverse a string", language="python", k=2)
    assert _ids(again) == [_ids(hits)[1], _ids(hits)[0]]
    assert again[0].usage_count == 20
    assert {first, second} == set(_ids(again))


def test_language_filter(sessions, make_retriever):
    py = add_knowledge(sessions, "python", "Read a JSON file", "json.load(open(path))")
    js = add_knowledge(sessions, "javascript", "Read a JSON file", "JSON.parse(await readFile(p))")
    ts = add_knowledge(sessions, "typescript", "Read a JSON file", "JSON.parse(text) as T")
    add_generation(
        sessions, "read json from disk", "const data = require('./x.json')", "javascript"
    )
    retriever = make_retriever()

    only_js = retriever.search("read a json file", language="javascript", k=10)
    assert only_js and {hit.language for hit in only_js} == {"javascript"}
    assert js in _ids(only_js) and py not in _ids(only_js)
    assert {hit.item_type for hit in only_js} == {"knowledge", "generation"}

    everywhere = retriever.search("read a json file", k=10)
    assert {py, js, ts} <= set(_ids(everywhere))
    assert retriever.search("read a json file", language="java", k=5) == []


def test_items_deleted_from_sql_drop_out_of_results(sessions, make_retriever):
    keep = add_knowledge(sessions, "python", "Sort a list", "sorted(items)")
    gone = add_knowledge(sessions, "python", "Sort a list in place", "items.sort()")
    retriever = make_retriever()
    assert set(_ids(retriever.search("sort a list", k=5))) == {keep, gone}
    with sessions.begin() as session:
        session.execute(delete(Embedding).where(Embedding.item_id == gone))
        session.execute(delete(KnowledgeItem).where(KnowledgeItem.id == gone))
    assert _ids(retriever.search("sort a list", k=5)) == [keep]
    retriever.sync(force=True)  # the periodic reconcile also drops it from the index
    assert all(info.item_id != gone for info in retriever.labels().values())


def test_search_hit_json_has_the_documented_fields(sessions, make_retriever):
    add_knowledge(sessions, "python", "Sort a list", "sorted(items)")
    hit = make_retriever().search("sort", k=1)[0].to_json()
    assert set(hit) >= {
        "item_type", "item_id", "language", "title", "snippet", "similarity",
        "feedback_score", "usage_count", "combined",
    }  # fmt: skip
    assert hit["title"] == "Sort a list" and hit["snippet"] == "sorted(items)"
