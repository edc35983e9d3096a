"""The memory endpoints over HTTP (feedback, knowledge, history, project files) on both
engines, with the API's own error handlers: every refusal has the SPEC error shape.

A tiny app with just these routers (no Redis needed); the full app includes the same ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.deps import AuthGate
from app.api.errors import install_error_handlers
from app.api.routes import feedback, history, knowledge, projects
from app.core import db
from app.core.config import get_settings, reset_settings_cache
from app.core.history import store_generation


@pytest.fixture
def client(any_db_url: str, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setenv("CODELOOP_DATABASE_URL", any_db_url)
    monkeypatch.setenv("CODELOOP_AUTH", "off")
    reset_settings_cache()
    db.reset_engine()
    app = FastAPI()
    install_error_handlers(app)
    for module in (feedback, knowledge, history, projects):
        app.include_router(module.router)
    app.state.auth = AuthGate(get_settings())
    with TestClient(app) as test_client:
        yield test_client
    db.reset_engine()
    monkeypatch.undo()
    reset_settings_cache()


def _error(response, status: int, type_: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "detail"}
    assert body["error"]["type"] == type_
    return body["error"]


def _generation(language: str = "python") -> str:
    with db.session_scope() as session:
        return store_generation(
            session=session, task="t", language=language, text="", code="x = 1", model="m"
        ).id


def test_feedback_endpoint(client):
    gen = _generation()
    first = client.post("/feedback", json={"generation_id": gen, "score": 1.0})
    assert first.status_code == 201
    # one rating per key: the (anonymous) caller's second rating replaces its first
    second = client.post("/feedback", json={"generation_id": gen, "score": 0.5, "comment": "ok"})
    assert second.json() == {"generation_id": gen, "feedback_score": 0.5, "feedback_count": 1}
    _error(client.post("/feedback", json={"generation_id": "nope", "score": 0.5}), 404, "not_found")
    for bad in (1.5, -0.1, "high"):
        _error(client.post("/feedback", json={"generation_id": gen, "score": bad}), 422,
               "invalid_input")  # fmt: skip


def test_knowledge_endpoints(client):
    made = client.post(
        "/knowledge", json={"language": "python", "title": "Sum", "content": "sum(xs)"}
    )
    assert made.status_code == 201 and made.json()["title"] == "Sum"
    _error(
        client.post("/knowledge", json={"language": "python", "title": "Sum", "content": "x"}),
        409,
        "conflict",
    )
    _error(
        client.post("/knowledge", json={"language": "cobol", "title": "x", "content": "y"}),
        422,
        "invalid_input",
    )
    listed = client.get("/knowledge/get/python").json()
    assert [item["title"] for item in listed["items"]] == ["Sum"]
    assert client.get("/knowledge/get/java").json()["items"] == []
    _error(client.get("/knowledge/get/cobol"), 422, "invalid_input")


def test_history_best_endpoint(client):
    liked, _plain = _generation(), _generation()
    client.post("/feedback", json={"generation_id": liked, "score": 0.9})
    items = client.get("/history/best/python", params={"limit": 5}).json()["items"]
    assert items[0]["generation_id"] == liked and len(items) == 2
    _error(client.get("/history/best/python", params={"limit": 0}), 422, "invalid_input")


def test_project_file_endpoints(client):
    put = client.put("/projects/demo/files/src//app.py", content=b"print('hi')\n")
    assert put.status_code == 201 and put.json()["path"] == "src/app.py"
    replaced = client.put(
        "/projects/demo/files/src/app.py",
        content=b'{"looks": "like json"}',
        headers={"content-type": "application/json"},
    )
    assert replaced.status_code == 200
    listed = client.get("/projects/demo/files").json()
    assert [f["path"] for f in listed["files"]] == ["src/app.py"]
    assert client.get("/projects/demo/files/src/app.py").json()["content"] == (
        '{"looks": "like json"}'
    )
    assert client.delete("/projects/demo/files/src/app.py").status_code == 204
    _error(client.get("/projects/demo/files/src/app.py"), 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "src%2F..%2F..%2Fsecret",
        "%2e%2e/%2e%2e/etc/passwd",
        "%2Fetc%2Fpasswd",
        "/etc/passwd",  # the URL has a double slash
        "..%5C..%5Cwin.ini",
        "a%00b",
        "C:%2Fwindows",
    ],
)
def test_path_traversal_is_refused_with_the_error_shape(client, path):
    error = _error(client.put(f"/projects/demo/files/{path}", content=b"x"), 422, "invalid_input")
    assert error["message"].startswith("invalid path")
    assert client.get("/projects/demo/files").status_code == 404  # nothing was stored


def test_oversize_upload_is_refused_with_the_error_shape(client):
    limit = get_settings().max_project_file_bytes
    error = _error(
        client.put("/projects/demo/files/big.txt", content=b"x" * (limit + 1)),
        413,
        "payload_too_large",
    )
    assert error["detail"]["limit"] == limit
    assert client.put("/projects/demo/files/ok.txt", content=b"x" * limit).status_code == 201
    _error(client.put("/projects/demo/files/bin.dat", content=b"\xff\xfe"), 422, "invalid_input")
