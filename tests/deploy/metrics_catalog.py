"""Which metric names the components expose, read from the code, and which the rules and
the dashboard rely on before any component exposes them (listed, with the owner)."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
}

# Prometheus' own series.
BUILTIN = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"})

# Metric -> the component that should expose it. Rules and panels on these stay empty until
# it does; each is in the deployment report to the lead.
PENDING = {
    # The worker registers it with its Faust app (streams/worker_web.py), so it does not
    # show in a bare WorkerMetrics(); the pushers do not export it yet.
    "quotaflow_consumer_lag": "pushers: records behind per group, topic, partition",
    # Registered with the worker's Faust app (streams/worker_web.py LanesCollector).
    "quotaflow_stripe_tenants": "worker: tenants whose Stripe reads retry or degrade",
    # Registered with the worker's Faust app (streams/worker_tenants.py TenantsCollector).
    "quotaflow_meter_parked_oldest_seconds": "worker: the longest-parked tenant's age",
}

_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "bool",
        "offset",
        "group_left",
        "group_right",
        "inf",
        "nan",
    }
)


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
    return names


def exposed() -> frozenset[str]:
    """Sample names the code registers today (ingress, edge, pusher, worker, process)."""
    from edge.cache import QuotaCache
    from edge.metrics import EdgeMetrics
    from ingress.metrics import IngressMetrics
    from streams.push_metrics import PushMetrics
    from streams.worker_web import WorkerMetrics

    names = _sample_names(PushMetrics().registry)
    names |= _sample_names(IngressMetrics().registry)
    names |= _sample_names(EdgeMetrics(QuotaCache()).registry)
    names |= _sample_names(WorkerMetrics().registry)
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function call
        if match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names
