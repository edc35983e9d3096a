"""What the sandbox costs: `print(1)` through each backend against bare `python3 -c`.

    python -m bench.sandbox_overhead [--runs 50]

Runs the same program (the interpreter the sandboxes use, /usr/bin/python3) bare and
through `workers.sandbox.service.execute` on each backend that is usable here, prints
p50/p99 wall time, the milliseconds each backend adds and the ratio, side by side, and
ends with one JSON line of the figures. For Docker it also times the container's
create, start and remove on their own: the part a pool of pre-started containers (each
waiting on stdin for its code) would take off every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from workers.sandbox import service
from workers.sandbox.docker_backend import DockerBackend

PROGRAM = "print(1)"


def timed(fn: Callable[[], Any], runs: int) -> list[float]:
    fn()  # warm caches (page cache, seccomp filter, Docker image layers)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 1), "p99": round(p99, 1)}


def bare() -> None:
    out = subprocess.run(["/usr/bin/python3", "-c", PROGRAM], capture_output=True, check=True)
    assert out.stdout == b"1\n"


def through(backend: str) -> Callable[[], None]:
    def go() -> None:
        result = service.execute(
            {"language": "python", "code": PROGRAM, "stdin": None, "timeout_s": 10,
             "memory_mb": 256, "lint": False}
        )  # fmt: skip
        assert result["status"] == "ok" and result["stdout"] == "1\n", result

    return go


def docker_lifecycle(runs: int) -> dict[str, float]:
    """p50 of create, start-to-exit of `sh -c :`, and remove: what a warm pool saves."""
    import docker

    backend = service.select_backend("docker")
    assert isinstance(backend, DockerBackend)
    api = docker.from_env(timeout=30).api
    image = backend.config.images["python"]
    phases: dict[str, list[float]] = {"create": [], "start_to_exit": [], "remove": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        host_config = api.create_host_config(network_mode="none")
        cid = api.create_container(
            image, command=["sh", "-c", ":"], user="65534:65534", host_config=host_config
        )["Id"]
        try:
            t1 = time.perf_counter()
            api.start(cid)
            api.wait(cid)
            t2 = time.perf_counter()
        finally:
            api.remove_container(cid, force=True)
        t3 = time.perf_counter()
        phases["create"].append((t1 - t0) * 1000)
        phases["start_to_exit"].append((t2 - t1) * 1000)
        phases["remove"].append((t3 - t2) * 1000)
    api.close()
    return {k: round(statistics.median(v), 1) for k, v in phases.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()

    figures: dict[str, Any] = {"runs": args.runs, "program": PROGRAM, "cpus": os.cpu_count()}
    base = percentiles(timed(bare, args.runs))
    figures["bare"] = base
    print(f"{'':10} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'x p50':>6}")
    print(f"{'bare':10} {base['p50']:8.1f} {base['p99']:8.1f}")
    for name in ("process", "docker"):
        backend = service.select_backend(name)
        if not backend.available():
            figures[name] = None
            print(f"{name:10} unavailable: {'; '.join(backend.status()['missing'])}")
            continue
        got = percentiles(timed(through(name), args.runs))
        got["added_p50"] = round(got["p50"] - base["p50"], 1)
        got["added_p99"] = round(got["p99"] - base["p99"], 1)
        got["ratio_p50"] = round(got["p50"] / base["p50"], 2)
        figures[name] = got
        print(f"{name:10} {got['p50']:8.1f} {got['p99']:8.1f} {got['added_p50']:8.1f} "
              f"{got['added_p99']:8.1f} {got['ratio_p50']:6.2f}")  # fmt: skip
    if figures.get("docker"):
        life = docker_lifecycle(min(args.runs, 20))
        saves = round(life["create"] + life["start_to_exit"] + life["remove"], 1)
        figures["docker_lifecycle_p50"] = life
        figures["docker_warm_pool_saves_ms_p50"] = saves
        print(
            f"\nDocker container lifecycle p50: create {life['create']} ms, start-to-exit of "
            f"`sh -c :` {life['start_to_exit']} ms, remove {life['remove']} ms. A warm pool of "
            f"pre-started containers (each blocked on stdin for its code, removed after one "
            f"run and replaced in the background) would take about {saves} ms off each run's "
            f"latency, leaving ~{round(figures['docker']['p50'] - saves, 1)} ms; it would not "
            f"reduce the engine's CPU per run, only move it off the request path."
        )
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    main()
