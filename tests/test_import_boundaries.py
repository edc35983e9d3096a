"""SPEC §3: the API never imports torch or the workers; the execute worker never imports
torch or fastapi. Checked in fresh interpreters, so nothing else pre-imports them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT


def imported_after(module_code: str, probes: list[str]) -> dict[str, bool]:
    code = f"import sys\n{module_code}\nprint(','.join(str(p in sys.modules) for p in {probes!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    return dict(zip(probes, (v == "True" for v in out.split(",")), strict=True))


def test_api_does_not_import_torch_or_workers():
    found = imported_after("import app.main", ["torch", "transformers", "workers", "hnswlib"])
    assert not any(found.values()), found


@pytest.mark.parametrize(
    "modules",
    ["import workers.celery_app, workers.tasks.execute, workers.jobrun",
     "import workers.sandbox.service"],
)  # fmt: skip
def test_execute_worker_imports_neither_torch_nor_fastapi(modules: str):
    found = imported_after(modules, ["torch", "fastapi", "transformers", "sentence_transformers"])
    assert not any(found.values()), found


def test_cli_is_light():
    found = imported_after("import app.cli", ["torch", "fastapi", "celery"])
    assert not found["torch"] and not found["fastapi"]
