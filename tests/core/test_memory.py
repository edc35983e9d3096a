"""Memory data functions on SQLite and PostgreSQL: feedback, knowledge, history, project
files and the starter knowledge base. Real SQL, no mocks.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from app.core.db import make_engine
from app.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from app.core.feedback import record_feedback
from app.core.history import best_history, record_usage, store_generation
from app.core.knowledge import create_knowledge, list_knowledge
from app.core.models import CodeHistory, FeedbackLog, KnowledgeItem, utcnow
from app.core.names import LANGUAGES
from app.core.project_files import (
    delete_project_file,
    get_project_file,
    list_project_files,
    normalize_project_path,
    put_project_file,
)
from app.core.starter_knowledge import load_starter_knowledge, starter_snippets
from tests.support import missing_tool


@pytest.fixture
def sessions(any_db_url: str):
    engine = make_engine(any_db_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def _generation(sessions, task: str = "add two numbers", language: str = "python", **kw) -> str:
    with sessions.begin() as session:
        return store_generation(
            session=session, task=task, language=language, text="", code="pass", model="m", **kw
        ).id


# --- feedback -----------------------------------------------------------------------------------
def test_feedback_keeps_running_mean_and_log_in_one_transaction(sessions):
    gen = _generation(sessions)
    for key, (score, mean) in enumerate(((1.0, 1.0), (0.0, 0.5), (0.5, 0.5), (0.9, 0.6))):
        with sessions.begin() as session:
            result = record_feedback(
                session=session, generation_id=gen, score=score, comment="ok", owner=f"k{key}"
            )
        assert result.feedback_count == key + 1 and result.feedback_score == pytest.approx(mean)
    with sessions() as session:
        row = session.get(CodeHistory, gen)
        assert (row.feedback_count, row.feedback_score) == (4, pytest.approx(0.6))
        logged = session.scalars(select(FeedbackLog.score).order_by(FeedbackLog.id)).all()
        assert logged == [1.0, 0.0, 0.5, 0.9]


def test_a_new_rating_by_the_same_key_replaces_its_old_one(sessions):
    gen = _generation(sessions)
    steps = [("alice", 1.0, 1.0, 1), ("bob", 0.0, 0.5, 2), ("alice", 0.2, 0.1, 2),
             ("alice", 0.6, 0.3, 2)]  # fmt: skip
    for owner, score, mean, count in steps:
        with sessions.begin() as session:
            result = record_feedback(
                session=session, generation_id=gen, score=score, owner=owner, comment=owner
            )
        assert (result.feedback_count, result.feedback_score) == (count, pytest.approx(mean))
    with sessions() as session:
        logged = session.execute(
            select(FeedbackLog.owner, FeedbackLog.score).order_by(FeedbackLog.owner)
        ).all()
    assert [tuple(row) for row in logged] == [("alice", 0.6), ("bob", 0.0)]


def test_feedback_refuses_unknown_generation_and_bad_scores(sessions):
    gen = _generation(sessions)
    with sessions.begin() as session, pytest.raises(NotFound) as missing:
        record_feedback(session=session, generation_id="no-such-id", score=0.5)
    assert missing.value.status_code == 404
    for bad in (-0.01, 1.01, math.nan, math.inf, True):
        with sessions.begin() as session, pytest.raises(InvalidInput) as invalid:
            record_feedback(session=session, generation_id=gen, score=bad)
        assert invalid.value.body()["error"]["type"] == "invalid_input"
    with sessions() as session:  # nothing was logged or counted
        assert session.scalar(select(func.count()).select_from(FeedbackLog)) == 0
        assert session.get(CodeHistory, gen).feedback_count == 0


def test_concurrent_feedback_on_one_generation_keeps_count_and_mean_exact(sessions):
    gen = _generation(sessions)
    threads, per_thread = 8, 25
    scores = [round(((i * 37) % 101) / 100, 2) for i in range(threads * per_thread)]
    start = threading.Barrier(threads)

    def rate(worker: int) -> None:
        start.wait()
        for i, score in enumerate(scores[worker::threads]):
            with sessions.begin() as session:
                record_feedback(
                    session=session, generation_id=gen, score=score, owner=f"w{worker}-{i}"
                )

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(rate, range(threads)))
    with sessions() as session:
        row = session.get(CodeHistory, gen)
        logged = session.scalars(select(FeedbackLog.score)).all()
    assert row.feedback_count == len(scores) == len(logged)
    assert row.feedback_score == pytest.approx(sum(scores) / len(scores), abs=1e-9)


def test_concurrent_re_ratings_keep_one_row_per_key_and_an_exact_mean(sessions):
    """Keys re-rating one generation at once: each keeps only its last rating, and the
    aggregate is exactly the mean of those (no lost or double-counted update)."""
    gen = _generation(sessions)
    keys, rounds = 6, 15
    start = threading.Barrier(keys)

    def rate(key: int) -> float:
        start.wait()
        score = 0.0
        for r in range(rounds):
            score = round(((key * 31 + r * 17) % 101) / 100, 2)
            with sessions.begin() as session:
                record_feedback(session=session, generation_id=gen, score=score, owner=f"k{key}")
        return score

    with ThreadPoolExecutor(keys) as pool:
        last = list(pool.map(rate, range(keys)))
    with sessions() as session:
        row = session.get(CodeHistory, gen)
        logged = dict(session.execute(select(FeedbackLog.owner, FeedbackLog.score)).all())
    assert logged == {f"k{key}": score for key, score in enumerate(last)}
    assert row.feedback_count == keys
    assert row.feedback_score == pytest.approx(sum(last) / keys, abs=1e-9)


def test_rating_another_workspaces_generation_is_not_found(sessions):
    gen = _generation(sessions, workspace="ws-a")
    with sessions.begin() as session, pytest.raises(NotFound):
        record_feedback(session=session, generation_id=gen, score=1.0, workspace="ws-b")
    with sessions.begin() as session:
        rated = record_feedback(session=session, generation_id=gen, score=1.0, workspace="ws-a")
    assert rated.feedback_count == 1


# --- knowledge ----------------------------------------------------------------------------------
def test_knowledge_create_list_and_conflict(sessions):
    with sessions.begin() as session:
        first = create_knowledge(
            session=session, language="python", title="Sort", content="sorted(x)", tags=["list"]
        )
        create_knowledge(session=session, language="python", title="Zip", content="zip(a, b)")
        create_knowledge(session=session, language="java", title="Sort", content="Collections.sort")
        session.execute(
            update(KnowledgeItem).where(KnowledgeItem.title == "Zip").values(feedback_score=0.9,
                                                                            feedback_count=3)
        )  # fmt: skip
    with sessions.begin() as session, pytest.raises(Conflict):
        create_knowledge(session=session, language="python", title="Sort", content="again")
    with sessions() as session:
        listed = list_knowledge(session=session, language="python")
        assert [item.title for item in listed] == ["Zip", "Sort"]  # rated above the prior
        assert listed[1].id == first.id and listed[1].tags == ["list"]
        assert [i.title for i in list_knowledge(session=session, language="java")] == ["Sort"]


def test_knowledge_refuses_bad_input(sessions):
    with sessions.begin() as session:
        with pytest.raises(InvalidInput):
            create_knowledge(session=session, language="cobol", title="x", content="y")
        with pytest.raises(InvalidInput):
            create_knowledge(session=session, language="python", title=" ", content="y")
        with pytest.raises(PayloadTooLarge):
            create_knowledge(session=session, language="python", title="t", content="x" * 70_000)
        with pytest.raises(InvalidInput):
            list_knowledge(session=session, language="python", limit=0)


# --- history ------------------------------------------------------------------------------------
def test_best_history_orders_by_rating_then_usage_then_recency(sessions):
    now = utcnow()
    ids = {}
    for name, score, count, usage, age in [
        ("liked", 0.9, 2, 0, 5),
        ("unrated_used", None, 0, 7, 4),
        ("unrated_new", None, 0, 7, 1),
        ("unrated_old", None, 0, 7, 9),
        ("unrated_unused", None, 0, 0, 0),
        ("disliked", 0.1, 3, 50, 0),
    ]:
        gen = _generation(sessions, task=name)
        with sessions.begin() as session:
            session.execute(
                update(CodeHistory)
                .where(CodeHistory.id == gen)
                .values(feedback_score=score, feedback_count=count, usage_count=usage,
                        created_at=now - timedelta(minutes=age))
            )  # fmt: skip
        ids[gen] = name
    _generation(sessions, task="javascript one", language="javascript")
    with sessions() as session:
        best = best_history(session=session, language="python", limit=10)
        assert [ids[row.id] for row in best] == [
            "liked", "unrated_new", "unrated_used", "unrated_old", "unrated_unused", "disliked"
        ]  # fmt: skip
        assert len(best_history(session=session, language="python", limit=2)) == 2
        assert best_history(session=session, language="python", workspace="elsewhere") == []
        with pytest.raises(InvalidInput):
            best_history(session=session, language="python", limit=101)


def test_record_usage_counts_each_item_once_per_call(sessions):
    gen = _generation(sessions)
    with sessions.begin() as session:
        item = create_knowledge(session=session, language="python", title="t", content="c")
    for _ in range(3):
        with sessions.begin() as session:
            record_usage(session=session, generation_ids=[gen, gen], knowledge_ids=[item.id])
    with sessions() as session:
        assert session.get(CodeHistory, gen).usage_count == 3
        assert session.get(KnowledgeItem, item.id).usage_count == 3


# --- project files ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("src/app.py", "src/app.py"),
        ("./src//app.py", "src/app.py"),
        ("src/./lib/x.ts", "src/lib/x.ts"),
        ("dir/", "dir"),
        ("naïve/ünïcode.py", "naïve/ünïcode.py"),
        ("...hidden", "...hidden"),
    ],
)
def test_project_paths_are_normalised(raw: str, clean: str):
    assert normalize_project_path(raw) == clean


@pytest.mark.parametrize(
    "raw",
    [
        "../etc/passwd",
        "src/../../etc/passwd",
        "src/..",
        "/etc/passwd",
        "//server/share",
        "C:/Windows/win.ini",
        "c:evil",
        "..\\..\\windows",
        "src\\app.py",
        "a\x00b",
        "line\nbreak",
        "\uff0e\uff0e/secret",  # fullwidth dots
        "",
        "   ",
        "./",
        "x/" + "a" * 300,
    ],
)
def test_project_paths_that_could_escape_are_refused(raw: str):
    with pytest.raises(InvalidInput) as refused:
        normalize_project_path(raw)
    assert refused.value.status_code == 422
    assert refused.value.body()["error"]["type"] == "invalid_input"


def test_project_files_put_get_list_delete(sessions):
    with sessions.begin() as session:
        row, created = put_project_file(
            session=session, project_id="demo", path="./src//main.py", content="print(1)\n"
        )
        assert created and row.path == "src/main.py" and row.size == 9
        put_project_file(session=session, project_id="demo", path="README.md", content=b"# hi\n")
    with sessions.begin() as session:
        row, created = put_project_file(
            session=session, project_id="demo", path="src/main.py", content="print(2)\n"
        )
        assert not created and row.content == "print(2)\n"
    with sessions() as session:
        assert [f.path for f in list_project_files(session=session, project_id="demo")] == [
            "README.md", "src/main.py"
        ]  # fmt: skip
        got = get_project_file(session=session, project_id="demo", path="src/main.py")
        assert got.content == "print(2)\n" and len(got.sha256) == 64
    with sessions.begin() as session:
        delete_project_file(session=session, project_id="demo", path="src/main.py")
    with sessions() as session:
        with pytest.raises(NotFound):
            get_project_file(session=session, project_id="demo", path="src/main.py")
        with pytest.raises(NotFound):
            list_project_files(session=session, project_id="nothing-here")


def test_project_files_refuse_traversal_oversize_and_binary(sessions):
    with sessions.begin() as session:
        with pytest.raises(InvalidInput):
            put_project_file(session=session, project_id="demo", path="../x.py", content="x")
        with pytest.raises(InvalidInput):
            put_project_file(session=session, project_id="../demo", path="x.py", content="x")
        with pytest.raises(PayloadTooLarge) as too_big:
            put_project_file(
                session=session, project_id="demo", path="big.txt", content="x" * 262_145
            )
        assert too_big.value.status_code == 413
        assert too_big.value.body()["error"]["detail"]["limit"] == 262_144
        with pytest.raises(InvalidInput):
            put_project_file(session=session, project_id="demo", path="b.bin", content=b"\xff\xfe")
        with pytest.raises(InvalidInput):
            put_project_file(session=session, project_id="demo", path="n.txt", content="a\x00b")
    with sessions() as session, pytest.raises(NotFound):
        list_project_files(session=session, project_id="demo")


def test_a_project_id_names_a_separate_project_in_each_workspace(sessions):
    def put(workspace: str, path: str, content: str, owner: str) -> bool:
        with sessions.begin() as session:
            put = put_project_file(
                session=session, project_id="p", path=path, content=content, owner=owner,
                workspace=workspace,
            )  # fmt: skip
            return put[1]

    assert put("ws-a", "a.py", "alice's", "alice")
    # bob, in another workspace, makes his own project "p"; alice's file is untouched
    assert put("ws-b", "a.py", "bob's", "bob")
    assert not put("ws-a", "a.py", "carol's edit", "carol")  # carol shares alice's workspace
    with sessions.begin() as session:
        assert get_project_file(session=session, project_id="p", path="a.py",
                                workspace="ws-b").content == "bob's"  # fmt: skip
        a_file = get_project_file(session=session, project_id="p", path="a.py", workspace="ws-a")
        assert (a_file.content, a_file.owner, a_file.revision) == ("carol's edit", "alice", 2)
        with pytest.raises(NotFound):
            get_project_file(session=session, project_id="p", path="a.py", workspace="ws-c")
        with pytest.raises(NotFound):
            list_project_files(session=session, project_id="p", workspace="ws-c")
        with pytest.raises(NotFound):
            delete_project_file(session=session, project_id="p", path="a.py", workspace="ws-c")
        delete_project_file(session=session, project_id="p", path="a.py", workspace="ws-b")
    with sessions() as session:
        assert len(list_project_files(session=session, project_id="p", workspace="ws-a")) == 1
        with pytest.raises(NotFound):
            list_project_files(session=session, project_id="p", workspace="ws-b")


def test_concurrent_writes_to_one_path_from_two_workspaces_never_clobber(sessions):
    """The ownership check is the upsert's key: racing writers of the same project id
    and path in two workspaces each end with their own file, never the other's."""
    writers, rounds = 4, 10
    start = threading.Barrier(writers)

    def write(writer: int) -> list[bool]:
        workspace = f"ws-{writer % 2}"
        start.wait()
        created = []
        for r in range(rounds):
            with sessions.begin() as session:
                created.append(put_project_file(
                    session=session, project_id="shared", path="src/app.py",
                    content=f"{workspace} writer {writer} round {r}", workspace=workspace,
                )[1])  # fmt: skip
        return created

    with ThreadPoolExecutor(writers) as pool:
        created = [flag for flags in pool.map(write, range(writers)) for flag in flags]
    assert sum(created) == 2  # one creation per workspace, every other write a replace
    with sessions() as session:
        for workspace in ("ws-0", "ws-1"):
            row = get_project_file(session=session, project_id="shared", path="src/app.py",
                                   workspace=workspace)  # fmt: skip
            assert row.content.startswith(f"{workspace} writer ")
            assert row.revision == writers // 2 * rounds


