"""`POST /jobs/{id}/events-token` and `?token=` on that job's events route, auth on."""

from __future__ import annotations

import httpx

from tests.conftest import SecuredApi
from tests.support import read_events


def _job(http: httpx.Client, tokens: int = 4) -> str:
    created = http.post("/generate_code", json={"task": "t", "max_new_tokens": tokens})
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def test_a_token_follows_its_job_without_the_key(secured_api: SecuredApi) -> None:
    with secured_api.client() as http:
        job_id = _job(http)
        issued = http.post(f"/jobs/{job_id}/events-token")
        assert issued.status_code == 200, issued.text
        body = issued.json()
        assert set(body) == {"token", "expires_in"} and body["expires_in"] > 0
        assert secured_api.key not in body["token"]
    with httpx.Client(base_url=secured_api.url, timeout=60) as anonymous:
        events = read_events(anonymous, f"/jobs/{job_id}/events?token={body['token']}")
        assert events[-1].event == "done"
        tokens = [e for e in events if e.event == "token"]
        assert tokens and [e.data["index"] for e in tokens] == list(range(len(tokens)))
        # Resuming with the same token after id 2 gets exactly the rest.
        rest = read_events(
            anonymous, f"/jobs/{job_id}/events?token={body['token']}&last_event_id=2"
        )
        assert [e.id for e in rest] == [e.id for e in events if e.id and e.id > 2]


def test_a_token_opens_nothing_else(secured_api: SecuredApi) -> None:
    with secured_api.client() as http:
        job_a, job_b = _job(http), _job(http)
        token = http.post(f"/jobs/{job_a}/events-token").json()["token"]
    with httpx.Client(base_url=secured_api.url, timeout=30) as anonymous:
        other = anonymous.get(f"/jobs/{job_b}/events", params={"token": token})
        assert other.status_code == 401
        assert other.json()["error"]["type"] == "unauthorized"
        # Only the events route takes a token: the job itself, its cancel, a new token,
        # other routes still want the key.
        assert anonymous.get(f"/jobs/{job_a}", params={"token": token}).status_code == 401
        assert anonymous.post(f"/jobs/{job_a}/cancel", params={"token": token}).status_code == 401
        assert anonymous.post(f"/jobs/{job_a}/events-token").status_code == 401
        assert anonymous.get("/jobs", params={"token": token}).status_code == 401
        # The long-lived key is no token either.
        as_key = anonymous.get(f"/jobs/{job_a}/events", params={"token": secured_api.key})
        assert as_key.status_code == 401


def test_tokens_only_for_your_own_jobs(secured_api: SecuredApi) -> None:
    with secured_api.client() as http:
        missing = http.post("/jobs/00000000-0000-4000-8000-000000000000/events-token")
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found"
