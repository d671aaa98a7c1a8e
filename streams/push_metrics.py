"""The pusher's Prometheus metrics, in a registry of its own.

Every quotaflow process builds its metrics one way: a class owns a `CollectorRegistry`
and its metrics as attributes, and the process's `/metrics` serves that registry
(`ingress/metrics.py`, `edge/metrics.py`, `streams/worker_web.py`, this). Nothing goes
on prometheus_client's global default registry, so two pushers (or a pusher beside a
test) in one process never share series, and what a route serves is what its component
registered.

Every label set is bounded: regions come from configuration, node labels are node ids
or configured URLs (a departed node's series are removed), outcomes and reasons are
fixed vocabularies.
"""

from __future__ import annotations

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

BATCH_OUTCOMES = ("ok", "retry", "dropped", "down")
REJOIN_REASONS = ("new_boot", "no_snapshot", "refused", "announced")


class PushMetrics:
    """The series one pusher exposes on its `/metrics`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        # The process's own series (memory, CPU, GC), which alerts read; as before, when
        # the pusher's metrics sat on the default registry that carries these three.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.nodes = Gauge(
            "quotaflow_push_nodes", "Edge nodes this pusher delivers to.", ["region"], registry=r
        )
        self.tenant_changes = Counter(
            "quotaflow_push_tenant_changes",
            "Tenant state changes the region watcher sent to the nodes, by state (active, "
            "suspended, removed).",
            ["region", "state"],
            registry=r,
        )
        self.batches = Counter(
            "quotaflow_push_batches",
            "Push batches by region, node and outcome (ok, retry, dropped, down).",
            ["region", "node", "outcome"],
            registry=r,
        )
        self.snapshots = Counter(
            "quotaflow_push_snapshots",
            "Snapshots delivered to a node.",
            ["region", "node"],
            registry=r,
        )
        self.node_up = Gauge(
            "quotaflow_push_node_up", "1 while the node is live.", ["region", "node"], registry=r
        )
        self.rejoins = Counter(
            "quotaflow_push_rejoins",
            "Re-joins (with a snapshot) a node's answers asked for, by reason (new_boot, "
            "no_snapshot, refused, announced).",
            ["region", "node", "reason"],
            registry=r,
        )
        self.latency = Histogram(
            "quotaflow_push_latency_seconds",
            "Duration of one successful push request.",
            ["region"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.announcements = Counter(
            "quotaflow_pusher_announcements",
            "Edge node announcements read by a pusher, by outcome (announced, departed, "
            "forged, malformed).",
            ["region", "outcome"],
            registry=r,
        )
