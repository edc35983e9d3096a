"""Load: many submit-and-poll clients against one API process, some following their
jobs as SSE; then the same with Redis killed and restarted (from its AOF) mid-run.

Each client loops until the phase ends: `POST /execute_code` (a trivial program),
`GET /jobs/{id}` once, then either long-polls `GET /jobs/{id}?wait=10` until the job
is final or, for followers, reads `GET /jobs/{id}/events` to its final event
(reconnecting with `Last-Event-ID` when a stream ends without one, as EventSource
does). A refused submit (429/503) waits its `Retry-After`. Every accepted job is
followed until it is final, for up to `--grace` seconds after the phase.

Reported per phase: p50/p99 latency per endpoint, 5xx answers and transport errors,
jobs accepted / final / lost (accepted and not final after the grace period), and
per-stream SSE ids repeated or out of order. The embedded stack (default) is its own
Redis (AOF), SQLite (or `--database-url`), an execute worker (`-c 2`), a maintenance
worker and beat (the reconciler) and one API process, its quotas checked but set
beyond reach (`--quotas off` skips them). Usage:

    python -m bench.load [--clients 200] [--seconds 60] [--followers 0.25]
                         [--phases steady,redis-restart] [--short]
                         [--quotas high|off] [--database-url URL]
                         [--url URL [--key KEY]]   # an API already running: steady only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import create_engine, text

from app.core.db import migrate
from bench._stack import percentile
from tests.conftest import free_port
from tests.faults import RedisProcess
from tests.support import ApiServer, Beat, Worker, parse_sse

PROGRAM = {"language": "python", "code": "print(sum(range(10)))"}
TERMINAL = {"succeeded", "failed", "cancelled"}
WAIT_S = 10  # each long-poll
SUBMIT, READ, POLL, EVENTS = (
    "POST /execute_code",
    "GET /jobs/{id}",
    f"GET /jobs/{{id}}?wait={WAIT_S}",
    "GET /jobs/{id}/events",
)


@dataclass
class Phase:
    """What the clients of one phase saw."""

    latencies_ms: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: defaultdict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport_errors: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, float] = field(default_factory=dict)  # job id -> accepted at
    final: dict[str, str] = field(default_factory=dict)  # job id -> final status
    job_ms: list[float] = field(default_factory=list)  # submit -> final, seen by its client
    streams: int = 0
    reconnects: int = 0
    repeated_ids: int = 0
    out_of_order_ids: int = 0
    lost_statuses: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.perf_counter)
    # (seconds into the phase, ms) of every short request (not the long-polls): the
    # timeline shows when latency grew (the first burst, a Redis restart).
    short_requests: list[tuple[float, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def record(self, name: str, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.latencies_ms[name].append(ms)
        if name != POLL:
            self.short_requests.append((started - self.started, ms))

    def timeline(self, slice_s: float) -> list[dict[str, float]]:
        slices: defaultdict[int, list[float]] = defaultdict(list)
        for at, ms in self.short_requests:
            slices[int(at // slice_s)].append(ms)
        return [
            {"from_s": i * slice_s, "requests": len(v),
             "p50_ms": round(percentile(v, 50), 1), "p99_ms": round(percentile(v, 99), 1)}
            for i, v in sorted(slices.items())
        ]  # fmt: skip


async def call(
    http: httpx.AsyncClient, phase: Phase, name: str, method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    """One timed request; a transport error is counted and answers None."""
    started = time.perf_counter()
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.HTTPError:
        phase.transport_errors[name] += 1
        return None
    phase.record(name, started)
    phase.statuses[name][response.status_code] += 1
    return response


async def poll(http: httpx.AsyncClient, phase: Phase, job_id: str, until: float) -> str | None:
    while time.monotonic() < until:
        response = await call(http, phase, POLL, "GET", f"/jobs/{job_id}", params={"wait": WAIT_S})
        if response is not None and response.status_code == 200:
            status = str(response.json()["status"])
            if status in TERMINAL:
                return status
        else:
            await asyncio.sleep(0.5)
    return None


async def follow(http: httpx.AsyncClient, phase: Phase, job_id: str, until: float) -> str | None:
    """Read the job's events to a final one; check ids are 1, 2, 3 … exactly once."""
    last = 0
    while time.monotonic() < until:
        headers = {"Last-Event-ID": str(last)} if last else {}
        started = time.perf_counter()
        phase.streams += 1
        try:
            async with http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
                phase.record(EVENTS, started)
                phase.statuses[EVENTS][response.status_code] += 1
                if response.status_code != 200:
                    await asyncio.sleep(0.5)
                    continue
                async for event in _events(response):
                    if event.id is not None:
                        if event.id <= last:
                            phase.repeated_ids += 1
                        elif event.id != last + 1:
                            phase.out_of_order_ids += 1
                        last = max(last, event.id)
                    final = _final_status(event.event, event.data)
                    if final is not None:
                        return final
        except httpx.HTTPError:
            phase.transport_errors[EVENTS] += 1
        phase.reconnects += 1  # ended without a final event (an outage): go on from `last`
        await asyncio.sleep(0.2)
    return None


