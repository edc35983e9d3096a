"""Migration 0004 (workspaces) on SQLite and PostgreSQL, from a database with rows in it.

Existing rows go to `default`, the starter knowledge stays global, duplicate ratings
collapse to each key's newest (scores recomputed), embeddings take their item's
workspace; downgrade refuses while another workspace exists, and works otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, create_engine, inspect, select, text

from app.core.db import alembic_config, make_engine

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (PostgreSQL: a fresh one on the test server)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    server = str(request.getfixturevalue("postgres_database")).rsplit("/", 1)[0]
    name = f"codeloop_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"{server}/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _insert(engine: Engine, table: str, rows: list[dict[str, Any]]) -> None:
    meta = MetaData()
    meta.reflect(engine, only=[table])
    with engine.begin() as conn:
        conn.execute(meta.tables[table].insert(), rows)


def _seed_0003(engine: Engine) -> None:
    """What a pre-workspace deployment holds: a key, a job, rated generations, starter
    and user knowledge with embeddings, a project file."""
    at = {"created_at": NOW}
    _insert(engine, "api_keys", [{"id": "k1", "name": "ops", "prefix": "cl_abc",
                                  "key_hash": "h" * 64, **at}])  # fmt: skip
    _insert(engine, "jobs", [{"id": "j1", "kind": "generate", "queue": "generate",
                              "status": "succeeded", "owner": "k1", "request": {"task": "t"},
                              "attempts": 1, "dispatches": 1, "progress_tokens": 0,
                              "updated_at": NOW, **at}])  # fmt: skip
    generation = {
        "owner": "k1", "task": "t", "language": "python", "text": "", "code": "x", "model": "m",
        "params": {}, "prompt_tokens": 1, "completion_tokens": 1, "usage_count": 0,
        "context": [], "rounds": [], "source": "model", **at,
    }  # fmt: skip
    _insert(engine, "code_history", [
        {**generation, "id": "g1", "job_id": "j1", "feedback_score": 0.5, "feedback_count": 3},
        {**generation, "id": "g2", "job_id": None, "feedback_score": None, "feedback_count": 0},
    ])  # fmt: skip
    # alice rated g1 twice (1.0, then 0.0), bob once: 3 log rows, mean 0.5
    _insert(engine, "feedback_log", [
        {"generation_id": "g1", "owner": "alice", "score": 1.0, "created_at": NOW},
        {"generation_id": "g1", "owner": "bob", "score": 0.5,
         "created_at": NOW + timedelta(seconds=1)},
        {"generation_id": "g1", "owner": "alice", "score": 0.0,
         "created_at": NOW + timedelta(seconds=2)},
    ])  # fmt: skip
    snippet = {"language": "python", "content": "c", "tags": [], "feedback_count": 0,
               "usage_count": 0, **at}  # fmt: skip
    _insert(engine, "knowledge_base", [
        {**snippet, "id": "kb-starter", "title": "Sort", "source": "starter"},
        {**snippet, "id": "kb-user", "title": "Mine", "source": "user:k1"},
    ])  # fmt: skip
    vector = {"language": "python", "model": "m", "dim": 1, "vector": b"\x00" * 4, **at}
    _insert(engine, "embeddings", [
        {**vector, "item_type": "generation", "item_id": "g1"},
        {**vector, "item_type": "knowledge", "item_id": "kb-starter"},
        {**vector, "item_type": "knowledge", "item_id": "kb-user"},
    ])  # fmt: skip
    _insert(engine, "project_context", [{"owner": "k1", "project_id": "p", "path": "a.py",
                                         "content": "a", "size": 1, "sha256": "s" * 64,
                                         "updated_at": NOW}])  # fmt: skip


def _column(engine: Engine, sql: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return {str(row[0]): row[1] for row in conn.execute(text(sql))}


def test_0004_moves_existing_rows_to_the_default_workspace(empty_db_url: str):
    cfg = alembic_config(empty_db_url)
    command.upgrade(cfg, "0003")
    engine = make_engine(empty_db_url)
    try:
        _seed_0003(engine)
        command.upgrade(cfg, "0004")

        assert _column(engine, "SELECT id, name FROM workspaces") == {"default": "default"}
        for table in ("api_keys", "jobs", "code_history", "project_context"):
            assert set(_column(engine, f"SELECT id, workspace_id FROM {table}").values()) == {
                "default"
            }, table
        assert _column(engine, "SELECT id, workspace_id FROM knowledge_base") == {
            "kb-starter": None, "kb-user": "default"
        }  # fmt: skip
        assert _column(engine, "SELECT item_id, workspace_id FROM embeddings") == {
            "g1": "default", "kb-starter": None, "kb-user": "default"
        }  # fmt: skip
        ratings = _column(engine, "SELECT owner, score FROM feedback_log")
        assert ratings == {"alice": 0.0, "bob": 0.5}  # alice's newest rating survives
        with engine.connect() as conn:
            count, score = conn.execute(
                text("SELECT feedback_count, feedback_score FROM code_history WHERE id = 'g1'")
            ).one()
            revision = conn.execute(text("SELECT revision FROM project_context")).scalar()
        assert (count, score) == (2, pytest.approx(0.25)) and revision == 1
        uniques = {u["name"] for t in ("feedback_log", "project_context", "knowledge_base")
                   for u in inspect(engine).get_unique_constraints(t)}  # fmt: skip
        assert {"uq_feedback_log_generation_owner", "uq_project_context_workspace_path",
                "uq_knowledge_workspace_language_title"} <= uniques  # fmt: skip

        # another workspace's memory cannot be merged by a downgrade …
        _insert(engine, "workspaces", [{"id": "w2", "name": "team-b", "created_at": NOW}])
        with pytest.raises(RuntimeError, match="besides 'default'"):
            command.downgrade(cfg, "0003")
        assert "workspaces" in inspect(engine).get_table_names()  # nothing half-done
        # … but a single-workspace database goes down and up again
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM workspaces WHERE id = 'w2'"))
        command.downgrade(cfg, "0003")
        assert "workspaces" not in inspect(engine).get_table_names()
        assert "workspace_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        command.upgrade(cfg, "0004")
        meta = MetaData()
        meta.reflect(engine, only=["knowledge_base"])
        with engine.connect() as conn:
            kb = meta.tables["knowledge_base"]
            rows = dict(conn.execute(select(kb.c.id, kb.c.workspace_id)).all())
        assert rows == {"kb-starter": None, "kb-user": "default"}
    finally:
        engine.dispose()
