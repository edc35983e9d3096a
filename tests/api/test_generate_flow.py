"""A task in, tokens out, a finished job back: the walking skeleton on real parts."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import Platform
from tests.support import read_events


def test_generate_job_lifecycle(platform: Platform) -> None:
    with platform.client() as http:
        created = http.post(
            "/generate_code",
            json={"task": "add two numbers", "language": "python", "max_new_tokens": 24,
                  "temperature": 0},
        )  # fmt: skip
        assert created.status_code == 202, created.text
        job = created.json()
        assert created.headers["location"] == f"/jobs/{job['id']}"
        assert job["status"] == "queued" and job["kind"] == "generate"
        assert job["links"]["events"] == f"/jobs/{job['id']}/events"

        done = http.get(f"/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done
        result = done["result"]
        assert result["finish_reason"] in ("stop", "length")
        assert result["usage"]["completion_tokens"] >= 1
        assert set(result["timings"]) == {"queue_ms", "first_token_ms", "total_ms"}
        assert done["attempts"] == 1 and done["finished_at"] and done["started_at"]

        events = read_events(http, f"/jobs/{job['id']}/events")
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[0].event == "status" and events[0].data == {"status": "running", "attempt": 1}
    assert events[-1].event == "done" and events[-1].data == result
    tokens = [e.data for e in events if e.event == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert "".join(t["text"] for t in tokens) == result["text"]

    with platform.sql().connect() as conn:
        row = conn.execute(
            text("SELECT task, language, text FROM code_history WHERE id = :id"),
            {"id": result["generation_id"]},
        ).one()
    assert row == ("add two numbers", "python", result["text"])
