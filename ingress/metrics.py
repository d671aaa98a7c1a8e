"""Prometheus metrics of one ingress app, in its own `CollectorRegistry`.

Labels are bounded by construction: `route` (2 values), `outcome` (5) and `reason` (the
fixed set of reasons). There is never a tenant label; per-tenant detail is in the logs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngressMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
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
        )
        self.body_bytes = Counter(
            "quotaflow_ingress_published_bytes_total",
            "Bytes of verified bodies published to stripe.events.",
            registry=self.registry,
        )

    def count(self, route: str, outcome: str, reason: str, seconds: float) -> None:
        self.requests.labels(route, outcome, reason).inc()
        self.latency.labels(outcome).observe(seconds)
