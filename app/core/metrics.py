"""Figures the workers measure and the API's `/metrics` shows (SPEC §2: operators scrape it).

Workers are other processes, often on other machines, so their figures travel through
Redis: one hash (`names.METRICS_KEY`) of counters and histogram buckets that every
worker adds to and every API replica reads. Nothing here touches the token hot path:
a job records a timestamp per token in memory (`JobContext.emit`), and when the job
ends the worker turns its figures into bucket counts and sends them in one pipeline
(`record_job`). Observations made outside a job (retriever queries) wait in a
process-wide `Batch` and go out with the next job's pipeline.

The figures are cluster-wide: every API replica shows the same totals, so aggregate
them across replicas with `max`, not `sum` (or scrape one replica).

Hash fields: `<metric>|<labels>|<part>` with `<labels>` like `kind=generate,status=ok`
and `<part>` one of `c` (a counter), `b<i>` (histogram bucket i, not cumulative; the
last is +Inf) or `sum`.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from app.core import names
from app.core.models import as_utc

RETAIN_S = 30 * 86_400  # refreshed by every write: a cluster idle a month starts from zero

# Tool names are a label: only the tools the agent has (SPEC §10) get their own series,
# whatever a model writes into <function>…</function>.
KNOWN_TOOLS = frozenset(
    {"execute_code", "lint_code", "get_knowledge", "search_code", "get_history"}
)


@dataclass(frozen=True)
class HistogramSpec:
    name: str
    help: str
    buckets: tuple[float, ...]
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class CounterSpec:
    name: str
    help: str
    labels: tuple[str, ...] = ()


_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
TTFT = HistogramSpec(
    "codeloop_time_to_first_token_seconds",
    "From a worker starting a generation to its first token (model load, retrieval, prefill)",
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
INTER_TOKEN = HistogramSpec(
    "codeloop_inter_token_latency_seconds", "Time between consecutive tokens of a generation",
    _FAST,
)  # fmt: skip
TOKENS_PER_S = HistogramSpec(
    "codeloop_generation_tokens_per_second",
    "Decode speed of each generation: tokens after the first over the time they took",
    (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0),
)
QUEUE_WAIT = HistogramSpec(
    "codeloop_queue_wait_seconds", "From a job's acceptance to a worker starting it",
    (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0), ("kind",),
)  # fmt: skip
TOOL_DURATION = HistogramSpec(
    "codeloop_tool_call_duration_seconds", "Duration of the agent's tool calls",
    (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0), ("name",),
)  # fmt: skip
RETRIEVER_QUERY = HistogramSpec(
    "codeloop_retriever_query_seconds",
    "One retriever query: index catch-up, HNSW search, SQL details, re-ranking",
    _FAST,
)
GENERATED_TOKENS = CounterSpec(
    "codeloop_generated_tokens", "Tokens generated (rate() of it is the cluster's tokens/s)"
)
JOBS_FINISHED = CounterSpec(
    "codeloop_jobs_finished", "Jobs that ended, by kind and final status", ("kind", "status")
)
SANDBOX_RUNS = CounterSpec(
    "codeloop_sandbox_runs", "Sandboxed executions by outcome (ok, runtime_error, …)", ("status",)
)
TOOL_CALLS = CounterSpec(
    "codeloop_tool_calls", "The agent's tool calls by tool and outcome (ok, failed)",
    ("name", "outcome"),
)  # fmt: skip
QUOTA_REFUSALS = CounterSpec(
    "codeloop_quota_refusals",
    "Requests the API refused by a quota (429) or a full queue (503), by limit",
    ("limit",),
)

HISTOGRAMS = (TTFT, INTER_TOKEN, TOKENS_PER_S, QUEUE_WAIT, TOOL_DURATION, RETRIEVER_QUERY)
COUNTERS = (GENERATED_TOKENS, JOBS_FINISHED, SANDBOX_RUNS, TOOL_CALLS, QUOTA_REFUSALS)
_SPECS: dict[str, HistogramSpec | CounterSpec] = {s.name: s for s in (*HISTOGRAMS, *COUNTERS)}


def _label_text(spec: HistogramSpec | CounterSpec, values: Mapping[str, str]) -> str:
    return ",".join(f"{key}={_clean(values[key])}" for key in spec.labels)


def _clean(value: str) -> str:
    text = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(value))
    return text[:64] or "none"


class Batch:
    """Observations in memory, sent to Redis in one pipeline by `send`. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ints: defaultdict[str, int] = defaultdict(int)
        self._floats: defaultdict[str, float] = defaultdict(float)

    def observe(self, spec: HistogramSpec, value: float, **labels: str) -> None:
        self.observe_many(spec, (value,), **labels)

    def observe_many(self, spec: HistogramSpec, values: Iterable[float], **labels: str) -> None:
        base = f"{spec.name}|{_label_text(spec, labels)}|"
        counts: defaultdict[int, int] = defaultdict(int)
        total = 0.0
        for value in values:
            counts[bisect.bisect_left(spec.buckets, value)] += 1
            total += value
        if not counts:
            return
        with self._lock:
            for index, count in counts.items():
                self._ints[f"{base}b{index}"] += count
            self._floats[f"{base}sum"] += total

    def inc(self, spec: CounterSpec, by: int = 1, **labels: str) -> None:
        with self._lock:
            self._ints[f"{spec.name}|{_label_text(spec, labels)}|c"] += by

    def take(self) -> tuple[dict[str, int], dict[str, float]]:
        with self._lock:
            ints, floats = dict(self._ints), dict(self._floats)
            self._ints.clear()
            self._floats.clear()
        return ints, floats

    def send(self, client: Any, *, also: Batch | None = None) -> None:
        """One round trip: HINCRBY / HINCRBYFLOAT every field (and `also`'s), refresh TTL."""
        ints, floats = self.take()
        if also is not None:
            more_ints, more_floats = also.take()
            for key, count in more_ints.items():
                ints[key] = ints.get(key, 0) + count
            for key, total in more_floats.items():
                floats[key] = floats.get(key, 0.0) + total
        if not ints and not floats:
            return
        pipe = client.pipeline(transaction=False)
        for key, count in ints.items():
            pipe.hincrby(names.METRICS_KEY, key, count)
        for key, total in floats.items():
            pipe.hincrbyfloat(names.METRICS_KEY, key, total)
        pipe.expire(names.METRICS_KEY, RETAIN_S)
        pipe.execute()


