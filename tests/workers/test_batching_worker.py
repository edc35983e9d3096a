"""The batching generate worker through the real API, Celery (threads pool) and SSE.

One `python -m workers.generate_worker` process holds the tiny model (never EOS) and
`GENERATE_MAX_BATCH` task threads whose generations are decoded as one batch.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, wait_until
from tests.support import ApiServer, Beat, GenerateWorker, SseEvent, Worker, read_events
from tests.workers.test_job_recovery import job_row

BATCH = 4


@pytest.fixture
def stack(service_env, tmp_path) -> Iterator[Callable[..., Any]]:
    with ExitStack() as stack:
        count = iter(range(100))

        def start(kind: str, **env: str) -> Any:
            full = {**service_env, "CODELOOP_GENERATE_MAX_BATCH": str(BATCH), **env}
            if kind == "api":
                proc: Any = ApiServer(full, free_port(), tmp_path / "api.log").wait_ready()
            elif kind == "beat":
                proc = Beat(full, tmp_path)
            elif kind == "maintenance":  # where beat's reconciler runs
                proc = Worker(full, "maintenance", log_path=tmp_path / "maintenance.log")
                proc.wait_ready()
            else:
                log = tmp_path / f"gen-{next(count)}.log"
                proc = GenerateWorker(full, log, name=f"batch{next(count)}@%h").wait_ready()
            stack.callback(proc.stop)
            return proc

        yield start


def submit(http: httpx.Client, task: str, tokens: int) -> str:
    body = {"task": task, "max_new_tokens": tokens, "temperature": 0,
            "use_memory": False, "use_tools": False}  # fmt: skip
    response = http.post("/generate_code", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def finished(http: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(http.get(f"/jobs/{job_id}", params={"wait": 60}).json())


def assert_own_tokens_once_in_order(events: list[SseEvent], job: dict[str, Any]) -> None:
    """Event ids 1..n, token indices 0..k (after the last running status), text exact."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    last_run = max(i for i, e in enumerate(events) if e.data.get("status") == "running")
    tokens = [e.data for e in events[last_run:] if e.event == "token"]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert "".join(t["text"] for t in tokens) == job["result"]["text"]


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


def started_batcher(tmp_path: Path, kind: str) -> bool:
    """The generate worker's log says which batcher it built (`GENERATE_BATCHING`)."""
    logs = " ".join(path.read_text(errors="replace") for path in tmp_path.glob("gen-*.log"))
    return f"{kind} batching up to {BATCH} sequences" in logs


@pytest.mark.parametrize(("batching", "built"), [("auto", "step"), ("paged", "paged")])
def test_concurrent_jobs_each_stream_their_own_tokens_and_match_a_lone_run(
    stack, batching, built, tmp_path
):
    api = stack("api")
    stack("worker", CODELOOP_GENERATE_BATCHING=batching)
    assert started_batcher(tmp_path, built)  # auto: what measured best on this CPU
    tasks = [f"job {i}: " + "sort a list " * (i + 1) for i in range(BATCH)]
    with httpx.Client(base_url=api.url, timeout=60) as http:
        ids = [submit(http, task, 80) for task in tasks]
        jobs = [finished(http, job_id) for job_id in ids]
        for job_id, job in zip(ids, jobs, strict=True):
            assert job["status"] == "succeeded", job
            assert job["result"]["usage"]["completion_tokens"] == 80
            assert_own_tokens_once_in_order(read_events(http, f"/jobs/{job_id}/events"), job)
        # They ran at once: every job started before the first one finished.
        assert max(when(j["started_at"]) for j in jobs) < min(when(j["finished_at"]) for j in jobs)
        texts = {job["result"]["text"] for job in jobs}
        assert len(texts) == BATCH  # different prompts, different tokens: no crossed rows
        for task, job in zip(tasks, jobs, strict=True):  # greedy: alone == batched
            lone = finished(http, submit(http, task, 80))
            assert lone["result"]["text"] == job["result"]["text"]


