"""`codeloop up`: one command brings up the whole service and Ctrl-C takes it all down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil

from tests.conftest import free_port, wait_until
from tests.support import ROOT


def test_codeloop_up_serves_restarts_what_crashed_and_stops_cleanly(tmp_path, tiny_model_dir):
    """Also pins the bug where one crashed child (a worker, the embedded Redis) took the
    whole service down instead of being restarted."""
    api_port, flower_port, redis_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CODELOOP_")}
    env.update({
        "CODELOOP_MODEL_ID": str(tiny_model_dir),
        "CODELOOP_MODEL_DEVICE": "cpu",
        "CODELOOP_EMBEDDED_REDIS_PORT": str(redis_port),
        "CODELOOP_FLOWER_BASIC_AUTH": "ops:secret",
        "PYTHONPATH": str(ROOT),
    })  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "up", "--port", str(api_port),
         "--flower-port", str(flower_port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{api_port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 180, interval=0.5, what="codeloop up to be ready")
        with httpx.Client(base_url=url, timeout=60) as http:
            job = http.post("/generate_code", json={"task": "x", "max_new_tokens": 4}).json()
            done = finished(http, job["id"])
        assert done["status"] == "succeeded", done
        flower = f"http://127.0.0.1:{flower_port}/"
        wait_until(lambda: _status(flower, None) in (401, 200), 60, what="flower")
        assert _status(flower, None) == 401
        assert _status(flower, ("ops", "secret")) == 200
        # Its broker page reads the queues (it knows redis:// URLs only: workers keep
        # their own transport to themselves, workers/broker_transport.py).
        assert _status(flower + "broker", ("ops", "secret")) == 200
        assert (tmp_path / "data" / "codeloop.db").exists()
        assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # redis, 3 workers, beat, api, flower (+ pool processes)
        # Flower's password travels in its environment, never on a command line (`ps`).
        assert not [p.pid for p in children if "ops:secret" in " ".join(p.cmdline())]

        # Crash the generate worker and the embedded Redis: both come back (Redis from
        # its AOF), and the service serves again.
        direct = psutil.Process(proc.pid).children()
        crashed = [p for p in direct if "gen@%h" in p.cmdline() or
                   p.name().startswith("redis-server")]  # fmt: skip
        assert len(crashed) == 2
        for child in crashed:
            child.send_signal(signal.SIGKILL)

        def restarted() -> bool:
            now = {p.pid for p in psutil.Process(proc.pid).children()}
            return len(now) == len(direct) and not now & {c.pid for c in crashed}

        wait_until(restarted, 30, what="the crashed children to be restarted")
        wait_until(ready, 120, interval=0.5, what="codeloop up to be ready again")
        with httpx.Client(base_url=url, timeout=60) as http:
            again = http.post("/generate_code", json={"task": "y", "max_new_tokens": 4}).json()
            done = finished(http, again["id"])
            assert done["status"] == "succeeded", done
            assert http.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"  # kept
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    assert "codeloop is up." in output and "curl" in output
    assert "worker-generate exited with -9; restarting in" in output
    assert "redis exited with -9; restarting in" in output and "redis restarted" in output
    assert proc.returncode == 0, output
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def finished(http: httpx.Client, job_id: str) -> dict:
    """The job once it is over (a first generation loads the model: slow on a busy box)."""
    deadline = time.monotonic() + 150
    while True:
        job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job


def _status(url: str, auth: tuple[str, str] | None) -> int | None:
    try:
        return httpx.get(url, auth=auth, timeout=5).status_code
    except httpx.HTTPError:
        return None
