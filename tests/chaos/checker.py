"""The chaos suite's one verdict: what every client saw, against what SQL says happened.

For every accepted job: it reached a final state in SQL (every scenario here expects
`succeeded`: each fault is one a job must survive, within its attempts), nothing is
left queued, retrying or running once the stack settles, its result is the script's
text, and its Redis stream holds at most one final event.

For every client of it, the events it was sent, across all its connections:
- ids strictly increasing by one from 1: a repeated id is *duplicated*, a smaller one
  *out of order*, a skipped one *lost*;
- exactly one final event, the last, equal to SQL's result (a second one is a
  duplicate, none is a loss);
- tokens only inside an attempt (between `status: running {attempt}` and the next
  `status: retrying` or the end), each attempt's tokens the script's tokens from index
  0 on, in order, none twice, none skipped; the last attempt is the job's, and its
  tokens spell the whole result text.

What a client sees when a job restarts (SPEC §7, ARCHITECTURE "The life of a job"):
`status: retrying {attempt: n}`, then `status: running {attempt: n+1}`, then the new
attempt's tokens from index 0; ids go on across the restart.

Where Redis lost the job's log (a flush), a client may instead be told the job's final
state from SQL: a final event without an id (SPEC: "either the stream continues with
correct ids or it ends with the job's final state read from SQL"). That is counted
(`final_from_sql`) and only allowed where a scenario says so; such a client's tokens
must still be a clean prefix of an attempt.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

from app.core import names
from tests.chaos.harness import ChaosStack, Follower, Job, is_final, tokens_of
from tests.support import SseEvent


@dataclass
class Verdict:
    scenario: str
    accepted: int
    finished: int
    statuses: dict[str, int]
    attempts: dict[int, int]  # attempts -> number of jobs
    clients: int
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    final_from_sql: int = 0
    hung: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def line(self) -> str:
        figures = {k: v for k, v in asdict(self).items() if k not in ("rows", "problems")}
        return json.dumps({**figures, "problems": len(self.problems)})

    def assert_clean(self, *, final_from_sql_allowed: bool = False) -> None:
        print(f"\nchaos verdict {self.line()}")
        problems = list(self.problems)
        if self.final_from_sql and not final_from_sql_allowed:
            problems.append(f"{self.final_from_sql} clients ended with SQL's state, not the log")
        assert not problems, "\n".join(problems[:40])
        assert (self.lost, self.duplicated, self.out_of_order) == (0, 0, 0)
        assert self.finished == self.accepted


def settle(stack: ChaosStack, jobs: list[Job], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """The jobs' rows once none is queued, retrying or running (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.rows(jobs)
        if all(row["status"] in names.TERMINAL for row in rows.values()):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def verdict(
    scenario: str, stack: ChaosStack, jobs: list[Job], followers: list[Follower], started: float
) -> Verdict:
    rows = settle(stack, jobs)
    result = Verdict(
        scenario=scenario,
        accepted=len(jobs),
        finished=sum(row["status"] in names.TERMINAL for row in rows.values()),
        statuses=dict(Counter(row["status"] for row in rows.values())),
        attempts=dict(Counter(int(row["attempts"]) for row in rows.values())),
        clients=len(followers),
        rows=rows,
    )
    for job in jobs:
        _check_job(result, stack, job, rows[job.id])
    for follower in followers:
        _check_client(result, follower, rows[follower.job.id])
    result.seconds = round(time.monotonic() - started, 1)
    return result


def _check_job(result: Verdict, stack: ChaosStack, job: Job, row: dict[str, Any]) -> None:
    where = f"job {job.index} ({job.id[:8]})"
    if row["status"] != names.SUCCEEDED:
        result.problems.append(f"{where}: {row['status']} {row['error']}")
        return
    text = (row["result"] or {}).get("text")
    if text != job.answer:
        result.problems.append(f"{where}: result text is not the script's: {text!r:.80}")
    finals = [e for e in stack.stream(job) if _final_type(e["type"], e["data"])]
    if len(finals) > 1:
        result.problems.append(f"{where}: its stream holds {len(finals)} final events")


def _final_type(type_: str, data: dict[str, Any]) -> bool:
    return type_ in ("done", "error") or (
        type_ == "status" and data.get("status") in names.TERMINAL
    )


