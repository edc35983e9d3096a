"""SSE delivery: every event exactly once, in order, for late, reconnecting and concurrent
clients (SPEC §7)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.conftest import Platform
from tests.support import SseEvent, parse_sse, read_events


def submit(http, tokens: int = 600) -> str:
    response = http.post(
        "/generate_code",
        json={"task": "stream me", "max_new_tokens": tokens, "temperature": 0},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def assert_complete(events: list[SseEvent], tokens: int) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1)), "gaps or repeats"
    assert events[-1].event == "done"
    indexes = [e.data["index"] for e in events if e.event == "token"]
    assert indexes == list(range(len(indexes)))
    assert events[-1].data["usage"]["completion_tokens"] == tokens
    assert "".join(e.data["text"] for e in events if e.event == "token") == events[-1].data["text"]


def test_client_connecting_after_the_job_finished_gets_everything_once(platform: Platform):
    with platform.client() as http:
        job_id = submit(http, 50)
        assert http.get(f"/jobs/{job_id}", params={"wait": 30}).json()["status"] == "succeeded"
        first = read_events(http, f"/jobs/{job_id}/events")
        again = read_events(http, f"/jobs/{job_id}/events")
    assert_complete(first, 50)
    assert again == first


def test_reconnect_with_last_event_id_resumes_without_loss_or_repeat(platform: Platform):
    with platform.client() as http:
        job_id = submit(http, 800)
        head = read_events(http, f"/jobs/{job_id}/events", stop_after=12)
        assert [e.id for e in head] == list(range(1, 13))
        tail = read_events(
            http, f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(head[-1].id)}
        )
        # The query form (for EventSource polyfills that cannot set headers) works too.
        via_query = read_events(http, f"/jobs/{job_id}/events?last_event_id=12")
    assert_complete(head + tail, 800)
    assert via_query == tail


def test_two_clients_following_one_running_job_each_get_every_event(platform: Platform):
    with platform.client() as http:
        job_id = submit(http, 1000)
        with ThreadPoolExecutor(2) as pool:
            streams = list(pool.map(lambda _: read_events(http, f"/jobs/{job_id}/events"), [0, 1]))
    assert_complete(streams[0], 1000)
    assert streams[0] == streams[1]


def test_generate_with_stream_true_answers_with_the_event_stream(platform: Platform):
    with platform.client() as http, http.stream(
        "POST", "/generate_code",
        json={"task": "hello", "max_new_tokens": 30, "temperature": 0, "stream": True},
    ) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        job_id = response.headers["x-job-id"]
        events = list(parse_sse(response.iter_lines()))
    assert_complete(events, 30)
    with platform.client() as http:
        assert http.get(f"/jobs/{job_id}").json()["result"] == events[-1].data


def test_accept_header_also_selects_streaming(platform: Platform):
    with platform.client() as http, http.stream(
        "POST", "/generate_code", headers={"Accept": "text/event-stream"},
        json={"task": "hello", "max_new_tokens": 5, "temperature": 0},
    ) as response:  # fmt: skip
        events = list(parse_sse(response.iter_lines()))
    assert events[0].event == "status" and events[-1].event == "done"


def test_wire_format_is_id_event_data(platform: Platform):
    with platform.client() as http:
        job_id = submit(http, 3)
        http.get(f"/jobs/{job_id}", params={"wait": 30})
        raw = http.get(f"/jobs/{job_id}/events").text
    first = raw.split("\n\n")[0].split("\n")
    assert first == ["id: 1", "event: status", 'data: {"status":"running","attempt":1}']
