"""The chaos suite's stack and clients: real processes, real faults, followers that
behave like browsers.

`chaos_stack` starts a private redis-server with AOF (`RedisProcess`), SQLite, one or
more API processes, threads-pool generate workers (`python -m workers.generate_worker`)
playing a paced script (`ScriptedEngine`: every job's text is known in advance, token
by token, so a checker can tell exactly what a client missed), a maintenance worker
and beat (the reconciler, every second). A generate worker may reach Redis through a
`FlakyProxy`, so a scenario can partition it away.

A `Follower` follows one job's SSE stream as an `EventSource` does: it reconnects with
`Last-Event-ID` whenever a connection breaks or ends before a final event, trying the
API processes in turn, and may hang up by itself after some events (and wait before it
comes back) to exercise resume. It records every event it was sent, across connections.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from sqlalchemy import Engine, bindparam, create_engine, text

from app.core import db, names
from tests.conftest import free_port
from tests.faults import FlakyProxy, RedisProcess
from tests.support import ApiServer, Beat, GenerateWorker, ServiceProcess, SseEvent, Worker
from tests.support import parse_sse as _parse_sse

TOKEN_CHARS = 4
TOKEN_DELAY_S = 0.04  # ~25 tokens/s: a 100-token job streams for about 4 s
JOBS_AT_ONCE = 6  # task threads in all: split between the generate workers
LEASE_TTL_S = 2.0


def task_of(i: int) -> str:
    return f"chaos job {i:03d}"


def text_of(i: int, tokens: int = 100) -> str:
    """Job i's whole answer: distinct per job (a token of another job shows), exactly
    `tokens` script tokens long."""
    line = f"step_{i:03d} = {i} + "
    body = "".join(f"{line}{k}\n" for k in range(tokens))
    return body[: tokens * TOKEN_CHARS]


def tokens_of(answer: str) -> list[str]:
    """How `ScriptedEngine` cuts a turn into tokens."""
    return [answer[k : k + TOKEN_CHARS] for k in range(0, len(answer), TOKEN_CHARS)]


def write_script(path: Path, jobs: int, tokens: int) -> Path:
    rules = [{"match": rf"\b{task_of(i)}\b", "turns": [text_of(i, tokens)]} for i in range(jobs)]
    script = {"token_chars": TOKEN_CHARS, "token_delay_s": TOKEN_DELAY_S, "rules": rules,
              "default": ["unexpected task"]}  # fmt: skip
    path.write_text(json.dumps(script))
    return path


@dataclass
class Job:
    """An accepted job: its id and the answer the script will give."""

    id: str
    index: int
    answer: str


@dataclass
class ChaosStack:
    root: Path
    env: dict[str, str]
    redis: RedisProcess
    apis: list[ApiServer]
    generators: list[GenerateWorker]
    proxies: dict[int, FlakyProxy]  # generator index -> the proxy it reaches Redis through
    tokens: int  # script tokens per job
    generator_count: int
    others: list[ServiceProcess] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [api.url for api in self.apis]

    def redis_client(self) -> Redis:
        return Redis.from_url(self.redis.url)

    def submit(self, indices: range | list[int], api: int = 0) -> list[Job]:
        """POST one generate job per index; every one must be accepted (202)."""
        accepted = []
        with httpx.Client(base_url=self.apis[api].url, timeout=30) as http:
            for i in indices:
                body = {"task": task_of(i), "language": "python", "temperature": 0,
                        "use_memory": False, "use_tools": False}  # fmt: skip
                response = http.post("/generate_code", json=body)
                assert response.status_code == 202, response.text
                accepted.append(Job(response.json()["id"], i, text_of(i, self.tokens)))
        return accepted

    @cached_property
    def sql(self) -> Engine:
        return create_engine(self.env["CODELOOP_DATABASE_URL"])

    def rows(self, jobs: list[Job]) -> dict[str, dict[str, Any]]:
        """The jobs' SQL rows (the source of truth)."""
        query = text("SELECT * FROM jobs WHERE id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        with self.sql.connect() as conn:
            found = conn.execute(query, {"ids": [job.id for job in jobs]}).mappings()
            return {row["id"]: _decoded(dict(row)) for row in found}

    def wait_running(self, jobs: list[Job], timeout: float = 30) -> dict[str, dict[str, Any]]:
        """Until every job is running (claimed by a worker); their rows."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows(jobs)
            if all(row["status"] == names.RUNNING for row in rows.values()):
                return rows
            assert time.monotonic() < deadline, {r["id"]: r["status"] for r in rows.values()}
            time.sleep(0.1)

    def holders(self, jobs: list[Job]) -> dict[int, list[Job]]:
        """Running jobs by the pid of the generate worker running them."""
        by_pid: dict[int, list[Job]] = {}
        rows = self.rows(jobs)
        for job in jobs:
            row = rows[job.id]
            if row["status"] == names.RUNNING and row["worker"]:
                by_pid.setdefault(int(row["worker"].split(":")[1]), []).append(job)
        return by_pid

    def stream(self, job: Job) -> list[dict[str, Any]]:
        """What the job's Redis stream holds now (events as written)."""
        client = self.redis_client()
        try:
            entries: Any = client.xrange(names.events_stream_key(job.id))
        finally:
            client.close()
        return [json.loads(fields[b"e"]) for _id, fields in entries]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("request", "result", "error"):  # JSON columns, as text in a raw read
        if isinstance(row.get(column), str):
            row[column] = json.loads(row[column])
    return row


def _base_env(root: Path, redis_url: str, script: Path) -> dict[str, str]:
    url = f"sqlite:///{root / 'codeloop.db'}"
    db.migrate(url)
    return {
        "CODELOOP_REDIS_URL": redis_url,
        "CODELOOP_DATABASE_URL": url,
        "CODELOOP_DATA_DIR": str(root / "data"),
        "CODELOOP_MODEL_ID": f"scripted:{script}",
        "CODELOOP_MODEL_DEVICE": "cpu",
        "CODELOOP_LEASE_TTL_S": str(LEASE_TTL_S),
        "CODELOOP_RECONCILE_INTERVAL_S": "1",
        "CODELOOP_SSE_PING_S": "1",  # followers notice a dead connection within seconds
        "CODELOOP_AUTH": "off",
        "HF_HUB_OFFLINE": "1",
    }


def start_generator(stack: ChaosStack, index: int, *, proxied: bool = False) -> GenerateWorker:
    """Generate worker `index` (through a partitionable proxy if `proxied`); not waited for."""
    env = dict(stack.env)
    env.setdefault("CODELOOP_GENERATE_MAX_BATCH", str(JOBS_AT_ONCE // stack.generator_count))
    if proxied:
        proxy = FlakyProxy(stack.redis.port)
        stack.proxies[index] = proxy
        env["CODELOOP_REDIS_URL"] = proxy.url
    worker = GenerateWorker(env, stack.root / f"gen-{index}.log", name=f"chaos-gen{index}@%h")
    stack.generators.append(worker)
    return worker


def stop_all(processes: list[ServiceProcess]) -> None:
    """Tear the stack down: single processes are killed (nothing of theirs is under
    test any more, and a warm shutdown costs seconds each); a prefork worker is stopped
    so its pool goes with it. Side by side."""
    for proc in processes:
        if not isinstance(proc, Worker) or isinstance(proc, GenerateWorker):
            proc.proc.kill()  # an API, beat, a threads-pool generate worker: one process
    with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
        list(pool.map(lambda proc: proc.stop(), processes))


@contextlib.contextmanager
def chaos_stack(
    root: Path, *, jobs: int, tokens: int = 100, apis: int = 1, generators: int = 1,
    proxied: tuple[int, ...] = (), env: dict[str, str] | None = None,
) -> Iterator[ChaosStack]:  # fmt: skip
    """Everything up and ready (started side by side); everything stopped on the way out.
    `jobs` tasks are scripted, `tokens` script tokens each; `JOBS_AT_ONCE` run at once,
    whatever the number of generate workers."""
    server = RedisProcess(root / "redis", appendonly=True)
    script = write_script(root / "script.json", jobs, tokens)
    base = {**_base_env(root, server.url, script), **(env or {})}
    stack = ChaosStack(root, base, server, [], [], {}, tokens, generators)
    try:
        stack.apis = [ApiServer(base, free_port(), root / f"api-{n}.log") for n in range(apis)]
        maintenance = Worker(base, "maintenance", log_path=root / "maintenance.log",
                             name="chaos-maint@%h")  # fmt: skip
        stack.others = [maintenance, Beat(base, root)]
        for n in range(generators):
            start_generator(stack, n, proxied=n in proxied)
        for api in stack.apis:
            api.wait_ready()
        maintenance.wait_ready()
        for worker in stack.generators:
            worker.wait_ready()
        yield stack
    finally:
        for proxy in stack.proxies.values():
            proxy.close()
        stop_all([*stack.apis, *stack.generators, *stack.others])
        server.stop()
        if "sql" in stack.__dict__:
            stack.sql.dispose()


def is_final(event: SseEvent) -> bool:
    if event.event in ("done", "error"):
        return True
    return event.event == "status" and event.data.get("status") in names.TERMINAL


def _is_unavailable(event: SseEvent) -> bool:
    """The relay's "Redis is away, reconnect" ending (no id: not part of the log)."""
    return event.event == "error" and event.id is None and event.data.get("type") == "unavailable"


class _Deadline(Exception):
    """A follower ran past its time without the job's final event."""


class Follower(threading.Thread):
    """One SSE client of one job (see the module docstring)."""

    def __init__(
        self, job: Job, urls: list[str], *, drop_after: int | None = None,
        rejoin: threading.Event | None = None, deadline_s: float = 75.0,
    ) -> None:  # fmt: skip
        super().__init__(daemon=True, name=f"follower-{job.id[:8]}")
        self.job = job
        self.urls = urls
        self.drop_after = drop_after
        self.rejoin = rejoin
        self.dropped = threading.Event()  # set once it has hung up by itself
        self.events: list[SseEvent] = []
        self.connections = 0
        self.breaks = 0  # connections that failed or broke under it
        self.refusals = 0  # answers other than 200
        self.unavailable = 0  # `error: unavailable` (told to reconnect)
        self.early_ends = 0  # streams the server closed before a final event
        self.hung = False  # still no final event at its deadline
        self.done = threading.Event()
        self._deadline = time.monotonic() + deadline_s
        self._url_index = 0
        self.start()

    @property
    def last_id(self) -> int | None:
        return next((e.id for e in reversed(self.events) if e.id is not None), None)

    def run(self) -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(10.0, connect=2.0)) as http:
                while not self._finished():
                    if time.monotonic() > self._deadline:
                        self.hung = True
                        return
                    self._connect_once(http)
        except _Deadline:
            self.hung = True
        finally:
            self.done.set()

    def _finished(self) -> bool:
        return bool(self.events) and is_final(self.events[-1])

    def _connect_once(self, http: httpx.Client) -> None:
        url = self.urls[self._url_index % len(self.urls)]
        last = self.last_id
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        hung_up = False
        try:
            with http.stream("GET", f"{url}/jobs/{self.job.id}/events", headers=headers) as resp:
                if resp.status_code != 200:
                    self.refusals += 1
                    self._next_url()
                    return
                self.connections += 1
                hung_up = self._read(resp)
                if not hung_up and not self._finished():
                    self.early_ends += 1
        except httpx.TransportError:
            self.breaks += 1
            self._next_url()
        if hung_up and self.rejoin is not None:
            self._wait(self.rejoin)  # away for a while; back with its Last-Event-ID

    def _read(self, resp: httpx.Response) -> bool:
        """Events of one connection; True once it hung up by itself."""
        for event in _parse_sse(self._lines(resp)):
            if _is_unavailable(event):
                self.unavailable += 1  # the stream says: reconnect with Last-Event-ID
                return False
            self.events.append(event)
            if is_final(event):
                return False
            if (
                self.drop_after is not None
                and not self.dropped.is_set()
                and len(self.events) >= self.drop_after
            ):
                self.dropped.set()
                return True
        return False

    def _lines(self, resp: httpx.Response) -> Iterator[str]:
        for line in resp.iter_lines():  # a ping a second: the deadline is checked often
            if time.monotonic() > self._deadline:
                raise _Deadline
            yield line

    def _next_url(self) -> None:
        self._url_index += 1
        time.sleep(0.1)

    def _wait(self, event: threading.Event) -> None:
        while not event.wait(0.2):
            if time.monotonic() > self._deadline:
                raise _Deadline


def follow(
    jobs: list[Job], urls: list[str], *, rejoin: threading.Event | None = None
) -> list[Follower]:
    """Three clients per job: one that stays, one that hangs up after 15 events and comes
    back at once (or on `rejoin`), one that hangs up after 30 and comes back at once."""
    followers = []
    for job in jobs:
        followers.append(Follower(job, urls))
        followers.append(Follower(job, urls, drop_after=15, rejoin=rejoin))
        followers.append(Follower(job, urls, drop_after=30))
    return followers


def wait_tokens(followers: list[Follower], count: int, timeout: float = 30) -> None:
    """Until every follower has seen at least `count` events."""
    deadline = time.monotonic() + timeout
    while any(len(f.events) < count and not f.done.is_set() for f in followers):
        assert time.monotonic() < deadline, [len(f.events) for f in followers]
        time.sleep(0.05)


def wait_done(followers: list[Follower], timeout: float = 90) -> None:
    for follower in followers:
        follower.done.wait(timeout)
