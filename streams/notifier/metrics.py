"""The notifier's metrics (on its `/metrics`). No tenant or endpoint label: a label per
tenant would grow with the platform; logs and `quotaflow notifications list` name them."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = ["ATTEMPTS", "DISABLED", "LAG", "NOTIFICATIONS", "PENDING"]

ATTEMPTS = Counter(
    "quotaflow_notifier_attempts",
    "Delivery attempts by outcome (delivered, failed, gone, refused_address).",
    ["outcome"],
)
NOTIFICATIONS = Counter(
    "quotaflow_notifier_notifications",
    "Notifications per endpoint by what became of them (delivered, dead_lettered, "
    "duplicate, unrouted).",
    ["outcome"],
)
LAG = Histogram(
    "quotaflow_notifier_delivery_lag_seconds",
    "From the transition (the notification's timestamp) to the endpoint's 2xx.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
PENDING = Gauge(
    "quotaflow_notifier_pending",
    "Notifications held in memory, waiting for delivery or retry.",
)
DISABLED = Counter(
    "quotaflow_notifier_endpoints_disabled",
    "Endpoints the notifier disabled (failing for QUOTAFLOW_NOTIFIER_GIVE_UP_AFTER, or 410).",
    ["reason"],
)
