"""Schemathesis against /openapi.json, with every check it has (`--checks all`).

A real API (auth on) in front of real Redis, SQL and Celery workers, one per queue (the
batching generate worker among them, as `codeloop up` runs it): every job the fuzzer
gets accepted really runs, on the tiny model and the real sandbox, so long-polls and
event streams end as they would for a client. No operation is left out: streams end
with their job, and schemathesis reads at most `max-stream-events` events of one.

What a pass proves: no 5xx; every status an operation answers is declared; schema-valid
requests are accepted and schema-violating ones refused; every response matches its
schema (errors: SPEC's shape, exactly); `Allow` lists every method a path serves.
Settings of the run, and why each, are in tests/fuzz/schemathesis.toml.

The caps are lowered (`SMALL_CAPS`) so the run is short: the schema states the caps in
force, so the fuzzer asks for what this server allows (16 tokens, a 2 s study), and the
run takes about a minute on two cores. The seed and the example count are fixed: CI runs
the same cases every time (only the stateful phase follows ids the server hands out).
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Platform, platform_env, running_platform
from tests.support import GenerateWorker

pytestmark = [pytest.mark.slow, pytest.mark.fuzz]

HERE = Path(__file__).resolve().parent
SEED = 20240611
MAX_EXAMPLES = 10
FUZZ_REDIS_DB = 13  # a database of the session's Redis no other stack uses
SMALL_CAPS = {
    "CODELOOP_MAX_TASK_CHARS": "2000",
    "CODELOOP_MAX_NEW_TOKENS": "8",
    "CODELOOP_MAX_NEW_TOKENS_CAP": "16",
    "CODELOOP_EXEC_TIMEOUT_S": "2",
    "CODELOOP_EXEC_TIMEOUT_CAP_S": "5",
    "CODELOOP_EXEC_MEMORY_CAP_MB": "512",
    "CODELOOP_EXEC_MAX_CODE_BYTES": "4096",
    "CODELOOP_EXEC_MAX_STDIN_BYTES": "4096",
    "CODELOOP_MAX_PROJECT_FILE_BYTES": "4096",
    "CODELOOP_TUNE_TIMEOUT_S": "2",
    "CODELOOP_TUNE_SOFT_TIME_LIMIT_S": "62",  # a study's timeout_s is at most 2 s
    "CODELOOP_TUNE_TIME_LIMIT_S": "90",
}


@pytest.fixture(scope="module")
def fuzz_platform(
    redis_server: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Platform, str]]:
    root = tmp_path_factory.mktemp("fuzz")
    key = "cl_fuzz_" + uuid.uuid4().hex
    env = {**platform_env(redis_server, root, tiny_model_dir, FUZZ_REDIS_DB), **SMALL_CAPS,
           "CODELOOP_AUTH": "on", "CODELOOP_API_KEYS": key}  # fmt: skip
    workers = [("execute", 2, "fuzzexe@%h"), ("search,maintenance", 1, "fuzzsea@%h")]
    with running_platform(env, root, workers) as platform:
        # The batching generate worker, as `codeloop up` runs it: the fuzzer queues a
        # hundred generations in bursts, and clients wait on them.
        generate = GenerateWorker(env, root / "worker-gen.log", name="fuzzgen@%h")
        try:
            generate.wait_ready()
            yield platform, key
        finally:
            generate.stop()


def _schemathesis(url: str, key: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(Path(sys.executable).parent / "schemathesis"), "--no-color",
        "--config-file", str(HERE / "schemathesis.toml"),
        "run", f"{url}/openapi.json", "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--header", f"Authorization: Bearer {key}",
    ]  # fmt: skip
    return subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=240, check=False
    )


def _failures(output: str) -> str:
    """The run's FAILURES and ERRORS sections (what to fix), else its tail."""
    start = min((i for i in (output.find("= ERRORS ="), output.find("= FAILURES =")) if i >= 0),
                default=max(0, len(output) - 6000))  # fmt: skip
    return output[start:][-20000:]


def test_openapi_holds_under_schemathesis(
    fuzz_platform: tuple[Platform, str], tmp_path: Path
) -> None:
    platform, key = fuzz_platform
    run = _schemathesis(platform.url, key, tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis found failures:\n{_failures(output)}"
    operations = re.search(r"Selected: (\d+)/(\d+)\s+Tested: (\d+)", output)
    cases = re.search(r"(\d+) generated", output)
    assert operations and cases, output[-3000:]
    selected, total, tested = map(int, operations.groups())
    assert selected == total == tested > 20, output[-3000:]  # every operation was fuzzed
    assert int(cases.group(1)) > 20 * MAX_EXAMPLES, output[-3000:]
    print(f"schemathesis: {tested} operations, {cases.group(1)} cases, no failures")