@pytest.mark.parametrize("batching", ["step", "paged"])
def test_cancel_one_mid_batch_while_the_others_finish(stack, batching, tmp_path):
    api = stack("api")
    stack("worker", CODELOOP_GENERATE_BATCHING=batching)
    assert started_batcher(tmp_path, batching)
    with httpx.Client(base_url=api.url, timeout=60) as http:
        ids = [submit(http, f"job {i}", 300) for i in range(3)]
        head = read_events(http, f"/jobs/{ids[1]}/events", stop_after=6)
        assert head[-1].event == "token"
        assert http.post(f"/jobs/{ids[1]}/cancel").status_code == 202
        cancelled = finished(http, ids[1])
        others = [finished(http, ids[0]), finished(http, ids[2])]
    assert cancelled["status"] == "cancelled"
    assert 0 < cancelled["result"]["usage"]["completion_tokens"] < 300
    # The others were still decoding when it stopped, and ran to their end.
    assert all(when(o["finished_at"]) > when(cancelled["finished_at"]) for o in others)
    assert [o["status"] for o in others] == ["succeeded", "succeeded"]
    assert [o["result"]["usage"]["completion_tokens"] for o in others] == [300, 300]


def test_jobs_beyond_the_batch_wait_queued_with_their_position(stack):
    api = stack("api")
    stack("worker")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        ids = [submit(http, f"fill {i}", 400) for i in range(BATCH)]
        wait_until(
            lambda: all(http.get(f"/jobs/{i}").json()["status"] == "running" for i in ids), 30,
            what="a full batch",
        )  # fmt: skip
        extra = http.get(f"/jobs/{submit(http, 'extra', 5)}").json()
        assert extra["status"] == "queued" and extra["queue_position"] == 1
        for job_id in ids:
            http.post(f"/jobs/{job_id}/cancel")
        assert finished(http, extra["id"])["status"] == "succeeded"


@pytest.mark.slow
def test_sigkilled_worker_with_a_full_batch_retries_every_job(stack, service_env):
    api = stack("api")
    worker = stack("worker")
    with httpx.Client(base_url=api.url, timeout=60) as http:
        ids = [submit(http, f"kill {i}", 600) for i in range(BATCH)]
        for job_id in ids:
            head = read_events(http, f"/jobs/{job_id}/events", stop_after=6)
            assert head[-1].event == "token"
        holders = {job_row(service_env, job_id)["worker"] for job_id in ids}
        assert all(str(worker.proc.pid) in holder for holder in holders)  # one process
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
        started = time.monotonic()
        stack("worker")  # a replacement, and beat: the reconciler re-sends the lost jobs
        stack("maintenance")
        stack("beat")
        jobs = [finished(http, job_id) for job_id in ids]
        for job_id, job in zip(ids, jobs, strict=True):
            assert job["status"] == "succeeded", job
            assert job["attempts"] == 2
            events = read_events(http, f"/jobs/{job_id}/events")
            statuses = [(e.data["status"], e.data.get("attempt")) for e in events
                        if e.event == "status"]  # fmt: skip
            assert statuses == [("running", 1), ("retrying", 1), ("running", 2)]
            assert_own_tokens_once_in_order(events, job)
    assert time.monotonic() - started < 90


@pytest.mark.parametrize("kind", ["step", "paged"])
def test_a_batching_worker_stops_promptly_on_sigterm(stack, tmp_path, kind):
    """The bug: the paged batcher's generation loop (transformers' non-daemon thread)
    was never stopped, so a warm shutdown (SIGTERM: `codeloop up`'s Ctrl-C, `docker
    stop`) hung until the process was killed."""
    api = stack("api")
    worker = stack("worker", CODELOOP_GENERATE_BATCHING=kind)
    assert started_batcher(tmp_path, kind)
    with httpx.Client(base_url=api.url, timeout=90) as http:
        job = finished(http, submit(http, "one", 4))
    assert job["status"] == "succeeded", job
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(30)
    took = time.monotonic() - started
    assert code == 0 and took < 10, (code, took)
