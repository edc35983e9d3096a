"""A private codeloop stack for benchmarks: its own Redis, SQLite, API and workers."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from app.core.db import migrate
from tests.conftest import free_port, redis_server_binary
from tests.support import ApiServer, Worker


@dataclass
class Stack:
    root: Path
    env: dict[str, str]
    api: ApiServer | None = None
    workers: list[Worker] = field(default_factory=list)


@contextlib.contextmanager
def stack(
    model_dir: Path | str | None,
    queues: list[tuple[str, int]],
    api: bool = True,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="codeloop-bench-"))
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {
        "CODELOOP_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "CODELOOP_DATABASE_URL": f"sqlite:///{root / 'codeloop.db'}",
        "CODELOOP_DATA_DIR": str(root / "data"),
        "CODELOOP_MODEL_DEVICE": "cpu",
        "CODELOOP_AUTH": "off",
        "CODELOOP_TORCH_THREADS": "1",
        # Benchmarks measure the service, not its quotas: every limit off.
        "CODELOOP_QUOTA_REQUESTS_PER_MINUTE": "0",
        "CODELOOP_QUOTA_CONCURRENT_JOBS": "0",
        "CODELOOP_QUOTA_TOKENS_PER_DAY": "0",
        "CODELOOP_QUEUE_MAX_DEPTH": "0",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        **(extra_env or {}),
    }
    if model_dir is not None:
        env["CODELOOP_MODEL_ID"] = str(model_dir)
    result = Stack(root, env)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.05)
        migrate(env["CODELOOP_DATABASE_URL"])
        for i, (q, concurrency) in enumerate(queues):
            result.workers.append(
                Worker(env, q, concurrency, root / f"worker{i}.log", name=f"bench{i}@%h")
            )
        if api:
            result.api = ApiServer(env, free_port(), root / "api.log").wait_ready()
        for worker in result.workers:
            worker.wait_ready(300)
        yield result
    finally:
        if result.api:
            result.api.stop()
        for worker in result.workers:
            worker.stop()
        server.terminate()
        server.wait(10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