async def _events(response: httpx.Response) -> Any:
    lines: list[str] = []
    async for line in response.aiter_lines():
        lines.append(line)
        if line == "":
            for event in parse_sse(iter(lines)):
                yield event
            lines = []


def _final_status(type_: str, data: Any) -> str | None:
    if type_ == "done":
        return "succeeded"
    if type_ == "error":
        unavailable = isinstance(data, dict) and data.get("type") == "unavailable"
        return None if unavailable else "failed"  # unavailable: the stream, not the job
    if type_ == "status" and isinstance(data, dict) and data.get("status") in TERMINAL:
        return str(data["status"])
    return None


async def client(
    http: httpx.AsyncClient, phase: Phase, follower: bool, stop_at: float, until: float
) -> None:
    await asyncio.sleep(random.random())  # spread the first submits over a second
    while time.monotonic() < stop_at:
        started = time.perf_counter()
        response = await call(http, phase, SUBMIT, "POST", "/execute_code", json=PROGRAM)
        if response is None or response.status_code not in (200, 202):
            retry = response.headers.get("retry-after") if response is not None else None
            await asyncio.sleep(float(retry) if retry and retry.isdigit() else 0.5)
            continue
        job_id = str(response.json()["id"])
        phase.accepted[job_id] = time.monotonic()
        await call(http, phase, READ, "GET", f"/jobs/{job_id}")
        status = await (follow if follower else poll)(http, phase, job_id, until)
        if status is not None:
            phase.final[job_id] = status
            phase.job_ms.append((time.perf_counter() - started) * 1000)


async def unfinished(http: httpx.AsyncClient, phase: Phase) -> Counter[str]:
    """What each accepted job that never turned final says now (lost jobs, by status)."""
    statuses: Counter[str] = Counter()
    for job_id in [j for j in phase.accepted if j not in phase.final]:
        try:
            response = await http.get(f"/jobs/{job_id}")
            statuses[str(response.json()["status"]) if response.status_code == 200
                     else f"http {response.status_code}"] += 1  # fmt: skip
        except httpx.HTTPError as exc:
            statuses[type(exc).__name__] += 1
    return statuses


async def restart_redis(redis_server: RedisProcess, after_s: float, down_s: float, phase: Phase):
    await asyncio.sleep(after_s)
    redis_server.stop()  # SIGKILL: whatever the AOF has not synced (up to 1 s) is lost
    await asyncio.sleep(down_s)
    started = time.perf_counter()
    await asyncio.to_thread(redis_server.start)
    phase.notes.append(
        f"redis SIGKILLed at {after_s:.0f}s, down {down_s:.1f}s, "
        f"back (AOF replayed) in {time.perf_counter() - started:.2f}s"
    )


async def run_phase(
    url: str, headers: dict[str, str], args: argparse.Namespace, redis_server: RedisProcess | None
) -> Phase:
    phase = Phase()
    followers = round(args.clients * args.followers)
    limits = httpx.Limits(max_connections=args.clients + 64, max_keepalive_connections=None)
    timeout = httpx.Timeout(30.0, read=WAIT_S + 30.0)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as http:
        stop_at = time.monotonic() + args.seconds
        until = stop_at + args.grace
        tasks = [
            asyncio.create_task(client(http, phase, i < followers, stop_at, until))
            for i in range(args.clients)
        ]
        if redis_server is not None:
            tasks.append(
                asyncio.create_task(
                    restart_redis(redis_server, args.seconds / 2, args.redis_down_s, phase)
                )
            )
        await asyncio.gather(*tasks)
        phase.lost_statuses = await unfinished(http, phase)
    return phase


