"""The sidecar's Prometheus metrics, in their own registry so several sidecars (tests,
benchmarks) can live in one process. Every label set is bounded: regions come from
configuration and reasons/outcomes from fixed vocabularies.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.metrics import Counter as CounterChild

from edge.cache import QuotaCache


class EdgeMetrics:
    """Counters the server updates; `render()` refreshes state ages then serialises."""

    def __init__(self, cache: QuotaCache) -> None:
        self._cache = cache
        self.registry = CollectorRegistry(auto_describe=True)
        self.state_age = Gauge(
            "quota_state_age_seconds",
            "Seconds since the region's last accepted push.",
            ["region"],
            registry=self.registry,
        )
        self.pushes = Counter(
            "edge_pushes",
            "Pushes received, by outcome (accepted, rejected, bad_request).",
            ["outcome"],
            registry=self.registry,
        )
        self.rejections = Counter(
            "edge_push_rejections",
            "Pushes refused for their signature, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.updates = Counter(
            "edge_quota_updates",
            "Quota updates in accepted pushes, by result (applied, stale, invalid).",
            ["result"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "edge_consume_decisions",
            "HTTP consume answers, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.tenant_changes = Counter(
            "edge_tenant_state_changes",
            "Tenant state changes (suspended, resumed, removed) applied from signed pushes.",
            registry=self.registry,
        )
        self.tenants = Gauge(
            "edge_tenants_denied",
            "Tenants whose customers are all denied here, by state (suspended: reason "
            "tenant_suspended; removed: reason tenant_removed).",
            ["state"],
            registry=self.registry,
        )
        self._decision_children: dict[str, CounterChild] = {}
        self.keys = Gauge("edge_quota_keys", "Customers held.", registry=self.registry)
        self.snapshot = Gauge(
            "edge_snapshot_complete",
            "1 once this process holds a complete snapshot; until then unknown customers "
            "are denied with reason no_snapshot.",
            registry=self.registry,
        )

    def decision(self, reason: str) -> CounterChild:
        """The counter child for a decision reason, bound once (labels() is costly per call)."""
        child = self._decision_children.get(reason)
        if child is None:
            child = self._decision_children[reason] = self.decisions.labels(reason=reason)
        return child

    def render(self) -> bytes:
        for region, age in self._cache.state_age_seconds().items():
            self.state_age.labels(region=region).set(age)
        self.keys.set(len(self._cache))
        for state, count in self._cache.tenant_counts().items():
            self.tenants.labels(state=state).set(count)
        self.snapshot.set(1 if self._cache.complete else 0)
        return generate_latest(self.registry)
