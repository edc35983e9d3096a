"""SSE fan-out from one API process: many clients, every event exactly once.

Scenario A: 500 concurrent clients on one job. Scenario B: 50 concurrent jobs with 10
clients each. The benchmark plays the worker itself (it appends events with the same
`EventWriter` the workers use, stamping each with its send time), so only the API,
Redis and the clients are measured. Reports p50/p99 publish→receive latency, the API's
peak RSS, and checks that the API process has no torch loaded. Usage:

    python -m bench.fanout [--clients 500] [--jobs 50] [--per-job 10] [--events 200]
                           [--rates 25,100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis
from sqlalchemy import create_engine, text

from app.core.events import EventWriter
from bench._stack import percentile, stack


@dataclass
class ClientLog:
    ids: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)


async def sse_client(port: int, job_id: str, log: ClientLog, ready: asyncio.Event) -> None:
    """A minimal HTTP/1.1 SSE client (chunked), light enough to run 500 in one process."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    while (await reader.readline()) not in (b"\r\n", b""):
        pass  # response headers
    ready.set()
    buffer = b""
    try:
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                return
            buffer += await reader.readexactly(size)
            await reader.readexactly(2)
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                now = time.time()
                event_id = None
                for line in block.split(b"\n"):
                    if line.startswith(b"id: "):
                        event_id = int(line[4:])
                    elif (at := line.find(b'"sent_at":')) >= 0:
                        sent_at = float(line[at + 10 :].split(b",")[0].rstrip(b"}"))
                        log.latencies_ms.append((now - sent_at) * 1000)
                if event_id is not None:
                    log.ids.append(event_id)
                if b"event: done" in block:
                    return
    finally:
        writer.close()


def publish(redis_url: str, job_ids: list[str], events: int, interval_s: float) -> None:
    """Play the workers: `events` token events per job, interleaved, then `done`."""
    client = redis.Redis.from_url(redis_url)
    writers = [EventWriter(client, j, maxlen=100_000, ttl_s=3600) for j in job_ids]
    for writer in writers:
        writer.emit("status", {"status": "running", "attempt": 1})
    for i in range(events):
        for writer in writers:
            writer.emit("token", {"index": i, "text": "x", "sent_at": time.time()})
        time.sleep(interval_s)
    for writer in writers:
        writer.emit("done", {"text": "x" * events, "sent_at": time.time()})


def make_jobs(database_url: str, count: int) -> list[str]:
    """Job rows (the API checks a job exists before it streams it)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    engine = create_engine(database_url)
    with engine.begin() as conn:
        for job_id in ids:
            conn.execute(
                text("INSERT INTO jobs (id, kind, queue, status, owner, request, attempts, "
                     "dispatches, progress_tokens, created_at, updated_at) VALUES (:id, "
                     "'generate', 'generate', 'running', 'anonymous', '{}', 1, 1, 0, "
                     "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"),
                {"id": job_id},
            )  # fmt: skip
    engine.dispose()
    return ids


def run_scenario(port: int, env: dict[str, str], api_pid: int, jobs: list[str],
                 per_job: int, events: int, interval_s: float) -> dict[str, float]:  # fmt: skip
    logs = {(j, k): ClientLog() for j in jobs for k in range(per_job)}
    proc = psutil.Process(api_pid)
    peak_rss = [proc.memory_info().rss]

    async def main() -> None:
        readies = {key: asyncio.Event() for key in logs}
        tasks = [
            asyncio.create_task(sse_client(port, key[0], log, readies[key]))
            for key, log in logs.items()
        ]
        await asyncio.gather(*(r.wait() for r in readies.values()))
        await asyncio.sleep(0.5)  # let every relay subscribe
        publisher = threading.Thread(
            target=publish, args=(env["CODELOOP_REDIS_URL"], jobs, events, interval_s)
        )
        publisher.start()
        while not all(t.done() for t in tasks):
            peak_rss.append(proc.memory_info().rss)
            await asyncio.sleep(0.1)
        publisher.join()
        await asyncio.gather(*tasks)

    started = time.perf_counter()
    try:
        import uvloop  # the clients share the machine with the API: keep them cheap

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    elapsed = time.perf_counter() - started
    expected = list(range(1, events + 3))
    exact = sum(1 for log in logs.values() if log.ids == expected)
    latencies = [ms for log in logs.values() for ms in log.latencies_ms]
    return {
        "clients": len(logs),
        "jobs": len(jobs),
        "events_per_job": events + 2,
        "clients_exactly_once": exact,
        "all_exactly_once": exact == len(logs),
        "latency_ms_p50": round(percentile(latencies, 50), 2),
        "latency_ms_p99": round(percentile(latencies, 99), 2),
        "deliveries": len(latencies),
        "deliveries_per_s": round(len(latencies) / elapsed, 1),
        "api_peak_rss_mb": round(max(peak_rss) / 2**20, 1),
    }


def torch_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/" in maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--per-job", type=int, default=10)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument(
        "--rates", default="25,100",
        help="tokens/s per job to publish at (25: a 6.7B model on a GPU; 100: stress)",
    )  # fmt: skip
    args = parser.parse_args()
    runs: dict[str, dict[str, float]] = {}
    with stack(None, [], api=True) as s:
        assert s.api is not None
        port, pid, url = s.api.port, s.api.proc.pid, s.env["CODELOOP_DATABASE_URL"]
        for rate in (float(r) for r in args.rates.split(",")):
            interval = 1 / rate
            runs[f"one_job_{rate:g}_tok_s"] = run_scenario(
                port, s.env, pid, make_jobs(url, 1), args.clients, args.events, interval
            )
            runs[f"many_jobs_{rate:g}_tok_s"] = run_scenario(
                port, s.env, pid, make_jobs(url, args.jobs), args.per_job, args.events, interval
            )
        no_torch = not torch_loaded(pid)
    for name, figures in runs.items():
        print(f"{name:22}: {figures['clients']} clients, exactly-once "
              f"{figures['clients_exactly_once']}/{figures['clients']}, latency p50 "
              f"{figures['latency_ms_p50']} ms p99 {figures['latency_ms_p99']} ms, "
              f"API RSS {figures['api_peak_rss_mb']} MB")  # fmt: skip
    print(f"torch in the API process: {not no_torch}")
    print(json.dumps({"bench": "fanout", **runs, "api_without_torch": no_torch}))


if __name__ == "__main__":
    main()
