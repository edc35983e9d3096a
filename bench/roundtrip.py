"""Submit→done of a 1-token generation through the API, beside a bare Celery round trip.

Both measured in one run, interleaved, on the same Redis: the gap between them is what
the job machinery (SQL row, dispatch marker, lease, claim, events, long-poll) costs.
Usage: python -m bench.roundtrip [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from bench._stack import percentile, stack
from tests.support import build_test_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    tiny = build_test_model(Path(tempfile.mkdtemp(prefix="tiny-")))
    with stack(str(tiny), [("generate", 1), ("maintenance", 1)]) as s:
        assert s.api is not None
        os.environ.update(s.env)
        from app.core.celery_config import make_producer
        from app.core.config import get_settings, reset_settings_cache

        reset_settings_cache()
        celery = make_producer(get_settings())
        api_ms, celery_ms = [], []
        body = {"task": "x", "max_new_tokens": 1, "temperature": 0}
        with httpx.Client(base_url=s.api.url, timeout=60) as http:
            for i in range(args.runs + 2):  # two warm-up rounds
                started = time.perf_counter()
                celery.send_task("codeloop.ping", queue="maintenance").get(timeout=30)
                bare = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                job_id = http.post("/generate_code", json=body).json()["id"]
                job = http.get(f"/jobs/{job_id}", params={"wait": 30}).json()
                full = (time.perf_counter() - started) * 1000
                assert job["status"] == "succeeded", job
                if i >= 2:
                    celery_ms.append(bare)
                    api_ms.append(full)
    figures = {
        "runs": args.runs,
        "api_submit_to_done_ms_p50": round(percentile(api_ms, 50), 1),
        "api_submit_to_done_ms_p99": round(percentile(api_ms, 99), 1),
        "bare_celery_ms_p50": round(percentile(celery_ms, 50), 1),
        "bare_celery_ms_p99": round(percentile(celery_ms, 99), 1),
    }
    print(
        f"1-token generation submit→done: p50 {figures['api_submit_to_done_ms_p50']} ms, "
        f"p99 {figures['api_submit_to_done_ms_p99']} ms; bare Celery round trip: p50 "
        f"{figures['bare_celery_ms_p50']} ms, p99 {figures['bare_celery_ms_p99']} ms"
    )
    print(json.dumps({"bench": "roundtrip", **figures}))


if __name__ == "__main__":
    main()