def summary(phase: Phase, wall_s: float, sql: dict[str, int] | None) -> dict[str, Any]:
    endpoints = {}
    for name in (SUBMIT, READ, POLL, EVENTS):
        values = phase.latencies_ms.get(name, [])
        statuses = phase.statuses.get(name, Counter())
        endpoints[name] = {
            "requests": len(values),
            "p50_ms": round(percentile(values, 50), 1) if values else None,
            "p99_ms": round(percentile(values, 99), 1) if values else None,
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "transport_errors": phase.transport_errors.get(name, 0),
        }
    five_xx = sum(n for s in phase.statuses.values() for code, n in s.items() if code >= 500)
    lost = [j for j in phase.accepted if j not in phase.final]
    result: dict[str, Any] = {
        "wall_s": round(wall_s, 1),
        "endpoints": endpoints,
        "responses_5xx": five_xx,
        "transport_errors": sum(phase.transport_errors.values()),
        "jobs_accepted": len(phase.accepted),
        "jobs_final": len(phase.final),
        "jobs_lost": len(lost),
        "final_statuses": dict(Counter(phase.final.values())),
        "jobs_per_s": round(len(phase.final) / wall_s, 1),
        "job_p50_ms": round(percentile(phase.job_ms, 50), 1) if phase.job_ms else None,
        "job_p99_ms": round(percentile(phase.job_ms, 99), 1) if phase.job_ms else None,
        "sse_streams": phase.streams,
        "sse_reconnects": phase.reconnects,
        "sse_repeated_ids": phase.repeated_ids,
        "sse_out_of_order_ids": phase.out_of_order_ids,
        "notes": phase.notes,
        "timeline_10s": phase.timeline(10.0),  # short requests (not long-polls) per 10 s
    }
    if lost:
        result["lost_statuses"] = dict(phase.lost_statuses)
        result["lost_sample"] = lost[:5]
    if sql is not None:
        result["sql_jobs_by_status"] = sql
    return result


@dataclass
class Embedded:
    url: str
    api_pid: int
    database_url: str
    redis: RedisProcess


# The bench measures the service, never refused by its quotas: "off" skips the checks,
# "high" runs every check (its cost is in the figures) with limits it never reaches.
QUOTAS = {
    "off": {
        "CODELOOP_QUOTA_REQUESTS_PER_MINUTE": "0",
        "CODELOOP_QUOTA_CONCURRENT_JOBS": "0",
        "CODELOOP_QUOTA_TOKENS_PER_DAY": "0",
        "CODELOOP_QUEUE_MAX_DEPTH": "0",
    },
    "high": {
        "CODELOOP_QUOTA_REQUESTS_PER_MINUTE": "100000000",
        "CODELOOP_QUOTA_CONCURRENT_JOBS": "1000000",
        "CODELOOP_QUOTA_TOKENS_PER_DAY": "1000000000000",
        "CODELOOP_QUEUE_MAX_DEPTH": "1000000",
    },
}


@contextlib.contextmanager
def embedded_stack(database_url: str | None, quotas: str = "high") -> Iterator[Embedded]:
    root = Path(tempfile.mkdtemp(prefix="codeloop-load-"))
    redis_server = RedisProcess(root / "redis", appendonly=True)
    database_url = database_url or f"sqlite:///{root / 'codeloop.db'}"
    env = {
        "CODELOOP_REDIS_URL": redis_server.url,
        "CODELOOP_DATABASE_URL": database_url,
        "CODELOOP_DATA_DIR": str(root / "data"),
        "CODELOOP_AUTH": "off",
        "CODELOOP_EXECUTOR_BACKEND": os.environ.get("CODELOOP_EXECUTOR_BACKEND", "process"),
        "CODELOOP_RECONCILE_INTERVAL_S": "5",
        **QUOTAS[quotas],
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    migrate(database_url)
    procs: list[Worker | Beat | ApiServer] = []
    try:
        workers = [
            Worker(env, "execute", 2, root / "execute.log", name="load-exe@%h"),
            Worker(env, "maintenance", 1, root / "maintenance.log", name="load-maint@%h"),
        ]
        procs.extend(workers)
        procs.append(Beat(env, root))
        api = ApiServer(env, free_port(), root / "api.log")
        procs.append(api)
        api.wait_ready(60)
        for worker in workers:
            worker.wait_ready(300)
        yield Embedded(api.url, api.proc.pid, database_url, redis_server)
    finally:
        for proc in reversed(procs):
            proc.stop()
        redis_server.stop()
        print(f"(logs under {root})")


def sql_statuses(database_url: str, since: float) -> dict[str, int]:
    """Jobs created since `since` (epoch s) by status: what SQL says, not the clients."""
    engine = create_engine(database_url)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, count(*) FROM jobs WHERE created_at >= :since GROUP BY status"),
            {"since": _sql_time(database_url, since)},
        ).all()
    engine.dispose()
    return {str(status): int(count) for status, count in rows}


def _sql_time(database_url: str, epoch_s: float) -> Any:
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(epoch_s, UTC)
    return at.replace(tzinfo=None) if database_url.startswith("sqlite") else at


