"""The `codeloop` commands that talk to a running API: generate, exec, feedback, jobs,
optimize.

They need nothing but the API's address and a key: `CODELOOP_API_URL` (default
http://127.0.0.1:8000) and `CODELOOP_API_KEY` (sent as `Authorization: Bearer`, never in
a URL). Imports stay light (httpx and rich, loaded when a command runs; never torch), so
the command starts at once on a laptop with no model on it.

Exit status: 0 success; 1 the job failed (or the program run by `exec` failed: its own
exit code where it has one); 2 the API refused the request (4xx); 3 the API could not
be reached or answered 5xx; 130 interrupted (Ctrl-C cancels the job first).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = ("succeeded", "failed", "cancelled")
EXIT_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 1, 2, 3, 130
EXTENSION_LANGUAGES = {".py": "python", ".js": "javascript", ".ts": "typescript",
                       ".java": "java", ".jsx": "react", ".tsx": "react"}  # fmt: skip


class CommandError(Exception):
    """Ends a command with a message on stderr and an exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """A thin client of the codeloop API; errors become CommandErrors that say what failed."""

    def __init__(self, url: str | None = None, key: str | None = None) -> None:
        import httpx

        self.url = (url or os.environ.get("CODELOOP_API_URL") or DEFAULT_URL).rstrip("/")
        key = key if key is not None else os.environ.get("CODELOOP_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach {self.url}: {exc}", EXIT_UNREACHABLE) from exc
        check(response, f"{method} {path}")
        return response.json()

    def wait(self, job_id: str) -> dict[str, Any]:
        while True:
            job: dict[str, Any] = self.call("GET", f"/jobs/{job_id}", params={"wait": 30})
            if job["status"] in TERMINAL:
                return job

    def cancel(self, job_id: str) -> None:
        try:
            self.http.post(f"/jobs/{job_id}/cancel", timeout=10)
        except Exception as exc:  # reported, never hides the interrupt itself
            print(f"codeloop: could not cancel {job_id}: {exc}", file=sys.stderr)


def check(response: httpx.Response, what: str) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        message = f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        message = response.text[:300] or response.reason_phrase
    hint = " (set CODELOOP_API_KEY)" if response.status_code == 401 else ""
    status = EXIT_UNREACHABLE if response.status_code >= 500 else EXIT_REFUSED
    raise CommandError(f"{what} → {response.status_code} {message}{hint}", status)


# --- generate ---------------------------------------------------------------------------


def sse_events(lines: Iterator[str]) -> Iterator[tuple[int | None, str, Any]]:
    """(id, event, data) from SSE lines; comments (pings) skipped."""
    event_id: int | None = None
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event_id, event, json.loads("\n".join(data))
            event_id, event, data = None, "message", []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id" and value.isdigit():
                event_id = int(value)
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)


class GenerationView:
    """The terminal while tokens arrive: the text so far and a live status line (rich)."""

    def __init__(self, job_id: str) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.live_mode = self.console.is_terminal
        self.job_id = job_id
        self.status = "queued"
        self.text = ""
        self.tokens = 0
        self.first_at: float | None = None
        self._live: Any = None

    def __enter__(self) -> GenerationView:
        if self.live_mode:
            from rich.live import Live

            self._live = Live(self._render(), console=self.console, refresh_per_second=12)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(*exc)
        elif self.text and not self.text.endswith("\n"):
            sys.stderr.write("\n")
        print(self.status_line(), file=sys.stderr, flush=True)

    def status_line(self) -> str:
        rate = ""
        if self.first_at is not None and self.tokens > 1:
            elapsed = time.monotonic() - self.first_at
            rate = f" · {(self.tokens - 1) / elapsed:.1f} tok/s" if elapsed > 0 else ""
        return f"job {self.job_id} · {self.status} · {self.tokens} tokens{rate}"

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        return Group(Text(self.text), Text(self.status_line(), style="bold cyan"))

    def token(self, text: str) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()
        self.tokens += 1
        self.text += text
        if self._live is not None:
            self._live.update(self._render())
        else:  # not a terminal: the raw stream, as it arrives
            sys.stderr.write(text)
            sys.stderr.flush()

    def set_status(self, status: str) -> None:
        if status == "retrying" and self.status != "retrying":
            # A worker was lost: the next attempt streams its answer from the start.
            self.text, self.tokens, self.first_at = "", 0, None
            if self._live is None:
                sys.stderr.write("\n[worker lost: retrying from the start]\n")
        self.status = status
        if self._live is not None:
            self._live.update(self._render())