# --- starter knowledge --------------------------------------------------------------------------
def test_starter_knowledge_loads_once_for_every_language(sessions):
    with sessions.begin() as session:
        inserted = load_starter_knowledge(session)
    with sessions.begin() as session:
        assert load_starter_knowledge(session) == 0
        assert load_starter_knowledge(session, only_if_empty=True) == 0
    with sessions() as session:
        per_language = dict(
            session.execute(
                select(KnowledgeItem.language, func.count()).group_by(KnowledgeItem.language)
            ).all()
        )
    assert inserted == sum(per_language.values()) == len(starter_snippets())
    assert set(per_language) == set(LANGUAGES)
    assert all(count >= 12 for count in per_language.values())


def test_starter_knowledge_skips_a_non_empty_base_when_asked(sessions):
    with sessions.begin() as session:
        create_knowledge(session=session, language="python", title="mine", content="x = 1")
        assert load_starter_knowledge(session, only_if_empty=True) == 0


def test_starter_python_snippets_compile():
    for snippet in starter_snippets():
        if snippet["language"] == "python":
            compile(snippet["content"], snippet["title"], "exec")


def test_starter_javascript_snippets_parse(tmp_path):
    if shutil.which("node") is None:
        missing_tool("node is not installed (scripts/install-sandbox-deps.sh)")
    for i, snippet in enumerate(starter_snippets()):
        if snippet["language"] in ("javascript", "vite"):
            path = tmp_path / f"s{i}.mjs"
            path.write_text(snippet["content"])
            checked = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
            assert checked.returncode == 0, (snippet["title"], checked.stderr)
