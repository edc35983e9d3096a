"""Every queue, task and Redis key name in one place.

The API sends tasks by these names (`send_task`) and never imports `workers`; the
workers register their tasks under the same names.
"""

from __future__ import annotations

# --- job kinds, queues, tasks -----------------------------------------------------------
KINDS = ("generate", "execute", "lint", "search", "optimize")

QUEUE_GENERATE = "generate"
QUEUE_EXECUTE = "execute"
QUEUE_SEARCH = "search"  # apart from generate so a search never waits behind a generation
QUEUE_MAINTENANCE = "maintenance"
QUEUES = (QUEUE_GENERATE, QUEUE_EXECUTE, QUEUE_SEARCH, QUEUE_MAINTENANCE)

TASK_GENERATE = "codeloop.generate"
TASK_EXECUTE = "codeloop.execute"
TASK_LINT = "codeloop.lint"
TASK_SEARCH = "codeloop.search"
TASK_OPTIMIZE = "codeloop.optimize"
TASK_RECONCILE = "codeloop.reconcile"
TASK_TUNE_RETRIEVER = "codeloop.tune_retriever"  # beat's run of the retriever tuner
TASK_TELL_GENERATION = "codeloop.tell_generation_trials"
TASK_DELIVER_WEBHOOK = "codeloop.deliver_webhook"  # a final job's callback (maintenance)
TASK_PING = "codeloop.ping"

# kind -> (task name, queue)
JOB_ROUTES: dict[str, tuple[str, str]] = {
    "generate": (TASK_GENERATE, QUEUE_GENERATE),
    "execute": (TASK_EXECUTE, QUEUE_EXECUTE),
    "lint": (TASK_LINT, QUEUE_EXECUTE),
    "search": (TASK_SEARCH, QUEUE_SEARCH),
    "optimize": (TASK_OPTIMIZE, QUEUE_MAINTENANCE),
}

TASK_QUEUES: dict[str, str] = {task: queue for task, queue in JOB_ROUTES.values()}
TASK_QUEUES[TASK_RECONCILE] = QUEUE_MAINTENANCE
TASK_QUEUES[TASK_TUNE_RETRIEVER] = QUEUE_MAINTENANCE
TASK_QUEUES[TASK_TELL_GENERATION] = QUEUE_MAINTENANCE
TASK_QUEUES[TASK_DELIVER_WEBHOOK] = QUEUE_MAINTENANCE

# --- statuses -----------------------------------------------------------------------------
QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUSES = (QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED, CANCELLED)

# --- languages (the seed's table) ---------------------------------------------------------
LANGUAGE_EXTENSIONS: dict[str, str] = {
    "python": ".py",
    "javascript": ".js",
    "typescript": ".ts",
    "java": ".java",
    "react": ".jsx",
    "tailwind": ".jsx",
    "vite": ".js",
    "nestjs": ".ts",
}
LANGUAGES = tuple(LANGUAGE_EXTENSIONS)

# --- Redis keys -----------------------------------------------------------------------------
PREFIX = "codeloop"
# Cluster-wide worker figures behind /metrics (app/core/metrics.py); its TTL is refreshed.
METRICS_KEY = f"{PREFIX}:metrics"


def events_stream_key(job_id: str) -> str:
    """Redis Stream with the job's events; entry id `<seq>-0` (replay)."""
    return f"{PREFIX}:job:{job_id}:events"


def events_channel(job_id: str) -> str:
    """Pub/sub channel with the job's events (live fan-out)."""
    return f"{PREFIX}:job:{job_id}:live"


def event_seq_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:seq"


def event_epoch_key(job_id: str) -> str:
    """A token set when the job's seq counter is (re)created: a new one means Redis lost
    the job's event log (the relay then ends the stream with SQL's final state)."""
    return f"{PREFIX}:job:{job_id}:epoch"


def event_batches_key(job_id: str) -> str:
    """Hash batch id -> first seq: an event batch retried after a lost reply is not
    appended twice."""
    return f"{PREFIX}:job:{job_id}:batches"


def cancel_flag_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:cancel"


def cancel_channel(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:control"


def lease_key(job_id: str) -> str:
    """Held (with a short TTL, refreshed) by the worker running the job."""
    return f"{PREFIX}:job:{job_id}:lease"


def dispatch_marker_key(job_id: str) -> str:
    """Set once a job's message is sent, cleared when a delivery claims it; gone early
    if Redis lost its data (workers/reconcile.py)."""
    return f"{PREFIX}:job:{job_id}:dispatched"


def progress_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:progress"


def webhook_queued_key(job_id: str) -> str:
    """Set while a delivery task for the job's webhook waits in the queue, so the
    reconciler's sweep does not queue another behind it."""
    return f"{PREFIX}:job:{job_id}:webhook_queued"


def request_rate_key(owner: str) -> str:
    """An API key's request-rate state (app/api/quotas.py; expires when idle)."""
    return f"{PREFIX}:quota:{owner}:rate"


# --- tuning locks (value: the holder, `job:<id>` or `beat:<task id>`; TTL > hard limit) ---
TUNE_RETRIEVER_LOCK = f"{PREFIX}:tuning:retriever:lock"
TUNE_GENERATION_LOCK = f"{PREFIX}:tuning:generation:lock"
# JSON of beat's latest tuner run (`{"at", "outcome", "study"|"skipped"}`), shown by the API.
TUNE_LAST_BEAT_RUN = f"{PREFIX}:tuning:retriever:last_beat_run"
