"""`codeloop dashboard` serves optuna-dashboard on the tuners' own storage."""

from __future__ import annotations

import contextlib
import sys

import httpx
import optuna

from app.core.config import Settings
from tests.conftest import free_port, wait_until
from tests.support import ServiceProcess
from workers.tuning import storage


def test_dashboard_shows_the_studies_of_the_journal(tmp_path, sqlite_url):
    settings = Settings(database_url=sqlite_url, data_dir=tmp_path / "data")
    storage.reset()
    study = optuna.create_study(storage=storage.optuna_storage(settings),
                                study_name="retriever-dash")  # fmt: skip
    study.optimize(lambda t: t.suggest_int("M", 8, 48), n_trials=2)
    storage.reset()
    port = free_port()
    env = {"CODELOOP_DATABASE_URL": sqlite_url, "CODELOOP_DATA_DIR": str(tmp_path / "data")}
    proc = ServiceProcess([sys.executable, "-m", "app.cli", "dashboard", "--port", str(port)],
                          env, tmp_path / "dashboard.log")  # fmt: skip

    def studies() -> list[str] | None:
        with contextlib.suppress(httpx.HTTPError):
            body = httpx.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()
            return [s["study_name"] for s in body["study_summaries"]]
        return None

    try:
        assert wait_until(studies, 60, interval=0.3, what="optuna-dashboard") == ["retriever-dash"]
        assert "journal file" in proc.log()
    finally:
        proc.stop()
