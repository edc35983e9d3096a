"""The legal job transitions of SPEC §6, in one table.

Every status change (a worker's claim and finish, the reconciler, a cancel) goes through
`jobs.transition`, which refuses an edge this table lacks. Call sites say which edge
they take; none decides on its own which statuses it may leave.

```
queued → running → succeeded | failed | cancelled
           ↘ retrying (worker lost; bounded attempts) ↗
```
`running → running` is a new attempt taking over from a runner that died (announced as
`retrying` first); `queued|retrying → failed` is a claim that finds the attempts spent.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.core.names import CANCELLED, FAILED, QUEUED, RETRYING, RUNNING, SUCCEEDED

TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RETRYING: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED}),
}

# Waiting for a worker: a cancel ends these at once, in SQL alone.
WAITING = (QUEUED, RETRYING)


class IllegalTransition(ValueError):
    """A status change SPEC §6 does not allow (a programming error, not bad input)."""


def check(from_statuses: Iterable[str], to: str) -> None:
    """Raise unless every `from → to` edge is in the table."""
    for source in from_statuses:
        if to not in TRANSITIONS.get(source, frozenset()):
            raise IllegalTransition(f"a job may not go from {source} to {to}")
