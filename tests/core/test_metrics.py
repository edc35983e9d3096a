"""Worker figures: bucketed in memory, summed in Redis, shown as Prometheus families."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from app.core import metrics, names


class _Families:
    def __init__(self, families):
        self._families = families

    def collect(self):
        return self._families


def exposition(client: redis.Redis) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(metrics.families(client.hgetall(names.METRICS_KEY)))))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def generation(tokens_at: list[float], **result) -> metrics.JobFigures:
    claimed = datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC)
    return metrics.JobFigures(
        kind="generate", status="succeeded", result=result,
        queued_at=(claimed - timedelta(seconds=0.3)).replace(tzinfo=None),  # SQLite: naive
        claimed_at=claimed, started=100.0, token_times=tokens_at,
    )  # fmt: skip


def test_a_generation_lands_in_every_histogram(redis_client: redis.Redis) -> None:
    figures = generation(
        [100.2, 100.203, 100.206, 100.306],
        usage={"completion_tokens": 4},
        tool_calls=[
            {"call_id": "c1", "name": "execute_code", "ok": True, "duration_ms": 40},
            {"call_id": "c2", "name": "made_up_by_the_model", "ok": False, "duration_ms": 1},
        ],
    )
    metrics.record_job(redis_client, figures)
    s = exposition(redis_client)

    ttft = "codeloop_time_to_first_token_seconds"
    assert s[(f"{ttft}_count", ())] == 1
    assert s[(f"{ttft}_bucket", (("le", "0.1"),))] == 0
    assert s[(f"{ttft}_bucket", (("le", "0.25"),))] == 1  # 0.2 s
    itl = "codeloop_inter_token_latency_seconds"
    assert s[(f"{itl}_count", ())] == 3
    assert s[(f"{itl}_bucket", (("le", "0.005"),))] == 2  # 3 ms, 3 ms
    assert s[(f"{itl}_bucket", (("le", "0.1"),))] == 3  # and 100 ms
    assert abs(s[(f"{itl}_sum", ())] - 0.106) < 1e-6
    tps = "codeloop_generation_tokens_per_second"
    assert abs(s[(f"{tps}_sum", ())] - 3 / 0.106) < 1e-3
    assert s[("codeloop_generated_tokens_total", ())] == 4
    wait = "codeloop_queue_wait_seconds"
    assert s[(f"{wait}_bucket", (("kind", "generate"), ("le", "0.25")))] == 0
    assert s[(f"{wait}_bucket", (("kind", "generate"), ("le", "0.5")))] == 1
    assert s[("codeloop_jobs_finished_total", (("kind", "generate"), ("status", "succeeded")))] == 1
    calls = "codeloop_tool_calls_total"
    assert s[(calls, (("name", "execute_code"), ("outcome", "ok")))] == 1
    assert s[(calls, (("name", "other"), ("outcome", "failed")))] == 1  # no label per typo
    dur = "codeloop_tool_call_duration_seconds"
    assert s[(f"{dur}_bucket", (("le", "0.05"), ("name", "execute_code")))] == 1


def test_figures_from_many_workers_add_up(redis_client: redis.Redis) -> None:
    for status in ("ok", "ok", "runtime_error"):
        figures = metrics.JobFigures(
            kind="execute", status="succeeded", result={"status": status}, queued_at=None,
            claimed_at=datetime.now(UTC), started=0.0, token_times=[],
        )  # fmt: skip
        worker = redis.Redis.from_url(_url(redis_client))  # each its own connection
        metrics.record_job(worker, figures)
        worker.close()
    s = exposition(redis_client)
    assert s[("codeloop_sandbox_runs_total", (("status", "ok"),))] == 2
    assert s[("codeloop_sandbox_runs_total", (("status", "runtime_error"),))] == 1
    assert ("codeloop_time_to_first_token_seconds_count", ()) not in s  # no tokens, no TTFT
    assert redis_client.ttl(names.METRICS_KEY) > 86_400


def test_pending_observations_travel_with_the_next_job(redis_client: redis.Redis) -> None:
    metrics.observe_retriever_query(0.004)
    metrics.observe_retriever_query(0.02)
    assert not redis_client.exists(names.METRICS_KEY)  # nothing sent per query
    metrics.record_job(redis_client, generation([100.5]))
    s = exposition(redis_client)
    query = "codeloop_retriever_query_seconds"
    assert s[(f"{query}_count", ())] == 2
    assert s[(f"{query}_bucket", (("le", "0.005"),))] == 1
    metrics.record_job(redis_client, generation([100.5]))
    assert exposition(redis_client)[(f"{query}_count", ())] == 2  # sent once


def test_unknown_fields_are_ignored() -> None:
    families = list(metrics.families({b"junk": b"1", b"codeloop_nope||c": b"2"}))
    assert all(not family.samples for family in families)


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"