def cmd_generate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"task": args.task, "language": args.lang, "stream": True}
    if args.max_tokens:
        body["max_new_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    if args.project:
        body["project_id"] = args.project
    with Api() as api:
        _LAST_JOB.clear()
        try:
            result = _follow_generation(api, body)
        except KeyboardInterrupt:
            job_id = _LAST_JOB.get("id")
            if job_id:  # Ctrl-C stops the generation too, not just this terminal
                api.cancel(job_id)
                print(f"codeloop: cancelled job {job_id}", file=sys.stderr)
            return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "_status"}, indent=2))
    else:
        code = result.get("code") or ""
        sys.stdout.write(code if code.endswith("\n") or not code else code + "\n")
    if result.get("_status") != "succeeded":
        return EXIT_FAILED
    return 0


_LAST_JOB: dict[str, str] = {}  # the job being followed, for Ctrl-C


def _follow_generation(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    """Stream one generation; resume by Last-Event-ID if the connection drops."""
    import httpx

    try:
        with api.http.stream("POST", "/generate_code", json=body, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                check(response, "POST /generate_code")
            job_id = response.headers["x-job-id"]
            _LAST_JOB["id"] = job_id
            with GenerationView(job_id) as view:
                outcome = _consume(sse_events(response.iter_lines()), view, last=0)
                for _attempt in range(5):
                    if outcome.final is not None:
                        break
                    time.sleep(0.5)  # the stream dropped before the end: resume after `last`
                    outcome = _resume(api, job_id, view, outcome.last)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {api.url}: {exc}", EXIT_UNREACHABLE) from exc
    if outcome.final is None:
        raise CommandError(f"lost the stream of job {job_id}", EXIT_UNREACHABLE)
    kind, data = outcome.final
    if kind == "error":
        print(f"codeloop: job failed: {data.get('type')}: {data.get('message')}", file=sys.stderr)
        return {"_status": "failed", "error": data}
    if kind == "status":
        return {**(data.get("result") or {}), "_status": data.get("status")}
    return {**data, "_status": "succeeded"}


class _Outcome:
    def __init__(self, last: int, final: tuple[str, Any] | None) -> None:
        self.last, self.final = last, final


def _consume(
    events: Iterator[tuple[int | None, str, Any]], view: GenerationView, last: int
) -> _Outcome:
    for event_id, event, data in events:
        if event_id is not None:
            if event_id <= last:
                continue
            last = event_id
        if event == "token":
            view.token(data["text"])
            view.set_status("running")
        elif event == "status":
            view.set_status(data["status"])
            if data["status"] in TERMINAL:
                return _Outcome(last, ("status", data))
        elif event == "done":
            view.set_status("succeeded")
            return _Outcome(last, ("done", data))
        elif event == "error":
            view.set_status("failed")
            return _Outcome(last, ("error", data))
    return _Outcome(last, None)


def _resume(api: Api, job_id: str, view: GenerationView, last: int) -> _Outcome:
    import httpx

    headers = {"Last-Event-ID": str(last)}
    try:
        with api.http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                check(r, f"GET /jobs/{job_id}/events")
            return _consume(sse_events(r.iter_lines()), view, last)
    except httpx.TransportError:
        return _Outcome(last, None)


# --- exec, feedback, jobs, optimize ------------------------------------------------------


def cmd_exec(args: argparse.Namespace) -> int:
    path = Path(args.file)
    try:
        code = path.read_text()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", EXIT_REFUSED) from exc
    language = args.lang or EXTENSION_LANGUAGES.get(path.suffix)
    if language is None:
        raise CommandError(f"cannot tell the language of {path.name}: pass --lang", EXIT_REFUSED)
    body: dict[str, Any] = {"language": language, "code": code}
    if args.stdin is not None:
        body["stdin"] = Path(args.stdin).read_text() if args.stdin != "-" else sys.stdin.read()
    if args.timeout:
        body["timeout_s"] = args.timeout
    with Api() as api:
        created = api.call("POST", "/execute_code", json=body)
        try:
            job = api.wait(created["id"])
        except KeyboardInterrupt:
            api.cancel(created["id"])
            return EXIT_INTERRUPTED
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        print(f"codeloop: job {job['id']} {job['status']}: {error.get('message', '')}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    result = job["result"]
    sys.stdout.write(result.get("stdout") or "")
    sys.stderr.write(result.get("stderr") or "")
    print(f"[{result['status']} · exit {result.get('exit_code')} · {result.get('duration_ms')} ms"
          f" · {result.get('backend')}]", file=sys.stderr)  # fmt: skip
    if result["status"] == "ok":
        return 0
    exit_code = result.get("exit_code")
    return exit_code if isinstance(exit_code, int) and 0 < exit_code < 126 else EXIT_FAILED


def cmd_feedback(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"generation_id": args.generation_id, "score": args.score}
    if args.comment:
        body["comment"] = args.comment
    with Api() as api:
        result = api.call("POST", "/feedback", json=body)
    print(f"generation {result['generation_id']}: mean score {result['feedback_score']:.2f} "
          f"over {result['feedback_count']} rating(s)")  # fmt: skip
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.kind:
        params["kind"] = args.kind
    if args.status:
        params["status"] = args.status
    with Api() as api:
        page = api.call("GET", "/jobs", params=params)
    if args.json:
        print(json.dumps(page["items"], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "kind", "status", "created", "summary", box=None, pad_edge=False)
    for job in page["items"]:
        table.add_row(job["id"], job["kind"], job["status"], job["created_at"][:19], _summary(job))
    Console(width=max(120, Console().width)).print(table)
    return 0


def _summary(job: dict[str, Any]) -> str:
    request, result = job.get("request") or {}, job.get("result") or {}
    if job["kind"] == "generate":
        tokens = (result.get("usage") or {}).get("completion_tokens")
        text = str(request.get("task", ""))[:40]
        return f"{text!r}" + (f" · {tokens} tokens" if tokens is not None else "")
    if job["kind"] == "execute":
        return f"{request.get('language')} · {result.get('status', '')}"
    return str(request.get("query") or request.get("language") or "")[:40]


def cmd_optimize(args: argparse.Namespace) -> int:
    import httpx

    with Api() as api:
        try:
            response = api.http.post("/optimize/retriever", json={})
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach {api.url}: {exc}", EXIT_UNREACHABLE) from exc
        if response.status_code in (404, 405):
            raise CommandError(
                f"{api.url} has no POST /optimize/retriever: this server predates the "
                "retriever tuner (upgrade it)", EXIT_REFUSED,
            )  # fmt: skip
        check(response, "POST /optimize/retriever")
        job = response.json()
        print(f"optimize job {job['id']}: {job['status']}", file=sys.stderr)
        if not args.wait:
            print(job["id"])
            return 0
        job = api.wait(job["id"])
    print(json.dumps(job.get("result") or job.get("error"), indent=2))
    return 0 if job["status"] == "succeeded" else EXIT_FAILED


# --- wiring ------------------------------------------------------------------------------


def _run(handler: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except CommandError as exc:
            print(f"codeloop: {exc}", file=sys.stderr)
            return exc.status
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return run


def add_client_commands(sub: Any) -> None:
    """Register the API client commands on `codeloop`'s subparsers."""
    languages = ["python", "javascript", "typescript", "java", "react", "tailwind", "vite",
                 "nestjs"]  # fmt: skip
    gen = sub.add_parser("generate", help="generate code on a running API, streaming tokens")
    gen.add_argument("task")
    gen.add_argument("--lang", default="python", choices=languages)
    gen.add_argument("--max-tokens", type=int, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--project", default=None, help="project id (its files are context)")
    gen.add_argument("--json", action="store_true", help="print the whole result as JSON")
    gen.set_defaults(func=_run(cmd_generate))

    run = sub.add_parser("exec", help="run a file in the API's sandbox")
    run.add_argument("file")
    run.add_argument("--lang", default=None, choices=languages, help="default: from the suffix")
    run.add_argument("--stdin", default=None, help="a file to feed as stdin ('-': this stdin)")
    run.add_argument("--timeout", type=float, default=None, help="seconds")
    run.set_defaults(func=_run(cmd_exec))

    fb = sub.add_parser("feedback", help="rate a generation (0 worst … 1 best)")
    fb.add_argument("generation_id")
    fb.add_argument("score", type=float)
    fb.add_argument("--comment", default=None)
    fb.set_defaults(func=_run(cmd_feedback))

    jobs = sub.add_parser("jobs", help="your recent jobs, newest first")
    jobs.add_argument("--kind", default=None)
    jobs.add_argument("--status", default=None)
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--json", action="store_true")
    jobs.set_defaults(func=_run(cmd_jobs))

    opt = sub.add_parser("optimize", help="start tuning the retriever (POST /optimize/retriever)")
    opt.add_argument("--wait", action="store_true", help="wait for the study and print it")
    opt.set_defaults(func=_run(cmd_optimize))