def run(url: str, headers: dict[str, str], args: argparse.Namespace, stack: Embedded | None):
    api = psutil.Process(stack.api_pid) if stack else None
    me = psutil.Process()
    phases: dict[str, Any] = {}
    for name in args.phases.split(","):
        if name == "redis-restart" and stack is None:
            print("redis-restart skipped: with --url the bench does not own Redis")
            continue
        started_epoch = time.time() - 1
        cpu_before = sum(api.cpu_times()[:2]) if api else 0.0
        own_before, machine_before = sum(me.cpu_times()[:2]), psutil.cpu_times()
        started = time.perf_counter()
        redis_server = stack.redis if name == "redis-restart" and stack else None
        phase = _run_loop(run_phase(url, headers, args, redis_server))
        wall = time.perf_counter() - started
        sql = sql_statuses(stack.database_url, started_epoch) if stack else None
        phases[name] = summary(phase, wall, sql)
        # Where the CPU went: a small machine is shared by the clients and the stack.
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - (sum(machine_before) - machine_before.idle)
        phases[name]["machine_cpu_busy_s"] = round(busy, 1)
        phases[name]["clients_cpu_s"] = round(sum(me.cpu_times()[:2]) - own_before, 1)
        if api:
            phases[name]["api_cpu_s"] = round(sum(api.cpu_times()[:2]) - cpu_before, 1)
            phases[name]["api_rss_mb"] = round(api.memory_info().rss / 2**20, 1)
        print_phase(name, phases[name])
    return phases


def _run_loop(coro: Any) -> Phase:
    try:
        import uvloop  # the clients share the machine with the API: keep them cheap

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def print_phase(name: str, figures: dict[str, Any]) -> None:
    print(f"== {name}: {figures['wall_s']} s, {figures['jobs_accepted']} jobs accepted, "
          f"{figures['jobs_final']} final, {figures['jobs_lost']} lost, "
          f"{figures['responses_5xx']} 5xx, {figures['transport_errors']} transport errors, "
          f"{figures['jobs_per_s']} jobs/s")  # fmt: skip
    for endpoint, e in figures["endpoints"].items():
        print(f"   {endpoint:28} n={e['requests']:6} p50 {e['p50_ms']} ms  p99 {e['p99_ms']} ms"
              f"  {e['statuses']}")  # fmt: skip
    print(f"   job submit->final p50 {figures['job_p50_ms']} ms p99 {figures['job_p99_ms']} ms; "
          f"SSE streams {figures['sse_streams']}, reconnects {figures['sse_reconnects']}, "
          f"ids repeated {figures['sse_repeated_ids']}, out of order "
          f"{figures['sse_out_of_order_ids']}")  # fmt: skip
    if "api_cpu_s" in figures:
        print(f"   CPU s: machine {figures['machine_cpu_busy_s']} (of "
              f"{figures['wall_s'] * (os.cpu_count() or 1):.0f}), clients "
              f"{figures['clients_cpu_s']}, API {figures['api_cpu_s']}")  # fmt: skip
    slices = ", ".join(f"{int(t['from_s'])}s {t['p50_ms']}/{t['p99_ms']}"
                       for t in figures["timeline_10s"])  # fmt: skip
    print(f"   short requests p50/p99 ms by 10 s: {slices}")
    for note in figures["notes"]:
        print(f"   {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--followers", type=float, default=0.25, help="share following SSE")
    parser.add_argument("--grace", type=float, default=120.0, help="s for jobs to end after")
    parser.add_argument("--phases", default="steady,redis-restart")
    parser.add_argument("--redis-down-s", type=float, default=2.0)
    parser.add_argument("--short", action="store_true", help="20 clients, 10 s: a quick check")
    parser.add_argument("--url", help="an API already running (its quotas are its own)")
    parser.add_argument("--key", default=os.environ.get("CODELOOP_API_KEY"))
    parser.add_argument("--database-url", help="embedded stack on this SQL instead of SQLite")
    parser.add_argument("--quotas", choices=sorted(QUOTAS), default="high",
                        help="embedded stack: high (checked, never reached) or off")  # fmt: skip
    args = parser.parse_args()
    if args.short:
        args.clients, args.seconds, args.grace = 20, 10.0, 60.0
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    load = os.getloadavg()[0]
    if args.url:
        phases = run(args.url.rstrip("/"), headers, args, None)
    else:
        with embedded_stack(args.database_url, args.quotas) as stack:
            phases = run(stack.url, headers, args, stack)
    ok = all(p["responses_5xx"] == 0 and p["jobs_lost"] == 0 for p in phases.values())
    print(json.dumps({"bench": "load", "clients": args.clients, "seconds": args.seconds,
                      "quotas": None if args.url else args.quotas,
                      "followers": round(args.clients * args.followers), "cpus": os.cpu_count(),
                      "loadavg_at_start": round(load, 2), "ok": ok, "phases": phases}))  # fmt: skip


if __name__ == "__main__":
    main()
