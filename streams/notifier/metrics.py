"""The notifier's Prometheus metrics, in a registry of its own (the one way every quotaflow
process builds its metrics: see `streams/push_metrics.py`).

No tenant or endpoint label: a label per tenant would grow with the platform; logs and
`quotaflow notifications list` name them."""

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

__all__ = ["NotifierMetrics"]


class NotifierMetrics:
    """The series one notifier exposes on its `/metrics`."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        self.attempts = Counter(
            "quotaflow_notifier_attempts",
            "Delivery attempts by outcome (delivered, failed, gone, refused_address).",
            ["outcome"],
            registry=r,
        )
        self.notifications = Counter(
            "quotaflow_notifier_notifications",
            "Notifications per endpoint by what became of them (delivered, dead_lettered, "
            "duplicate, unrouted).",
            ["outcome"],
            registry=r,
        )
        self.lag = Histogram(
            "quotaflow_notifier_delivery_lag_seconds",
            "From the transition (the notification's timestamp) to the endpoint's 2xx.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
            registry=r,
        )
        self.pending = Gauge(
            "quotaflow_notifier_pending",
            "Notifications held in memory, waiting for delivery or retry.",
            registry=r,
        )
        self.disabled = Counter(
            "quotaflow_notifier_endpoints_disabled",
            "Endpoints the notifier disabled (failing for QUOTAFLOW_NOTIFIER_GIVE_UP_AFTER, "
            "or 410).",
            ["reason"],
            registry=r,
        )
