"""The page at `/` in real headless Chromium (Debian's), driven by Playwright, against the
real API (auth on), workers and the tiny test model.

The tiny model's text is garbage, so these tests check structure and exact token
sequences: what the page shows must be exactly the concatenation of the job's token
events as the server logged them, no token lost, none twice, across a reload.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import Platform, SecuredApi, free_port
from tests.support import ApiServer, Worker, missing_tool, read_events

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
LONG = 4000  # tokens: long enough to act on the stream while it runs
SCREENSHOT_DIR = os.environ.get("CODELOOP_SCREENSHOT_DIR")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_tool("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        missing_tool(f"no {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, secured_api: SecuredApi) -> Iterator[Any]:
    context = browser.new_context(base_url=secured_api.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_test_id("api-key").fill(secured_api.key)
    page.get_by_test_id("api-key").dispatch_event("change")
    page.urls = urls
    yield page
    # The long-lived key never travels in a URL (EventSource uses a job-scoped token).
    assert not [u for u in urls if secured_api.key in u]
    context.close()


def until(
    page: Any, testid: str, condition: str, arg: Any = None, timeout_ms: int = 60_000
) -> None:
    """Wait until `condition` (JS over `t`, the element's text, and `arg`) holds.

    A function, not a string: the page's CSP forbids eval, which string predicates use.
    """
    page.wait_for_function(
        "([id, arg]) => { const t = document.querySelector(`[data-testid=${id}]`).textContent;"
        f" return {condition}; }}",
        arg=[testid, arg],
        timeout=timeout_ms,
    )


def output_length(page: Any) -> int:
    return int(page.evaluate("document.querySelector('[data-testid=output]').textContent.length"))


def status(page: Any) -> str:
    return str(page.get_by_test_id("status").text_content())


def start_generation(page: Any, max_tokens: int, task: str = "reverse a string") -> str:
    page.get_by_test_id("task").fill(task)
    page.get_by_test_id("language").select_option("python")
    page.get_by_test_id("max-tokens").fill(str(max_tokens))
    page.get_by_test_id("generate").click()
    until(page, "job-id", "t !== ''")
    return str(page.get_by_test_id("job-id").text_content())


def wait_status(page: Any, word: str, timeout_ms: int = 120_000) -> None:
    until(page, "status", "t === arg", word, timeout_ms)


def wait_tokens(page: Any, more_than: int) -> int:
    until(page, "output", "t.length > arg", more_than)
    return output_length(page)


def logged_text(secured_api: SecuredApi, job_id: str) -> tuple[str, list[Any]]:
    with secured_api.client() as http:
        events = read_events(http, f"/jobs/{job_id}/events")
    return "".join(e.data["text"] for e in events if e.event == "token"), events


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if SCREENSHOT_DIR:  # e.g. docs/: refresh the README's picture
        shutil.copy(path, Path(SCREENSHOT_DIR) / name)
    return path


def test_tokens_arrive_live_and_survive_a_reload(
    page: Any, secured_api: SecuredApi, tmp_path: Path
) -> None:
    job_id = start_generation(page, LONG)
    first = wait_tokens(page, 0)
    wait_tokens(page, first)  # it keeps growing: tokens arrive while the job runs
    assert status(page) == "running"
    assert any(f"/jobs/{job_id}/events?token=" in u for u in page.urls)

    page.reload()  # mid-stream
    page.wait_for_selector("body[data-ready=true]")
    restored = output_length(page)
    assert restored >= first
    # The key stayed in this browser, and only there.
    assert page.evaluate("localStorage.getItem('codeloop.apiKey')") == secured_api.key
    assert page.get_by_test_id("api-key").input_value() == secured_api.key
    assert page.get_by_test_id("job-id").text_content() == job_id
    resumed = [u for u in page.urls if f"/jobs/{job_id}/events?" in u][-1]
    assert "last_event_id=" in resumed and "last_event_id=0" not in resumed

    wait_status(page, "succeeded")
    expected, events = logged_text(secured_api, job_id)
    assert events[-1].event == "done"
    assert page.get_by_test_id("output").text_content() == expected  # none lost, none twice
    assert page.evaluate("window.codeloopDuplicates") == 0
    assert len(expected) > restored  # the reload really came before the end
    done = events[-1].data
    assert page.get_by_test_id("model").text_content() == done["model"]
    # A textarea's value normalises line breaks; nothing else may differ.
    code = done["code"].replace("\r\n", "\n").replace("\r", "\n")
    assert page.get_by_test_id("code").input_value() == code
    screenshot(page, tmp_path, "ui-stream.png")


def test_stop_cancels_the_running_generation(page: Any, secured_api: SecuredApi) -> None:
    job_id = start_generation(page, LONG)
    wait_tokens(page, 0)
    page.get_by_test_id("stop").click()
    wait_status(page, "cancelled")
    expected, events = logged_text(secured_api, job_id)
    assert (events[-1].event, events[-1].data["status"]) == ("status", "cancelled")
    assert page.get_by_test_id("output").text_content() == expected
    with secured_api.client() as http:
        job = http.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["result"]["finish_reason"] == "cancelled"
    assert 0 < job["result"]["usage"]["completion_tokens"] < LONG
    assert page.get_by_test_id("stop").is_disabled()


def test_run_lint_rate_and_history(page: Any, secured_api: SecuredApi, platform: Platform) -> None:
    job_id = start_generation(page, 6, task="print the answer")
    wait_status(page, "succeeded")
    with secured_api.client() as http:
        generation_id = http.get(f"/jobs/{job_id}").json()["result"]["generation_id"]

    # Rate it: the page posts /feedback and shows the running mean.
    page.locator("[data-testid=rate] button[data-score='1']").click()
    until(page, "rate-result", "t.includes('over 1')")
    assert "mean 1.00" in str(page.get_by_test_id("rate-result").text_content())

    # Run: the (edited) code goes to the sandbox, linked to the generation.
    page.get_by_test_id("code").fill("import os\nprint(6 * 7)\n")
    page.get_by_test_id("run").click()
    page.wait_for_selector("[data-testid=run-result][data-status]")
    run_result = page.get_by_test_id("run-result")
    assert run_result.get_attribute("data-status") == "ok"
    assert "42" in str(run_result.text_content())

    page.get_by_test_id("lint").click()
    page.wait_for_selector("[data-testid=lint-result] li[data-code]")
    codes = page.locator("[data-testid=lint-result] li[data-code]").evaluate_all(
        "items => items.map(i => i.dataset.code)"
    )
    assert "F401" in codes  # `import os` unused

    # The caller's recent jobs, newest first: lint, execute, generate.
    page.get_by_test_id("refresh-history").click()
    page.wait_for_selector(f"[data-testid=history] li[data-job-id='{job_id}']")
    kinds = page.locator("[data-testid=history] li").evaluate_all(
        "items => items.slice(0, 3).map(i => i.dataset.kind)"
    )
    assert kinds == ["lint", "execute", "generate"]
    with secured_api.client() as http:
        executions = http.get("/jobs", params={"kind": "execute", "limit": 1}).json()["items"]
    assert executions[0]["request"]["generation_id"] == generation_id
    with platform.sql().connect() as conn:
        row = conn.execute(
            text("SELECT feedback_score, feedback_count, last_execution_status "
                 "FROM code_history WHERE id = :id"), {"id": generation_id},
        ).one()  # fmt: skip
    assert tuple(row) == (1.0, 1, "ok")


def test_without_a_key_the_page_says_so(browser: Any, secured_api: SecuredApi) -> None:
    context = browser.new_context(base_url=secured_api.url)
    page = context.new_page()
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_test_id("task").fill("anything")
    page.get_by_test_id("generate").click()
    until(page, "message", "t.includes('API key')")
    assert status(page) == "idle"
    context.close()


def test_tool_calls_and_context_the_agent_used(
    browser: Any, scripted_platform: Platform, tmp_path: Path
) -> None:
    """On the scripted engine the "model" calls execute_code: the page lists the call live
    and, from the result, every context item and tool call (auth off: no key needed)."""
    context = browser.new_context(base_url=scripted_platform.url)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto("/")
    page.wait_for_selector("body[data-ready=true]")
    job_id = start_generation(page, 256, task="compute the answer")
    wait_status(page, "succeeded")
    with scripted_platform.client() as http:
        result = http.get(f"/jobs/{job_id}").json()["result"]
    assert (
        page.get_by_test_id("output").text_content() == result["text"] == "Let me run it. It is 42."
    )
    calls = page.locator("[data-testid=tool-calls] li")
    [call] = result["tool_calls"]
    assert calls.count() == 1
    assert calls.first.get_attribute("data-call-id") == call["call_id"]
    shown = str(calls.first.text_content())
    assert shown.startswith("execute_code(") and "→ ok" in shown and "print(6 * 7)" in shown
    items = page.locator("[data-testid=context] li")
    assert items.count() == len(result["context"])
    for i, item in enumerate(result["context"]):
        assert str(items.nth(i).text_content()).startswith(f"{item['source']}: ")
    page.get_by_test_id("code").fill("print(6 * 7)\n")
    page.get_by_test_id("run").click()
    page.wait_for_selector("[data-testid=run-result][data-status=ok]")
    screenshot(page, tmp_path, "ui.png")  # the README's picture
    context.close()


def test_a_lost_worker_restarts_the_output(browser: Any, service_env: dict, tmp_path: Path) -> None:
    """A generate pool process killed mid-stream: the job is retried and the page shows
    the new attempt's text (which is the result), not the dead attempt's start."""
    api = ApiServer(service_env, free_port(), tmp_path / "api.log").wait_ready()
    worker = Worker(service_env, "generate", 1, tmp_path / "worker.log", name="uikill@%h")
    context = browser.new_context(base_url=api.url)
    try:
        worker.wait_ready()
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto("/")
        page.wait_for_selector("body[data-ready=true]")
        job_id = start_generation(page, 1500)
        wait_tokens(page, 20)
        with create_engine(service_env["CODELOOP_DATABASE_URL"]).connect() as conn:
            holder = conn.execute(
                text("SELECT worker FROM jobs WHERE id = :id"), {"id": job_id}
            ).scalar_one()
        os.kill(int(holder.split(":")[1]), signal.SIGKILL)
        wait_status(page, "succeeded")
        with httpx.Client(base_url=api.url, timeout=60) as http:
            job = http.get(f"/jobs/{job_id}").json()
            events = read_events(http, f"/jobs/{job_id}/events")
        assert job["attempts"] == 2
        assert [e.data["status"] for e in events if e.event == "status"] == [
            "running", "retrying", "running",
        ]  # fmt: skip
        assert page.get_by_test_id("output").text_content() == job["result"]["text"]
    finally:
        context.close()
        worker.stop()
        api.stop()