# Observations made outside any job (a retriever query from a warm-up, say).
pending = Batch()


def observe_retriever_query(seconds: float) -> None:
    pending.observe(RETRIEVER_QUERY, seconds)


@dataclass
class JobFigures:
    """What the job runner measured about one job."""

    kind: str
    status: str
    result: dict[str, Any] | None
    queued_at: datetime | None
    claimed_at: datetime
    started: float  # perf_counter when the handler started
    token_times: list[float]  # perf_counter of every token event


def job_batch(figures: JobFigures) -> Batch:
    """The figures of one finished job as bucket counts (no I/O)."""
    batch = Batch()
    batch.inc(JOBS_FINISHED, kind=figures.kind, status=figures.status)
    if figures.queued_at is not None:
        wait = (figures.claimed_at - as_utc(figures.queued_at)).total_seconds()
        batch.observe(QUEUE_WAIT, max(0.0, wait), kind=figures.kind)
    result = figures.result or {}
    times = figures.token_times
    if times:
        batch.observe(TTFT, max(0.0, times[0] - figures.started))
        batch.observe_many(INTER_TOKEN, (b - a for a, b in itertools.pairwise(times)))
        tokens = int((result.get("usage") or {}).get("completion_tokens") or len(times))
        batch.inc(GENERATED_TOKENS, tokens)
        span = times[-1] - times[0]
        if len(times) > 1 and span > 0:
            batch.observe(TOKENS_PER_S, (len(times) - 1) / span)
    if figures.kind == "execute" and isinstance(result.get("status"), str):
        batch.inc(SANDBOX_RUNS, status=result["status"])
    for call in result.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        name = call.get("name")
        name = name if name in KNOWN_TOOLS else "other"
        batch.inc(TOOL_CALLS, name=name, outcome="ok" if call.get("ok") else "failed")
        duration = call.get("duration_ms")
        if isinstance(duration, int | float):
            batch.observe(TOOL_DURATION, duration / 1000, name=name)
    return batch


def record_job(client: Any, figures: JobFigures) -> None:
    """Add one finished job's figures (and anything pending) to the cluster's totals."""
    job_batch(figures).send(client, also=pending)


# --- reading (the API) ----------------------------------------------------------------


def families(raw: Mapping[bytes | str, bytes | str]) -> Iterator[Metric]:
    """Prometheus metric families from the hash's fields (unknown fields are ignored)."""
    counters: defaultdict[str, dict[str, float]] = defaultdict(dict)
    hists: defaultdict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for key, value in raw.items():
        field = key.decode() if isinstance(key, bytes) else key
        name, _, rest = field.partition("|")
        labels, _, part = rest.rpartition("|")
        spec = _SPECS.get(name)
        if spec is None:
            continue
        number = float(value)
        if isinstance(spec, CounterSpec) and part == "c":
            counters[name][labels] = number
        elif isinstance(spec, HistogramSpec):
            hists[name][labels][part] = number
    for spec in COUNTERS:
        family = CounterMetricFamily(spec.name, spec.help, labels=list(spec.labels))
        for labels, number in sorted(counters[spec.name].items()):
            family.add_metric(_label_values(spec, labels), number)
        yield family
    for hspec in HISTOGRAMS:
        hfamily = HistogramMetricFamily(hspec.name, hspec.help, labels=list(hspec.labels))
        for labels, parts in sorted(hists[hspec.name].items()):
            cumulative, buckets = 0.0, []
            for index, bound in enumerate((*hspec.buckets, float("inf"))):
                cumulative += parts.get(f"b{index}", 0.0)
                buckets.append((_bound(bound), cumulative))
            hfamily.add_metric(
                _label_values(hspec, labels), buckets, sum_value=parts.get("sum", 0.0)
            )
        yield hfamily


def _label_values(spec: HistogramSpec | CounterSpec, text: str) -> list[str]:
    values = dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)
    return [values.get(key, "none") for key in spec.labels]


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
