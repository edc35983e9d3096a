"""GET /generations/{id}'s data: one generation with its calls, executions and ratings."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from app.core import db
from app.core.errors import NotFound
from app.core.feedback import record_feedback
from app.core.history import generation_detail, store_generation
from app.core.jobs import create_job
from app.core.models import FunctionCall


def test_generation_detail_gathers_everything_and_hides_it_from_other_workspaces(any_db_url):
    engine = db.make_engine(any_db_url)
    with Session(engine) as session:
        parent, _ = create_job(session, kind="generate", owner="alice", request={"task": "t"})
        row = store_generation(
            session=session, generation_id="5f0c0c1e-0000-4000-8000-000000000001",
            job_id=parent.id, owner="alice", workspace="team-a", task="add", language="python",
            text="```…```",
            code="def add(a, b): return a + b", model="m", params={"temperature": 0},
            context=[{"source": "knowledge", "id": "k1", "title": "Add", "score": 0.9,
                      "tokens": 12}],
            rounds=[{"round": 0, "code": "x", "verification": "failed"},
                    {"round": 1, "code": "def add…", "verification": "passed"}],
            verification_status="passed", last_execution_status="ok",
        )  # fmt: skip
        session.add(
            FunctionCall(job_id=parent.id, generation_id=row.id, call_id="call_1",
                         name="execute_code", arguments={"code": "x"}, ok=True, origin="agent",
                         result={"summary": "{}"}, duration_ms=12.5)
        )  # fmt: skip
        session.commit()
        run, _ = create_job(
            session, kind="execute", owner="alice", workspace="team-a",
            request={"language": "python", "code": "print(1)", "generation_id": row.id},
        )  # fmt: skip
        create_job(  # another workspace's run naming the id is not this generation's
            session, kind="execute", owner="mallory", workspace="team-b",
            request={"language": "python", "code": "print(2)", "generation_id": row.id},
        )  # fmt: skip
        record_feedback(session=session, generation_id=row.id, score=1.0, comment="great",
                        workspace="team-a")  # fmt: skip
        session.commit()
        # any key of the workspace reads it; another workspace gets a 404
        detail = generation_detail(session=session, generation_id=row.id, workspace="team-a")
        with pytest.raises(NotFound):
            generation_detail(session=session, generation_id=row.id, workspace="team-b")
        with pytest.raises(NotFound):
            generation_detail(session=session, generation_id="nope", workspace="team-a")
    engine.dispose()
    assert detail["task"] == "add" and detail["code"].startswith("def add")
    assert detail["params"] == {"temperature": 0} and detail["model"] == "m"
    assert detail["context"][0]["id"] == "k1"
    assert [r["verification"] for r in detail["rounds"]] == ["failed", "passed"]
    assert detail["verification_status"] == "passed" and detail["source"] == "model"
    assert detail["tool_calls"][0]["origin"] == "agent"
    assert [e["job_id"] for e in detail["executions"]] == [run.id]
    assert detail["feedback"]["score"] == 1.0 and detail["feedback"]["count"] == 1
    assert detail["feedback"]["ratings"][0]["comment"] == "great"
