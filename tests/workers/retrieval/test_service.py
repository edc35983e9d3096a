"""The entry points the Celery tasks call, configured from the environment like a worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.core import db
from app.core.config import reset_settings_cache
from app.core.errors import InvalidInput
from app.core.feedback import record_feedback
from tests.workers.retrieval.helpers import add_generation, add_knowledge
from workers.retrieval import service


@pytest.fixture
def configured(any_db_url: str, tmp_path, monkeypatch, embedder) -> Iterator[str]:
    monkeypatch.setenv("CODELOOP_DATABASE_URL", any_db_url)
    monkeypatch.setenv("CODELOOP_DATA_DIR", str(tmp_path / "data"))
    reset_settings_cache()
    db.reset_engine()
    service.reset()
    yield any_db_url
    service.reset()
    db.reset_engine()
    monkeypatch.undo()
    reset_settings_cache()


def test_search_job_result_shape_and_ranking(configured, sessions):
    add_knowledge(sessions, "python", "Reverse a list", "items[::-1]")
    add_knowledge(sessions, "javascript", "Reverse an array", "[...items].reverse()")
    gen = add_generation(sessions, "reverse a list of numbers", "def rev(xs):\n    return xs[::-1]")
    assert service.warm_up() == "built"

    result = service.search(
        {"query": "reverse a list", "language": "python", "k": 5}, workspace="default"
    )
    assert set(result) == {"items", "took_ms"} and result["took_ms"] >= 0
    items = result["items"]
    assert [item["language"] for item in items] == ["python", "python"]
    for item in items:
        assert set(item) >= {
            "item_type", "item_id", "language", "title", "snippet", "similarity",
            "feedback_score", "usage_count", "combined",
        }  # fmt: skip
        assert item["combined"] == pytest.approx(
            0.7 * item["similarity"] + 0.2 * item["feedback_score"] + 0.1 * 0, abs=1e-5
        )
    by_type = {item["item_type"]: item for item in items}
    assert by_type["knowledge"]["title"] == "Reverse a list"
    assert by_type["generation"]["title"] is None and by_type["generation"]["item_id"] == gen

    with sessions.begin() as session:
        record_feedback(session=session, generation_id=gen, score=1.0)
    rated = service.search({"query": "reverse a list", "language": "python"}, workspace="default")[
        "items"
    ]
    assert rated[0]["item_id"] == gen and rated[0]["feedback_score"] == 1.0
    # another workspace's search job sees none of it
    assert service.search({"query": "reverse a list"}, workspace="elsewhere")["items"] == []


def test_index_generation_makes_a_new_generation_searchable(configured, sessions):
    service.warm_up()
    gen = add_generation(sessions, "compute a factorial recursively", "def fact(n): ...")
    assert service.index_generation(gen) is True
    items = service.search({"query": "factorial", "k": 1}, workspace="default")["items"]
    assert items[0]["item_id"] == gen


@pytest.mark.parametrize(
    "request_",
    [
        {},
        {"query": ""},
        {"query": "   "},
        {"query": 42},
        {"query": "x" * 4001},
        {"query": "ok", "language": "cobol"},
        {"query": "ok", "k": 0},
        {"query": "ok", "k": 51},
        {"query": "ok", "k": "5"},
    ],
)
def test_search_refuses_bad_requests(configured, request_):
    with pytest.raises(InvalidInput):
        service.search(request_, workspace="default")


def test_context_window_entry_point(configured, sessions):
    add_knowledge(sessions, "python", "Sum a list", "total = sum(values)")
    window = service.context_window("sum a list of numbers", "python", workspace="default")
    assert [item.title for item in window.items] == ["Sum a list"]
    assert service.context_window("sum a list", "python", workspace="elsewhere").items == []
