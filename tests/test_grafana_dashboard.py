"""deploy/grafana/codeloop.json graphs only metrics that /metrics really exports."""

from __future__ import annotations

import json
import re

from app.core import metrics
from tests.support import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "codeloop.json"
API_GAUGES = {"codeloop_queue_depth", "codeloop_jobs", "codeloop_sse_clients"}  # health.py


def exported_names() -> set[str]:
    names = set(API_GAUGES)
    for spec in metrics.HISTOGRAMS:
        names |= {f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count"}
    for counter in metrics.COUNTERS:
        names.add(f"{counter.name}_total")
    return names


def test_every_query_uses_an_exported_metric_and_label() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    labels = {label for spec in (*metrics.HISTOGRAMS, *metrics.COUNTERS) for label in spec.labels}
    labels |= {"le", "queue", "kind", "status"}
    used = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"codeloop_[a-z_]+", target["expr"]):
                assert name in exported_names(), (panel["title"], name)
                used.add(name)
            for group in re.findall(r"by \(([^)]*)\)", target["expr"]):
                for label in (g.strip() for g in group.split(",")):
                    assert label in labels, (panel["title"], label)
    # Each of the figures operators asked for is on the dashboard.
    for spec in metrics.HISTOGRAMS:
        assert f"{spec.name}_bucket" in used, spec.name
    for counter in (metrics.GENERATED_TOKENS, metrics.SANDBOX_RUNS, metrics.TOOL_CALLS):
        assert f"{counter.name}_total" in used, counter.name
