"""Prometheus metrics of one ingress app, in its own `CollectorRegistry`.

Labels are bounded by construction: `route` (2 values), `outcome` (5) and `reason` (the
fixed set of reasons). The one per-tenant series, signature failures, is limited to the
`top` tenants with the most failures; the rest are summed under `tenant_id="other"`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from ingress.signature import REASONS as SIGNATURE_REASONS
from quotaflow.registry import TenantRegistry, refused_family

__all__ = ["IngressMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class TopTenantFailures(Collector):
    """Signature failures per tenant for the `top` tenants; everyone else is "other".

    Counts live in a dict bounded to `4 * top` tenants (the smallest is folded into
    "other" when a new tenant arrives), so a flood of random tenant ids costs nothing.
    """

    def __init__(self, top: int = 20) -> None:
        self.top = top
        self._counts: dict[tuple[str, str], float] = {}
        self._other: dict[str, float] = {}

    def inc(self, tenant_id: str, reason: str) -> None:
        key = (tenant_id, reason)
        if key not in self._counts and len(self._counts) >= 4 * self.top:
            smallest = min(self._counts, key=self._counts.__getitem__)
            self._other[smallest[1]] = self._other.get(smallest[1], 0.0) + self._counts.pop(
                smallest
            )
        self._counts[key] = self._counts.get(key, 0.0) + 1.0

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "quotaflow_ingress_tenant_signature_failures",
            "Signature failures of the tenants with the most of them (others: 'other').",
            labels=("tenant_id", "reason"),
        )
        ranked = sorted(self._counts.items(), key=lambda kv: kv[1], reverse=True)
        other = dict(self._other)
        for (_tenant_id, reason), count in ranked[self.top :]:
            other[reason] = other.get(reason, 0.0) + count
        for (tenant_id, reason), count in ranked[: self.top]:
            family.add_metric((tenant_id, reason), count)
        for reason, count in other.items():
            family.add_metric(("other", reason), count)
        yield family


class RefusedRecords(Collector):
    """`quotaflow_tenant_records_refused_total{reason}` of this process's tenant registry."""

    def __init__(self) -> None:
        self.registry: TenantRegistry | None = None

    def collect(self) -> Iterable[Metric]:
        yield refused_family([self.registry] if self.registry is not None else [])


class IngressMetrics:
    def __init__(self, top_tenants: int = 20) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.tenant_signature_failures = TopTenantFailures(top_tenants)
        self.registry.register(self.tenant_signature_failures)
        self.refused_records = RefusedRecords()
        self.registry.register(self.refused_records)
        self.requests = Counter(
            "quotaflow_ingress_webhooks_total",
            "Webhook requests by route, outcome and reason.",
            ("route", "outcome", "reason"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "quotaflow_ingress_webhook_seconds",
            "Time from request to answer, by outcome.",
            ("outcome",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.publish_latency = Histogram(
            "quotaflow_ingress_publish_seconds",
            "Time from produce to the broker's acks=all acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "quotaflow_ingress_in_flight",
            "Webhook requests being handled.",
            registry=self.registry,
            multiprocess_mode="livesum",  # with --workers N: the sum over live workers
        )
        self.unreadable_records = Gauge(
            "quotaflow_tenant_records_unreadable",
            "Tenant records this process cannot read (its keyring lacks their key).",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.body_bytes = Counter(
            "quotaflow_ingress_published_bytes_total",
            "Bytes of verified bodies published to stripe.events.",
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The /metrics page: this registry, or with `--workers N` (prometheus_client's
        multiprocess mode) the sum over every worker; the top-tenants signature failures
        are this worker's own (a custom collector is not shared between processes)."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        shared = CollectorRegistry()
        MultiProcessCollector(shared)  # type: ignore[no-untyped-call]
        own = CollectorRegistry(auto_describe=True)
        own.register(self.tenant_signature_failures)
        own.register(self.refused_records)
        return generate_latest(shared) + generate_latest(own)

    def count(
        self, route: str, outcome: str, reason: str, seconds: float, tenant_id: str | None = None
    ) -> None:
        self.requests.labels(route, outcome, reason).inc()
        self.latency.labels(outcome).observe(seconds)
        if tenant_id is not None and reason in SIGNATURE_REASONS:
            self.tenant_signature_failures.inc(tenant_id, reason)