def _check_client(result: Verdict, follower: Follower, row: dict[str, Any]) -> None:
    where = f"job {follower.job.index} client {id(follower) % 10_000}"
    events = follower.events
    result.reconnects += max(0, follower.connections - 1)
    if follower.hung:
        result.hung += 1
        result.problems.append(f"{where}: no final event by its deadline ({len(events)} events)")
    if follower.unavailable or follower.early_ends:
        result.problems.append(
            f"{where}: {follower.unavailable} unavailable errors, "
            f"{follower.early_ends} streams closed without a final event"
        )
    _check_ids(result, where, events)
    finals = [i for i, e in enumerate(events) if is_final(e)]
    if not finals:
        result.lost += 1
        result.problems.append(f"{where}: no final event")
        final = None
    else:
        result.duplicated += len(finals) - 1
        if finals[-1] != len(events) - 1 or len(finals) > 1:
            result.problems.append(f"{where}: final events at {finals} of {len(events)}")
        final = events[finals[-1]]
        if final.event != "done" or final.data != row["result"]:
            result.problems.append(f"{where}: final {final.event} {final.data!s:.80}")
        if final.id is None:
            result.final_from_sql += 1
    _check_attempts(result, where, events, follower.job, row, final)


def _check_ids(result: Verdict, where: str, events: list[SseEvent]) -> None:
    ids = [e.id for e in events if e.id is not None]
    duplicated = len(ids) - len(set(ids))
    out_of_order = sum(1 for a, b in pairwise(ids) if b < a)
    missing = sorted(set(range(1, max(ids, default=0) + 1)) - set(ids))
    result.duplicated += duplicated
    result.out_of_order += out_of_order
    result.lost += len(missing)
    if duplicated or out_of_order or missing:
        result.problems.append(f"{where}: ids {duplicated} repeated, {out_of_order} out of "
                               f"order, missing {missing[:10]}")  # fmt: skip


def _check_attempts(
    result: Verdict, where: str, events: list[SseEvent], job: Job, row: dict[str, Any],
    final: SseEvent | None,
) -> None:  # fmt: skip
    """Tokens only inside an attempt, each attempt a clean prefix of the script."""
    expected = tokens_of(job.answer)
    attempt: int | None = None
    seen: dict[int, list[SseEvent]] = {}
    for event in events:
        if event.event == "status" and event.data.get("status") == names.RUNNING:
            number = int(event.data["attempt"])
            if attempt is not None and number <= attempt:
                result.out_of_order += 1
                result.problems.append(f"{where}: attempt {number} started after {attempt}")
            attempt = number
            seen[number] = []
        elif event.event == "status" and event.data.get("status") == names.RETRYING:
            attempt = None
        elif event.event == "token":
            if attempt is None:
                result.problems.append(f"{where}: a token outside any attempt (a stale write)")
                continue
            seen[attempt].append(event)
    for number, tokens in seen.items():
        indices = [int(t.data["index"]) for t in tokens]
        result.duplicated += len(indices) - len(set(indices))
        result.out_of_order += sum(1 for a, b in pairwise(indices) if b < a)
        if indices != list(range(len(indices))):
            result.lost += len(set(range(max(indices, default=-1) + 1)) - set(indices))
            result.problems.append(f"{where}: attempt {number} token indices {indices[:12]}…")
        wrong = [t.data for t in tokens if t.data["text"] != _at(expected, t.data["index"])]
        if wrong:
            result.problems.append(f"{where}: attempt {number}: not the script's {wrong[:3]}")
    complete_final = final is not None and final.id is not None
    if complete_final:
        last = max(seen, default=None)
        if last != row["attempts"]:
            result.problems.append(f"{where}: last attempt seen {last}, SQL's {row['attempts']}")
        tokens = seen.get(last, []) if last is not None else []
        result.lost += max(0, len(expected) - len({t.data["index"] for t in tokens}))
        if "".join(t.data["text"] for t in tokens) != job.answer:
            result.problems.append(f"{where}: its last attempt's tokens do not spell the result")


def _at(tokens: list[str], index: int) -> str | None:
    return tokens[index] if 0 <= index < len(tokens) else None
